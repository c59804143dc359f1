"""The thin Celery layer: one task that hands the TaskId to ``workers.runtime``.

``celery -A workers.celery_app flower`` and ``celery -A workers.celery_app inspect …`` work
against the same broker because ``app`` below is built from the same settings.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.exceptions import Reject
from celery.signals import worker_process_init

from pipeline.queue import RUN_TASK, make_celery
from pipeline.settings import Settings, load_settings
from workers import redelivery, runtime, warmup


def build_worker_app(settings: Settings) -> Celery:
    app = make_celery(settings)

    @app.task(name=RUN_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
    def run_task(self: Any, task_id: str) -> str:
        try:
            return runtime.run(task_id, settings)
        except runtime.StillUnavailable as exc:
            # The database/broker/object store stayed away longer than outage_wait_seconds:
            # give the message back instead of acknowledging it into loss.
            raise Reject(str(exc), requeue=True) from exc

    def _init(**_: Any) -> None:
        # After fork: DB pool, store client, device and models belong to this child only.
        from billiard.process import current_process

        runtime.init_process(settings, getattr(current_process(), "index", 0) or 0)
        if settings.warm_workers:
            # The queues this pool consumes (chosen with -Q before the fork).
            warmup.start(settings, list(app.amqp.queues.consume_from or app.amqp.queues))

    worker_process_init.connect(_init, weak=False)
    app.steps["consumer"].add(redelivery.GiveBackDropped)
    return app


def __getattr__(name: str) -> Any:
    # Lazy module attribute so `celery -A workers.celery_app` works without I/O at import.
    if name == "app":
        return build_worker_app(load_settings())
    raise AttributeError(name)
