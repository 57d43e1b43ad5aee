"""Archive indexes: embed a folder or CSV of images far larger than memory, then search it.

``index build`` (:func:`~medclip_core.index.build.build_index`) streams the source through decode
workers and batched encoding (one machine, or Ray Data on a cluster), writing resumable shards;
:mod:`~medclip_core.index.store` turns them into an exact or IVF-PQ FAISS index searched from disk.
See docs/scale.md.
"""
from medclip_core.index.build import BuildOptions, build_index
from medclip_core.index.store import (
    ArchiveIndex,
    IndexInfo,
    registered_indexes,
    resolve_index,
    search_index_image,
    search_index_text,
)

__all__ = ["ArchiveIndex", "BuildOptions", "IndexInfo", "build_index", "registered_indexes", "resolve_index",
           "search_index_image", "search_index_text"]
