"""Model engines — "what is computed" — apart from the processors that run them
(``workers.processors``) and the Celery glue (``workers``): one base class
(``base.InferenceModel``), one module per model kind, each with its ``ModelCard`` (provenance,
licence, files and SHA-256), and one factory. :func:`get` returns this process's instance of a
model on a device with given parameters, created on first use (weights load lazily inside
it, checked against the card first), so a worker process loads each model at most once. The
engines without weights of their own (``headpose`` on dlib's landmarks, ``clustering`` over
face embeddings) sit here too: they are computation a processor calls, not job plumbing."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Hashable
from typing import TypeVar

from workers.models.base import InferenceModel, ModelCard

M = TypeVar("M", bound=InferenceModel)
Key = tuple[type[InferenceModel], str, tuple[tuple[str, Hashable], ...]]
_instances: dict[Key, InferenceModel] = {}
_lock = threading.Lock()


def get(kind: type[M], device: str = "cpu", **params: Hashable) -> M:
    """This process's ``kind`` model on ``device`` with these constructor ``params`` (e.g.
    ``detector=``, ``max_side=`` of the face engine, ``scale=`` of super-resolution,
    ``model_dir=`` of Whisper); not loaded until first computed on. One instance per (kind,
    device, params), defaults filled in, so ``get(K)`` and ``get(K, detector="hog")`` are the
    same object. A model whose card lists no accelerator runs on the CPU whatever the pool's
    device (dlib, PocketSphinx, Silero VAD)."""
    device = placed(kind, device)
    key: Key = (kind, device, _arguments(kind, device, params))
    with _lock:
        model = _instances.get(key)
        if model is None:
            model = _instances[key] = kind(device, **params)
    assert isinstance(model, kind)
    return model


def placed(kind: type[InferenceModel], device: str) -> str:
    """The device ``kind`` runs on when the pool was given ``device``."""
    return device if device.split(":")[0] in kind.card.devices else "cpu"


def _arguments(
    kind: type[InferenceModel], device: str, params: dict[str, Hashable]
) -> tuple[tuple[str, Hashable], ...]:
    bound = inspect.signature(kind).bind(device, **params)  # TypeError on an unknown name
    bound.apply_defaults()
    return tuple(sorted((k, v) for k, v in bound.arguments.items() if k != "device"))


def clear() -> None:
    """Forget this process's instances (tests: the next ``get`` creates and loads anew)."""
    with _lock:
        _instances.clear()


def engines() -> list[type[InferenceModel]]:
    """Every model engine class (each with its ``card``). Importing them loads no weights."""
    from workers.models import asr, faces, imagenet, superres

    return [
        faces.FaceAnalyzer,
        asr.SphinxEngine,
        asr.SileroVad,
        asr.WhisperEngine,
        superres.SRModel,
        imagenet.ImageNetModel,
    ]


def cards() -> list[ModelCard]:
    """The cards of the engines whose files live in an installed package, for the model
    store (whisper-base is assembled in the data dir: the store lists it from its settings).
    Importing the engine modules loads no weights and no torch (dlib and OpenCV, both default
    dependencies, are imported by the face engine)."""
    from workers.models import whisper_base

    return [kind.card for kind in engines() if kind.card is not whisper_base.CARD]


__all__ = ["InferenceModel", "ModelCard", "cards", "clear", "engines", "get", "placed"]
