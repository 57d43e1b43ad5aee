"""One registry of models: a name maps to a small declarative spec; ``load_model(name)`` builds any.

Specs live as JSON files in ``models/specs/`` (one per model, like open_clip's
``model_configs``). Besides registered names, ``load_model`` accepts
- ``local-dir:PATH``: an open_clip folder (open_clip_config.json + weights), a transformers
  ``save_pretrained`` folder, or one of our checkpoints (medclip_config.json + model.safetensors);
- ``hf-hub:ORG/NAME``: an open_clip model on the Hugging Face hub;
- ``hf:ORG/NAME``: a transformers CLIPModel / SiglipModel on the hub.
Finished training runs (recorded by ``medclip_core.train.runs``, read by
:mod:`medclip_core.models.trained_runs`) are listed too, under their run name.
Loaded models are kept in a small in-memory LRU cache owned by :class:`ModelCache`.

Registry models are curated; a model named outside it (``local-dir:``, ``hf-hub:``, ``hf:``) is
built only from allow-listed parts and up to :func:`medclip_core.hosting.max_model_params`
parameters, counted before anything is built. On a public server ``local-dir:`` reads only the
registry's and the finished runs' folders and those the host lists in ``MEDCLIP_MODEL_DIRS``, and
its error for any other path is the same whether that path exists or not.
"""
from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from medclip_core import hosting
from medclip_core.errors import AccessDeniedError, ModelUnavailableError
from medclip_core.models import checkpoint, hub
from medclip_core.models.base import ClipModel, ModelCard, ModelDescription
from medclip_core.models.open_clip_backend import (
    OPEN_CLIP_CONFIG,
    OPEN_CLIP_WEIGHTS,
    builtin_weights_repo,
    load_checkpoint_dir,
    load_open_clip_builtin,
    load_open_clip_dir,
    load_open_clip_hub,
)
from medclip_core.models.trained_runs import finished_runs
from medclip_core.models.transformers_backend import is_transformers_dir, load_transformers, load_transformers_hub

SPECS_DIR = Path(__file__).resolve().parent / "specs"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = "medclip-phantom"
DEFAULT_MODEL_ENV = "MEDCLIP_DEFAULT_MODEL"
BACKENDS = ("checkpoint", "open_clip", "transformers")


@dataclass(frozen=True)
class ModelSpec(ModelDescription):
    """Declarative description of a registry model (one JSON file in ``specs/``)."""

    pretrained: str | None = None

    def card(self) -> ModelCard:
        shared = {k: v for k, v in asdict(self).items() if k in ModelCard.__dataclass_fields__}
        if self.pretrained:
            shared["source"] = f"{self.source} ({self.pretrained})"
        return ModelCard(**shared)

    @property
    def local_path(self) -> Path:
        return PROJECT_ROOT / self.source


def _read_specs() -> dict[str, ModelSpec]:
    specs = {}
    for path in sorted(SPECS_DIR.glob("*.json")):
        spec = ModelSpec(**json.loads(path.read_text()))
        if spec.backend not in BACKENDS:
            raise ValueError(f"{path}: unknown backend {spec.backend!r}")
        specs[spec.name] = spec
    return specs


_SPECS = _read_specs()


def _run_specs() -> dict[str, ModelSpec]:
    """A checkpoint spec per finished training run (read from the runs registry on every call)."""
    specs = {}
    for name, path in finished_runs().items():
        if name in _SPECS or not checkpoint.is_checkpoint_dir(path):
            continue
        try:
            card = checkpoint.read_config(path).get("card", {})
        except ModelUnavailableError:
            continue
        specs[name] = ModelSpec(name=name, backend="checkpoint", source=str(path),
                                modality=card.get("modality", "custom"), image_size=int(card.get("image_size", 224)),
                                embed_dim=int(card.get("embed_dim", 0)), licence=card.get("licence", ""),
                                description=f"fine-tuned by the training run '{name}'",
                                zero_shot_negatives=card.get("zero_shot_negatives", "negated"))
    return specs


def all_specs() -> dict[str, ModelSpec]:
    """The registry's specs and one per finished training run."""
    return {**_SPECS, **_run_specs()}


def list_models() -> list[str]:
    """Registered model names and finished runs (dynamic ``local-dir:``/``hf-hub:``/``hf:`` names are not listed)."""
    return list(all_specs())


def get_spec(name: str) -> ModelSpec:
    try:
        return _SPECS.get(name) or _run_specs()[name]
    except KeyError:
        raise ModelUnavailableError(
            f"Unknown model '{name}'. Known models: {', '.join(_SPECS)}; or use local-dir:PATH, "
            "hf-hub:ORG/NAME (open_clip) or hf:ORG/NAME (transformers)."
        ) from None


def default_model_name() -> str:
    return os.environ.get(DEFAULT_MODEL_ENV, "").strip() or DEFAULT_MODEL


def _dynamic_card(name: str, backend: str) -> ModelCard:
    return ModelCard(name=name, backend=backend, source=name, modality="unknown", image_size=224,
                     embed_dim=0, licence="see the model's own card")


def local_dir_roots() -> list[Path]:
    """The folders ``local-dir:`` may read on a public server: the registry's checkpoints (finished runs
    included) and the host's ``MEDCLIP_MODEL_DIRS``."""
    return [spec.local_path for spec in all_specs().values() if spec.backend == "checkpoint"] + hosting.extra_model_dirs()


