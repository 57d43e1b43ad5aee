"""The training tasks, listed in one place: the CLI's ``train --task`` and the Training tab offer these.

A task added here needs its branch in ``medclip_core.__main__.cmd_train``.
"""
from __future__ import annotations

TRAIN_TASKS: dict[str, str] = {
    "contrastive": "image-report CLIP training",
    "segmentation": "a text-prompted mask decoder on a frozen --model (phantom masks)",
}
