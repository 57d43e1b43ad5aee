"""The table of training tasks: the CLI's ``train --task`` (and its flags), the run manager and the
Training tab read it. A new task is one :class:`TrainingTask` entry: a config dataclass (in
:mod:`medclip_core.train.configs`, whose fields become the CLI flags) and the
:class:`~medclip_core.train.common.TrainingRun` that trains it, named by import path so that
reading the table does not import torch.
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from medclip_core.train.configs import ReportTrainConfig, SegTrainConfig, TrainConfig


@dataclass(frozen=True)
class TrainingTask:
    """One row of the table. ``trainer``: ``module:Class`` of its :class:`TrainingRun`, built as
    ``Class(config, log=..., should_stop=...)``. ``base_flag``: the config field the run manager
    passes its base model in (``architecture``: fine-tuned; ``model``: frozen under a trained head);
    None keeps the task out of the run manager. ``presets``: named sets of config values (``--preset``)."""

    description: str
    config: type
    trainer: str
    base_flag: str | None = None
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)

    def fields(self) -> list[dataclasses.Field]:
        """The config fields a command line may set (all but ``out_dir``)."""
        return [f for f in dataclasses.fields(self.config) if f.name != "out_dir"]

    def field_names(self) -> set[str]:
        return {f.name for f in self.fields()}

    def start(self, config: Any, log: Callable[[str], None] = print,
              should_stop: Callable[[], bool] = lambda: False):
        """The task's :class:`~medclip_core.train.common.TrainingRun` for ``config`` (``run()`` trains it)."""
        module, name = self.trainer.split(":")
        return getattr(importlib.import_module(module), name)(config, log=log, should_stop=should_stop)


TRAINING_TASKS: dict[str, TrainingTask] = {
    "contrastive": TrainingTask("image-report CLIP training", TrainConfig,
                                "medclip_core.train.contrastive:ContrastiveTrainer", base_flag="architecture",
                                presets={"phantom": {"architecture": "phantom-cnn-minilm", "data": "phantom"}}),
    "segmentation": TrainingTask("a text-prompted mask decoder on a frozen --model (phantom masks)", SegTrainConfig,
                                 "medclip_core.train.segmentation:SegmentationTrainer", base_flag="model"),
    "report": TrainingTask("the report decoder over a frozen --model (phantom only; not offered to the run "
                           "manager)", ReportTrainConfig, "medclip_core.train.report:ReportTrainer"),
}


def run_manager_tasks() -> list[str]:
    """The tasks a background run (run manager, Training tab) can train."""
    return [name for name, task in TRAINING_TASKS.items() if task.base_flag]
