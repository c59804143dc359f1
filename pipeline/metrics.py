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
from pipeline.models import Delivery, DeliveryAttempt, Event, Task
from pipeline.settings import Settings

LATENCY_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 1000, 5000)
DURATION_BUCKETS_MS = (100, 500, 1000, 5000, 30_000, 60_000, 300_000, 1_800_000, 3_600_000)


class OpenimmCollector(Collector):
    def __init__(self, settings: Settings, db: Database, celery: Celery) -> None:
        self.settings, self.db, self.celery = settings, db, celery

    def collect(self) -> Iterator[GaugeMetricFamily | HistogramMetricFamily]:
        yield self._queue_depth()
        yield self._outcomes()
        yield from self._durations()
        yield from self._notifications()

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

    def _notifications(self) -> Iterator[GaugeMetricFamily | HistogramMetricFamily]:
        events = GaugeMetricFamily("openimm_events", "Outbox events by state", labels=["state"])
        deliveries = GaugeMetricFamily(
            "openimm_deliveries", "Webhook deliveries by status", labels=["status"]
        )
        attempts = GaugeMetricFamily(
            "openimm_delivery_attempts",
            "Webhook attempts by outcome (failed = retried or dead)",
            labels=["outcome"],
        )
        ok = (DeliveryAttempt.status_code >= 200) & (DeliveryAttempt.status_code < 300)
        buckets = [
            func.sum(case((DeliveryAttempt.latency_ms <= b, 1), else_=0))
            for b in LATENCY_BUCKETS_MS
        ]
        with self.db.session() as s:
            published = s.execute(
                select(Event.published_at.is_(None), func.count()).group_by(
                    Event.published_at.is_(None)
                )
            ).all()
            by_status = s.execute(
                select(Delivery.status, func.count()).group_by(Delivery.status)
            ).all()
            outcome = s.execute(
                select(
                    func.sum(case((ok, 1), else_=0)),
                    func.count(),
                    func.sum(DeliveryAttempt.latency_ms),
                    *buckets,
                ).select_from(DeliveryAttempt)
            ).one()
        for unpublished, count in published:
            events.add_metric(["unpublished" if unpublished else "published"], count)
        for status, count in by_status:
            deliveries.add_metric([status], count)
        good, total, latency_sum, *counts = outcome
        attempts.add_metric(["ok"], int(good or 0))
        attempts.add_metric(["failed"], int(total or 0) - int(good or 0))
        latency = HistogramMetricFamily("openimm_delivery_latency_seconds", "Webhook POST latency")
        pairs = [
            (str(b / 1000), int(c or 0)) for b, c in zip(LATENCY_BUCKETS_MS, counts, strict=True)
        ]
        latency.add_metric(
            [], [*pairs, ("+Inf", int(total or 0))], sum_value=(latency_sum or 0) / 1000
        )
        yield from (events, deliveries, attempts, latency)
