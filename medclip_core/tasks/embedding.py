"""Embedding maps: images and texts of a gallery projected together to 2-D, and the modality gap.

CLIP-style models place image and text embeddings in one space, yet the two modalities sit in
separate regions of it (the "modality gap", Liang et al. 2022). A map shows this directly: every
image and every text is one point, projected jointly with PCA, t-SNE or UMAP, coloured by finding
label or by modality. The gap itself is measured before projection, on the L2-normalised
embeddings: the Euclidean distance between the image centroid and the text centroid (0 when the
modalities overlap, 2 when they sit at opposite poles), with the cosine of the two centroids.

Image embeddings of a :class:`~medclip_core.data.galleries.Collection` come from
:func:`~medclip_core.tasks.retrieval.build_index`, so they are cached on disk with the index;
finished maps are kept in memory by :class:`EmbeddingMapCache`, keyed by (model fingerprint,
input fingerprint, method, seed). Projections are seeded, hence repeatable.
"""
from __future__ import annotations

import base64
import hashlib
import html
import contextlib
import io
import json
import os
import textwrap
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import plotly.graph_objects as go
from PIL import Image

from medclip_core.data.galleries import Collection, sorted_labels
from medclip_core.errors import MedclipError
from medclip_core.models.base import ClipModel, ImageLike, image_to_rgb_array
from medclip_core.models.embedding_cache import SHIPPED_DIR, model_fingerprint
from medclip_core.tasks import embed_in_batches
from medclip_core.tasks.retrieval import Progress, build_index, build_report_index
from medclip_core.tasks.saving import SavesJson

METHODS: tuple[str, ...] = ("umap", "pca", "tsne")
COLOR_BY: tuple[str, ...] = ("label", "modality")
METHOD_NAMES = {"umap": "UMAP", "pca": "PCA", "tsne": "t-SNE"}
MIN_POINTS_NONLINEAR = 4  # below this t-SNE and UMAP have no neighbourhoods to keep: PCA instead
THUMBNAIL_SIZE = 64
HOVER_CHARS = 160  # the start of a report: the full text would hide the map
# Per point, figure() puts these in customdata, in this order (the app reads the thumbnail from column 0).
CUSTOMDATA_FIELDS: tuple[str, ...] = ("thumbnail", "item_id", "label", "modality", "hover_text")
MULTIPLE_LABEL = "several findings"
UNLABELLED = "unlabelled"
NO_FINDINGS = "no findings"


@dataclass(frozen=True)
class ModalityGap:
    """Distance between the centroids of the normalised image and text embeddings, and their cosine."""

    distance: float
    centroid_cosine: float


def modality_gap(image_embeddings: np.ndarray, text_embeddings: np.ndarray) -> ModalityGap:
    """The modality gap of (N, D) image and (M, D) text embeddings (rows are L2-normalised first)."""
    def centroid(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or len(x) == 0:
            raise MedclipError("The modality gap needs at least one image and one text embedding.")
        return (x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)).mean(axis=0)

    image_centre, text_centre = centroid(image_embeddings), centroid(text_embeddings)
    norms = np.linalg.norm(image_centre) * np.linalg.norm(text_centre)
    cosine = float(image_centre @ text_centre / norms) if norms > 0 else 0.0
    return ModalityGap(float(np.linalg.norm(image_centre - text_centre)), cosine)


