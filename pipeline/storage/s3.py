"""S3-compatible object store (MinIO in docker-compose, AWS S3, OSS's S3 endpoint).

Buckets are created on first write, a convenience for MinIO dev setups where nobody created
them by hand; production buckets normally exist already and the check is then one HEAD per
bucket per process. Uploads are single PUTs or multipart uploads that S3 publishes only on
completion, so readers never see half an object.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from pipeline.errors import FileTooLarge, ObjectNotFound, StorageError
from pipeline.storage.base import ObjectInfo

T = TypeVar("T")
CHUNK = 1 << 20
# HeadObject reports a bare "404"/"NotFound" (it has no body to carry a code).
MISSING_CODES = frozenset({"404", "NoSuchKey", "NoSuchBucket", "NotFound"})
ALREADY_OWNED_CODES = frozenset({"BucketAlreadyOwnedByYou", "BucketAlreadyExists"})


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class S3Store:
    """An ``ObjectStore`` on an S3 API, with path-style addressing (``host/bucket/key``)
    because MinIO and most self-hosted endpoints have no per-bucket DNS names."""

    def __init__(
        self, endpoint_url: str, access_key_id: str, secret_access_key: str, region: str
    ) -> None:
        self._args = {
            "endpoint_url": endpoint_url,
            # None, not "": lets boto3 fall back to its own credential chain (IAM roles).
            "aws_access_key_id": access_key_id or None,
            "aws_secret_access_key": secret_access_key or None,
            "region_name": region or None,
        }
        self._region = region
        self._client: Any = None
        self._lock = threading.Lock()
        self._buckets: set[str] = set()

    @property
    def client(self) -> Any:
        """The boto3 S3 client, created on first use (no network or import cost before)."""
        if self._client is None:
            with self._lock:  # boto3 client creation is not thread-safe
                if self._client is None:
                    self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        import boto3
        from botocore.config import Config

        config = Config(
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            # botocore >= 1.36 adds CRC32 checksums to every upload by default, which several
            # S3-compatible stores (older MinIO, Ceph, OSS's S3 endpoint) reject.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        # A private Session: boto3's default session is shared and not thread-safe.
        return boto3.session.Session().client("s3", config=config, **self._args)

    def _call(self, bucket: str, key: str, func: Callable[[], T]) -> T:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return func()
        except ClientError as exc:
            code = _error_code(exc)
            if code in MISSING_CODES:
                raise ObjectNotFound(f"The object oss://{bucket}/{key} does not exist.") from None
            raise StorageError(f"Object store error on oss://{bucket}/{key}: {code}") from exc
        except (BotoCoreError, Boto3Error) as exc:  # Boto3Error: e.g. S3UploadFailedError
            raise StorageError(f"Object store error on oss://{bucket}/{key}: {exc}") from exc

    def _ensure_bucket(self, bucket: str) -> None:
        if bucket in self._buckets:
            return
        try:
            self._call(bucket, "", lambda: self.client.head_bucket(Bucket=bucket))
        except ObjectNotFound:
            self._create_bucket(bucket)
        self._buckets.add(bucket)

    def _create_bucket(self, bucket: str) -> None:
        kwargs: dict[str, Any] = {"Bucket": bucket}
        if self._region and self._region != "us-east-1":  # AWS refuses an explicit us-east-1
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self._region}
        try:
            self._call(bucket, "", lambda: self.client.create_bucket(**kwargs))
        except StorageError as exc:
            # Another process creating the same bucket at the same moment is fine.
            if _error_code(exc.__cause__ or exc) not in ALREADY_OWNED_CODES:
                raise

    def put_file(self, bucket: str, key: str, src: Path) -> None:
        """Upload the local file ``src`` (multipart when large)."""
        self._ensure_bucket(bucket)
        self._call(bucket, key, lambda: self.client.upload_file(str(src), bucket, key))

    def put_bytes(self, bucket: str, key: str, data: bytes, *, durable: bool = True) -> None:
        """Write ``data`` as the object (S3 stores it durably whatever ``durable`` says)."""
        self._ensure_bucket(bucket)
        self._call(bucket, key, lambda: self.client.put_object(Bucket=bucket, Key=key, Body=data))

    def put_stream(self, bucket: str, key: str, stream: BinaryIO, max_bytes: int) -> int:
        """Write ``stream`` as the object; ``FileTooLarge`` past ``max_bytes``."""
        # Spooled to local disk first so an oversize stream is refused before any byte
        # reaches the bucket (no aborted multipart uploads to clean up).
        with tempfile.TemporaryFile() as spool:
            size = 0
            while chunk := stream.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise FileTooLarge(f"The object exceeds the limit of {max_bytes} bytes.")
                spool.write(chunk)
            spool.seek(0)
            self._ensure_bucket(bucket)
            self._call(bucket, key, lambda: self.client.upload_fileobj(spool, bucket, key))
        return size

    def get_to_file(self, bucket: str, key: str, dest: Path) -> None:
        """Download the object to ``dest`` (s3transfer writes a temp file and renames it)."""
        self._call(bucket, key, lambda: self.client.download_file(bucket, key, str(dest)))

    def get_bytes(self, bucket: str, key: str) -> bytes:
        """The object's content."""

        def read() -> bytes:
            body = self.client.get_object(Bucket=bucket, Key=key)["Body"]
            with body:
                data: bytes = body.read()
            return data

        return self._call(bucket, key, read)

    def exists(self, bucket: str, key: str) -> bool:
        """Whether the object exists."""
        try:
            self.stat(bucket, key)
        except ObjectNotFound:
            return False
        return True

    def stat(self, bucket: str, key: str) -> ObjectInfo:
        """Size and mtime; ``ObjectNotFound`` if missing."""
        head = self._call(bucket, key, lambda: self.client.head_object(Bucket=bucket, Key=key))
        return ObjectInfo(
            key=key, size=int(head["ContentLength"]), mtime=head["LastModified"].timestamp()
        )

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects under ``prefix``, recursively, sorted by key (S3 lists in key order). A
        missing bucket lists as empty, like the local store."""
        paginator = self.client.get_paginator("list_objects_v2")
        pages = iter(paginator.paginate(Bucket=bucket, Prefix=prefix))
        while True:
            try:
                page = self._call(bucket, prefix, lambda: next(pages, None))
            except ObjectNotFound:
                return
            if page is None:
                return
            yield from _page_objects(page)

    def delete(self, bucket: str, key: str) -> None:
        """Remove the object; a missing object or bucket is not an error."""
        try:
            self._call(bucket, key, lambda: self.client.delete_object(Bucket=bucket, Key=key))
        except ObjectNotFound:
            return

    def has_bucket(self, bucket: str) -> bool:
        """Whether the bucket exists (HeadBucket)."""
        try:
            self._call(bucket, "", lambda: self.client.head_bucket(Bucket=bucket))
        except ObjectNotFound:
            return False
        return True

    def bucket_names(self) -> tuple[str, ...]:
        """The buckets these credentials can list, sorted."""
        answer = self._call("", "", lambda: self.client.list_buckets())
        return tuple(sorted(str(b["Name"]) for b in answer.get("Buckets", [])))


def _page_objects(page: dict[str, Any]) -> Iterator[ObjectInfo]:
    for obj in page.get("Contents", []):
        if obj["Key"].endswith("/"):
            continue  # a "folder" marker made by consoles, not an object the local store has
        yield ObjectInfo(
            key=obj["Key"], size=int(obj["Size"]), mtime=obj["LastModified"].timestamp()
        )
