"""Highlights on generated videos: a planted eventful segment (motion + loud audio) is found,
the window avoids hard cuts when it can, the cut is frame-accurate with audio kept."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import InvalidArgument
from pipeline.settings import Settings
from pipeline.storage import LocalStore, MediaIO
from tests.mediagen import ffmpeg, planted_video
from workers.context import JobContext
from workers.media import ffmpeg_io
from workers.processors import highlights

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 s: a still grey frame and a faint tone, except 10-16 s where a moving test pattern
    and loud noise play."""
    return planted_video(tmp_path_factory.mktemp("hl") / "planted.mp4")


def probe(path: Path) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-of", "json", "-show_format", "-show_streams", str(path)],
        capture_output=True,
        check=True,
    )
    return json.loads(out.stdout)


def test_the_planted_segment_is_chosen_and_cut_with_audio(planted: Path, tmp_path: Path) -> None:
    timeline = highlights.analyse(planted, max_seconds=None, settings=Settings())
    assert abs(timeline.duration - 20) < 0.3 and timeline.cuts == []
    window = highlights.best_window(timeline, 5.0)
    assert window.start >= 9.5 and window.start + window.duration <= 16.5
    segs = highlights.segments(timeline)
    assert max(segs, key=lambda s: s["Score"])["StartTime"] in range(10, 16)
    assert all(0 <= s["Audio"] <= 1 and 0 <= s["Motion"] <= 1 for s in segs)
    clip = tmp_path / "h.mp4"
    highlights.cut(planted, clip, window, "mp4")
    info = probe(clip)
    assert abs(float(info["format"]["duration"]) - 5.0) < 0.15
    assert {s["codec_type"] for s in info["streams"]} == {"video", "audio"}


def test_windows_avoid_hard_cuts_when_they_can(tmp_path: Path) -> None:
    """Three 6 s shots; the middle one is eventful. The 5 s window stays inside a shot."""
    parts = []
    for n, src in enumerate(["color=c=red:", "testsrc2=", "color=c=blue:"]):
        part = tmp_path / f"s{n}.mp4"
        ffmpeg("-f", "lavfi", "-i", f"{src}s=320x240:d=6:r=25", "-c:v", "libx264", str(part))
        parts.append(part)
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"file '{p}'\n" for p in parts))
    video = tmp_path / "shots.mp4"
    ffmpeg("-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy", str(video))
    timeline = highlights.analyse(video, max_seconds=None, settings=Settings())
    assert [round(c) for c in timeline.cuts] == [6, 12]
    for mode in ("Average", "Scene"):
        window = highlights.best_window(timeline, 5.0, mode)
        assert window.cuts == 0 and window.start >= 6 and window.start + window.duration <= 12


def test_play_duration_limits_the_analysis(planted: Path) -> None:
    timeline = highlights.analyse(planted, max_seconds=8, settings=Settings())
    assert timeline.duration <= 8.2
    window = highlights.best_window(timeline, 5.0)
    assert window.start + window.duration <= 8.2


def test_non_media_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 100)
    with pytest.raises(InvalidArgument):
        highlights.analyse(junk, max_seconds=None, settings=Settings())


def test_a_highlight_job_probes_its_source_once(
    planted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a highlight job on a video with audio, counting the ffprobe runs
    settings = Settings(data_dir=tmp_path / "data")
    store = LocalStore(settings.oss_root)
    store.put_file("bkt", "in.mp4", planted)
    probes: list[Path] = []
    real_probe = ffmpeg_io.probe

    def counted(path: Any, **kwargs: Any) -> dict[str, Any]:
        probes.append(Path(path))
        return real_probe(path, **kwargs)

    monkeypatch.setattr(ffmpeg_io, "probe", counted)
    request = {"Sources": [{"URI": "oss://bkt/in.mp4"}], "Output": {"URI": "oss://bkt/h.mp4"}}
    ctx = JobContext(
        task_id="t",
        task_type="Highlight",
        request=request,
        settings=settings,
        store=store,
        media=MediaIO(settings, store),
        workroot=tmp_path,
        report=lambda pct: True,
    )
    # When it runs
    result = highlights.process(ctx)
    # Then the limits check's probe was the only one (it also said there is audio) and the
    # highlight still carries the audio
    assert len(probes) == 1
    assert result["Segments"] and max(s["Audio"] for s in result["Segments"]) > 0.5
    store.get_to_file("bkt", "h.mp4", tmp_path / "h.mp4")
    info = probe(tmp_path / "h.mp4")
    assert {s["codec_type"] for s in info["streams"]} == {"video", "audio"}
