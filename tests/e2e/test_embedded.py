"""The README's first command: ``openimm demo`` on the embedded default (SQLite, filesystem
broker, local object store, real Celery worker processes), from an empty data dir and with no
settings. Every job family must succeed with real outputs, checked here from the files and
task results the demo leaves behind (not from the demo's own verdicts)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from pipeline import demo_media
from tests.e2e.stack import free_port

DEMO_TIMEOUT = 900  # about 2 min on 2 cores; far more when other work shares them
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(DEMO_TIMEOUT + 60)]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cwd = tmp_path_factory.mktemp("demo")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENIMM_")}
    port = free_port()
    env["OPENIMM_PORT"] = str(port)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "demo"],  # not a tty: stops after the table
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # on a timeout the whole tree (server, pools) is stopped
    )
    try:
        stdout, stderr = proc.communicate(timeout=DEMO_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    data = cwd / "openimm-data"
    report_file = data / "demo-report.json"
    assert report_file.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(report_file.read_text())
    return {
        "result": result,
        "data": data,
        "port": port,
        "steps": {step["job"]: step for step in report},
    }


def test_every_step_succeeds_and_the_server_stops(demo: dict[str, Any]) -> None:
    result = demo["result"]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert list(demo["steps"]) == [
        "people albums",
        "highlight",
        "transcript",
        "super-resolution",
        "image classification",
        "notification (MNS)",
    ]
    assert all(step["status"] == "Succeeded" for step in demo["steps"].values())
    table = [line for line in result.stdout.splitlines() if "Succeeded" in line]
    assert all(any(line.startswith(job) for line in table) for job in demo["steps"])
    assert f"http://127.0.0.1:{demo['port']}/console" in result.stdout
    assert "derived" in result.stdout  # the derived photos are said to be derived
    data = demo["data"]
    assert (data / "openimm.db").exists() and (data / "access_keys").stat().st_mode & 0o077 == 0
    assert _processes_using(data) == []  # no worker pool left behind


def test_people_albums_hold_one_person_each_with_three_photos(demo: dict[str, Any]) -> None:
    task = demo["steps"]["people albums"]["task"]
    assert task["Status"] == "Succeeded" and task["NewClusterCount"] >= 1
    albums = [sorted(c["Photos"]) for c in task["Clusters"]]
    assert ["obama-1.jpg", "obama-2.jpg", "obama-3.jpg"] in albums  # three distinct photos
    for album in albums:
        assert len({name.split("-")[0].removesuffix(".jpg") for name in album}) == 1, album
    assert not any("biden.jpg" in album for album in albums)  # one photo: no album


def test_transcript_has_the_spoken_words(demo: dict[str, Any]) -> None:
    srt = (demo["data"] / "oss" / "demo-bucket" / "out" / "speech.srt").read_text().lower()
    assert "-->" in srt
    assert all(word in srt for word in demo_media.SPOKEN_WORDS), srt


def test_highlight_window_covers_the_planted_event(demo: dict[str, Any]) -> None:
    window = demo["steps"]["highlight"]["task"]["Highlight"]
    start, end = window["StartTime"], window["StartTime"] + window["Duration"]
    a, b = demo_media.EVENT
    assert a - 0.5 <= start and end <= b + 0.5, window  # inside the event, not beside it
    clip = demo["data"] / "oss" / "demo-bucket" / "out" / "highlight.mp4"
    assert clip.stat().st_size > 0


def test_super_resolution_output_is_larger(demo: dict[str, Any]) -> None:
    bucket = demo["data"] / "oss" / "demo-bucket"
    small = Image.open(bucket / "media" / "face-small.png").size
    big = Image.open(bucket / "out" / "face-x2.png").size
    assert big == (2 * small[0], 2 * small[1])


def test_images_get_labels(demo: dict[str, Any]) -> None:
    images = demo["steps"]["image classification"]["task"]["Images"]
    names = {Path(i["URI"]).name: i["ClassName"] for i in images}
    assert names["coffee.jpg"] == "espresso"
    assert names["chelsea.jpg"]


def test_each_task_notified_the_mns_queue(demo: dict[str, Any]) -> None:
    received = demo["steps"]["notification (MNS)"]["task"]["Received"]
    assert sorted(received.values()) == [
        "imm:Task:Highlight",
        "imm:Task:ImageClassification",
        "imm:Task:SpeechRecognition",
        "imm:Task:VideoSuperResolution",
    ]
    media_ids = {demo["steps"][j]["task"]["TaskId"] for j in list(demo["steps"])[1:5]}
    assert set(received) == media_ids


def _processes_using(data_dir: Path) -> list[int]:
    marker = f"OPENIMM_DATA_DIR={data_dir}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found
