"""Local object store: ``oss://<bucket>/<key>`` is the file ``<root>/<bucket>/<key>``, so users
can drop files in with ``cp``.

Writes go to a temp file in the target directory and are renamed into place, so no reader
ever sees half an object. Keys are checked again here (behind URI parsing) so that no key,
however it got here, names a file outside its bucket directory.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from pipeline.errors import FileTooLarge, ForbiddenURI, ObjectNotFound, StorageError
from pipeline.storage.atomic import TMP_PREFIX, write_atomically
from pipeline.storage.base import ObjectInfo
from pipeline.storage.uri import BUCKET_RE

CHUNK = 1 << 20


class LocalStore:
    """A directory per bucket under ``root`` (``$OPENIMM_DATA_DIR/oss`` in embedded mode)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _bucket_dir(self, bucket: str) -> Path:
        if not BUCKET_RE.match(bucket):
            raise ForbiddenURI(f"oss://{bucket}/ is not a valid bucket name.")
        # Resolved, so a bucket directory may be a symlink to another disk.
        return (self.root / bucket).resolve()

    def _path(self, bucket: str, key: str) -> Path:
        base = self._bucket_dir(bucket)
        if "\x00" in key:
            raise ForbiddenURI(f"oss://{bucket}/{key!r} contains a NUL character.")
        path = (base / key).resolve() if key else base
        # Defence in depth: resolve() has followed '..' and symlinks; the result must still be
        # inside the bucket directory.
        if path != base and base not in path.parents:
            raise ForbiddenURI(f"oss://{bucket}/{key} escapes its bucket.")
        return path

    def _write(
        self, bucket: str, key: str, fill: Callable[[BinaryIO], int], *, durable: bool = True
    ) -> int:
        target = self._path(bucket, key)
        if target == self._bucket_dir(bucket):  # '' or 'a/..': the bucket itself
            raise ForbiddenURI(f"oss://{bucket}/{key} does not name an object.")
        try:
            return write_atomically(target, fill, durable=durable)
        except (NotADirectoryError, IsADirectoryError, FileExistsError) as exc:
            # A file can't also be a directory: 'a' and 'a/b' can't both be objects here.
            raise StorageError(
                f"oss://{bucket}/{key} conflicts with an existing object or prefix."
            ) from exc

    def put_file(self, bucket: str, key: str, src: Path) -> None:
        """Copy the local file ``src`` to the object."""

        def fill(handle: BinaryIO) -> int:
            with src.open("rb") as source:
                shutil.copyfileobj(source, handle, CHUNK)
                return source.tell()

        self._write(bucket, key, fill)

    def put_bytes(self, bucket: str, key: str, data: bytes, *, durable: bool = True) -> None:
        """Write ``data`` as the object (fsynced before it appears, unless ``durable`` is
        False: a scratch object, whose fsync would cost its call milliseconds)."""
        self._write(bucket, key, lambda handle: handle.write(data), durable=durable)

    def put_stream(self, bucket: str, key: str, stream: BinaryIO, max_bytes: int) -> int:
        """Write ``stream`` as the object; ``FileTooLarge`` past ``max_bytes``, leaving the
        previous object (if any) untouched."""

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
        """Copy the object to ``dest``; ``dest`` appears only once complete."""
        source = self._existing(bucket, key)

        def fill(handle: BinaryIO) -> int:
            with source.open("rb") as reader:
                shutil.copyfileobj(reader, handle, CHUNK)
                return reader.tell()

        write_atomically(dest, fill, durable=False)

    def get_bytes(self, bucket: str, key: str) -> bytes:
        """The object's content."""
        return self._existing(bucket, key).read_bytes()

    def exists(self, bucket: str, key: str) -> bool:
        """Whether the object exists (a directory is not an object)."""
        return self._path(bucket, key).is_file()

    def stat(self, bucket: str, key: str) -> ObjectInfo:
        """Size and mtime; ``ObjectNotFound`` if missing."""
        st = self._existing(bucket, key).stat()
        return ObjectInfo(key=key, size=st.st_size, mtime=st.st_mtime)

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix``, recursively, sorted by key. A missing
        bucket lists as empty. Symlinked directories are not descended into (no loops)."""
        base = self._path(bucket, "")
        # Walk only the directory the prefix points into, not the whole bucket.
        start = self._path(bucket, prefix.rsplit("/", 1)[0]) if "/" in prefix else base
        if not start.is_dir():
            return
        found = [info for info in self._walk(base, start) if info.key.startswith(prefix)]
        yield from sorted(found, key=lambda o: o.key)

    def _walk(self, base: Path, start: Path) -> Iterator[ObjectInfo]:
        for dirpath, _dirnames, filenames in os.walk(start):
            for name in filenames:
                if name.startswith(TMP_PREFIX):
                    continue  # a write in progress, not an object yet
                path = Path(dirpath, name)
                if path.is_symlink() and base not in path.resolve().parents:
                    continue  # would be refused on read; don't leak its size either
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue  # deleted while we walked, or a dangling symlink
                key = path.relative_to(base).as_posix()
                yield ObjectInfo(key=key, size=st.st_size, mtime=st.st_mtime)

    def delete(self, bucket: str, key: str) -> None:
        """Remove the object; a missing object (or bucket) is not an error."""
        path = self._path(bucket, key)
        if path.is_dir():
            return  # a "directory" is not an object; S3 would have nothing to delete either
        path.unlink(missing_ok=True)

    def has_bucket(self, bucket: str) -> bool:
        """Whether ``<root>/<bucket>`` is a directory (made by openimm or dropped in)."""
        return self._bucket_dir(bucket).is_dir()

    def bucket_names(self) -> tuple[str, ...]:
        """Directories under the root whose names are valid bucket names."""
        if not self.root.is_dir():
            return ()
        found = (p.name for p in self.root.iterdir() if BUCKET_RE.match(p.name) and p.is_dir())
        return tuple(sorted(found))
