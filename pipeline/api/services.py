"""The objects a request handler needs, built once per API process in the lifespan."""

from __future__ import annotations

from dataclasses import dataclass, field

from celery import Celery

from pipeline.db import Database
from pipeline.notify.store import MessageStore
from pipeline.notify.wake import LongPolls
from pipeline.settings import Settings
from pipeline.storage import ObjectStore


@dataclass
class Services:
    settings: Settings
    db: Database
    celery: Celery
    store: ObjectStore
    keys: dict[str, str]
    messages: MessageStore
    long_polls: LongPolls = field(default_factory=LongPolls)


@dataclass(frozen=True)
class Caller:
    """The authenticated owner (its AccessKeyId) and this request's id."""

    owner: str
    request_id: str
