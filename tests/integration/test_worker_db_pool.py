"""A worker process's database pool holds a connection per job that may run at once
(workers.runtime.init_process): a threads pool of 16 jobs on a pool of 2 connections closed
most connections when they were checked in, so most transactions opened a new one (on real
PostgreSQL: SQLite has no connection pool to size)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from pipeline import server
from pipeline.settings import Settings
from workers import celery_app, runtime


@pytest.fixture
def settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_database: str
) -> Iterator[Settings]:
    for name in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY"):  # run_worker sets them
        monkeypatch.setenv(name, "1")
    monkeypatch.setattr(runtime, "_state", None)
    yield Settings(data_dir=tmp_path, database_url=fresh_database, warm_workers=False)
    if runtime._state is not None:  # close the connections the test's pool kept
        runtime._state.db.engine.dispose()


class FakeApp:
    def __init__(self) -> None:
        self.argv: list[str] = []

    def worker_main(self, argv: list[str]) -> None:
        self.argv = argv


def start_pool(settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: str) -> FakeApp:
    app = FakeApp()
    monkeypatch.setattr(celery_app, "build_worker_app", lambda _settings: app)
    server.run_worker(settings, queues="image", concurrency=16, hostname="t@h", pool=pool)
    return app


def busy_sessions(state: runtime.WorkerState, jobs: int) -> int:
    """Run ``jobs`` sessions at once; how many connections the pool kept afterwards."""
    barrier = threading.Barrier(jobs)

    def job() -> None:
        with state.db.session() as s:
            s.execute(text("SELECT 1"))
            barrier.wait(timeout=10)  # every job holds its connection at the same time

    threads = [threading.Thread(target=job) for _ in range(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pool: Any = state.db.engine.pool
    return int(pool.checkedin())


def test_a_threads_pool_keeps_a_connection_for_each_of_its_jobs(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = start_pool(settings, monkeypatch, "threads")
    assert "--pool=threads" in app.argv and "16" in app.argv
    state = runtime.state(settings)  # what the pool's jobs get: built before it started
    assert busy_sessions(state, 16) == 16


def test_a_prefork_process_runs_one_job_and_keeps_two(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    start_pool(settings, monkeypatch, "prefork")
    assert runtime._state is None  # each child builds its own after the fork
    state = runtime.init_process(settings)
    pool: Any = state.db.engine.pool
    assert pool.size() == 2
