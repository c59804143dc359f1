"""The objects a request handler needs, built once per API process in the lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery

from pipeline.accounts import AccountIds
from pipeline.db import Database
from pipeline.notify.store import MessageStore
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
    accounts: AccountIds


@dataclass(frozen=True)
class Caller:
    """The authenticated owner (its AccessKeyId) and this request's id."""

    owner: str
    request_id: str
