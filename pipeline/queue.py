"""Celery app and the one routing table (task type → queue).

Everything about the broker lives here: queue names, transport options, enqueue, queue depth.
Celery is configured for long GPU jobs: late acknowledgement, requeue when a worker process is
lost, prefetch 1, a visibility timeout above the longest task time limit, per-type time limits.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import Celery
from kombu import Queue
from kombu.exceptions import ChannelError

from pipeline import fsbroker, jobs
from pipeline.settings import Settings

RUN_TASK = "openimm.run"  # the one Celery task; the task type picks the processor

# One queue per job family, and the routing table, both derived from the job-kind
# declarations (pipeline.jobs). Operators override routes with OPENIMM_QUEUE_ROUTES.
QUEUES = jobs.QUEUES
ROUTES: dict[str, str] = {k.task_type: k.queue for k in jobs.KINDS}


def queue_for(task_type: str, settings: Settings) -> str:
    return settings.queue_routes.get(task_type) or ROUTES.get(task_type, jobs.DEFAULT_QUEUE)


def batching_queues(settings: Settings) -> list[str]:
    """Queues that carry only batching kinds (after OPENIMM_QUEUE_ROUTES): pools for them run
    jobs in threads so concurrent requests share a forward pass."""
    kinds_on: dict[str, list[bool]] = {}
    for kind in jobs.KINDS:
        kinds_on.setdefault(queue_for(kind.task_type, settings), []).append(bool(kind.batching))
    return sorted(q for q, flags in kinds_on.items() if all(flags))


def all_queues(settings: Settings) -> list[str]:
    return sorted(set(QUEUES) | set(settings.queue_routes.values()))


def _transport_options(settings: Settings) -> dict[str, Any]:
    if settings.is_embedded_broker:
        folder = settings.broker_folder
        for sub in ("queue", "control", "processed"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "control_folder": str(folder / "control"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
            "polling_interval": settings.embedded_broker_poll_seconds,
        }
    timeout = settings.visibility_timeout
    return {
        "visibility_timeout": timeout,
        # kombu scans for expired unacknowledged messages every interval * throttle seconds
        # (100 s by default); scan on every tick so a lost job is redelivered within
        # visibility_timeout + interval. One ZRANGE per tick is negligible.
        "unacked_restore_interval": max(1, min(10, timeout // 4)),
        "unacked_restore_throttle": 1,
    }


def make_celery(settings: Settings) -> Celery:
    """Build the Celery app. No I/O beyond creating the embedded broker folders."""
    fsbroker.register()  # the embedded broker's transport (atomic message files)
    app = Celery("openimm", broker=settings.celery_broker_url, set_as_current=False)
    app.conf.update(
        broker_transport_options=_transport_options(settings),
        broker_connection_retry_on_startup=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        task_default_queue="default",
        task_queues=[Queue(name) for name in all_queues(settings)],
        task_serializer="json",
        accept_content=["json"],
        # Task events cost several broker publishes per job; Flower switches them on at run
        # time (enable_events) when it is watching, so they stay off by default.
        worker_send_task_events=settings.task_events,
        task_send_sent_event=settings.task_events,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    app.conf.openimm_settings = settings
    return app


def enqueue(app: Celery, task_id: str, task_type: str, queue: str, settings: Settings) -> None:
    """Send the job; the Celery task id is the IMM TaskId so revoke/inspect line up."""
    limit = settings.time_limit(task_type)
    app.send_task(
        RUN_TASK,
        args=[task_id],
        task_id=task_id,
        queue=queue,
        soft_time_limit=limit,
        time_limit=limit + 30,
    )


def queue_depths(app: Celery, settings: Settings) -> dict[str, int]:
    """Messages waiting per queue (not counting those reserved by workers)."""
    if settings.is_embedded_broker:
        return _folder_depths(settings.broker_folder / "queue", all_queues(settings))
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        return {q: _declared_size(channel, q) for q in all_queues(settings)}


def _declared_size(channel: Any, name: str) -> int:
    # A passive declare reports the message count (Redis: LLEN over the priority lists) and
    # raises for a queue that has never held a message, which is an empty queue to us.
    try:
        return int(channel.queue_declare(queue=name, passive=True).message_count)
    except ChannelError:
        return 0


def _folder_depths(folder: Path, queues: list[str]) -> dict[str, int]:
    depths = dict.fromkeys(queues, 0)
    if folder.is_dir():
        for entry in folder.iterdir():
            # kombu's filesystem transport names messages "<ts>_<uuid>.<queue>.msg".
            parts = entry.name.rsplit(".", 2)
            if len(parts) == 3 and parts[2] == "msg" and parts[1] in depths:
                depths[parts[1]] += 1
    return depths


def queued_task_ids(app: Celery, settings: Settings) -> set[str]:
    """TaskIds of every message the broker still holds: waiting in a queue, or delivered but
    not acknowledged (Redis keeps those until ack, and restores them after the visibility
    timeout). Reads the whole queues: an operator check (``openimm doctor``), not a hot path."""
    if settings.is_embedded_broker:
        return embedded_queued_ids(settings.broker_folder / "queue")
    with app.connection_for_read() as conn:
        channel: Any = conn.default_channel
        client = channel.client
        ids: set[str] = set()
        for name in all_queues(settings):
            for key in [name, *(f"{name}{channel.sep}{p}" for p in channel.priority_steps[1:])]:
                ids.update(_message_id(raw) for raw in client.lrange(key, 0, -1))
        for raw in client.hvals(channel.unacked_key):
            ids.add(_message_id(raw, wrapped=True))
        ids.discard("")
        return ids


def _message_id(raw: bytes | str, *, wrapped: bool = False) -> str:
    try:
        message = json.loads(raw)
        if wrapped:  # the unacked hash stores [message, exchange, routing key]
            message = message[0]
        return str(message["headers"]["id"])
    except (ValueError, KeyError, IndexError, TypeError):
        return ""


def embedded_queued_ids(folder: Path) -> set[str]:
    """TaskIds of the messages waiting in the embedded (filesystem) broker's queue folder."""
    ids: set[str] = set()
    for path in folder.glob("*.msg") if folder.is_dir() else []:
        try:
            ids.add(json.loads(path.read_text())["headers"]["id"])
        except (OSError, ValueError, KeyError):
            continue
    return ids


def restore_unclaimed(
    app: Celery,
    settings: Settings,
    unclaimed: Callable[[set[str]], set[str]],
    older_than: float,
) -> int:
    """Redis only: give back messages a worker took but never claimed (it died between
    receiving a message and its claim), instead of waiting for the visibility timeout.

    ``unclaimed`` filters TaskIds down to those still Running without a lease. A live worker
    claims right after delivery, so a delivery older than ``older_than`` seconds whose task
    nobody leased belongs to a dead worker. The message moves back to its queue atomically
    (kombu's restore by delivery tag).
    """
    if settings.is_embedded_broker:
        return 0
    with app.connection_for_write() as conn:
        channel: Any = conn.default_channel
        client = channel.client
        tags = client.zrangebyscore(channel.unacked_index_key, 0, time.time() - older_than)
        if not tags:
            return 0
        by_id: dict[str, Any] = {}
        for tag, raw in zip(tags, client.hmget(channel.unacked_key, tags), strict=True):
            if raw is not None:
                by_id[_message_id(raw, wrapped=True)] = tag
        stuck = unclaimed(set(by_id) - {""})
        for task_id in stuck:
            channel.qos.restore_by_tag(by_id[task_id], client)
        return len(stuck)
