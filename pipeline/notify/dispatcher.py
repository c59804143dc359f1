"""The outbox dispatcher: events → one delivery per subscription → signed HTTP push.

At-least-once, never lost: fan-out inserts deliveries with a unique (event, subscription) key
and marks the event published in the same transaction, so a crash at any point either redoes
the fan-out without duplicates or finds it done. Deliveries are claimed with a lease (their
next attempt time moves forward) so a dispatcher that dies mid-POST is retried by another.
The message body, its ``id`` and ``MessageId`` are the same on every attempt: receivers
de-duplicate on ``id`` (or ``webhook-id``).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pipeline.db import Database
from pipeline.errors import ImmError
from pipeline.ids import utcnow
from pipeline.models import Delivery, DeliveryAttempt, Event, Subscription, Topic
from pipeline.notify import messages, queues, topics, webhooks
from pipeline.notify.policy import RetryPolicy
from pipeline.settings import Settings
from pipeline.storage import check_public_host

log = logging.getLogger("openimm.dispatcher")
LEASE = timedelta(seconds=60)  # a claimed delivery is retried if its dispatcher vanishes
BATCH = 200


@dataclass(frozen=True)
class Due:
    """A claimed delivery with everything needed to send it, detached from the session."""

    delivery_id: int
    attempts: int
    publish_time: datetime
    event: Event
    topic: str
    subscription: str
    endpoint: str
    content_format: str
    secret: str
    policy: dict[str, Any]


class Dispatcher:
    def __init__(self, settings: Settings, db: Database, http: httpx.Client | None = None):
        self.settings, self.db = settings, db
        self.http = http or httpx.Client(
            timeout=settings.webhook_timeout_seconds, follow_redirects=False
        )
        self.pool = ThreadPoolExecutor(settings.delivery_concurrency, thread_name_prefix="deliver")

    # -- fan-out --------------------------------------------------------------------------
    def fan_out(self) -> int:
        """Turn unpublished events into deliveries; returns how many events were published."""
        with self.db.session() as s:
            query = (
                select(Event).where(Event.published_at.is_(None)).order_by(Event.seq).limit(BATCH)
            )
            if not self.db.is_sqlite:
                query = query.with_for_update(skip_locked=True)
            events = s.scalars(query).all()
            now = utcnow()
            rows = [row for ev in events for row in self._deliveries_for(s, ev, now)]
            if rows:
                insert = (sqlite.insert if self.db.is_sqlite else postgresql.insert)(Delivery)
                s.execute(
                    insert.values(rows).on_conflict_do_nothing(
                        index_elements=["event_id", "subscription_id"]
                    )
                )
            for ev in events:
                ev.published_at = now
            return len(events)

    def _deliveries_for(self, s: Session, ev: Event, now: datetime) -> list[dict[str, Any]]:
        if not ev.topic:
            return []
        sub_ids = s.scalars(
            select(Subscription.id)
            .join(Topic)
            .where(Topic.owner == ev.owner, Topic.name == ev.topic)
        ).all()
        return [
            {
                "event_id": ev.id,
                "subscription_id": sid,
                "status": "pending",
                "attempts": 0,
                "publish_time": now,
                "next_attempt_at": now,
                "last_error": "",
            }
            for sid in sub_ids
        ]

    # -- delivery -------------------------------------------------------------------------
    def claim_due(self, limit: int = BATCH) -> list[Due]:
        now = utcnow()
        with self.db.session() as s:
            ids_query = (
                select(Delivery.id)
                .where(Delivery.status == "pending", Delivery.next_attempt_at <= now)
                .order_by(Delivery.next_attempt_at)
                .limit(limit)
            )
            if not self.db.is_sqlite:
                ids_query = ids_query.with_for_update(skip_locked=True)
            ids = s.scalars(ids_query).all()
            if not ids:
                return []
            s.execute(
                update(Delivery).where(Delivery.id.in_(ids)).values(next_attempt_at=now + LEASE)
            )
            rows = s.execute(
                select(Delivery, Event, Subscription, Topic.name)
                .join(Event, Event.id == Delivery.event_id)
                .join(Subscription, Subscription.id == Delivery.subscription_id)
                .join(Topic, Topic.id == Subscription.topic_id)
                .where(Delivery.id.in_(ids))
            ).all()
            s.expunge_all()
        return [
            Due(
                d.id,
                d.attempts,
                d.publish_time,
                ev,
                topic,
                sub.name,
                sub.endpoint,
                sub.content_format,
                sub.secret,
                sub.retry_policy,
            )
            for d, ev, sub, topic in rows
        ]

    def send(self, due: Due) -> None:
        env = messages.envelope(
            due.event,
            topic=due.topic,
            subscription=due.subscription,
            publish_time=due.publish_time,
            region=self.settings.region,
        )
        body, content_type = messages.render(env, due.content_format)
        headers = {
            **webhooks.headers(due.secret, due.event.id, int(time.time()), body),
            "content-type": content_type,
            "x-mns-message-id": env.MessageId,
        }
        started = time.perf_counter()
        status, error = None, ""
        target = topics.queue_of(due.endpoint)
        if target is not None:
            status, error = self._to_queue(target, env.MessageId, body.decode())
            self.record(due, status, error, int((time.perf_counter() - started) * 1000))
            return
        try:
            # Re-checked per attempt: DNS may have changed since Subscribe (rebinding).
            check_public_host(
                urlsplit(due.endpoint).hostname or "", self.settings.http_allow_private
            )
            status = self.http.post(due.endpoint, content=body, headers=headers).status_code
        except (httpx.HTTPError, ImmError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:1000]
        latency = int((time.perf_counter() - started) * 1000)
        self.record(due, status, error, latency)

    def _to_queue(
        self, target: tuple[str, str], message_id: str, body: str
    ) -> tuple[int | None, str]:
        """Write into an MNS queue. A retry after a crash finds the message already there
        (unique per queue and MessageId), which counts as delivered."""
        owner, name = target
        try:
            with self.db.session() as s:
                queue = queues.get_queue(s, owner, name)
                with s.begin_nested():
                    queues.send(s, queue, body, message_id=message_id)
        except IntegrityError:
            return 201, ""
        except ImmError as exc:
            return None, f"{exc.code}: {exc.message}"
        return 201, ""

    def record(self, due: Due, status: int | None, error: str, latency_ms: int) -> None:
        now = utcnow()
        attempt = due.attempts + 1
        ok = status is not None and 200 <= status < 300
        values: dict[str, Any] = {
            "attempts": attempt,
            "last_status": status,
            "last_error": error or ("" if ok else f"HTTP {status}"),
        }
        if ok:
            values.update(status="delivered", delivered_at=now)
        else:
            policy = RetryPolicy(**due.policy)
            elapsed = (now - due.publish_time).total_seconds()
            if policy.exhausted(attempt - 1, elapsed):
                values["status"] = "dead"
            else:
                values["next_attempt_at"] = now + timedelta(seconds=policy.delay(attempt - 1))
        with self.db.session() as s:
            s.add(
                DeliveryAttempt(
                    delivery_id=due.delivery_id,
                    attempt=attempt,
                    at=now,
                    status_code=status,
                    latency_ms=latency_ms,
                    error=error,
                )
            )
            s.execute(update(Delivery).where(Delivery.id == due.delivery_id).values(**values))

    # -- loop -----------------------------------------------------------------------------
    def run_once(self) -> int:
        """One fan-out pass and one delivery pass; returns the work done (0 = idle)."""
        published = self.fan_out()
        due = self.claim_due()
        list(self.pool.map(self.send, due))
        return published + len(due)

    def run_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                busy = self.run_once()
            except Exception:  # keep dispatching after a DB hiccup; the outbox keeps state
                log.exception("dispatcher pass failed")
                busy = 0
            if not busy:
                stop.wait(self.settings.dispatch_interval_seconds)


def replay(
    db: Database,
    owner: str,
    *,
    event_id: str = "",
    since: datetime | None = None,
    until: datetime | None = None,
    dead_only: bool = False,
) -> int:
    """Queue deliveries again (same event id and body; new PublishTime and retry horizon)."""
    owned = select(Subscription.id).join(Topic).where(Topic.owner == owner)
    query = update(Delivery).where(Delivery.subscription_id.in_(owned))
    if event_id:
        query = query.where(Delivery.event_id == event_id)
    if since is not None:
        query = query.where(Delivery.publish_time >= since)
    if until is not None:
        query = query.where(Delivery.publish_time <= until)
    if dead_only:
        query = query.where(Delivery.status == "dead")
    now = utcnow()
    with db.session() as s:
        result = s.execute(
            query.values(
                status="pending",
                attempts=0,
                next_attempt_at=now,
                publish_time=now,
                delivered_at=None,
            )
        )
        return int(result.rowcount)  # type: ignore[attr-defined]
