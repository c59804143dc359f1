"""Model engines — "what is computed" — apart from the processors that run them
(``workers.processors``) and the Celery glue (``workers``): one base class
(``base.InferenceModel``), one module per model kind, each with its ``ModelCard`` (provenance,
licence, files and SHA-256), and one factory. :func:`get` returns this process's instance of a
model on a device, created on first use (weights load lazily inside it), so a worker process
loads each model at most once. The engines without weights of their own (``headpose`` on
dlib's landmarks, ``clustering`` over face embeddings) sit here too: they are computation a
processor calls, not job plumbing."""

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
    """Every model engine's card, for the model store. Each card lives next to its engine;
    importing the engine modules loads no weights and no torch (dlib and OpenCV, both default
    dependencies, are imported by the face engine)."""
    from workers.models import asr, faces, imagenet, superres

    return [faces.CARD, asr.SPHINX_CARD, asr.SILERO_CARD, superres.CARD, imagenet.CARD]
