"""Model registry and backends: ``load_model(name)`` returns a :class:`ClipModel` for any name."""
from medclip_core.models.base import ClipModel, CropGeometry, ModelCard, PatchTokensUnsupported, Preprocessing
from medclip_core.models.registry import (
    DEFAULT_MODEL,
    MODEL_CACHE,
    ModelSpec,
    default_model_name,
    describe_models,
    get_spec,
    list_models,
    load_model,
    model_availability,
)

__all__ = [
    "ClipModel", "CropGeometry", "ModelCard", "PatchTokensUnsupported", "Preprocessing", "DEFAULT_MODEL",
    "MODEL_CACHE",
    "ModelSpec", "default_model_name", "describe_models", "get_spec", "list_models", "load_model",
    "model_availability",
]
