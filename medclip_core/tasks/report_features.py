"""Frozen image features for report generation: one pooled embedding and a small grid of patch tokens.

Both report methods read the image only through the frozen CLIP model: sentence retrieval uses the
pooled embedding, the decoder attends over the pooled embedding plus the patch tokens average-pooled
to a ``GRID`` x ``GRID`` grid (7x7 = 49 tokens: the 14x14 map of the default model pooled 2x2,
which keeps the training cache small). Phantom features are computed once per (model, split,
variants) and kept as ``.npz`` files so that training and evaluation never run the image tower again.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medclip_core.data.phantom import phantom_dataset
from medclip_core.models.base import ClipModel, ImageLike, PatchTokensUnsupported

GRID = 7
FEATURE_FORMAT = 1


@dataclass
class ImageFeatures:
    """``pooled`` (N, D) and ``patches`` (N, GRID*GRID, D), L2-normalised float32; ``report_index`` (N,)
    says which report of the split each row shows (several rendered variants per report)."""

    pooled: np.ndarray
    patches: np.ndarray
    report_index: np.ndarray

    def __len__(self) -> int:
        return len(self.pooled)


@torch.inference_mode()
def encode_for_report(model: ClipModel, images: Sequence[ImageLike] | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Images -> (pooled (B, D), patches (B, GRID*GRID, D)), both L2-normalised float32 numpy.

    A model without patch tokens gets its pooled embedding repeated on every grid cell.
    """
    try:
        pooled, grid = model.encode_image_and_patches(images)
        grid = F.adaptive_avg_pool2d(grid.permute(0, 3, 1, 2), GRID).flatten(2).transpose(1, 2)  # (B, G*G, D)
        patches = F.normalize(grid, dim=-1)
    except PatchTokensUnsupported:
        pooled = model.encode_image(images)
        patches = pooled[:, None].expand(-1, GRID * GRID, -1)
    return pooled.float().cpu().numpy(), patches.float().cpu().numpy()


def phantom_features(model: ClipModel, split: str, variants: int = 1, limit: int | None = None, seed: int = 0,
                     cache_dir: Path | None = None, batch_size: int = 64,
                     progress: Callable[[int, int], None] | None = None) -> ImageFeatures:
    """Features of the phantom ``split`` (``variants`` renders per report, first ``limit`` reports).

    Images are the ones :func:`~medclip_core.data.phantom.phantom_dataset` renders (the same
    test images every other evaluation uses). With ``cache_dir`` the result is stored there as
    ``.npz`` under a name built from the model fingerprint and the parameters, and reused.
    """
    from medclip_core.models.embedding_cache import model_fingerprint

    dataset = phantom_dataset(split=split, seed=seed, size=model.image_size, variants_per_report=variants)
    count = len(dataset) if limit is None else min(len(dataset), limit * variants)
    key = hashlib.sha256(json.dumps([FEATURE_FORMAT, model_fingerprint(model), split, variants, count, seed,
                                     GRID]).encode()).hexdigest()[:20]
    path = Path(cache_dir) / f"features-{split}-{key}.npz" if cache_dir else None
    if path is not None and path.is_file():
        stored = np.load(path)
        return ImageFeatures(stored["pooled"].astype(np.float32), stored["patches"].astype(np.float32),
                             stored["report_index"])
    pooled, patches = [], []
    for start in range(0, count, batch_size):
        batch = [dataset[i].image for i in range(start, min(start + batch_size, count))]
        p, t = encode_for_report(model, batch)
        pooled.append(p)
        patches.append(t)
        if progress is not None:
            progress(min(start + batch_size, count), count)
    features = ImageFeatures(np.concatenate(pooled), np.concatenate(patches), np.arange(count) // variants)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, pooled=features.pooled.astype(np.float16), patches=features.patches.astype(np.float16),
                 report_index=features.report_index)
        tmp.replace(path)
    return features