def check_local_dir_allowed(path: Path) -> None:
    """On a public server, refuse a folder outside :func:`local_dir_roots` with one message that does not
    depend on whether the folder exists."""
    if hosting.is_public() and not hosting.is_within(path, local_dir_roots()):
        raise AccessDeniedError("On this public server local-dir: reads only the registry's and the finished "
                                f"runs' model folders and those its host lists in {hosting.MODEL_DIRS_ENV}.")


def load_local_dir(path: Path, device: torch.device, card: ModelCard | None = None,
                   max_params: int | None = None) -> ClipModel:
    """Any of the three folder layouts, detected by the files it holds. ``max_params``: check the
    architecture (allow-list, size) before building, for folders outside the registry."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ModelUnavailableError(f"Model folder not found: {path}")
    if checkpoint.is_checkpoint_dir(path):
        return load_checkpoint_dir(path, card, device, max_params)
    if (path / OPEN_CLIP_CONFIG).is_file():
        return load_open_clip_dir(path, card or _dynamic_card(f"local-dir:{path}", "open_clip"), device, max_params)
    if is_transformers_dir(path):
        return load_transformers(path, card or _dynamic_card(f"local-dir:{path}", "transformers"), device, max_params)
    raise ModelUnavailableError(
        f"{path} is not a model folder: expected {checkpoint.CONFIG_NAME}, {OPEN_CLIP_CONFIG}, "
        "or a transformers CLIP/SigLIP config.json."
    )


def _build(name: str, device: torch.device) -> ClipModel:
    if name.startswith("local-dir:"):
        return load_local_dir(Path(name[len("local-dir:"):]), device, max_params=hosting.max_model_params())
    if name.startswith("hf-hub:"):
        return load_open_clip_hub(name[len("hf-hub:"):], _dynamic_card(name, "open_clip"), device,
                                  hosting.max_model_params())
    if name.startswith("hf:"):
        return load_transformers_hub(name[len("hf:"):], _dynamic_card(name, "transformers"), device,
                                     hosting.max_model_params())
    spec = get_spec(name)
    card = spec.card()
    if spec.backend == "checkpoint":
        if not checkpoint.is_checkpoint_dir(spec.local_path):
            raise ModelUnavailableError(f"'{name}' has no weights in {spec.source} yet (train it first).")
        return load_checkpoint_dir(spec.local_path, card, device)
    if spec.backend == "open_clip":
        if spec.source.startswith("hf-hub:"):
            return load_open_clip_hub(spec.source[len("hf-hub:"):], card, device)
        return load_open_clip_builtin(spec.source, spec.pretrained or "", card, device)
    return load_transformers_hub(spec.source, card, device)


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class ModelCache:
    """Least-recently-used cache of loaded models, keyed by (name, device); thread-safe."""

    def __init__(self, max_models: int) -> None:
        self.max_models = max_models
        self._models: OrderedDict[tuple[str, str], ClipModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str, device: torch.device) -> ClipModel:
        key = (name, str(device))
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            model = _build(name, device)
            self._models[key] = model
            while len(self._models) > self.max_models:
                self._models.popitem(last=False)
            return model

    def clear(self) -> None:
        with self._lock:
            self._models.clear()


MODEL_CACHE = ModelCache(max_models=int(os.environ.get("MEDCLIP_MODEL_CACHE_SIZE", "3")))


def load_model(name: str | None = None, device: str | torch.device | None = None) -> ClipModel:
    """Load (or fetch from the cache) the model ``name``; ``None`` means the default model.

    Raises :class:`ModelUnavailableError` with instructions when it cannot be loaded here, and
    :class:`AccessDeniedError` for a ``local-dir:`` a public server does not serve (cached or not).
    """
    name = name or default_model_name()
    if name.startswith("local-dir:"):
        check_local_dir_allowed(Path(name[len("local-dir:"):]))
    return MODEL_CACHE.get(name, resolve_device(device))


def model_availability(name: str) -> str:
    """'available' / 'cached' / 'downloadable' / 'unavailable' / 'not trained', without loading."""
    spec = get_spec(name)
    if spec.backend == "checkpoint":
        return "available" if checkpoint.is_checkpoint_dir(spec.local_path) else "not trained"
    if spec.backend == "transformers":
        return hub.availability(spec.source, "config.json")
    if spec.source.startswith("hf-hub:"):
        return hub.availability(spec.source[len("hf-hub:"):], OPEN_CLIP_CONFIG)
    repo = builtin_weights_repo(spec.source, spec.pretrained or "")
    states = [hub.availability(repo, f) for f in OPEN_CLIP_WEIGHTS]
    return "cached" if "cached" in states else states[0]


def describe_models() -> list[dict[str, Any]]:
    """Every registry model with its availability here and its card (JSON-serialisable)."""
    rows = []
    for name, spec in all_specs().items():
        card = spec.card().to_dict()
        if spec.backend == "checkpoint" and checkpoint.is_checkpoint_dir(spec.local_path):
            card.update(checkpoint.read_config(spec.local_path).get("card", {}))
        rows.append({"name": name, "availability": model_availability(name),
                     "default": name == default_model_name(), "spec": asdict(spec), "card": card})
    return rows
