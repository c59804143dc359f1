"""Local object store: ``oss://<bucket>/<key>`` is the file ``<root>/<bucket>/<key>``, so users
can drop files in with ``cp``. Writes go to a temp file in the target directory and are
renamed into place, so no reader ever sees half an object."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from pipeline.errors import FileTooLarge, ForbiddenURI, ObjectNotFound
from pipeline.storage.base import ObjectInfo

TMP_PREFIX = ".openimm-tmp-"
CHUNK = 1 << 20


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, bucket: str, key: str) -> Path:
        base = (self.root / bucket).resolve()
        path = (base / key).resolve() if key else base
        # Defence in depth behind URI parsing: never leave the bucket directory.
        if path != base and base not in path.parents:
            raise ForbiddenURI(f"oss://{bucket}/{key} escapes its bucket.")
        return path

    def _write(self, bucket: str, key: str, fill: Callable[[BinaryIO], int]) -> int:
        target = self._path(bucket, key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=TMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as handle:
                size = int(fill(handle))
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return size

    def put_file(self, bucket: str, key: str, src: Path) -> None:
        def fill(handle: BinaryIO) -> int:
            with src.open("rb") as source:
                shutil.copyfileobj(source, handle, CHUNK)
            return src.stat().st_size

        self._write(bucket, key, fill)

    def put_bytes(self, bucket: str, key: str, data: bytes) -> None:
        self._write(bucket, key, lambda handle: handle.write(data))

    def put_stream(self, bucket: str, key: str, stream: BinaryIO, max_bytes: int) -> int:
        def fill(handle: BinaryIO) -> int:
            size = 0
            while chunk := stream.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise FileTooLarge(f"The object exceeds the limit of {max_bytes} bytes.")
                handle.write(chunk)
            return size

        return self._write(bucket, key, fill)

    def _existing(self, bucket: str, key: str) -> Path:
        path = self._path(bucket, key)
        if not path.is_file():
            raise ObjectNotFound(f"The object oss://{bucket}/{key} does not exist.")
        return path

    def get_to_file(self, bucket: str, key: str, dest: Path) -> None:
        shutil.copyfile(self._existing(bucket, key), dest)

    def get_bytes(self, bucket: str, key: str) -> bytes:
        return self._existing(bucket, key).read_bytes()

    def exists(self, bucket: str, key: str) -> bool:
        return self._path(bucket, key).is_file()

    def stat(self, bucket: str, key: str) -> ObjectInfo:
        st = self._existing(bucket, key).stat()
        return ObjectInfo(key=key, size=st.st_size, mtime=st.st_mtime)

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        base = self._path(bucket, "")
        if not base.is_dir():
            return
        # Walk only the directory the prefix points into, not the whole bucket.
        start = self._path(bucket, prefix.rsplit("/", 1)[0]) if "/" in prefix else base
        if not start.is_dir():
            return
        found = []
        for path in start.rglob("*"):
            if not path.is_file() or path.name.startswith(TMP_PREFIX):
                continue
            key = path.relative_to(base).as_posix()
            if key.startswith(prefix):
                st = path.stat()
                found.append(ObjectInfo(key=key, size=st.st_size, mtime=st.st_mtime))
        yield from sorted(found, key=lambda o: o.key)

    def delete(self, bucket: str, key: str) -> None:
        self._path(bucket, key).unlink(missing_ok=True)