@dataclass
class EmbeddingMap(SavesJson):
    """One 2-D point per input: images first, then texts, in input order.

    ``label`` is the point's colour group (its one finding, ``"several findings"``, or
    ``"unlabelled"``); ``labels`` all its findings; ``hover_text`` its report or text (the file
    path or id when there is none); ``thumbnails`` a small PNG data URI of the image (the paired
    image for a report text), None where there is no image. ``modality_gap`` and
    ``centroid_cosine`` are None without both images and texts.
    """

    SAVED_NAME = "embedding_map"

    method: str
    color_by: str
    seed: int
    model: str
    source: str
    coordinates: np.ndarray  # (N, 2)
    modality: list[str]
    item_ids: list[str]
    label: list[str]
    labels: list[list[str] | None]
    hover_text: list[str]
    thumbnails: list[str | None]
    modality_gap: float | None
    centroid_cosine: float | None
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.modality)

    def to_dict(self, include_thumbnails: bool = False) -> dict[str, Any]:
        """JSON-able form (the CLI's output); thumbnails only when asked, they are bulky."""
        points = []
        for i in range(len(self)):
            point = {"x": float(self.coordinates[i, 0]), "y": float(self.coordinates[i, 1]),
                     "modality": self.modality[i], "id": self.item_ids[i], "label": self.label[i],
                     "labels": self.labels[i], "text": self.hover_text[i]}
            if include_thumbnails:
                point["thumbnail"] = self.thumbnails[i]
            points.append(point)
        return {"method": self.method, "color_by": self.color_by, "seed": self.seed, "model": self.model,
                "source": self.source, "n_images": self.modality.count("image"),
                "n_texts": self.modality.count("text"), "modality_gap": self.modality_gap,
                "centroid_cosine": self.centroid_cosine, "notes": self.notes, "points": points}


class EmbeddingMapCache:
    """Finished maps, least recently used first out, keyed by (model, input, method, seed); thread-safe.

    The colour choice is not part of the key: a hit is returned with the requested ``color_by``.
    ``hits`` / ``misses`` count look-ups.
    """

    def __init__(self, max_entries: int = 16) -> None:
        self.max_entries = max_entries
        self._maps: OrderedDict[tuple, EmbeddingMap] = OrderedDict()
        self._lock = threading.Lock()
        self._computing: dict[tuple, list] = {}  # key -> [lock, number of callers holding or awaiting it]
        self.hits = 0
        self.misses = 0

    @contextlib.contextmanager
    def computing(self, key: tuple) -> Iterator[None]:
        """Held while one caller computes the map of ``key``: a second caller for the same key (the
        start-up warm-up and a user's first click) waits for it and then finds it cached."""
        with self._lock:
            entry = self._computing.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._lock:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._computing[key]

    def get(self, key: tuple) -> EmbeddingMap | None:
        with self._lock:
            if key not in self._maps:
                self.misses += 1
                return None
            self.hits += 1
            self._maps.move_to_end(key)
            return self._maps[key]

    def put(self, key: tuple, value: EmbeddingMap) -> None:
        with self._lock:
            self._maps[key] = value
            self._maps.move_to_end(key)
            while len(self._maps) > self.max_entries:
                self._maps.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._maps.clear()
            self.hits = self.misses = 0


EMBEDDING_MAP_CACHE = EmbeddingMapCache()


def thumbnail_data_uri(image: ImageLike, size: int = THUMBNAIL_SIZE, format: str = "PNG") -> str:
    """A ``data:`` URI of ``image`` shrunk to fit ``size`` x ``size`` (grey kept grey, so it stays small),
    as PNG or, for larger thumbnails, JPEG (quality 85: a fraction of the PNG's bytes and encoding time)."""
    rgb = np.rint(image_to_rgb_array(image) * 255).astype(np.uint8)
    grey = bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
    picture = Image.fromarray(rgb[..., 0] if grey else rgb)
    picture.thumbnail((size, size), Image.LANCZOS)
    buffer = io.BytesIO()
    options = {"optimize": True} if format == "PNG" else {"quality": 85}
    picture.save(buffer, format=format, **options)
    return f"data:image/{format.lower()};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def shipped_thumbnails_path(collection: Collection, size: int = THUMBNAIL_SIZE) -> Path:
    """Where the thumbnails of ``collection`` ship (the Embeddings tab's default gallery does)."""
    return SHIPPED_DIR / f"thumbnails-{collection.fingerprint[:16]}-{size}.json"


