"""openimm extensions to manage notification topics, webhook subscriptions and deliveries.
(The MNS-compatible HTTP API for queues is a separate, upcoming router.)"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from pipeline.api.rpc import action
from pipeline.api.services import Caller, Services
from pipeline.errors import InvalidParameter
from pipeline.ids import parse_time, resource_time, task_time
from pipeline.models import Delivery, DeliveryAttempt, Event, Subscription, Topic
from pipeline.notify import dispatcher, messages, topics
from pipeline.params import Params

MAX_DELIVERIES = 100


@action("CreateTopic", "TopicName")
def create_topic(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    with svc.db.session() as s:
        topic = topics.create_topic(
            s,
            caller.owner,
            p.str("TopicName", required=True),
            quota=svc.settings.mns_max_topics_per_owner,
        )
        return {"TopicName": topic.name, "CreateTime": resource_time(topic.create_time)}


@action("DeleteTopic", "TopicName")
def delete_topic(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    with svc.db.session() as s:
        topics.delete_topic(s, caller.owner, p.str("TopicName", required=True))
    return {}


@action("ListTopics", "")
def list_topics(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    with svc.db.session() as s:
        return {
            "Topics": [
                {"TopicName": t.name, "CreateTime": resource_time(t.create_time)}
                for t in topics.list_topics(s, caller.owner)
            ]
        }


def _subscription(sub: Subscription, topic: str) -> dict[str, Any]:
    return {
        "TopicName": topic,
        "SubscriptionName": sub.name,
        "Endpoint": sub.endpoint,
        "NotifyContentFormat": sub.content_format,
        "RetryPolicy": sub.retry_policy,
        "Secret": sub.secret,
        "CreateTime": resource_time(sub.create_time),
    }


@action("Subscribe", "TopicName SubscriptionName Endpoint NotifyContentFormat NotifyStrategy")
def subscribe(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    strategy: Any = p.str("NotifyStrategy")
    if strategy.startswith("{"):
        strategy = p.json("NotifyStrategy", dict)
    with svc.db.session() as s:
        topic = topics.get_topic(s, caller.owner, p.str("TopicName", required=True))
        sub = topics.subscribe(
            s,
            topic,
            p.str("SubscriptionName", required=True),
            endpoint=p.str("Endpoint", required=True),
            content_format=p.str("NotifyContentFormat", default="JSON"),
            retry=strategy,
            allow_private=svc.settings.http_allow_private,
            owner=caller.owner,
            quota=svc.settings.mns_max_subscriptions_per_topic,
            account_id=svc.accounts.of(caller.owner),
        )
        return {"Subscription": _subscription(sub, topic.name)}


@action("Unsubscribe", "TopicName SubscriptionName")
def unsubscribe(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    with svc.db.session() as s:
        topic = topics.get_topic(s, caller.owner, p.str("TopicName", required=True))
        topics.unsubscribe(s, topic, p.str("SubscriptionName", required=True))
    return {}


@action("ListSubscriptions", "TopicName")
def list_subscriptions(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    with svc.db.session() as s:
        topic = topics.get_topic(s, caller.owner, p.str("TopicName", required=True))
        return {
            "Subscriptions": [
                _subscription(x, topic.name) for x in topics.list_subscriptions(s, topic)
            ]
        }


@action("ListDeliveries", "TopicName EventId Status MaxResults")
def list_deliveries(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    """The delivery log: each delivery with its attempts (status codes, latency, errors)."""
    status = p.choice("Status", ("pending", "delivered", "dead"))
    limit = p.int("MaxResults", default=MAX_DELIVERIES, minimum=1, maximum=MAX_DELIVERIES)
    query = (
        select(Delivery, Subscription.name, Topic.name)
        .select_from(Delivery)
        .join(Subscription, Subscription.id == Delivery.subscription_id)
        .join(Topic, Topic.id == Subscription.topic_id)
        .where(Topic.owner == caller.owner)
        .order_by(Delivery.id.desc())
        .limit(limit)
    )
    if p.str("TopicName"):
        query = query.where(Topic.name == p.str("TopicName"))
    if p.str("EventId"):
        query = query.where(Delivery.event_id == p.str("EventId"))
    if status:
        query = query.where(Delivery.status == status)
    with svc.db.session() as s:
        rows = s.execute(query).all()
        attempts = s.scalars(
            select(DeliveryAttempt)
            .where(DeliveryAttempt.delivery_id.in_([d.id for d, _, _ in rows]))
            .order_by(DeliveryAttempt.attempt)
        ).all()
    log: dict[int, list[dict[str, Any]]] = {}
    for a in attempts:
        log.setdefault(a.delivery_id, []).append(
            {
                "Attempt": a.attempt,
                "Time": task_time(a.at),
                "StatusCode": a.status_code,
                "LatencyMs": a.latency_ms,
                "Error": a.error,
            }
        )
    return {
        "Deliveries": [
            {
                "EventId": d.event_id,
                "TopicName": topic,
                "SubscriptionName": sub,
                "Status": d.status,
                "Attempts": log.get(d.id, []),
                "PublishTime": task_time(d.publish_time),
                "DeliveredTime": task_time(d.delivered_at),
            }
            for d, sub, topic in rows
        ]
    }


@action("ReplayDeliveries", "EventId Since Until DeadOnly")
def replay_deliveries(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    event_id, since, until = p.str("EventId"), p.str("Since"), p.str("Until")
    if not (event_id or since or until):
        raise InvalidParameter("EventId", "Give EventId or a Since/Until time range.")
    try:
        count = dispatcher.replay(
            svc.db,
            caller.owner,
            event_id=event_id,
            since=parse_time(since) if since else None,
            until=parse_time(until) if until else None,
            dead_only=p.bool("DeadOnly"),
        )
    except ValueError:
        raise InvalidParameter("Since", "Since and Until must be RFC3339 times.") from None
    return {"Replayed": count}


@action("ListEvents", "TopicName AfterSeq MaxResults")
def list_events(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    """Events of one topic after a sequence number, as IMM messages (``openimm events tail``)."""
    topic = p.str("TopicName", required=True)
    after = p.int("AfterSeq", default=0, minimum=0) or 0
    limit = p.int("MaxResults", default=MAX_DELIVERIES, minimum=1, maximum=MAX_DELIVERIES)
    with svc.db.session() as s:
        topics.get_topic(s, caller.owner, topic)
        rows = s.scalars(
            select(Event)
            .where(Event.owner == caller.owner, Event.topic == topic, Event.seq > after)
            .order_by(Event.seq)
            .limit(limit)
        ).all()
        return {
            "Events": [
                {
                    "Seq": e.seq,
                    "Published": e.published_at is not None,
                    "Message": json.loads(
                        messages.imm_message(e, svc.settings.region, svc.accounts.of(caller.owner))
                    ),
                }
                for e in rows
            ]
        }
