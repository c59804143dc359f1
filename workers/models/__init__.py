"""Model engines: one base class (``base.InferenceModel``), one module per model kind, one
factory. :func:`get` returns this process's instance of a model on a device, created on first
use (weights load lazily inside it), so a worker process loads each model at most once."""

from __future__ import annotations

import threading
from typing import TypeVar

from workers.models.base import InferenceModel, ModelCard

M = TypeVar("M", bound=InferenceModel)
_instances: dict[tuple[type[InferenceModel], str], InferenceModel] = {}
_lock = threading.Lock()


def get(kind: type[M], device: str = "cpu") -> M:
    """This process's ``kind`` model on ``device`` (not loaded until first computed on)."""
    key = (kind, device)
    with _lock:
        model = _instances.get(key)
        if model is None:
            model = _instances[key] = kind(device)
    assert isinstance(model, kind)
    return model


def cards() -> list[ModelCard]:
    """Every model engine's card, for the model store (imports the engine modules, which
    import no heavy runtime at module level)."""
    from workers.models import imagenet

    return [imagenet.CARD]
