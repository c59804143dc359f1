"""Intra-op threads of a worker pool's model runtime (pipeline.server._cpu_threads)."""

from __future__ import annotations

import pytest

from pipeline import server
from pipeline.settings import Settings


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(server.os, "cpu_count", lambda: 8)
    return monkeypatch


def threads_for(pool: str, concurrency: int, **settings: object) -> str:
    default = server.model_threads(pool, concurrency, server.os.cpu_count() or 1)
    server._cpu_threads(Settings(**settings), default)
    return server.os.environ["OMP_NUM_THREADS"]


def test_a_prefork_pool_splits_the_cores_between_its_processes(env: pytest.MonkeyPatch) -> None:
    assert threads_for("prefork", 4) == "2"
    env.delenv("OMP_NUM_THREADS")
    assert threads_for("prefork", 16) == "1"


def test_a_threads_pool_gives_its_one_batcher_every_core_but_one(
    env: pytest.MonkeyPatch,
) -> None:
    # Not 8 // 16: one forward pass runs at a time; one core is left to the jobs' own work.
    assert threads_for("threads", 16) == "7"
    assert server.model_threads("threads", 16, cores=2) == 1
    assert server.model_threads("threads", 16, cores=1) == 1


def test_the_setting_wins_and_waiting_is_passive(env: pytest.MonkeyPatch) -> None:
    assert threads_for("threads", 16, torch_threads=3) == "3"
    assert server.os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
