"""Operator view of worker pools via Celery remote control: who consumes which queue, how
deep each queue is, what runs now; grow/shrink a pool and add/cancel consumers live."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline import queue
from pipeline.errors import InvalidArgument
from pipeline.settings import Settings

CONTROL_TIMEOUT = 2.0


@dataclass
class PoolInfo:
    worker: str
    queues: list[str]
    concurrency: int
    active: list[str] = field(default_factory=list)


@dataclass
class Snapshot:
    depths: dict[str, int]
    pools: list[PoolInfo]


def snapshot(settings: Settings) -> Snapshot:
    app = queue.make_celery(settings)
    stats = app.control.inspect(timeout=CONTROL_TIMEOUT).stats() or {}
    # Now that we know how many workers exist, stop waiting as soon as all have answered.
    inspect = app.control.inspect(timeout=CONTROL_TIMEOUT, limit=len(stats) or None)
    active = inspect.active() or {}
    consumers = inspect.active_queues() or {}
    pools = [
        PoolInfo(
            worker=name,
            queues=sorted(q["name"] for q in consumers.get(name, [])),
            concurrency=_processes(info),
            active=[t["id"] for t in active.get(name, [])],
        )
        for name, info in sorted(stats.items())
    ]
    return Snapshot(depths=queue.queue_depths(app, settings), pools=pools)


def _processes(stats: dict[str, Any]) -> int:
    pool = stats.get("pool", {})
    # Live pool processes (changes with grow/shrink); max-concurrency is the start value.
    return len(pool.get("processes", [])) or int(pool.get("max-concurrency", 0))


def render(snap: Snapshot) -> str:
    lines = ["QUEUE        DEPTH"]
    lines += [f"{name:<12} {depth}" for name, depth in sorted(snap.depths.items())]
    lines.append("")
    lines.append("WORKER                                   PROCS  QUEUES / ACTIVE TASKS")
    for pool in snap.pools:
        lines.append(f"{pool.worker:<40} {pool.concurrency:>5}  {','.join(pool.queues)}")
        lines += [f"{'':<48}{task_id}" for task_id in pool.active]
    if not snap.pools:
        lines.append("(no workers answered)")
    return "\n".join(lines)


def control(settings: Settings, action: str, worker: str, value: str) -> Any:
    """Grow/shrink a running pool by N processes, or add/cancel a queue consumer."""
    app = queue.make_celery(settings)
    dest = [worker]
    if action in ("grow", "shrink"):
        if not value.isdigit() or int(value) < 1:
            raise InvalidArgument("N must be a positive integer.")
        method = app.control.pool_grow if action == "grow" else app.control.pool_shrink
        return method(int(value), destination=dest, reply=True, timeout=CONTROL_TIMEOUT)
    if action == "add-queue":
        return app.control.add_consumer(
            value, destination=dest, reply=True, timeout=CONTROL_TIMEOUT
        )
    if action == "cancel-queue":
        return app.control.cancel_consumer(
            value, destination=dest, reply=True, timeout=CONTROL_TIMEOUT
        )
    raise InvalidArgument(f"Unknown pool action {action}.")
