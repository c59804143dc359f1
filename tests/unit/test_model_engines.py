"""The model engines behind the one factory: every card belongs to an ``InferenceModel`` that
``workers.models.get`` hands out once per (kind, device, params), a file that fails its
checksum is refused before anything reads it, and importing the engines loads no weights."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import threading
from collections.abc import Hashable
from pathlib import Path

import pytest

from pipeline.errors import ModelNotInstalled
from workers import models
from workers.models import asr, base, faces, whisper_base
from workers.models.base import InferenceModel
from workers.models.superres import SRModel

ROOT = Path(__file__).resolve().parents[2]
# Constructor parameters an engine cannot default (nothing is read until the first load).
REQUIRED: dict[type[InferenceModel], dict[str, Hashable]] = {
    SRModel: {"scale": 2},
    asr.WhisperEngine: {"model_dir": "/nonexistent/whisper-base"},
}


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that has created no engine yet (other tests' loaded ones stay untouched)."""
    monkeypatch.setattr(models, "_instances", {})


def test_every_card_belongs_to_an_engine_the_factory_hands_out(fresh: None) -> None:
    kinds = {kind.card.name: kind for kind in models.engines()}
    for card in models.cards():
        kind = kinds[card.name]
        assert issubclass(kind, InferenceModel) and kind.card is card
        model = models.get(kind, **REQUIRED.get(kind, {}))
        assert isinstance(model, kind) and not model.loaded  # lazy: got, not loaded
    # and the one engine whose files are assembled in the data dir has its card too
    assert {k.card for k in models.engines()} == {*models.cards(), whisper_base.CARD}


def test_the_factory_keeps_one_instance_per_kind_device_and_params(fresh: None) -> None:
    hog = models.get(faces.FaceAnalyzer)
    assert models.get(faces.FaceAnalyzer, "cpu", detector="hog", max_side=1600) is hog
    assert faces.get_analyzer() is hog  # the shorthand goes through the factory
    assert models.get(faces.FaceAnalyzer, max_side=320) is not hog
    # dlib has no accelerator here: a GPU pool's face engine is the CPU one
    assert models.get(faces.FaceAnalyzer, "cuda:0") is hog
    x2 = models.get(SRModel, scale=2)
    assert models.get(SRModel, "cpu", scale=2) is x2
    assert models.get(SRModel, scale=3) is not x2
    on_gpu = models.get(SRModel, "cuda:1", scale=2)  # not loaded, so no GPU is needed here
    assert on_gpu is not x2 and on_gpu.device == "cuda:1"
    with pytest.raises(TypeError):
        models.get(SRModel, scale=2, colour="red")


def test_concurrent_first_calls_share_one_instance(fresh: None) -> None:
    got: list[InferenceModel] = []
    threads = [
        threading.Thread(target=lambda: got.append(models.get(asr.SphinxEngine))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(got) == 8 and all(model is got[0] for model in got)


def _tampered_card(kind: type[InferenceModel], tmp_path: Path) -> base.ModelCard:
    """``kind``'s card moved to a package of the same file names holding the wrong bytes."""
    package = tmp_path / f"tampered_{kind.__name__.lower()}"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for item in kind.card.files:
        (package / item.path).parent.mkdir(parents=True, exist_ok=True)
        (package / item.path).write_bytes(b"not the pinned bytes")
    return dataclasses.replace(kind.card, module=package.name, extra_modules=())


@pytest.mark.parametrize(
    "kind",
    [k for k in models.engines() if k is not asr.WhisperEngine],
    ids=lambda k: k.__name__,
)
def test_a_checksum_mismatch_names_the_install_command_before_any_load(
    kind: type[InferenceModel], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an engine whose installed files are not the bytes its card pins
    monkeypatch.syspath_prepend(str(tmp_path))
    card = _tampered_card(kind, tmp_path)
    monkeypatch.setattr(kind, "card", card)

    def must_not_load(self: InferenceModel) -> None:
        raise AssertionError("loaded a file that failed its checksum")

    monkeypatch.setattr(kind, "_load", must_not_load)
    model = kind(**REQUIRED.get(kind, {}))  # type: ignore[arg-type]
    # When it is first used, then the task gets ModelNotInstalled naming the install command
    with pytest.raises(ModelNotInstalled, match=re.escape(card.install)):
        model.ensure_loaded()
    assert not model.loaded


def test_a_corrupt_whisper_base_is_refused_before_ctranslate2_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh: None
) -> None:
    model_dir = tmp_path / "models" / whisper_base.WHISPER_BASE
    model_dir.mkdir(parents=True)
    for name in whisper_base.PINNED_SHA256:
        (model_dir / name).write_bytes(b"{}")
    monkeypatch.setattr(asr.WhisperEngine, "_load", lambda self: pytest.fail("loaded"))
    with pytest.raises(ModelNotInstalled, match="openimm models install whisper-base"):
        asr.pick_engine("en", "whisper", model_dir)


def test_a_file_is_hashed_once_per_process_until_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(b"first")
    reads: list[Path] = []
    real = base.sha256_file
    monkeypatch.setattr(base, "sha256_file", lambda p: reads.append(p) or real(p))
    first = base.checked_sha256(path)
    assert base.checked_sha256(path) == first and len(reads) == 1
    path.write_bytes(b"second, longer")  # rewritten: a new size and mtime
    assert base.checked_sha256(path) != first and len(reads) == 2


# A fresh interpreter: this test process has loaded models already. Python-level opens are
# audited; the runtimes that read weights (torch, CTranslate2, ONNX Runtime, PocketSphinx)
# must not even be imported, and the factory must hold no instance.
IMPORT_ALL = """
import importlib, json, pkgutil, sys
opened = []
sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" else None)
import workers.models as package
for info in pkgutil.iter_modules(package.__path__):
    importlib.import_module(f"workers.models.{info.name}")
runtimes = ["torch", "ctranslate2", "onnxruntime", "pocketsphinx", "faster_whisper"]
print(json.dumps({
    "weights": [p for p in opened if p.endswith((".pt", ".pth", ".dat", ".onnx", ".bin"))],
    "runtimes": [m for m in runtimes if m in sys.modules],
    "instances": len(package._instances),
}))
"""


def test_importing_the_engines_loads_no_weights() -> None:
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        cwd=ROOT,
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"weights": [], "runtimes": [], "instances": 0}
