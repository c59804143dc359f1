"""End to end with the official IMM SDK against real openimm API + worker processes on
PostgreSQL and Redis: the FileCompression job, listing, and the failure drills."""

from __future__ import annotations

import io
import json
import os
import signal
import zipfile

import pytest
from alibabacloud_imm20200930 import models as m
from alibabacloud_imm20200930.client import Client as ImmSdk
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine

from pipeline.models import Event, Task
from tests.e2e.stack import Stack, imm_sdk, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
PROJECT = "e2e"


@pytest.fixture(scope="module")
def project(sdk: ImmSdk) -> str:
    sdk.create_project(m.CreateProjectRequest(project_name=PROJECT))
    sdk.create_dataset(m.CreateDatasetRequest(project_name=PROJECT, dataset_name="photos"))
    return PROJECT


@pytest.fixture(scope="module")
def engine(stack: Stack) -> Engine:
    url = stack.env["OPENIMM_DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://")
    return create_engine(url)


def get_task(sdk: ImmSdk, task_id: str, task_type: str) -> m.GetTaskResponseBody:
    return sdk.get_task(
        m.GetTaskRequest(project_name=PROJECT, task_type=task_type, task_id=task_id)
    ).body


def wait_terminal(
    sdk: ImmSdk, task_id: str, task_type: str, timeout: float = 60
) -> m.GetTaskResponseBody:
    def done() -> m.GetTaskResponseBody | None:
        body = get_task(sdk, task_id, task_type)
        return body if body.status != "Running" else None

    return wait_until(done, timeout, what=f"{task_id} terminal")


def diagnostic(stack: Stack, mode: str, seconds: int = 1) -> str:
    from pipeline.client import ImmClient
    from tests.e2e.stack import KEY_ID, KEY_SECRET

    client = ImmClient(stack.endpoint, (KEY_ID, KEY_SECRET))
    return str(
        client.call("CreateDiagnosticTask", ProjectName=PROJECT, Mode=mode, Seconds=seconds)[
            "TaskId"
        ]
    )


def test_file_compression_through_the_sdk(stack: Stack, sdk: ImmSdk, project: str) -> None:
    # Given files in the local object store (dropped in with plain file writes)
    folder = stack.data_dir / "oss" / "media" / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha")
    (folder / "sub" / "b.txt").write_text("beta" * 1000)
    (stack.data_dir / "oss" / "media" / "single.bin").write_bytes(os.urandom(2048))
    # When the SDK asks for a zip of the folder plus one renamed file
    request = m.CreateFileCompressionTaskRequest(
        project_name=project,
        target_uri="oss://media/out/archive.zip",
        user_data="ud-1",
        sources=[
            m.CreateFileCompressionTaskRequestSources(uri="oss://media/docs/"),
            m.CreateFileCompressionTaskRequestSources(
                uri="oss://media/single.bin", alias="/renamed.bin", mode="fullname"
            ),
        ],
    )
    created = sdk.create_file_compression_task(request).body
    assert created.task_id.startswith("FileCompression-") and created.event_id
    # Then the task ends Succeeded with IMM's fields
    body = wait_terminal(sdk, created.task_id, "FileCompression")
    assert (body.status, body.code, body.message, body.progress) == ("Succeeded", "", "", 100)
    assert body.user_data == "ud-1" and body.project_name == project
    assert body.start_time < body.end_time and body.end_time.endswith("Z")
    # And the archive holds exactly the requested entries
    archive = zipfile.ZipFile(
        io.BytesIO((stack.data_dir / "oss/media/out/archive.zip").read_bytes())
    )
    assert sorted(archive.namelist()) == ["docs/a.txt", "docs/sub/b.txt", "renamed.bin"]
    assert archive.read("docs/sub/b.txt") == b"beta" * 1000
    # And the request definition comes back on demand
    full = sdk.get_task(
        m.GetTaskRequest(
            project_name=project,
            task_type="FileCompression",
            task_id=created.task_id,
            request_definition=True,
        )
    )
    assert (
        json.loads(full.body.task_request_definition)["TargetURI"] == "oss://media/out/archive.zip"
    )


def test_missing_source_fails_with_code_and_writes_nothing(
    stack: Stack, sdk: ImmSdk, project: str
) -> None:
    request = m.CreateFileCompressionTaskRequest(
        project_name=project,
        target_uri="oss://media/out/never.zip",
        sources=[m.CreateFileCompressionTaskRequestSources(uri="oss://media/absent/")],
    )
    task_id = sdk.create_file_compression_task(request).body.task_id
    body = wait_terminal(sdk, task_id, "FileCompression")
    assert body.status == "Failed" and body.code == "ResourceNotFound"
    assert "oss://media/absent/" in body.message
    assert not (stack.data_dir / "oss/media/out/never.zip").exists()


def test_list_tasks_filters_and_paging_through_the_sdk(
    stack: Stack, sdk: ImmSdk, project: str
) -> None:
    ids = {diagnostic(stack, "Noop") for _ in range(5)}
    for task_id in ids:
        wait_terminal(sdk, task_id, "Diagnostic")
    seen: list[str] = []
    token = None
    while True:
        page = sdk.list_tasks(
            m.ListTasksRequest(
                project_name=project,
                max_results=2,
                next_token=token,
                task_types=["Diagnostic"],
                status="Succeeded",
            )
        ).body
        seen += [t.task_id for t in page.tasks]
        token = page.next_token
        if not token:
            break
    assert ids <= set(seen) and seen == sorted(seen)
    newest = sdk.list_tasks(
        m.ListTasksRequest(project_name=project, sort="StartTime", order="desc", max_results=1)
    ).body
    assert newest.max_results == "1" and len(newest.tasks) == 1


