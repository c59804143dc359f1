"""Prometheus metrics, computed at scrape time from the database and the broker.

Workers are separate processes (often on other hosts), so instead of multiprocess counters the
API derives task outcomes and durations from the task table (the source of truth) and queue
depth from the broker whenever Prometheus scrapes ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Iterator

from celery import Celery
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select

from pipeline import queue
from pipeline.db import Database
from pipeline.models import Task
from pipeline.settings import Settings

DURATION_BUCKETS_MS = (100, 500, 1000, 5000, 30_000, 60_000, 300_000, 1_800_000, 3_600_000)


class OpenimmCollector(Collector):
    def __init__(self, settings: Settings, db: Database, celery: Celery) -> None:
        self.settings, self.db, self.celery = settings, db, celery

    def collect(self) -> Iterator[GaugeMetricFamily | HistogramMetricFamily]:
        yield self._queue_depth()
        yield self._outcomes()
        yield from self._durations()

    def _queue_depth(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "openimm_queue_depth", "Messages waiting per queue", labels=["queue"]
        )
        for name, depth in queue.queue_depths(self.celery, self.settings).items():
            family.add_metric([name], depth)
        return family

    def _outcomes(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "openimm_tasks", "Tasks by type and status", labels=["task_type", "status"]
        )
        with self.db.session() as s:
            rows = s.execute(
                select(Task.task_type, Task.status, func.count()).group_by(
                    Task.task_type, Task.status
                )
            ).all()
        for task_type, status, count in rows:
            family.add_metric([task_type, status], count)
        return family

    def _durations(self) -> Iterator[HistogramMetricFamily]:
        buckets = [func.sum(case((Task.duration_ms <= b, 1), else_=0)) for b in DURATION_BUCKETS_MS]
        query = (
            select(Task.task_type, func.count(), func.sum(Task.duration_ms), *buckets)
            .where(Task.duration_ms.is_not(None), Task.status != "Cancelled")
            .group_by(Task.task_type)
        )
        family = HistogramMetricFamily(
            "openimm_task_duration_seconds",
            "Create → terminal time per task type",
            labels=["task_type"],
        )
        with self.db.session() as s:
            for task_type, count, total, *counts in s.execute(query).all():
                pairs = [
                    (str(b / 1000), int(c or 0))
                    for b, c in zip(DURATION_BUCKETS_MS, counts, strict=True)
                ]
                pairs.append(("+Inf", int(count)))
                family.add_metric([task_type], pairs, sum_value=(total or 0) / 1000)
        yield family
