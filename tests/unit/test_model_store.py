"""The model store: every card's files are the pinned bytes (so a changed weight file or a
repackaged dependency is caught), the CLI lists sources/licences/sizes and names the install
command of what is missing, and verify reports checksum mismatches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.errors import ModelNotInstalled
from pipeline.settings import Settings
from workers.models import store, superres
from workers.models.base import ModelCard, ModelFile, sha256_file


@pytest.mark.parametrize("card", store.CARDS, ids=lambda c: c.name)
def test_installed_model_files_match_their_cards(card: ModelCard) -> None:
    if card.missing():
        pytest.skip(f"{card.name} is not installed here: {card.missing()}")
    for item in card.files:
        assert sha256_file(card.path(item.path)) == item.sha256, item.path


def test_committed_sr_weights_are_the_pinned_ones() -> None:
    root = Path(__file__).resolve().parents[2] / "workers" / "models"
    for item in superres.CARD.files:
        assert sha256_file(root / item.path) == item.sha256, "update the card after retraining"


def test_list_shows_every_model_with_source_licence_and_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--data-dir", str(tmp_path), "models", "list", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert {"dlib-faces", "whisper-base", "mobilenet-v2-imagenet", "openimm-sr"} <= set(rows)
    for row in rows.values():
        assert row["licence"] and row["source"] and row["files"]
        assert all(len(sha) == 64 for _, sha in row["files"])
        assert row["installed"] or row["install"]


def test_verify_reports_a_tampered_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "tampered_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "w.bin").write_bytes(b"not the pinned bytes")
    monkeypatch.syspath_prepend(str(tmp_path))
    card = ModelCard(
        name="tampered",
        task="t",
        package="tampered",
        version="1",
        module="tampered_pkg",
        files=(ModelFile("w.bin", "0" * 64),),
        licence="-",
        provenance="-",
        install="pip install tampered",
    )
    monkeypatch.setattr(store, "CARDS", (card,))
    settings = Settings(data_dir=tmp_path / "data")
    assert "checksum mismatch: w.bin" in store.verify(settings, "tampered")["tampered"]
    with pytest.raises(ModelNotInstalled, match="Unknown model"):
        store.verify(settings, "nope")
