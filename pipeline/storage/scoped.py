"""The object store as one owner sees it.

``ScopedStore`` wraps any ``ObjectStore`` and asks a ``Gate`` (``pipeline.buckets.BucketPolicy``)
before every operation, so no reader or writer can forget the ownership check: the HTTP object
routes and every task's ``ctx.store``/``ctx.media`` get one of these, never the raw store.
Decisions are cached for the wrapper's lifetime (one request or one job).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from pipeline.errors import BucketAccessDenied, ObjectNotFound
from pipeline.storage.base import ObjectInfo, ObjectStore

READ, WRITE = "read", "write"


class Gate(Protocol):
    def require(self, owner: str, bucket: str, access: str, *, claim: bool = True) -> bool:
        """Raise ``BucketAccessDenied`` unless allowed (a write claims a bucket nobody owns
        unless ``claim=False``); False: the bucket has no owner and does not exist."""
        ...


class ScopedStore:
    """An ``ObjectStore`` limited to the buckets ``owner`` owns or was granted."""

    def __init__(self, store: ObjectStore, gate: Gate, owner: str) -> None:
        self.store, self.gate, self.owner = store, gate, owner
        self._granted: set[tuple[str, str]] = set()

    def _allowed(self, bucket: str, access: str) -> bool:
        if (bucket, access) in self._granted or (bucket, WRITE) in self._granted:
            return True
        known = self.gate.require(self.owner, bucket, access)
        if known:
            self._granted.add((bucket, access))
        return known

    def _readable(self, bucket: str, key: str) -> None:
        if not self._allowed(bucket, READ):
            raise ObjectNotFound(f"The object oss://{bucket}/{key} does not exist.")

    def require_write(self, bucket: str) -> None:
        """Check (and claim, if nobody owns it) a bucket the caller is about to write."""
        self._allowed(bucket, WRITE)

    def check_write(self, bucket: str) -> None:
        """Refuse now a write that would be refused later, claiming nothing (task creation:
        the bucket is claimed when the worker writes the output)."""
        if self.gate.require(self.owner, bucket, WRITE, claim=False):
            self._granted.add((bucket, WRITE))  # owned or shared: the put needs no second look

    def require_read(self, bucket: str) -> None:
        """Check a bucket the caller is about to read (a missing bucket passes: reads of it
        fail as not found)."""
        self._allowed(bucket, READ)

    def put_file(self, bucket: str, key: str, src: Path) -> None:
        self.require_write(bucket)
        self.store.put_file(bucket, key, src)

    def put_bytes(self, bucket: str, key: str, data: bytes, *, durable: bool = True) -> None:
        self.require_write(bucket)
        self.store.put_bytes(bucket, key, data, durable=durable)

    def put_stream(self, bucket: str, key: str, stream: BinaryIO, max_bytes: int) -> int:
        self.require_write(bucket)
        return self.store.put_stream(bucket, key, stream, max_bytes)

    def get_to_file(self, bucket: str, key: str, dest: Path) -> None:
        self._readable(bucket, key)
        self.store.get_to_file(bucket, key, dest)

    def get_bytes(self, bucket: str, key: str) -> bytes:
        self._readable(bucket, key)
        return self.store.get_bytes(bucket, key)

    def exists(self, bucket: str, key: str) -> bool:
        return self._allowed(bucket, READ) and self.store.exists(bucket, key)

    def stat(self, bucket: str, key: str) -> ObjectInfo:
        self._readable(bucket, key)
        return self.store.stat(bucket, key)

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        if not self._allowed(bucket, READ):
            return iter(())
        return self.store.list(bucket, prefix)

    def delete(self, bucket: str, key: str) -> None:
        if self._allowed(bucket, READ):  # a bucket nobody has holds nothing to delete
            self.require_write(bucket)
            self.store.delete(bucket, key)

    def has_bucket(self, bucket: str) -> bool:
        return self._allowed(bucket, READ) and self.store.has_bucket(bucket)

    def bucket_names(self) -> tuple[str, ...]:
        """The store's buckets this owner may read."""
        names: list[str] = []
        for name in self.store.bucket_names():
            try:
                if self._allowed(name, READ):
                    names.append(name)
            except BucketAccessDenied:
                continue
        return tuple(names)
