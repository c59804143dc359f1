"""Operators: list pools and queue depths, grow/shrink a running pool, move queue consumers,
and scrape Prometheus metrics — against real worker processes on Redis."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from alibabacloud_imm20200930 import models as m
from alibabacloud_imm20200930.client import Client as ImmSdk

from pipeline import pools
from pipeline.settings import Settings
from tests.e2e.stack import METRICS_TOKEN, Stack, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def _settings(stack: Stack) -> Settings:
    return Settings(data_dir=stack.data_dir, broker_url=stack.env["OPENIMM_BROKER_URL"])


def _pool(settings: Settings) -> pools.PoolInfo:
    return next(p for p in pools.snapshot(settings).pools if p.worker.startswith("worker@"))


def test_pools_grow_shrink_and_consumers(stack: Stack) -> None:
    settings = _settings(stack)
    pool = _pool(settings)
    assert pool.concurrency == 2 and {"archive", "sr", "default"} <= set(pool.queues)
    reply = pools.control(settings, "grow", pool.worker, "1")
    assert reply == [{pool.worker: {"ok": "pool will grow"}}]
    # billiard adds the process at its next maintenance tick (every 5 s)
    wait_until(lambda: _pool(settings).concurrency == 3, 20, what="pool grown to 3")
    pools.control(settings, "shrink", pool.worker, "2")
    wait_until(lambda: _pool(settings).concurrency == 1, 20, what="pool shrunk to 1")
    pools.control(settings, "cancel-queue", pool.worker, "sr")
    wait_until(lambda: "sr" not in _pool(settings).queues, 20, what="sr consumer cancelled")
    pools.control(settings, "add-queue", pool.worker, "sr")
    wait_until(lambda: "sr" in _pool(settings).queues, 20, what="sr consumer added")
    pools.control(settings, "grow", pool.worker, "1")
    listing = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "pools"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listing.returncode == 0, listing.stderr
    assert pool.worker in listing.stdout and "archive" in listing.stdout


def test_metrics_expose_depth_outcomes_and_durations(stack: Stack, sdk: ImmSdk) -> None:
    sdk.create_project(m.CreateProjectRequest(project_name="metrics"))
    (stack.data_dir / "oss" / "mbkt").mkdir(parents=True)
    (stack.data_dir / "oss" / "mbkt" / "f.txt").write_text("x")
    task_id = sdk.create_file_compression_task(
        m.CreateFileCompressionTaskRequest(
            project_name="metrics",
            target_uri="oss://mbkt/o.zip",
            sources=[m.CreateFileCompressionTaskRequestSources(uri="oss://mbkt/f.txt")],
        )
    ).body.task_id

    def succeeded() -> bool:
        body = sdk.get_task(
            m.GetTaskRequest(project_name="metrics", task_type="FileCompression", task_id=task_id)
        ).body
        return body.status == "Succeeded"

    wait_until(succeeded, 60, what="task succeeded")
    auth = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    assert httpx.get(f"http://{stack.endpoint}/metrics", timeout=10).status_code == 403
    text = httpx.get(f"http://{stack.endpoint}/metrics", headers=auth, timeout=10).text
    assert 'openimm_queue_depth{queue="archive"} 0.0' in text
    assert 'openimm_tasks{status="Succeeded",task_type="FileCompression"}' in text
    assert 'openimm_task_duration_seconds_count{task_type="FileCompression"}' in text
    assert 'openimm_task_duration_seconds_bucket{le="+Inf",task_type="FileCompression"}' in text
