"""Celery app and the one routing table (task type → queue).

Everything about the broker lives here: queue names, transport options, enqueue, queue depth.
Celery is configured for long GPU jobs: late acknowledgement, requeue when a worker process is
lost, prefetch 1, a visibility timeout above the longest task time limit, per-type time limits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery
from kombu import Queue
from kombu.exceptions import ChannelError

from pipeline.settings import Settings

RUN_TASK = "openimm.run"  # the one Celery task; the task type picks the processor

# One queue per job family. Operators override entries with OPENIMM_QUEUE_ROUTES.
QUEUES = ("default", "archive", "index", "cluster", "highlight", "sr", "asr", "notify")
ROUTES: dict[str, str] = {
    "FileCompression": "archive",
    "FileUncompression": "archive",
    "ArchiveFileInspection": "archive",
    "Diagnostic": "default",
    "FileMetaIndex": "index",
    "FileMetaBatchIndex": "index",
    "FaceClustering": "cluster",
    "FigureClustersMerging": "cluster",
    "FacesSearching": "cluster",
    "ImageFigureClusterSearch": "cluster",
    "Highlight": "highlight",
    "VideoSuperResolution": "sr",
    "SpeechRecognition": "asr",
}
# Families whose jobs are long and heavy: one message at a time per process so a long job never
# holds a second one hostage in its prefetch buffer.
HEAVY_QUEUES = frozenset({"cluster", "highlight", "sr", "asr", "archive", "index"})


def queue_for(task_type: str, settings: Settings) -> str:
    return settings.queue_routes.get(task_type) or ROUTES.get(task_type, "default")


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
