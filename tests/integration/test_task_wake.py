"""Push wake-up of synchronous calls on real PostgreSQL: a task finalized by another process
(a worker in distributed mode) wakes ``wait_for_task`` in the API process through migration
0008's outbox trigger (``pg_notify('openimm_tasks', task_id)``) and the API's listener. The
fallback re-read interval is set far beyond the test, so only the push can end the wait."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from pipeline import projects, tasks
from pipeline.api.app import create_app
from pipeline.api.services import Caller, Services
from pipeline.api.submission import wait_for_task
from pipeline.notify.wake import HUB
from pipeline.settings import Settings
from tests.conftest import KEY
from tests.e2e.stack import wait_until

pytestmark = pytest.mark.integration

FINALIZE_FROM_ANOTHER_PROCESS = """
import sys, time
from pipeline import tasks
from pipeline.db import Database
from pipeline.models import Task
from pipeline.settings import Settings

db = Database.from_settings(Settings())
with db.session() as s:
    task = s.get(Task, sys.argv[1])
    print(time.monotonic(), flush=True)  # CLOCK_MONOTONIC: comparable across processes
    assert tasks.finalize(s, task.id, tasks.SUCCEEDED, result={}, started_at=task.start_time)
"""


@pytest.fixture
def settings(tmp_path: Path, fresh_database: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=fresh_database,
        broker_url="memory://",
        access_keys=f"{KEY[0]}:{KEY[1]}",
        sync_wait_fallback_seconds=30,
    )


@pytest.fixture
def http(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def test_a_finalize_in_another_process_wakes_the_waiting_call(
    http: TestClient, settings: Settings
) -> None:
    svc: Services = http.app.state.services  # type: ignore[attr-defined]
    spec = tasks.NewTask(task_type="Diagnostic", queue="default", request={"Mode": "Noop"})
    with svc.db.session() as s:
        project = projects.create_project(s, KEY[0], "p", {})
        task, _ = tasks.create(s, project, spec, request_id="r")
        task_id = task.id
    result: dict[str, float | str] = {}

    def waiting_call() -> None:
        result["status"] = wait_for_task(svc, Caller(KEY[0], "r"), task_id, timeout=60).status
        result["at"] = time.monotonic()

    thread = threading.Thread(target=waiting_call, daemon=True)
    thread.start()
    listener = http.app.state.task_listener  # type: ignore[attr-defined]
    wait_until(lambda: listener.ready.is_set(), 10, 0.01, "the LISTEN in place")
    wait_until(lambda: HUB.waiting_count() >= 1, 10, 0.01, "a waiting call")
    env = {
        **os.environ,
        "OPENIMM_DATABASE_URL": settings.database_url,
        "OPENIMM_DATA_DIR": str(settings.data_dir),
    }
    done = subprocess.run(
        [sys.executable, "-c", FINALIZE_FROM_ANOTHER_PROCESS, task_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    finalized_at = float(done.stdout.split()[0])
    thread.join(30)
    assert result["status"] == tasks.SUCCEEDED
    assert float(result["at"]) - finalized_at < 1.0  # pushed, not the 30 s fallback
