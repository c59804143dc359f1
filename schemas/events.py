"""The three layers of an IMM notification (reference §2.2-2.4), as pydantic models.

Layer 1 ``MnsEnvelope`` (MNS topic push, NotifyContentFormat=JSON) carries layer 2
``ImmMessage`` as a JSON *string* in ``Message``; layer 2 carries layer 3 ``TaskContent`` as a
JSON *string* in ``content``. ``openimm schemas`` prints their JSON Schema.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class MnsEnvelope(BaseModel):
    model_config = ConfigDict(extra="forbid")

    TopicOwner: str
    TopicName: str
    Subscriber: str
    SubscriptionName: str
    MessageId: str
    Message: str
    MessageMD5: str  # upper-case hex MD5 of the exact UTF-8 Message string
    PublishTime: str  # epoch milliseconds


class ImmMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    source: str = "acs.imm"
    type: str  # imm:Task:<Type> | imm:FileMeta:Index | imm:FileMeta:BatchIndex
    subject: str
    time: str  # epoch milliseconds as a string
    content: str  # JSON document serialised into a string


class TaskContent(BaseModel):
    """Common keys of every ``imm:Task:*`` content; task results follow as extra keys."""

    model_config = ConfigDict(extra="allow")

    ProjectName: str
    DatasetName: str
    RequestId: str
    StartTime: str
    EndTime: str
    UserData: str
    TaskType: str
    TaskId: str
    Status: str
    Code: str
    Message: str
    EventSourceId: str = ""


def event_schemas() -> dict[str, dict[str, Any]]:
    return {m.__name__: m.model_json_schema() for m in (MnsEnvelope, ImmMessage, TaskContent)}
