"""The object store port. Backends: ``local`` (a directory per bucket) and ``s3``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol


@dataclass(frozen=True)
class ObjectInfo:
    """One object: its key within the bucket, size in bytes and mtime (Unix seconds)."""

    key: str
    size: int
    mtime: float


class ObjectStore(Protocol):
    """Objects addressed by ``(bucket, key)``; see ``pipeline.storage.uri`` for valid names.

    Every write is atomic: readers see the old object or the whole new one. A missing object
    raises ``ObjectNotFound`` on read; a missing bucket reads as missing and lists as empty.
    """

    def put_file(self, bucket: str, key: str, src: Path) -> None:
        """Store the local file ``src`` as the object."""
        ...

    def put_bytes(self, bucket: str, key: str, data: bytes, *, durable: bool = True) -> None:
        """Store ``data`` as the object. ``durable=False``: scratch that lives for one call
        (an EAS input staged for its task), which a crash may lose; stores that are durable
        anyway ignore it."""
        ...

    def put_stream(self, bucket: str, key: str, stream: BinaryIO, max_bytes: int) -> int:
        """Store ``stream`` and return its size; ``FileTooLarge`` past ``max_bytes``, leaving
        nothing behind (a previous object stays as it was)."""
        ...

    def get_to_file(self, bucket: str, key: str, dest: Path) -> None:
        """Copy the object to the local file ``dest`` (its directory must exist)."""
        ...

    def get_bytes(self, bucket: str, key: str) -> bytes:
        """The object's content."""
        ...

    def exists(self, bucket: str, key: str) -> bool:
        """Whether the object exists."""
        ...

    def stat(self, bucket: str, key: str) -> ObjectInfo:
        """The object's size and mtime; ``ObjectNotFound`` if missing."""
        ...

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix``, recursively, sorted by key."""
        ...

    def delete(self, bucket: str, key: str) -> None:
        """Remove the object; a missing object is not an error."""
        ...

    def has_bucket(self, bucket: str) -> bool:
        """Whether the bucket exists in the store (with or without objects)."""
        ...

    def bucket_names(self) -> tuple[str, ...]:
        """The buckets present in the store, sorted."""
        ...
