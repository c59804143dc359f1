"""Media model jobs end to end, each reachable two ways: the IMM SDK (Create…Task → GetTask)
and the eas-prediction client (POST /api/predict/{service}) against real API + worker
processes on PostgreSQL + Redis. Inputs are generated with ffmpeg."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from alibabacloud_imm20200930 import models as m
from alibabacloud_imm20200930.client import Client as ImmSdk
from Tea.exceptions import TeaException

os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
from eas_prediction import PredictClient, StringRequest

from pipeline.buckets import eas_bucket
from tests.e2e.stack import KEY_ID, KEY_SECRET, Stack, imm_sdk, sdk_call, wait_until
from tests.mediagen import ffmpeg, planted_video, speech_wav

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
PROJECT = "media"


@pytest.fixture(scope="module")
def project(sdk: ImmSdk) -> str:
    sdk.create_project(m.CreateProjectRequest(project_name=PROJECT))
    return PROJECT


@pytest.fixture(scope="module")
def video(stack: Stack) -> str:
    folder = stack.data_dir / "oss" / "media-in"
    folder.mkdir(parents=True, exist_ok=True)
    planted_video(folder / "planted.mp4")
    return "oss://media-in/planted.mp4"


def eas(stack: Stack, service: str, body: dict[str, object]) -> dict[str, object]:
    client = PredictClient(f"http://{stack.endpoint}", service)
    client.set_token(KEY_SECRET)
    client.set_retry_count(1)
    client.set_timeout(120_000)
    client.init()
    return dict(json.loads(client.predict(StringRequest(json.dumps(body))).response_data))


def wait_task(sdk: ImmSdk, task_id: str, task_type: str) -> m.GetTaskResponseBody:
    def done() -> m.GetTaskResponseBody | None:
        body = sdk.get_task(
            m.GetTaskRequest(project_name=PROJECT, task_type=task_type, task_id=task_id)
        ).body
        return body if body.status != "Running" else None

    return wait_until(done, 120, what=f"{task_id} terminal")


def duration(path: Path) -> float:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
        capture_output=True,
        check=True,
    )
    return float(out.stdout)


def test_highlight_through_the_imm_sdk(stack: Stack, sdk: ImmSdk, project: str, video: str) -> None:
    created = sdk.create_highlight_task(
        m.CreateHighlightTaskRequest(
            project_name=project,
            type="Retrieval",
            sources=[m.CreateHighlightTaskRequestSources(uri=video)],
            output=m.CreateHighlightTaskRequestOutput(
                uri="oss://media-out/hl.mp4", container="mp4", max_duration=4
            ),
        )
    ).body
    assert created.task_id.startswith("Highlight-")
    task = wait_task(sdk, created.task_id, "Highlight")
    assert task.status == "Succeeded", task.message
    out = stack.data_dir / "oss" / "media-out" / "hl.mp4"
    assert abs(duration(out) - 4) < 0.2
    raw = sdk.get_task(
        m.GetTaskRequest(project_name=project, task_type="Highlight", task_id=created.task_id)
    ).body.to_map()
    assert raw["TaskId"] == created.task_id


def test_highlight_bad_input(stack: Stack, sdk: ImmSdk, project: str) -> None:
    (stack.data_dir / "oss" / "media-in").mkdir(parents=True, exist_ok=True)
    (stack.data_dir / "oss" / "media-in" / "junk.mp4").write_bytes(b"junk" * 500)
    created = sdk.create_highlight_task(
        m.CreateHighlightTaskRequest(
            project_name=project,
            type="Retrieval",
            sources=[m.CreateHighlightTaskRequestSources(uri="oss://media-in/junk.mp4")],
            output=m.CreateHighlightTaskRequestOutput(uri="oss://media-out/j.mp4", container="mp4"),
        )
    ).body
    task = wait_task(sdk, created.task_id, "Highlight")
    assert task.status == "Failed" and task.code == "InvalidArgument"
    assert not (stack.data_dir / "oss" / "media-out" / "j.mp4").exists()
    with pytest.raises(TeaException) as info:
        sdk.create_highlight_task(
            m.CreateHighlightTaskRequest(
                project_name=project,
                type="Concat",
                sources=[m.CreateHighlightTaskRequestSources(uri="oss://media-in/junk.mp4")],
                output=m.CreateHighlightTaskRequestOutput(
                    uri="oss://media-out/k.mp4", container="mp4"
                ),
            )
        )
    assert info.value.code == "InvalidType"


def test_video_highlight_service(stack: Stack, video: str) -> None:
    out = eas(stack, "video_highlight", {"input": {"url": video, "play_duration": "12000000"}})
    assert out["success"] is True and out["result"] == ""
    path = str(out["oss_path"])
    bucket = eas_bucket("eas-outputs", KEY_ID)  # each owner has its own output bucket
    assert path.startswith(f"oss://{bucket}/video_highlight/") and path.endswith(".mp4")
    local = stack.data_dir / "oss" / path.removeprefix("oss://")
    assert abs(duration(local) - 5) < 0.2
    bad = eas(stack, "video_highlight", {"input": {"url": "oss://media-in/nope.mp4"}})
    assert bad["success"] is False and "[" in str(bad["result"])
    with pytest.raises(Exception) as info:
        eas(stack, "video_highlight", {"input": {"url": video, "play_duration": "-5"}})
    assert "400" in str(info.value)


SPOKEN = "One two three four five. Please call my office tomorrow morning."


@pytest.fixture(scope="module")
def speech(stack: Stack) -> str:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    folder = stack.data_dir / "oss" / "media-in"
    folder.mkdir(parents=True, exist_ok=True)
    speech_wav(folder / "speech.wav", SPOKEN, silence_before=1.5)
    # No `openimm models install`: a fresh data dir must give Whisper (the workers assemble
    # whisper-base from its default-dependency packages themselves).
    return "oss://media-in/speech.wav"


def imm_call(stack: Stack, action: str, **params: object) -> dict[str, Any]:
    """Extension actions have no typed method in the IMM SDK: call them as an SDK user would."""
    query = {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}
    return sdk_call(imm_sdk(stack.endpoint), action, query)


def test_speech_recognition_task(stack: Stack, sdk: ImmSdk, project: str, speech: str) -> None:
    created = imm_call(
        stack,
        "CreateSpeechRecognitionTask",
        ProjectName=project,
        SourceURI=speech,
        TargetURI="oss://media-out/speech.srt",
        Language="en-US",
    )
    task = wait_task(sdk, str(created["TaskId"]), "SpeechRecognition")
    assert task.status == "Succeeded", task.message
    srt = (stack.data_dir / "oss" / "media-out" / "speech.srt").read_text()
    assert "-->" in srt and "tomorrow" in srt.lower()
    full = imm_call(
        stack,
        "GetTask",
        ProjectName=project,
        TaskType="SpeechRecognition",
        TaskId=created["TaskId"],
    )
    assert full["Engine"] == "whisper"  # the default, with no install step
    assert (stack.data_dir / "models" / "whisper-base" / "model.bin").is_file()
    transcript = full["Transcript"]
    assert isinstance(transcript, dict) and all(k.isdigit() for k in transcript)
    assert int(min(transcript, key=int)) >= 900_000  # after 1.5 s of silence (VAD pads 0.4 s)
    lighter = imm_call(
        stack,
        "CreateSpeechRecognitionTask",
        ProjectName=project,
        SourceURI=speech,
        Language="en-US",
        Engine="sphinx",  # PocketSphinx stays an explicit choice
    )
    assert wait_task(sdk, str(lighter["TaskId"]), "SpeechRecognition").status == "Succeeded"
    explicit = imm_call(
        stack,
        "GetTask",
        ProjectName=project,
        TaskType="SpeechRecognition",
        TaskId=lighter["TaskId"],
    )
    assert explicit["Engine"] == "sphinx"


def test_asr_service_and_bad_audio(stack: Stack, speech: str, video: str) -> None:
    out = eas(stack, "asr", {"input": {"url": speech}})
    text = " ".join(str(v) for v in out.values()).lower()
    segments = {k: v for k, v in out.items() if k not in ("request_id", "success")}
    assert out["success"] is True and out["request_id"]  # Model Hub's fields on every answer
    assert "office" in text and "morning" in text and all(k.isdigit() for k in segments)
    short = eas(stack, "asr", {"input": {"url": speech, "play_duration": "3000000"}})
    assert "morning" not in " ".join(str(v) for v in short.values()).lower()
    folder = stack.data_dir / "oss" / "media-in"
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc2=s=160x120:d=2:r=10",
        "-c:v",
        "libx264",
        str(folder / "mute.mp4"),
    )
    failed = eas(stack, "asr", {"input": {"url": "oss://media-in/mute.mp4"}})
    assert failed["success"] is False and "audio" in str(failed["result"]).lower()


def test_super_resolution_task_image_and_video(stack: Stack, sdk: ImmSdk, project: str) -> None:
    from PIL import Image

    folder = stack.data_dir / "oss" / "media-in"
    folder.mkdir(parents=True, exist_ok=True)
    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "astronaut.png"
    Image.open(fixture).convert("RGB").resize((96, 64)).save(folder / "small.png")
    ffmpeg(
        *("-f", "lavfi", "-i", "testsrc2=s=160x96:d=1:r=10", "-f", "lavfi", "-i", "sine=d=1"),
        *("-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest"),
        str(folder / "small.mp4"),
    )
    outputs = {}
    for name, target, scale in (("small.png", "big.png", 3), ("small.mp4", "big.mp4", 2)):
        created = imm_call(
            stack,
            "CreateVideoSuperResolutionTask",
            ProjectName=project,
            SourceURI=f"oss://media-in/{name}",
            TargetURI=f"oss://media-out/{target}",
            Scale=scale,
        )
        task = wait_task(sdk, str(created["TaskId"]), "VideoSuperResolution")
        assert task.status == "Succeeded", task.message
        outputs[target] = stack.data_dir / "oss" / "media-out" / target
    assert Image.open(outputs["big.png"]).size == (288, 192)
    streams = json.loads(
        subprocess.run(
            ["ffprobe", "-v", "error", "-of", "json", "-show_streams", str(outputs["big.mp4"])],
            capture_output=True,
            check=True,
        ).stdout
    )["streams"]
    video = next(s for s in streams if s["codec_type"] == "video")
    assert (video["width"], video["height"]) == (320, 192)
    assert any(s["codec_type"] == "audio" for s in streams)  # original audio kept


def test_super_resolution_bad_input_and_service(stack: Stack, sdk: ImmSdk, project: str) -> None:
    with pytest.raises(TeaException) as info:
        imm_call(
            stack,
            "CreateVideoSuperResolutionTask",
            ProjectName=project,
            SourceURI="oss://media-in/small.png",
            TargetURI="oss://media-out/x.png",
            Scale=5,
        )
    assert info.value.code == "InvalidScale"
    (stack.data_dir / "oss" / "media-in" / "junk.mp4").write_bytes(b"junk" * 500)
    created = imm_call(
        stack,
        "CreateVideoSuperResolutionTask",
        ProjectName=project,
        SourceURI="oss://media-in/junk.mp4",
        TargetURI="oss://media-out/junk-big.mp4",
        Scale=2,
    )
    task = wait_task(sdk, str(created["TaskId"]), "VideoSuperResolution")
    assert task.status == "Failed" and task.code == "InvalidArgument"
    assert not (stack.data_dir / "oss" / "media-out" / "junk-big.mp4").exists()
    out = eas(stack, "video_super_resolution", {"input": {"url": "oss://media-in/small.mp4"}})
    assert out["success"] is True and str(out["oss_path"]).endswith(".mp4")
    assert (stack.data_dir / "oss" / str(out["oss_path"]).removeprefix("oss://")).is_file()
