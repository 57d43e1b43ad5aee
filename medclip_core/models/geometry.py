"""Drawing what a model saw back onto the original image.

A model sees the original image resized and centre-cropped (:class:`~medclip_core.models.base.CropGeometry`);
its patch grids and decoder logits cover only that square. These functions spread such a grid
bilinearly over ``CropGeometry.original_box`` in original pixels, the way ``align_corners=False``
interpolation does, and leave the pixels the crop cut off at 0. Heatmaps, segmentation masks and
the grounding metrics all go through them, so a map and its ground truth line up.
"""
from __future__ import annotations

import numpy as np

from medclip_core.models.base import CropGeometry


def bilinear_weights(n_out: int, start: float, stop: float, n_in: int) -> np.ndarray:
    """(n_out, n_in) matrix that samples n_in cells spread over [start, stop) at pixel centres.

    Matches ``align_corners=False`` interpolation: cell centres sit at (j + 0.5) / n_in of the
    span, values are clamped at the edges, and pixels outside the span get all-zero rows.
    """
    centres = np.arange(n_out) + 0.5
    inside = (centres >= start) & (centres < stop)
    position = (centres - start) / (stop - start) * n_in - 0.5
    position = np.clip(position, 0.0, n_in - 1)
    lower = np.floor(position).astype(int)
    upper = np.minimum(lower + 1, n_in - 1)
    frac = position - lower
    weights = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(weights, (rows, lower), 1.0 - frac)
    np.add.at(weights, (rows, upper), frac)
    weights[~inside] = 0.0
    return weights


def heatmap_from_patches(patch_sims: np.ndarray, geometry: CropGeometry, width: int, height: int) -> np.ndarray:
    """Patch-grid scores (gh, gw) -> (height, width) heatmap in [0, 1] over the original image.

    The grid is min-max scaled to [0, 1] and drawn bilinearly onto ``geometry.original_box``, the
    part of the original image the model saw; pixels outside that box (cut by the centre crop) are 0.
    A constant grid gives an all-zero map.
    """
    grid = np.asarray(patch_sims, dtype=np.float32)
    if grid.ndim != 2:
        raise ValueError(f"patch_sims must be (gh, gw), got shape {grid.shape}.")
    span = grid.max() - grid.min()
    grid = (grid - grid.min()) / span if span > 0 else np.zeros_like(grid)
    x0, y0, x1, y1 = geometry.original_box
    rows = bilinear_weights(height, y0, y1, grid.shape[0]).astype(np.float32)
    cols = bilinear_weights(width, x0, x1, grid.shape[1]).astype(np.float32)
    return np.clip(rows @ grid @ cols.T, 0.0, 1.0)  # float32 throughout: one (height, width) array
