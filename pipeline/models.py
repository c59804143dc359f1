"""ORM models: projects, datasets, tasks, the transactional outbox of events, and the file
meta / faces / figure clusters of datasets.

Times are stored as naive UTC (``UTCDateTime``) so SQLite and PostgreSQL behave the same.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# IMM project/dataset limit defaults (reference §3.1).
DEFAULT_LIMITS = {
    "ProjectMaxDatasetCount": 1_000_000_000,
    "DatasetMaxBindCount": 10,
    "DatasetMaxFileCount": 100_000_000,
    "DatasetMaxEntityCount": 10_000_000_000,
    "DatasetMaxRelationCount": 100_000_000_000,
    "DatasetMaxTotalFileSize": 90_000_000_000_000_000,
}


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in Python, naive UTC in the database."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Project(Base):
    __tablename__ = "projects"
    __table_args__ = (UniqueConstraint("owner", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(128))
    description: Mapped[str] = mapped_column(String(256), default="")
    service_role: Mapped[str] = mapped_column(String(256), default="AliyunIMMDefaultRole")
    template_id: Mapped[str] = mapped_column(String(128), default="")
    tags: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)
    limits: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime)
    update_time: Mapped[datetime] = mapped_column(UTCDateTime)


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    description: Mapped[str] = mapped_column(String(256), default="")
    template_id: Mapped[str] = mapped_column(String(128), default="")
    workflow_parameters: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)
    limits: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    file_count: Mapped[int] = mapped_column(BigInteger, default=0)
    total_file_size: Mapped[int] = mapped_column(BigInteger, default=0)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime)
    update_time: Mapped[datetime] = mapped_column(UTCDateTime)


class Task(Base):
    """One asynchronous job. ``status`` is Running → Succeeded | Failed | Cancelled."""

    __tablename__ = "tasks"
    __table_args__ = (
        UniqueConstraint("project_id", "client_token"),
        Index(None, "project_id", "task_type", "id"),
        Index(None, "project_id", "start_time"),
        Index(None, "status"),
    )

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    owner: Mapped[str] = mapped_column(String(128))
    project_name: Mapped[str] = mapped_column(String(128))
    dataset_name: Mapped[str] = mapped_column(String(128), default="")
    task_type: Mapped[str] = mapped_column(String(64))
    queue: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="Running")
    code: Mapped[str] = mapped_column(String(128), default="")
    message: Mapped[str] = mapped_column(Text, default="")
    progress: Mapped[int] = mapped_column(Integer, default=0)
    start_time: Mapped[datetime] = mapped_column(UTCDateTime)
    end_time: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    user_data: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    request: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    notification: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    request_id: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[str] = mapped_column(String(64))
    client_token: Mapped[str | None] = mapped_column(String(128), nullable=True)
    request_hash: Mapped[str] = mapped_column(String(64), default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str] = mapped_column(String(255), default="")
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Set by the claim, renewed by the worker's heartbeat, cleared when the reaper re-enqueues
    # the task. Not indexed: the reaper scans Running rows (status index) and an index here
    # would cost every claim and heartbeat its HOT update.
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    duration_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class Event(Base):
    """Transactional outbox: written in the same transaction as the state it announces."""

    __tablename__ = "events"
    __table_args__ = (Index(None, "published_at", "seq"),)

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    id: Mapped[str] = mapped_column(String(64), unique=True)
    owner: Mapped[str] = mapped_column(String(128))
    project_name: Mapped[str] = mapped_column(String(128))
    type: Mapped[str] = mapped_column(String(128))
    task_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    topic: Mapped[str] = mapped_column(String(256), default="")
    content: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Topic(Base):
    """An MNS-style topic owned by one AccessKey owner."""

    __tablename__ = "topics"
    __table_args__ = (UniqueConstraint("owner", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(256))
    create_time: Mapped[datetime] = mapped_column(UTCDateTime)


class Subscription(Base):
    """Where a topic's messages go: an HTTP endpoint (webhook push)."""

    __tablename__ = "subscriptions"
    __table_args__ = (UniqueConstraint("topic_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    topic_id: Mapped[int] = mapped_column(ForeignKey("topics.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(256))
    endpoint: Mapped[str] = mapped_column(Text)
    content_format: Mapped[str] = mapped_column(String(16), default="JSON")
    retry_policy: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    secret: Mapped[str] = mapped_column(String(128))
    create_time: Mapped[datetime] = mapped_column(UTCDateTime)


class Delivery(Base):
    """One event for one subscription. The unique key makes fan-out idempotent: a dispatcher
    that dies after fanning out but before marking the event published cannot create a second
    delivery when it runs again."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("event_id", "subscription_id"),
        Index(None, "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    event_id: Mapped[str] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"))
    subscription_id: Mapped[int] = mapped_column(ForeignKey("subscriptions.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default="pending")  # delivered | dead
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    publish_time: Mapped[datetime] = mapped_column(UTCDateTime)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="")


class DeliveryAttempt(Base):
    """The delivery log: one row per HTTP attempt."""

    __tablename__ = "delivery_attempts"
    __table_args__ = (Index(None, "delivery_id"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    delivery_id: Mapped[int] = mapped_column(ForeignKey("deliveries.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    latency_ms: Mapped[int] = mapped_column(Integer)
    error: Mapped[str] = mapped_column(Text, default="")


class MnsQueue(Base):
    """An MNS-compatible queue (pull subscriptions for the aliyun-mns-sdk)."""

    __tablename__ = "mns_queues"
    __table_args__ = (UniqueConstraint("owner", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(256))
    visibility_timeout: Mapped[int] = mapped_column(Integer, default=30)
    maximum_message_size: Mapped[int] = mapped_column(Integer, default=65536)
    message_retention_period: Mapped[int] = mapped_column(Integer, default=345600)
    delay_seconds: Mapped[int] = mapped_column(Integer, default=0)
    polling_wait_seconds: Mapped[int] = mapped_column(Integer, default=0)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime)


class MnsMessage(Base):
    __tablename__ = "mns_messages"
    __table_args__ = (
        Index(None, "queue_id", "next_visible_time"),
        # One copy of a topic message per queue, however often the dispatcher retries.
        UniqueConstraint("queue_id", "message_id"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    queue_id: Mapped[int] = mapped_column(ForeignKey("mns_queues.id", ondelete="CASCADE"))
    message_id: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)
    body_md5: Mapped[str] = mapped_column(String(32))
    priority: Mapped[int] = mapped_column(Integer, default=8)
    enqueue_time: Mapped[datetime] = mapped_column(UTCDateTime)
    first_dequeue_time: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    next_visible_time: Mapped[datetime] = mapped_column(UTCDateTime)
    dequeue_count: Mapped[int] = mapped_column(Integer, default=0)
    receipt_handle: Mapped[str] = mapped_column(String(64), default="")


# ---- file meta, faces and figure clusters (issue 4) ---------------------------------------

# Byte-order collation on PostgreSQL, as SQLite's default BINARY: string ranges, prefixes and
# sort orders of SimpleQuery then give the same results on both databases.
IndexString = String(1024).with_variant(String(1024, collation="C"), "postgresql")


class File(Base):
    """One indexed file (IMM ``File``). ``doc`` holds the document minus ``Figures``, which
    live in :class:`Figure` so clustering can change them without rewriting the document."""

    __tablename__ = "files"
    __table_args__ = (Index(None, "dataset_id", "update_time"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # ObjectId
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    owner: Mapped[str] = mapped_column(String(128))
    project_name: Mapped[str] = mapped_column(String(128))
    dataset_name: Mapped[str] = mapped_column(String(128))
    uri: Mapped[str] = mapped_column(Text)
    media_type: Mapped[str] = mapped_column(String(16), default="other")
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    doc: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime)
    update_time: Mapped[datetime] = mapped_column(UTCDateTime)


class Figure(Base):
    """One detected face. ``clustered`` is False until a clustering run has seen it (IMM's
    runs are incremental); ``manual`` marks a face the user placed with UpdateFileMeta."""

    __tablename__ = "figures"
    __table_args__ = (
        Index(None, "dataset_id", "clustered"),
        Index(None, "dataset_id", "cluster_id"),
        Index(None, "file_id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # FigureId
    file_id: Mapped[str] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"))
    dataset_id: Mapped[int] = mapped_column(Integer)
    media_type: Mapped[str] = mapped_column(String(16), default="image")
    cluster_id: Mapped[str] = mapped_column(String(64))
    cluster_confidence: Mapped[float] = mapped_column(Float, default=0.0)
    clustered: Mapped[bool] = mapped_column(Boolean, default=False)
    manual: Mapped[bool] = mapped_column(Boolean, default=False)
    qualified: Mapped[bool] = mapped_column(Boolean, default=False)
    quality: Mapped[float] = mapped_column(Float, default=0.0)
    attrs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)


class FigureCluster(Base):
    """A person (IMM ``FigureCluster``). ``centroid``/``centroid_size`` are the running mean of
    member embeddings that incremental runs match new faces against."""

    __tablename__ = "figure_clusters"
    __table_args__ = (Index(None, "dataset_id", "create_time"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # ObjectId Cluster-<uuid>
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    owner: Mapped[str] = mapped_column(String(128))
    project_name: Mapped[str] = mapped_column(String(128))
    dataset_name: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(256), default="")
    custom_id: Mapped[str] = mapped_column(String(256), default="")
    custom_labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    cover_figure_id: Mapped[str] = mapped_column(String(64), default="")
    cover_manual: Mapped[bool] = mapped_column(Boolean, default=False)
    centroid: Mapped[bytes] = mapped_column(LargeBinary)
    centroid_size: Mapped[int] = mapped_column(Integer, default=0)
    image_count: Mapped[int] = mapped_column(BigInteger, default=0)
    video_count: Mapped[int] = mapped_column(BigInteger, default=0)
    face_count: Mapped[int] = mapped_column(BigInteger, default=0)
    meta_lock_version: Mapped[int] = mapped_column(BigInteger, default=0)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime)
    update_time: Mapped[datetime] = mapped_column(UTCDateTime)


class FileField(Base):
    """Search index of file documents: one row per leaf value. ``elem`` is the index of the
    array element a value belongs to (-1 for top-level scalars), which is what lets
    ``nested`` queries require all conditions to hit the same element. Portable SQL over this
    table gives SimpleQuery the same results on SQLite and PostgreSQL."""

    __tablename__ = "file_fields"
    __table_args__ = (
        Index(None, "dataset_id", "field", "sval"),
        Index(None, "dataset_id", "field", "nval"),
        Index(None, "file_id"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    file_id: Mapped[str] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"))
    dataset_id: Mapped[int] = mapped_column(Integer)
    field: Mapped[str] = mapped_column(String(256))
    elem: Mapped[int] = mapped_column(Integer, default=-1)
    sval: Mapped[str] = mapped_column(IndexString)
    lval: Mapped[str] = mapped_column(String(1024))  # casefolded sval, for match-phrase
    nval: Mapped[float | None] = mapped_column(Float, nullable=True)


class Bucket(Base):
    """An object-store bucket and the owner it belongs to (as OSS buckets belong to an
    account). The primary key makes "first write claims the bucket" atomic."""

    __tablename__ = "buckets"
    __table_args__ = (Index(None, "owner"),)

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    create_time: Mapped[datetime] = mapped_column(UTCDateTime)


class BucketGrant(Base):
    """An operator's explicit share of a bucket with another owner: ``read`` or ``write``
    (write includes read)."""

    __tablename__ = "bucket_grants"

    bucket: Mapped[str] = mapped_column(
        ForeignKey("buckets.name", ondelete="CASCADE"), primary_key=True
    )
    grantee: Mapped[str] = mapped_column(String(128), primary_key=True)
    access: Mapped[str] = mapped_column(String(8))
    create_time: Mapped[datetime] = mapped_column(UTCDateTime)


# ---- request replay cache (issue 9) -------------------------------------------------------


class ReplayKey(Base):
    """A signed request already accepted (its signature), kept until its window closes."""

    __tablename__ = "replay_keys"
    __table_args__ = (Index(None, "expires_at"),)

    key: Mapped[str] = mapped_column(String(160), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