def test_cancel_running_task(stack: Stack, sdk: ImmSdk, project: str, engine: Engine) -> None:
    from pipeline.client import ImmClient
    from tests.e2e.stack import KEY_ID, KEY_SECRET

    task_id = diagnostic(stack, "Sleep", seconds=15)
    wait_until(lambda: get_task(sdk, task_id, "Diagnostic").progress > 0, 30, what="task running")
    client = ImmClient(stack.endpoint, (KEY_ID, KEY_SECRET))
    client.call("CancelTask", ProjectName=PROJECT, TaskId=task_id)
    body = get_task(sdk, task_id, "Diagnostic")
    assert body.status == "Cancelled" and body.code == "TaskCancelled"
    # the worker stops the job promptly (revoke → soft limit) and it stays Cancelled
    wait_until(lambda: "Sleep" not in _active(engine, task_id), 20, what="job stopped")
    assert get_task(sdk, task_id, "Diagnostic").status == "Cancelled"


def _active(engine: Engine, task_id: str) -> str:
    with engine.connect() as conn:
        row = conn.execute(select(Task.status).where(Task.id == task_id)).scalar()
    return "Sleep" if row == "Running" else ""


def _worker_pid(engine: Engine, task_id: str) -> int | None:
    with engine.connect() as conn:
        worker = conn.execute(select(Task.worker).where(Task.id == task_id)).scalar()
    return int(worker.rsplit(":", 1)[1]) if worker else None


def _events(engine: Engine, task_id: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(Event).where(Event.task_id == task_id)
            ).scalar()
            or 0
        )


def test_sigkill_mid_task_still_succeeds_exactly_once(
    stack: Stack, sdk: ImmSdk, project: str, engine: Engine
) -> None:
    task_id = diagnostic(stack, "Sleep", seconds=3)
    wait_until(lambda: get_task(sdk, task_id, "Diagnostic").progress > 0, 30, what="task running")
    pid = _worker_pid(engine, task_id)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # the pool process running the job dies mid-task
    body = wait_terminal(sdk, task_id, "Diagnostic", timeout=60)
    assert body.status == "Succeeded" and body.progress == 100
    with engine.connect() as conn:
        attempts = conn.execute(select(Task.attempts).where(Task.id == task_id)).scalar()
    assert attempts == 2
    assert _events(engine, task_id) == 1  # one terminal transition, one outbox event


def test_poison_task_fails_after_max_attempts(
    stack: Stack, sdk: ImmSdk, project: str, engine: Engine
) -> None:
    task_id = diagnostic(stack, "Crash")
    body = wait_terminal(sdk, task_id, "Diagnostic", timeout=90)
    assert body.status == "Failed" and body.code == "TaskMaxAttemptsExceeded"
    assert "giving up after 2" in body.message
    assert _events(engine, task_id) == 1


def test_sdk_errors_are_imm_shaped(sdk: ImmSdk, project: str) -> None:
    from Tea.exceptions import TeaException

    with pytest.raises(TeaException) as info:
        sdk.get_project(m.GetProjectRequest(project_name="does-not-exist"))
    assert info.value.code == "ResourceNotFound"
    assert info.value.data["RequestId"]


def test_long_query_string_through_the_real_server(stack: Stack, sdk: ImmSdk, project: str) -> None:
    # 100 sources with long names: a ~30 KB query string, beyond common 16 KiB header limits.
    folder = stack.data_dir / "oss" / "media" / "many"
    folder.mkdir(parents=True)
    name = "a-rather-long-file-name-as-cameras-and-phones-like-to-produce"
    for i in range(100):
        (folder / f"{name}-{i:03d}.txt").write_text(str(i))
    sources = [
        m.CreateFileCompressionTaskRequestSources(
            uri=f"oss://media/many/{name}-{i:03d}.txt",
            mode="fullname",
            alias=f"/renamed-in-the-archive/with-a-long-directory-name/{i:03d}.txt",
        )
        for i in range(100)
    ]
    task_id = sdk.create_file_compression_task(
        m.CreateFileCompressionTaskRequest(
            project_name=project, target_uri="oss://media/out/many.zip", sources=sources
        )
    ).body.task_id
    assert wait_terminal(sdk, task_id, "FileCompression").status == "Succeeded"
    archive = zipfile.ZipFile(stack.data_dir / "oss/media/out/many.zip")
    assert len(archive.namelist()) == 100


def test_time_limit_ends_the_task_failed_with_code(stack: Stack, sdk: ImmSdk, project: str) -> None:
    task_id = diagnostic(stack, "Sleep", seconds=30)  # the stack's Diagnostic limit is 6 s
    body = wait_terminal(sdk, task_id, "Diagnostic", timeout=40)
    assert body.status == "Failed" and body.code == "TaskTimeLimitExceeded"
    assert "6 s" in body.message


def test_sdk_with_a_wrong_secret_is_refused(stack: Stack, project: str) -> None:
    from Tea.exceptions import TeaException

    bad = imm_sdk(stack.endpoint, secret="not-the-secret")
    with pytest.raises(TeaException) as info:
        bad.list_projects(m.ListProjectsRequest())
    assert info.value.code == "SignatureDoesNotMatch"
    assert info.value.data["RequestId"]
