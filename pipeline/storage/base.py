"""The object store port. Backends: ``local`` (a directory per bucket) and ``s3``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    mtime: float


class ObjectStore(Protocol):
    """Every write is atomic: readers see the old object or the whole new one."""

    def put_file(self, bucket: str, key: str, src: Path) -> None: ...

    def put_bytes(self, bucket: str, key: str, data: bytes) -> None: ...

    def put_stream(self, bucket: str, key: str, stream: BinaryIO, max_bytes: int) -> int: ...

    def get_to_file(self, bucket: str, key: str, dest: Path) -> None: ...

    def get_bytes(self, bucket: str, key: str) -> bytes: ...

    def exists(self, bucket: str, key: str) -> bool: ...

    def stat(self, bucket: str, key: str) -> ObjectInfo: ...

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]: ...

    def delete(self, bucket: str, key: str) -> None: ...
