"""A whole worker (main process and pool) killed with SIGKILL mid-task, with the default
settings: its lease stops being renewed, the reaper (in the dispatcher) re-enqueues the job
within lease + reaper interval — not the broker's visibility timeout — and another worker
finishes it once."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from pipeline.client import ImmClient
from pipeline.models import Event, Task
from pipeline.settings import Settings
from tests.e2e.stack import KEY_ID, KEY_SECRET, Stack, launch, wait_until
from tests.realservices import PostgresServer, RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


@pytest.fixture
def default_stack(
    postgres_server: PostgresServer, redis_server: RedisServer, tmp_path: Path
) -> Iterator[Stack]:
    stack = launch(
        tmp_path,
        database_url=postgres_server.create_database("worker_loss"),
        broker_url=redis_server.url(14),
        worker=False,
        dispatcher=True,  # runs the lease reaper
    )
    yield stack
    stack.stop_all()


def test_killed_worker_host_job_restarts_within_the_lease_and_ends_once(
    default_stack: Stack,
) -> None:
    stack = default_stack
    defaults = Settings()
    restart_bound = defaults.lease_seconds + defaults.reaper_interval_seconds
    assert defaults.visibility_timeout > 30 * restart_bound  # not what brings the job back
    stack.start_worker("worker-a")
    client = ImmClient(stack.endpoint, (KEY_ID, KEY_SECRET))
    client.call("CreateProject", ProjectName="p")
    task_id = client.call("CreateDiagnosticTask", ProjectName="p", Mode="Sleep", Seconds=2)[
        "TaskId"
    ]

    def progress() -> int:
        task = client.call("GetTask", ProjectName="p", TaskType="Diagnostic", TaskId=task_id)
        return int(task["Progress"])

    wait_until(lambda: progress() > 0, 90, what="job running on worker-a")
    stack.stop("worker-a", sig=signal.SIGKILL)  # the whole worker group dies, no ack sent
    killed_at = time.monotonic()
    stack.start_worker("worker-b")

    def done() -> dict[str, object] | None:
        task = client.call("GetTask", ProjectName="p", TaskType="Diagnostic", TaskId=task_id)
        return task if task["Status"] != "Running" else None

    # Generous for a loaded machine: the bound is the lease, the slack covers the 2 s job.
    task = wait_until(done, restart_bound + 30, what="redelivered job finished")
    assert task["Status"] == "Succeeded"
    assert time.monotonic() - killed_at < restart_bound + 30
    assert "re-enqueued 1 task(s)" in stack.log("dispatcher")
    engine = create_engine(
        stack.env["OPENIMM_DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://")
    )
    with engine.connect() as conn:
        attempts, worker = conn.execute(
            select(Task.attempts, Task.worker).where(Task.id == task_id)
        ).one()
        events = conn.execute(
            select(func.count()).select_from(Event).where(Event.task_id == task_id)
        ).scalar()
    assert attempts == 2 and events == 1
    assert "worker-b" in stack.log("worker-b") and task_id in stack.log("worker-b")
    assert worker  # the finishing delivery recorded its process


def test_a_crashed_threads_pool_gives_its_jobs_back_at_once(
    postgres_server: PostgresServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    """The pool process of a supervised ``--pool threads`` worker (where the batching image
    pool runs every job) killed mid-job: its supervisor re-enqueues the jobs it held as it
    restarts it, instead of leaving them for a lease. No dispatcher: no reaper could."""
    stack = launch(
        tmp_path,
        database_url=postgres_server.create_database("pool_crash"),
        broker_url=redis_server.url(13),
        worker=False,
    )
    try:
        stack.start_worker("pool", "default", 2, pool="threads")
        client = ImmClient(stack.endpoint, (KEY_ID, KEY_SECRET))
        client.call("CreateProject", ProjectName="p")
        task_id = client.call("CreateDiagnosticTask", ProjectName="p", Mode="Sleep", Seconds=3)[
            "TaskId"
        ]
        engine = create_engine(
            stack.env["OPENIMM_DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://")
        )

        def holder() -> str:
            with engine.connect() as conn:
                return str(conn.execute(select(Task.worker).where(Task.id == task_id)).scalar())

        pid = int(wait_until(lambda: holder() or None, 60, 0.05, what="job leased").split(":")[1])
        assert pid != stack.procs["pool"].pid  # the pool process, not its supervisor
        os.kill(pid, signal.SIGKILL)  # e.g. the OOM killer
        killed_at = time.monotonic()

        def done() -> dict[str, object] | None:
            task = client.call("GetTask", ProjectName="p", TaskType="Diagnostic", TaskId=task_id)
            return task if task["Status"] != "Running" else None

        task = wait_until(done, 60, what="the job finished by the restarted pool")
        assert task["Status"] == "Succeeded"
        assert time.monotonic() - killed_at < Settings().lease_seconds  # not a lease later
        assert "re-enqueued 1 job(s) the exited pool was running" in stack.log("pool")
    finally:
        stack.stop_all()
