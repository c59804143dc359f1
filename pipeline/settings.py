"""The one typed settings object. Every value comes from an ``OPENIMM_*`` environment variable.

Components receive a ``Settings`` instance as an argument; nothing else reads the environment.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline import jobs

# Per task type time limits in seconds, from the job-kind declarations. A task that exceeds
# its limit ends Failed with Code "TaskTimeLimitExceeded". Overridable with
# OPENIMM_TIME_LIMITS='{"FileCompression": 60}'.
DEFAULT_TIME_LIMITS: dict[str, int] = {k.task_type: k.time_limit for k in jobs.KINDS}
# Margin between the longest task time limit and the broker's visibility timeout, so a
# long-running task is never redelivered to a second worker while the first still runs it.
VISIBILITY_MARGIN_SECONDS = 600


class Settings(BaseSettings):
    """openimm settings; see README "Configuration" for the full table."""

    model_config = SettingsConfigDict(env_prefix="OPENIMM_", extra="ignore")

    data_dir: Path = Path("./openimm-data")
    database_url: str = ""
    broker_url: str = ""
    redis_url: str = ""
    host: str = "127.0.0.1"
    port: int = 8080

    # "AK1:SK1[:AccountId1],AK2:SK2". Each pair is one owner; AccountId (digits) is the
    # numeric account UID shown in TopicOwner/OwnerId (derived when absent: pipeline.accounts).
    # Empty → keys file in the data dir (generated on first start) unless dev_mode is set.
    access_keys: str = ""
    dev_mode: bool = False
    signature_max_skew_seconds: int = 900
    # Where accepted signatures are remembered (replay protection): "" → Redis when
    # redis_url is set, else PostgreSQL, else memory (embedded SQLite, one API process);
    # or force "db" / "memory".
    replay_cache: str = ""
    # The eas-prediction client writes its *local* time with a "GMT" suffix: UTC offsets
    # ("+08:00,-05:00") of client hosts not running in UTC whose Date is accepted shifted.
    eas_client_utc_offsets: str = ""
    # Request limits: the request line plus headers (bytes); bodies have per-protocol limits.
    max_request_head_bytes: int = 64 << 10
    # Operator endpoints: /metrics needs "Authorization: Bearer <token>" (unset → refused,
    # except in dev mode); /docs and /openapi.json are served in dev mode or with api_docs.
    metrics_token: str = ""
    api_docs: bool = False
    # Console owners (AccessKeyIds, comma separated) who may see and change worker pools;
    # empty → the only owner of a single-key server (or dev mode), nobody with several keys.
    console_operators: str = ""
    region: str = "local"

    # Object store. s3_endpoint_url set → S3-compatible (MinIO, AWS); else local directory.
    s3_endpoint_url: str = ""
    s3_access_key_id: str = ""
    s3_secret_access_key: str = ""
    s3_region: str = "us-east-1"
    file_roots: str = ""  # comma-separated directories that file:// URIs may read from
    http_allow_private: bool = False
    http_max_bytes: int = 1 << 30
    http_timeout_seconds: float = 30.0
    upload_max_bytes: int = 5 << 30

    # Task execution.
    max_attempts: int = 3
    time_limits: dict[str, int] = Field(default_factory=dict)
    queue_routes: dict[str, str] = Field(default_factory=dict)
    # 0 → longest time limit + margin. Lower it only for drills: a job running longer than
    # this on Redis is redelivered to a second worker (its result is still stored once).
    visibility_timeout_seconds: int = 0
    worker_concurrency: int = 2
    # Leases: a worker renews the lease of each task it runs every heartbeat (0 → a third of
    # the lease); the reaper re-enqueues Running tasks whose lease expired (their worker died)
    # every reaper interval. A dead worker's jobs restart within lease + reaper interval.
    lease_seconds: float = 30.0
    heartbeat_seconds: float = 0.0
    reaper_interval_seconds: float = 5.0
    # How long a worker waits (retrying with backoff) for the database, broker or object store
    # before giving the job back to the queue. Outages never fail a task.
    outage_wait_seconds: float = 300.0
    # A pooled database connection idle longer than this is pinged before use, so connections
    # broken by a database restart are replaced instead of failing a request (0 = always).
    db_ping_idle_seconds: float = 2.0
    # Each worker process loads the models of the queues it serves at start, not on its
    # first job (workers.warmup); off only to measure what a cold first job costs.
    warm_workers: bool = True
    # Embedded (filesystem) broker: how often an idle worker looks for a job. kombu's 1 s
    # default put 0.4-0.5 s of dead time before every job; a look is one directory listing
    # per queue (messages appear by atomic rename, so polling mid-write takes nothing).
    broker_poll_interval_seconds: float = Field(default=0.05, gt=0, le=5)
    worker_pool: str = "prefork"  # "threads" for pools of batching kinds (image services)
    batch_pool_threads: int = 16  # concurrent jobs of serve's threads pool (batching queues)
    embedded_workers: int = 1
    # Intra-op threads of a worker process's models; 0: the cores / the pool's concurrency.
    torch_threads: int = Field(default=0, ge=0)
    predict_timeout_seconds: float = 300.0
    # Synchronous calls are woken by push when their task ends; they also re-read the task
    # this often, as a fallback for wake-ups that cannot reach them (SQLite across processes).
    sync_wait_fallback_seconds: float = Field(default=1.0, gt=0)
    sync_wait_push: bool = True  # off only to measure what re-reading alone costs
    eas_project: str = "eas"  # project that EAS predict calls are recorded in (per owner)
    # Stem of each owner's Model Hub output bucket, <stem>-<hash of owner> (pipeline.buckets).
    eas_output_bucket: str = "eas-outputs"
    # Speech: a CTranslate2 Whisper model directory (larger models); empty → the whisper-base
    # installed by `openimm models install whisper-base` in the data dir, else PocketSphinx.
    whisper_model_dir: str = ""
    # Media models: inputs larger or longer (in what is processed) are refused up front.
    media_max_bytes: int = 4 << 30
    media_max_seconds: float = 4 * 3600
    # Images with more pixels are refused from their header, before decoding (100 MP).
    image_max_pixels: int = Field(default=100_000_000, ge=1)
    # Notifications: the outbox dispatcher and webhook delivery.
    dispatch_interval_seconds: float = 0.02
    delivery_concurrency: int = 16
    webhook_timeout_seconds: float = 10.0
    # MNS queues: a message received this many times moves to "<queue>-deadletter" (0 = never).
    mns_dead_letter_after: int = 0
    # Long-polling receivers are woken by push when a message is put; they also re-check
    # their queue this often, as a fallback for wake-ups that cannot reach them.
    mns_poll_interval_seconds: float = 1.0
    # Long polls one owner may have waiting at once, per API process (over → 429 error XML).
    mns_max_long_polls_per_owner: int = 100
    # Quotas, MNS's defaults: queues and topics per owner, subscriptions per topic.
    mns_max_queues_per_owner: int = 1000
    mns_max_topics_per_owner: int = 1000
    mns_max_subscriptions_per_topic: int = 100
    task_events: bool = False  # Celery monitoring events (Flower enables them when running)
    device: str = ""  # empty → cuda:N when available, else cpu
    diagnostics: bool = False  # enables CreateDiagnosticTask (benchmarks, failure drills)
    # Faces (indexing with Official:FaceManagement / ImageManagement templates).
    face_detector: str = "hog"  # "hog" (fast, CPU) or "cnn" (dlib MMOD: better recall, GPU-worthy)
    face_max_side: int = 1600  # detection runs at most at this size; boxes map back
    video_face_interval_seconds: float = 1.0
    video_face_max_frames: int = 60

    @field_validator("time_limits", "queue_routes", mode="before")
    @classmethod
    def _json_or_dict(cls, value: object) -> object:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value

    @field_validator("replay_cache")
    @classmethod
    def _replay_backend(cls, value: str) -> str:
        if value not in ("", "db", "memory"):
            raise ValueError("OPENIMM_REPLAY_CACHE must be empty, 'db' or 'memory'")
        return value

    @field_validator("eas_client_utc_offsets")
    @classmethod
    def _utc_offsets(cls, value: str) -> str:
        from pipeline.eas_auth import client_offsets

        client_offsets(value)  # raises ValueError on a malformed offset
        return value

    @cached_property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def db_url(self) -> str:
        """SQLAlchemy URL; ``postgresql://`` is mapped to the psycopg 3 driver."""
        url = self.database_url or f"sqlite:///{self.resolved_data_dir / 'openimm.db'}"
        if url.startswith("postgresql://") or url.startswith("postgres://"):
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        return url

    @property
    def is_embedded_broker(self) -> bool:
        return not self.broker_url

    @property
    def broker_folder(self) -> Path:
        return self.resolved_data_dir / "broker"

    @property
    def celery_broker_url(self) -> str:
        # The embedded broker is kombu's filesystem transport: it needs no server, serves
        # separate worker processes and, unlike sqla+sqlite, supports fanout, so remote control
        # (CancelTask revoke, pool grow/shrink, inspect) works the same as on Redis.
        return self.broker_url or "openimm-fs://"  # pipeline.fsbroker: atomic message files

    @property
    def oss_root(self) -> Path:
        return self.resolved_data_dir / "oss"

    @property
    def allowed_file_roots(self) -> list[Path]:
        return [Path(p).expanduser().resolve() for p in self.file_roots.split(",") if p.strip()]

    def time_limit(self, task_type: str) -> int:
        default = DEFAULT_TIME_LIMITS.get(task_type, jobs.DEFAULT_TIME_LIMIT)
        return int(self.time_limits.get(task_type, default))

    @property
    def heartbeat_interval(self) -> float:
        return self.heartbeat_seconds if self.heartbeat_seconds > 0 else self.lease_seconds / 3

    @property
    def visibility_timeout(self) -> int:
        if self.visibility_timeout_seconds > 0:
            return self.visibility_timeout_seconds
        longest = max([*DEFAULT_TIME_LIMITS.values(), *self.time_limits.values()])
        return longest + VISIBILITY_MARGIN_SECONDS

    def _access_key_entries(self) -> list[tuple[str, str, str]]:
        """``(AccessKeyId, AccessKeySecret, AccountId or "")`` per ``OPENIMM_ACCESS_KEYS`` entry."""
        entries = []
        for item in self.access_keys.split(","):
            if not item.strip():
                continue
            key_id, sep, secret = item.strip().partition(":")
            secret, account = _split_account(secret)
            if not sep or not key_id or not secret:
                raise ValueError(
                    "OPENIMM_ACCESS_KEYS must be 'AccessKeyId:AccessKeySecret[:AccountId],…'"
                )
            entries.append((key_id, secret, account))
        return entries

    def parsed_access_keys(self) -> dict[str, str]:
        """``{AccessKeyId: AccessKeySecret}`` from ``OPENIMM_ACCESS_KEYS``."""
        return {key_id: secret for key_id, secret, _ in self._access_key_entries()}

    def account_ids(self) -> dict[str, str]:
        """``{AccessKeyId: AccountId}`` for the entries that name one (the third field)."""
        return {key_id: account for key_id, _, account in self._access_key_entries() if account}


def _split_account(secret: str) -> tuple[str, str]:
    """``"SK:1234"`` → ``("SK", "1234")``: a trailing all-digit field is the AccountId."""
    head, sep, tail = secret.rpartition(":")
    if sep and head and tail.isdigit():
        return head, tail
    return secret, ""


def load_settings() -> Settings:
    """Read settings from the environment (the only place that does)."""
    return Settings()
