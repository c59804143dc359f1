"""Topics and subscriptions, scoped to the owner (AccessKeyId).

A queue subscription's endpoint names the owner's account as MNS does, by its numeric
AccountId (``acs:mns:<region>:<AccountId>:queues/<q>``), or by its AccessKeyId (accepted for
compatibility); either way it can only designate a queue of the topic's own owner.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pipeline import accounts, netpolicy
from pipeline.errors import (
    ForbiddenURI,
    InvalidArgument,
    InvalidParameter,
    ResourceAlreadyExists,
    ResourceNotFound,
)
from pipeline.ids import utcnow
from pipeline.models import Subscription, Topic
from pipeline.notify import messages, policy, webhooks
from pipeline.notify.limits import check_name, check_quota
from pipeline.notify.queues import get_queue

QUEUE_ENDPOINT_RE = re.compile(r"^acs:mns:[^:]*:([^:]+):queues/([A-Za-z][A-Za-z0-9-]{0,255})$")


def get_topic(session: Session, owner: str, name: str) -> Topic:
    topic = session.scalar(select(Topic).where(Topic.owner == owner, Topic.name == name))
    if topic is None:
        raise ResourceNotFound("topic", name)
    return topic


def create_topic(session: Session, owner: str, name: str, *, quota: int | None = None) -> Topic:
    """Create a topic; ``quota``: how many topics the owner may have."""
    check_name("TopicName", name)
    check_quota(
        session, select(func.count()).where(Topic.owner == owner), quota, "topics per owner"
    )
    topic = Topic(owner=owner, name=name, create_time=utcnow())
    try:
        with session.begin_nested():
            session.add(topic)
    except IntegrityError:
        raise ResourceAlreadyExists("topic", name) from None
    return topic


def delete_topic(session: Session, owner: str, name: str) -> None:
    session.delete(get_topic(session, owner, name))


def list_topics(session: Session, owner: str) -> Sequence[Topic]:
    return session.scalars(select(Topic).where(Topic.owner == owner).order_by(Topic.name)).all()


def queue_endpoint(region: str, account_id: str, queue: str) -> str:
    """MNS's QueueEndpoint form."""
    return f"acs:mns:{region}:{account_id}:queues/{queue}"


def queue_of(endpoint: str) -> tuple[str, str] | None:
    """(owner, queue) for a QueueEndpoint, None for an HTTP endpoint."""
    match = QUEUE_ENDPOINT_RE.match(endpoint)
    return (match.group(1), match.group(2)) if match else None


def _check_endpoint(
    session: Session, endpoint: str, owner: str, account_id: str, allow_private: bool
) -> None:
    target = queue_of(endpoint)
    if target is not None:
        if target[0] not in (owner, account_id):
            raise InvalidParameter("Endpoint", "The queue must belong to the topic's owner.")
        get_queue(session, owner, target[1])
        return
    if not endpoint.lower().startswith(("http://", "https://")):
        raise InvalidParameter(
            "Endpoint", "Use an http(s):// URL or acs:mns:<region>:<AccountId>:queues/<queue>."
        )
    try:  # the parser the dispatcher sends with: no URL means two hosts
        netpolicy.check_url(endpoint, allow_private)
    except ForbiddenURI:
        raise
    except InvalidArgument as exc:
        raise InvalidParameter("Endpoint", exc.message) from None


def subscribe(
    session: Session,
    topic: Topic,
    name: str,
    *,
    endpoint: str,
    content_format: str,
    retry: str | dict[str, Any] | None,
    allow_private: bool,
    owner: str = "",
    quota: int | None = None,
    account_id: str = "",
) -> Subscription:
    """Subscribe an HTTP(S) endpoint (webhook) or an MNS queue of the same owner; ``quota``:
    how many subscriptions the topic may have; ``account_id`` is the owner's
    (pipeline.accounts; derived when not given)."""
    check_name("SubscriptionName", name)
    check_quota(
        session,
        select(func.count()).where(Subscription.topic_id == topic.id),
        quota,
        "subscriptions per topic",
    )
    owner = owner or topic.owner
    account_id = account_id or accounts.derive(owner)
    _check_endpoint(session, endpoint, owner, account_id, allow_private)
    if content_format not in messages.FORMATS:
        raise InvalidParameter("NotifyContentFormat", f"Use one of {', '.join(messages.FORMATS)}.")
    sub = Subscription(
        topic_id=topic.id,
        name=name,
        endpoint=endpoint,
        content_format=content_format,
        retry_policy=policy.parse(retry).to_dict(),
        secret=webhooks.new_secret(),
        create_time=utcnow(),
    )
    try:
        with session.begin_nested():
            session.add(sub)
    except IntegrityError:
        raise ResourceAlreadyExists("subscription", name) from None
    return sub


def unsubscribe(session: Session, topic: Topic, name: str) -> None:
    sub = session.scalar(
        select(Subscription).where(Subscription.topic_id == topic.id, Subscription.name == name)
    )
    if sub is None:
        raise ResourceNotFound("subscription", name)
    session.delete(sub)


def list_subscriptions(session: Session, topic: Topic) -> Sequence[Subscription]:
    return session.scalars(
        select(Subscription).where(Subscription.topic_id == topic.id).order_by(Subscription.name)
    ).all()
