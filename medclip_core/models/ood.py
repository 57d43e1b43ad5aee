"""Out-of-distribution guard: does an image look like the images a model was trained on?

Zero-shot scores come out confident whatever the input (an MR, a photo), so every image result
carries an :class:`OodVerdict`. The reference of a model is the distribution of its training
images' embeddings, summarised as a mean and a precision matrix: an image's score is the
Mahalanobis distance of its (L2-normalised) image embedding to that distribution, the
class-agnostic form of Lee et al. 2018 ("A simple unified framework for detecting
out-of-distribution samples and adversarial attacks", NeurIPS), with the covariance shrunk
towards a scaled identity by Ledoit & Wolf (2004) so that it is well conditioned in the
embedding dimension. The threshold is a high quantile (``QUANTILE``, the 99.9th percentile) of
the distances of held-out *validation* images: in-distribution images are rarely flagged (the
99th percentile flagged one of the nine committed phantom examples), while the nearest non-chest
images measured lie well beyond it (``bench/results/ood.json``).

A reference ships as ``ood_reference.safetensors`` next to a checkpoint's weights (written by
``scripts/release/fit_ood_reference.py`` for the embedded models) and is attached to the model
when it loads (``ClipModel.ood_reference``); models without one (hub models, trained runs) get a
verdict that says so.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from medclip_core.errors import ModelUnavailableError

if TYPE_CHECKING:  # base imports this module for ClipModel.ood_reference
    from medclip_core.models.base import ClipModel

REFERENCE_NAME = "ood_reference.safetensors"
QUANTILE = 0.999
METHOD = "mahalanobis (Ledoit-Wolf shrunk covariance)"
OUT_MESSAGE = "This image does not look like the images this model was trained on; its scores are meaningless."
IN_MESSAGE = "Within the training distribution of this model."
NO_REFERENCE_MESSAGE = "no reference for this model"


@dataclass(frozen=True)
class OodVerdict:
    """Whether an image lies within a model's training distribution.

    ``in_distribution`` is None when the model has no reference; ``score`` is the image's distance
    and ``threshold`` the largest distance still within (both None without a reference).
    """

    in_distribution: bool | None
    score: float | None
    threshold: float | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"in_distribution": self.in_distribution, "score": self.score, "threshold": self.threshold,
                "message": self.message}


NO_REFERENCE = OodVerdict(None, None, None, NO_REFERENCE_MESSAGE)


@dataclass(frozen=True)
class OodReference:
    """The training images' embedding distribution of one model: ``mean`` (D,), ``precision`` (D, D)
    (the inverse of the shrunk covariance) and the distance ``threshold``; ``fitted_on`` says on what."""

    mean: np.ndarray
    precision: np.ndarray
    threshold: float
    fitted_on: str = ""

    def distances(self, embeddings: np.ndarray | torch.Tensor) -> np.ndarray:
        """(N, D) or (D,) image embeddings -> (N,) Mahalanobis distances to the reference."""
        if isinstance(embeddings, torch.Tensor):
            embeddings = embeddings.detach().float().cpu().numpy()
        centred = np.atleast_2d(np.asarray(embeddings, dtype=np.float64)) - self.mean
        if centred.shape[1] != len(self.mean):
            raise ModelUnavailableError(f"The OOD reference has dimension {len(self.mean)}, the image embedding "
                                        f"{centred.shape[1]}: the reference belongs to another model.")
        return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", centred, self.precision, centred), 0.0))

    def verdict(self, embedding: np.ndarray | torch.Tensor) -> OodVerdict:
        """The verdict for one image embedding ((D,) or (1, D))."""
        score = float(self.distances(embedding)[0])
        inside = score <= self.threshold
        return OodVerdict(inside, round(score, 4), round(self.threshold, 4), IN_MESSAGE if inside else OUT_MESSAGE)

    def save(self, folder: str | Path) -> Path:
        """Write the reference as ``folder/ood_reference.safetensors`` (float32 arrays, threshold in metadata)."""
        path = Path(folder) / REFERENCE_NAME
        save_file({"mean": self.mean.astype(np.float32), "precision": self.precision.astype(np.float32)}, str(path),
                  metadata={"method": METHOD, "threshold": repr(float(self.threshold)), "fitted_on": self.fitted_on})
        return path


def fit_reference(train: np.ndarray, val: np.ndarray, quantile: float = QUANTILE, fitted_on: str = "") -> OodReference:
    """The reference of ``train`` embeddings (N, D), its threshold the ``quantile`` of the ``val`` distances."""
    from sklearn.covariance import ledoit_wolf

    train = np.asarray(train, dtype=np.float64)
    mean = train.mean(axis=0)
    covariance, _ = ledoit_wolf(train - mean, assume_centered=True)
    unthresholded = OodReference(mean, np.linalg.inv(covariance), 0.0, fitted_on)
    threshold = float(np.quantile(unthresholded.distances(val), quantile))
    # round-trip through float32 (as stored) so that the fitted and the loaded reference agree
    return OodReference(mean.astype(np.float32).astype(np.float64),
                        unthresholded.precision.astype(np.float32).astype(np.float64), threshold, fitted_on)


def load_reference(folder: str | Path) -> OodReference | None:
    """The reference stored in a checkpoint ``folder``, or None when it has none."""
    path = Path(folder) / REFERENCE_NAME
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        metadata = handle.metadata() or {}
    arrays = load_file(str(path))
    try:
        return OodReference(arrays["mean"].astype(np.float64), arrays["precision"].astype(np.float64),
                            float(metadata["threshold"]), metadata.get("fitted_on", ""))
    except (KeyError, ValueError) as exc:
        raise ModelUnavailableError(f"{path} is not a valid OOD reference: {exc}") from exc


def ood_verdict(model: ClipModel, image_embedding: np.ndarray | torch.Tensor) -> OodVerdict:
    """The verdict for the (D,) or (1, D) embedding of one image under ``model``: what every image task
    result carries, from the embedding the task computed anyway."""
    reference = model.ood_reference
    return NO_REFERENCE if reference is None else reference.verdict(image_embedding)
