"""Render an outbox event as IMM's notification layers, byte-for-byte stable across
redeliveries (everything is derived from the stored event and delivery rows)."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime
from typing import Any
from xml.sax.saxutils import escape

from schemas.events import ImmMessage, MnsEnvelope

FORMATS = ("JSON", "SIMPLIFIED", "XML")
MNS_XMLNS = "http://mns.aliyuncs.com/doc/v1/"


def epoch_ms(value: datetime) -> str:
    return str(int(value.timestamp() * 1000))


def md5_upper(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest().upper()


RAW_MESSAGE_TYPE = "mns:Message"  # published straight to a topic, not an IMM event


def imm_message(event: Any, region: str, account: str) -> str:
    """Layer 2 as the exact JSON string that goes into the envelope's ``Message``;
    ``account`` is the owner's account id (pipeline.accounts), as in IMM's ``subject``."""
    if event.type == RAW_MESSAGE_TYPE:
        return str(event.content["Message"])
    body = ImmMessage(
        id=event.id,
        type=event.type,
        subject=f"acs:imm:{region}:{account}:{event.project_name}/{event.type}",
        time=epoch_ms(event.created_at),
        content=json.dumps(event.content, ensure_ascii=False, separators=(",", ":")),
    )
    return json.dumps(body.model_dump(), ensure_ascii=False, separators=(",", ":"))


def message_id(event_id: str, topic: str) -> str:
    """Stable per (event, topic), MNS-shaped as in seed 004: 32 upper-case hex digits."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"openimm:{topic}:{event_id}").hex.upper()


def envelope(
    event: Any,
    *,
    topic: str,
    subscription: str,
    publish_time: datetime,
    region: str,
    account: str,
) -> MnsEnvelope:
    """Layer 1; ``TopicOwner``/``Subscriber`` are the owner's account id (subscriptions are
    always the topic owner's own)."""
    message = imm_message(event, region, account)
    return MnsEnvelope(
        TopicOwner=account,
        TopicName=topic,
        Subscriber=account,
        SubscriptionName=subscription,
        MessageId=message_id(event.id, topic),
        Message=message,
        MessageMD5=md5_upper(message),
        PublishTime=epoch_ms(publish_time),
    )


def render(env: MnsEnvelope, content_format: str) -> tuple[bytes, str]:
    """The HTTP push body for a subscription's NotifyContentFormat, and its content type."""
    if content_format == "SIMPLIFIED":
        return env.Message.encode(), "text/plain;charset=utf-8"
    if content_format == "XML":
        fields = "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in env.model_dump().items())
        xml = (
            f'<?xml version="1.0" encoding="utf-8"?>'
            f'<Notification xmlns="{MNS_XMLNS}">{fields}</Notification>'
        )
        return xml.encode(), "text/xml;charset=utf-8"
    return json.dumps(env.model_dump(), ensure_ascii=False).encode(), "application/json"
