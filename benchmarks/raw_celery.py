"""The baseline: a bare Celery app with a no-op task on the same broker (no DB, no API)."""

from __future__ import annotations

import os
import time

from celery import Celery

app = Celery("raw", broker=os.environ.get("BENCH_BROKER", "redis://127.0.0.1:6379/9"))
app.conf.update(
    task_ignore_result=True,
    worker_prefetch_multiplier=1,
    task_acks_late=True,
    worker_hijack_root_logger=False,
)


@app.task(name="raw.noop")
def noop(sent_at: float, key: str) -> None:
    # Record completion in Redis (like openimm records it in PostgreSQL) for latency.
    conn = app.connection_for_write()
    try:
        conn.default_channel.client.hset("raw-bench", key, f"{sent_at}:{time.time()}")
    finally:
        conn.release()
