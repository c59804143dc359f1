"""The objects a request handler needs, built once per API process in the lifespan."""

from __future__ import annotations

from dataclasses import dataclass, field

from celery import Celery

from pipeline.accounts import AccountIds
from pipeline.buckets import BucketPolicy
from pipeline.db import Database
from pipeline.notify.store import MessageStore
from pipeline.notify.wake import LongPolls
from pipeline.replay import ReplayCache
from pipeline.settings import Settings
from pipeline.storage import ObjectStore, ScopedStore


@dataclass
class Services:
    settings: Settings
    db: Database
    celery: Celery
    raw_store: ObjectStore  # never handed to request code: use ``store_for``
    buckets: BucketPolicy
    keys: dict[str, str]
    messages: MessageStore
    replay: ReplayCache
    accounts: AccountIds
    long_polls: LongPolls = field(default_factory=LongPolls)

    def store_for(self, owner: str) -> ScopedStore:
        """The object store limited to what ``owner`` owns or was granted."""
        return ScopedStore(self.raw_store, self.buckets, owner)


@dataclass(frozen=True)
class Caller:
    """The authenticated owner (its AccessKeyId) and this request's id."""

    owner: str
    request_id: str