def collection_thumbnails(collection: Collection, size: int = THUMBNAIL_SIZE) -> list[str]:
    """One thumbnail data URI per item: from the shipped file when it was written for exactly this
    collection (fingerprint and ids), else rendered (200 phantom images: about 3 s on one core)."""
    try:
        shipped = json.loads(shipped_thumbnails_path(collection, size).read_text())
        if shipped["fingerprint"] == collection.fingerprint and \
                shipped["ids"] == [item.item_id for item in collection.items]:
            return list(shipped["thumbnails"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return [thumbnail_data_uri(item.image(), size) for item in collection.items]


def write_shipped_thumbnails(collection: Collection, size: int = THUMBNAIL_SIZE) -> Path:
    """Render and write the shipped thumbnails of ``collection``: release time only."""
    path = shipped_thumbnails_path(collection, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    thumbnails = [thumbnail_data_uri(item.image(), size) for item in collection.items]
    path.write_text(json.dumps({"fingerprint": collection.fingerprint, "ids": [item.item_id for item in collection.items],
                                "thumbnails": thumbnails}) + "\n")
    return path


def _colour_label(labels: Iterable[str] | None) -> str:
    if labels is None:
        return UNLABELLED
    labels = list(labels)
    if not labels:
        return NO_FINDINGS
    return labels[0] if len(labels) == 1 else MULTIPLE_LABEL


@dataclass
class _Points:
    """What a map is drawn from, before embedding: one entry per point, images first."""

    source: str
    fingerprint: str
    n_images: int
    item_ids: list[str]
    labels: list[list[str] | None]
    hover_text: list[str]
    texts: list[str]


def _collection_points(collection: Collection) -> _Points:
    paired = [item for item in collection.items if item.report]
    image_hover = [item.report or item.path or item.item_id for item in collection.items]
    items = collection.items + paired
    return _Points(collection.name, collection.fingerprint, len(collection.items), [item.item_id for item in items],
                   [sorted_labels(item.labels) for item in items], image_hover + [item.report for item in paired],
                   [item.report for item in paired])


def _as_label_list(value: str | Iterable[str] | None) -> list[str] | None:
    if value is None:
        return None
    return sorted_labels([value] if isinstance(value, str) else list(value))


def _array_points(images: Sequence[ImageLike], texts: Sequence[str],
                  labels: Sequence[str | Iterable[str] | None] | None) -> tuple[_Points, list[np.ndarray]]:
    images, texts = list(images), [str(t) for t in texts]
    n_images, n_texts = len(images), len(texts)
    if n_images + n_texts == 0:
        raise MedclipError("Give at least one image or text to map.")
    if labels is None:
        per_point: list[list[str] | None] = [None] * (n_images + n_texts)
    elif len(labels) == n_images + n_texts:
        per_point = [_as_label_list(v) for v in labels]
    elif n_images == n_texts and len(labels) == n_images:  # image i and text i are a pair
        per_point = [_as_label_list(v) for v in labels] * 2
    else:
        raise MedclipError(f"Give one label per point ({n_images + n_texts}), or one per image-text pair when "
                           f"images and texts are paired; got {len(labels)} labels for {n_images} images and "
                           f"{n_texts} texts.")
    pixels = [image_to_rgb_array(image) for image in images]
    digest = hashlib.sha256()
    for array in pixels:
        digest.update(f"{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(repr((texts, per_point)).encode())
    ids = [f"image-{i + 1}" for i in range(n_images)] + [f"text-{i + 1}" for i in range(n_texts)]
    hover = [f"image {i + 1}" for i in range(n_images)] + texts
    return _Points(f"{n_images} images, {n_texts} texts", digest.hexdigest(), n_images, ids, per_point, hover,
                   texts), pixels


def _pca(vectors: np.ndarray) -> np.ndarray:
    centred = vectors - vectors.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    components = components[:2]
    # sign convention: each component's largest loading is positive, so repeated runs agree
    largest = components[np.arange(len(components)), np.abs(components).argmax(axis=1)]
    components = components * np.where(largest < 0, -1.0, 1.0)[:, None]
    coordinates = centred @ components.T
    return np.pad(coordinates, ((0, 0), (0, 2 - coordinates.shape[1])))


def project(vectors: np.ndarray, method: str, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """(N, D) -> (N, 2) coordinates with ``method``, and notes on what was adapted to N.

    t-SNE perplexity is min(30, (N - 1) / 3) and UMAP ``n_neighbors`` min(15, N - 1), so small
    galleries work; below ``MIN_POINTS_NONLINEAR`` points PCA is used instead.

    Runs on one BLAS/OpenMP thread: after torch has run, the numerical libraries' own thread
    pools compete with torch's idle spinning threads, and on two busy cores a PCA of 784 points
    took 3.9 s instead of 0.16 s, a t-SNE of a dozen points over a minute instead of 0.1 s.
    """
    from threadpoolctl import threadpool_limits

    vectors = np.asarray(vectors, dtype=np.float64)
    n = len(vectors)
    with threadpool_limits(limits=1):
        if method != "pca" and n < MIN_POINTS_NONLINEAR:
            return _pca(vectors), [f"{n} point(s) are too few for {METHOD_NAMES[method]}; PCA is shown instead."]
        if method == "pca":
            return _pca(vectors), []
        if method == "tsne":
            from sklearn.manifold import TSNE

            perplexity = min(30.0, (n - 1) / 3)
            tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
            return tsne.fit_transform(vectors), [f"t-SNE perplexity {perplexity:g}."]
        warm_up_projection()  # compiles UMAP once per process, or waits for the compilation under way
        neighbours = min(15, n - 1)
        return _umap(vectors, neighbours, seed), [f"UMAP n_neighbors {neighbours}."]


def _umap(vectors: np.ndarray, neighbours: int, seed: int) -> np.ndarray:
    import umap  # slow to import (numba): only when asked for

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")  # a fixed seed makes UMAP single-threaded
        reducer = umap.UMAP(n_components=2, n_neighbors=neighbours, random_state=seed, n_jobs=1)
        return np.asarray(reducer.fit_transform(vectors), dtype=np.float64)


class _ProjectionWarmUp:
    """UMAP's numba functions compile on the first fit of a process (about 8 s on a quiet core, not
    cached between processes): done once, under a lock, by :func:`warm_up_projection`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = False
        self.done = False

    def run(self) -> None:
        if self.done:
            return
        self.started = True
        with self._lock:
            if not self.done:
                from threadpoolctl import threadpool_limits

                sample = np.random.default_rng(0).normal(size=(WARM_UP_POINTS, 8))  # float64, like real maps
                with threadpool_limits(limits=1):
                    _umap(sample, min(15, WARM_UP_POINTS - 1), 0)
                self.done = True


WARM_UP_POINTS = 40
_PROJECTION_WARM_UP = _ProjectionWarmUp()


def warm_up_projection() -> None:
    """Compile UMAP with a tiny fit (the app runs this in a background thread at start-up)."""
    _PROJECTION_WARM_UP.run()


def announce_projection_warm_up() -> None:
    """Say that :func:`warm_up_projection` will run soon (the app's start-up thread, after cheaper
    steps), so that :func:`projection_preparing` is true from now on and callers show PCA meanwhile
    instead of compiling UMAP a second time."""
    _PROJECTION_WARM_UP.started = True


def projection_ready(method: str) -> bool:
    """False while a projection's one-time set-up (UMAP's compilation) is still to come or under way."""
    return method != "umap" or _PROJECTION_WARM_UP.done


def projection_preparing(method: str) -> bool:
    """True while :func:`warm_up_projection` is announced or compiling ``method`` (a caller may show PCA meanwhile)."""
    return method == "umap" and _PROJECTION_WARM_UP.started and not _PROJECTION_WARM_UP.done


def _check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise MedclipError(f"{what} must be one of {', '.join(choices)}; got {value!r}.")


def embedding_map(model: ClipModel,
                  data: Collection | tuple[Sequence[ImageLike], Sequence[str], Sequence[Any] | None],
                  method: str = "umap", color_by: str = "label", seed: int = 0, progress: Progress | None = None,
                  cache: EmbeddingMapCache | None = EMBEDDING_MAP_CACHE,
                  cache_dir: str | os.PathLike | None = None, batch_size: int = 32) -> EmbeddingMap:
    """Project the images and texts of ``data`` to 2-D and measure the modality gap.

    ``data`` is a collection (each image, then each report text the collection has) or a tuple
    ``(images, texts, labels)``: ``labels`` one per point (images then texts), one per pair when
    images and texts are paired (same length), or None. ``progress(done, total)`` counts embedded
    inputs. ``cache_dir`` is the on-disk index cache a collection's image embeddings go through.
    """
    _check_choice(method, METHODS, "method")
    _check_choice(color_by, COLOR_BY, "color_by")
    if isinstance(data, Collection):
        if not data.items:
            raise MedclipError(f"The collection '{data.name}' has no images to map.")
        points, pixels = _collection_points(data), None
    else:
        if not isinstance(data, tuple) or len(data) != 3:
            raise MedclipError("Give a collection, or a tuple (images, texts, labels).")
        points, pixels = _array_points(*data)

    key = (model_fingerprint(model), points.fingerprint, method, seed)
    if cache is None:
        return _compute_map(model, data, points, pixels, method, color_by, seed, progress, cache_dir, batch_size)
    with cache.computing(key):
        if (cached := cache.get(key)) is not None:
            return replace(cached, color_by=color_by)
        result = _compute_map(model, data, points, pixels, method, color_by, seed, progress, cache_dir, batch_size)
        cache.put(key, result)
    return result


def _compute_map(model: ClipModel, data: Collection | tuple, points: _Points, pixels: list[np.ndarray] | None,
                 method: str, color_by: str, seed: int, progress: Progress | None,
                 cache_dir: str | os.PathLike | None, batch_size: int) -> EmbeddingMap:
    total = points.n_images + len(points.texts)

    def report(offset: int) -> Progress | None:
        return None if progress is None else (lambda done, _: progress(offset + done, total))

    if isinstance(data, Collection):
        image_vectors = build_index(model, data, cache_dir, batch_size, report(0)).vectors
        thumbnails = collection_thumbnails(data)
        thumbnails += [thumb for item, thumb in zip(data.items, thumbnails) if item.report]
    else:
        image_vectors = embed_in_batches(model.encode_image, pixels, batch_size, report(0)) if pixels else None
        thumbnails = [thumbnail_data_uri(array) for array in pixels] + [None] * len(points.texts)
    if not points.texts:
        text_vectors = None
    elif isinstance(data, Collection):  # a gallery's reports: cached on disk, shipped for the default one
        text_vectors = build_report_index(model, points.texts, cache_dir, batch_size, report(points.n_images)).vectors
    else:
        text_vectors = embed_in_batches(model.encode_text, points.texts, batch_size, report(points.n_images))
    # a modality without inputs becomes a (0, D) array of the other one's width
    dim = (image_vectors if image_vectors is not None else text_vectors).shape[1]
    image_vectors, text_vectors = (v if v is not None else np.zeros((0, dim), np.float32)
                                   for v in (image_vectors, text_vectors))

    notes = []
    gap = None
    if len(image_vectors) and len(text_vectors):
        gap = modality_gap(image_vectors, text_vectors)
    else:
        notes.append("The modality gap needs both images and texts; this input has only "
                     f"{'images' if len(image_vectors) else 'texts'}.")
    coordinates, projection_notes = project(np.concatenate([image_vectors, text_vectors]), method, seed)
    result = EmbeddingMap(
        method=method, color_by=color_by, seed=seed, model=model.card.name, source=points.source,
        coordinates=coordinates, modality=["image"] * len(image_vectors) + ["text"] * len(text_vectors),
        item_ids=points.item_ids, label=[_colour_label(labels) for labels in points.labels], labels=points.labels,
        hover_text=points.hover_text, thumbnails=thumbnails,
        modality_gap=gap.distance if gap else None, centroid_cosine=gap.centroid_cosine if gap else None,
        notes=projection_notes + notes)
    return result


def _hover(text: str) -> str:
    text = text if len(text) <= HOVER_CHARS else text[:HOVER_CHARS].rstrip() + " …"
    return "<br>".join(html.escape(line) for line in textwrap.wrap(text, 60)) or "&nbsp;"


# Colour groups that are not one finding are drawn in greys, every finding in a colour of its own.
GROUP_GREYS = {MULTIPLE_LABEL: "#555555", NO_FINDINGS: "#8c8c8c", UNLABELLED: "#c7c7c7"}
HIGHLIGHT_COLOUR = "#d62728"
OTHER_COLOUR = "#c7c7c7"


def _palette() -> list[str]:
    """Distinct colours for finding groups: plotly's Dark24 then Light24 (48 in all), greys left out."""
    from plotly.colors import qualitative

    greys = {"#222A2A", "#B2828D", "#FED4C4"}  # Dark24/Light24 entries too close to the group greys
    return [c for c in qualitative.Dark24 + qualitative.Light24 if c.upper() not in greys]


def _groups(embedding: EmbeddingMap, highlight: str | None) -> tuple[list[str], dict[str, str]]:
    """Each point's legend group and each group's colour (None: plotly's default cycle, by modality)."""
    if embedding.color_by == "modality":
        return list(embedding.modality), {}
    if highlight:
        other = f"other (not {highlight})"
        groups = [UNLABELLED if labels is None else highlight if highlight in labels else other
                  for labels in embedding.labels]
        return groups, {highlight: HIGHLIGHT_COLOUR, other: OTHER_COLOUR, UNLABELLED: GROUP_GREYS[UNLABELLED]}
    palette = iter(_palette())
    colours = {group: GROUP_GREYS.get(group) or next(palette, "#000000") for group in dict.fromkeys(embedding.label)}
    return list(embedding.label), colours


def figure(embedding: EmbeddingMap, highlight: str | None = None) -> go.Figure:
    """A scatter of the map: one trace per colour group, circles for images and diamonds for texts.

    Coloured by label, each finding gets a colour of its own and the groups that are not one finding
    (several, none, unlabelled) greys; with ``highlight`` (a finding), the points that have it are red
    and all others grey, which reads better than many colours. The legend sits below the plot so a
    hover label never covers it. Hover shows the label, modality and the start of the report text;
    ``customdata`` holds ``CUSTOMDATA_FIELDS`` per point (the thumbnail data URI first) for the app
    to show beside the plot.
    """
    groups, colours = _groups(embedding, highlight)
    fig = go.Figure()
    order = sorted(dict.fromkeys(groups), key=lambda g: (g != highlight, g in GROUP_GREYS or g.startswith("other"), g))
    for group in order:
        rows = [i for i, g in enumerate(groups) if g == group]
        marker = {"size": 8, "opacity": 0.85, "line": {"width": 0.5, "color": "white"},
                  "symbol": ["circle" if embedding.modality[i] == "image" else "diamond" for i in rows]}
        if group in colours:
            marker["color"] = colours[group]
        fig.add_trace(go.Scatter(
            x=embedding.coordinates[rows, 0], y=embedding.coordinates[rows, 1], mode="markers", name=group,
            marker=marker,
            customdata=[[embedding.thumbnails[i] or "", embedding.item_ids[i], embedding.label[i],
                         embedding.modality[i], _hover(embedding.hover_text[i])] for i in rows],
            hovertemplate="<b>%{customdata[2]}</b> (%{customdata[3]})<br>%{customdata[4]}<extra></extra>",
        ))
    n_images = embedding.modality.count("image")
    title = f"{METHOD_NAMES[embedding.method]} of {n_images} images and {len(embedding) - n_images} texts"
    if embedding.modality_gap is not None:
        title += (f" — modality gap {embedding.modality_gap:.3f} "
                  f"(centroid cosine {embedding.centroid_cosine:.3f})")
    legend_title = "modality" if embedding.color_by == "modality" else (highlight or "finding")
    fig.update_layout(title=title, legend_title_text=legend_title, template="plotly_white",
                      legend={"orientation": "h", "yanchor": "top", "y": -0.02, "xanchor": "left", "x": 0},
                      margin={"l": 10, "r": 10, "t": 50, "b": 10}, height=620,
                      xaxis={"title": "", "showticklabels": False}, yaxis={"title": "", "showticklabels": False})
    return fig


def findings_of(embedding: EmbeddingMap) -> list[str]:
    """Every finding some point of the map has, in vocabulary order (the choices for ``highlight``)."""
    return sorted_labels({label for labels in embedding.labels if labels for label in labels})
