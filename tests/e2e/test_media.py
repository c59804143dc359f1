"""Media model jobs end to end, each reachable two ways: the IMM SDK (Create…Task → GetTask)
and the eas-prediction client (POST /api/predict/{service}) against real API + worker
processes on PostgreSQL + Redis. Inputs are generated with ffmpeg."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from alibabacloud_imm20200930 import models as m
from alibabacloud_imm20200930.client import Client as ImmSdk
from Tea.exceptions import TeaException

os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
from eas_prediction import PredictClient, StringRequest

from tests.e2e.stack import KEY_SECRET, Stack, wait_until
from tests.mediagen import planted_video

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
    assert path.startswith("oss://eas-outputs/video_highlight/") and path.endswith(".mp4")
    local = stack.data_dir / "oss" / path.removeprefix("oss://")
    assert abs(duration(local) - 5) < 0.2
    bad = eas(stack, "video_highlight", {"input": {"url": "oss://media-in/nope.mp4"}})
    assert bad["success"] is False and "[" in str(bad["result"])
    with pytest.raises(Exception) as info:
        eas(stack, "video_highlight", {"input": {"url": video, "play_duration": "-5"}})
    assert "400" in str(info.value)
