"""The one typed settings object. Every value comes from an ``OPENIMM_*`` environment variable.

Components receive a ``Settings`` instance as an argument; nothing else reads the environment.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Per task type hard time limits in seconds. A task that exceeds its limit ends Failed with
# Code "TaskTimeLimitExceeded". Overridable with OPENIMM_TIME_LIMITS='{"FileCompression": 60}'.
DEFAULT_TIME_LIMITS: dict[str, int] = {
    "FileCompression": 3600,
    "Noop": 60,
    "Sleep": 600,
    "Poison": 60,
}
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
    # Each worker process loads the models of the queues it serves at start, not on its
    # first job (workers.warmup); off only to measure what a cold first job costs.
    warm_workers: bool = True
    embedded_workers: int = 1
    predict_timeout_seconds: float = 300.0
    eas_project: str = "eas"  # project that EAS predict calls are recorded in (per owner)
    eas_output_bucket: str = "eas-outputs"  # where Model Hub services write their results
    # Speech: a CTranslate2 Whisper model directory (larger models); empty → the whisper-base
    # installed by `openimm models install whisper-base` in the data dir, else PocketSphinx.
    whisper_model_dir: str = ""
    # Media models: inputs larger or longer (in what is processed) are refused up front.
    media_max_bytes: int = 4 << 30
    media_max_seconds: float = 4 * 3600
    # Notifications: the outbox dispatcher and webhook delivery.
    dispatch_interval_seconds: float = 0.02
    delivery_concurrency: int = 16
    webhook_timeout_seconds: float = 10.0
    # MNS queues: a message received this many times moves to "<queue>-deadletter" (0 = never).
    mns_dead_letter_after: int = 0
    # Long-polling receivers re-check their queue this often (latency vs. store load).
    mns_poll_interval_seconds: float = 0.01
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
        return self.broker_url or "filesystem://"

    @property
    def oss_root(self) -> Path:
        return self.resolved_data_dir / "oss"

    @property
    def allowed_file_roots(self) -> list[Path]:
        return [Path(p).expanduser().resolve() for p in self.file_roots.split(",") if p.strip()]

    def time_limit(self, task_type: str) -> int:
        return int(self.time_limits.get(task_type, DEFAULT_TIME_LIMITS.get(task_type, 3600)))

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
