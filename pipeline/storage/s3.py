"""S3-compatible object store (MinIO in docker-compose, AWS S3, OSS's S3 endpoint).

Buckets are created on first write, a convenience for MinIO dev setups; production buckets
normally exist already and the call is then a no-op.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from pipeline.errors import FileTooLarge, ObjectNotFound, StorageError
from pipeline.storage.base import ObjectInfo

MISSING_CODES = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}


class S3Store:
    def __init__(
        self, endpoint_url: str, access_key_id: str, secret_access_key: str, region: str
    ) -> None:
        self._args = {
            "endpoint_url": endpoint_url,
            "aws_access_key_id": access_key_id or None,
            "aws_secret_access_key": secret_access_key or None,
            "region_name": region,
        }
        self._client: Any = None
        self._buckets: set[str] = set()

    @property
    def client(self) -> Any:
        if self._client is None:  # created lazily: no network at construction
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "s3", config=Config(s3={"addressing_style": "path"}), **self._args
            )
        return self._client

    def _call(self, bucket: str, key: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return func(*args, **kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in MISSING_CODES:
                raise ObjectNotFound(f"The object oss://{bucket}/{key} does not exist.") from None
            raise StorageError(f"Object store error on oss://{bucket}/{key}: {code}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"Object store unavailable: {exc}") from exc

    def _ensure_bucket(self, bucket: str) -> None:
        if bucket in self._buckets:
            return
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=bucket)
        except ClientError:
            self._call(bucket, "", self.client.create_bucket, Bucket=bucket)
        self._buckets.add(bucket)

    def put_file(self, bucket: str, key: str, src: Path) -> None:
        self._ensure_bucket(bucket)
        self._call(bucket, key, self.client.upload_file, str(src), bucket, key)

    def put_bytes(self, bucket: str, key: str, data: bytes) -> None:
        self._ensure_bucket(bucket)
        self._call(bucket, key, self.client.put_object, Bucket=bucket, Key=key, Body=data)

    def put_stream(self, bucket: str, key: str, stream: BinaryIO, max_bytes: int) -> int:
        # Spool first so an oversize stream is refused before anything reaches the bucket.
        with tempfile.NamedTemporaryFile() as spool:
            size = 0
            while chunk := stream.read(1 << 20):
                size += len(chunk)
                if size > max_bytes:
                    raise FileTooLarge(f"The object exceeds the limit of {max_bytes} bytes.")
                spool.write(chunk)
            spool.flush()
            self.put_file(bucket, key, Path(spool.name))
        return size

    def get_to_file(self, bucket: str, key: str, dest: Path) -> None:
        self._call(bucket, key, self.client.download_file, bucket, key, str(dest))

    def get_bytes(self, bucket: str, key: str) -> bytes:
        body = self._call(bucket, key, self.client.get_object, Bucket=bucket, Key=key)["Body"]
        data: bytes = body.read()
        return data

    def exists(self, bucket: str, key: str) -> bool:
        try:
            self.stat(bucket, key)
        except ObjectNotFound:
            return False
        return True

    def stat(self, bucket: str, key: str) -> ObjectInfo:
        head = self._call(bucket, key, self.client.head_object, Bucket=bucket, Key=key)
        return ObjectInfo(
            key=key, size=int(head["ContentLength"]), mtime=head["LastModified"].timestamp()
        )

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call(
            bucket, prefix, lambda: list(paginator.paginate(Bucket=bucket, Prefix=prefix))
        )
        for page in pages:
            for obj in page.get("Contents", []):
                yield ObjectInfo(
                    key=obj["Key"], size=int(obj["Size"]), mtime=obj["LastModified"].timestamp()
                )

    def delete(self, bucket: str, key: str) -> None:
        self._call(bucket, key, self.client.delete_object, Bucket=bucket, Key=key)
