"""Object storage: the ``ObjectStore`` port, its backends, URI rules and input fetching.

``open_store`` picks the backend from settings; ``MediaIO`` turns any input URI a task may
name (``oss://``, ``file://`` under roots, public ``http(s)://``) into a local file.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from pipeline.errors import InvalidArgument, ObjectNotFound
from pipeline.settings import Settings
from pipeline.storage.atomic import TMP_PREFIX
from pipeline.storage.base import ObjectInfo, ObjectStore
from pipeline.storage.local import LocalStore
from pipeline.storage.s3 import S3Store
from pipeline.storage.scoped import ScopedStore
from pipeline.storage.uri import (
    check_public_host,
    fetch_http,
    parse_oss_prefix,
    parse_oss_uri,
    resolve_file_uri,
)

__all__ = [
    "LocalStore",
    "MediaIO",
    "ObjectInfo",
    "ObjectStore",
    "S3Store",
    "ScopedStore",
    "check_public_host",
    "fetch_http",
    "open_store",
    "parse_oss_prefix",
    "parse_oss_uri",
    "resolve_file_uri",
]

MAX_NAME_BYTES = 200  # below every filesystem's 255-byte name limit, with room for a suffix


def open_store(settings: Settings) -> ObjectStore:
    """The configured store: S3 when ``OPENIMM_S3_ENDPOINT_URL`` is set, else the local
    directory ``$OPENIMM_DATA_DIR/oss``."""
    if settings.s3_endpoint_url:
        return S3Store(
            settings.s3_endpoint_url,
            settings.s3_access_key_id,
            settings.s3_secret_access_key,
            settings.s3_region,
        )
    return LocalStore(settings.oss_root)


def _local_name(uri: str) -> str:
    """A safe file name for a fetched input: the URI's last path segment when it is usable."""
    path = uri[len("oss://") :] if uri.startswith("oss://") else unquote(urlsplit(uri).path)
    name = path.rsplit("/", 1)[-1]
    unsafe = "\\" in name or "\x00" in name or name.startswith(TMP_PREFIX)
    if unsafe or name in ("", ".", ".."):
        return "input"
    if len(name.encode()) > MAX_NAME_BYTES:
        return "input" + Path(name).suffix[:16]  # keep the extension: decoders sniff it
    return name


class MediaIO:
    """Materialise input URIs as local files, within the settings' roots and limits."""

    def __init__(self, settings: Settings, store: ObjectStore) -> None:
        self.settings, self.store = settings, store

    def fetch(self, uri: str, dest_dir: Path) -> Path:
        """A local file holding the input ``uri``.

        ``oss://`` and ``http(s)://`` inputs are copied into ``dest_dir`` (under the URI's
        base name, so one ``dest_dir`` per input avoids clashes); a ``file://`` input is
        returned in place, resolved, without copying: treat it as read-only.
        """
        if uri.startswith("file://"):
            return self._local_file(uri)
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / _local_name(uri)
        if uri.startswith("oss://"):
            bucket, key = parse_oss_uri(uri)
            self.store.get_to_file(bucket, key, dest)
            return dest
        if uri.startswith(("http://", "https://")):
            fetch_http(
                uri,
                dest,
                max_bytes=self.settings.http_max_bytes,
                timeout=self.settings.http_timeout_seconds,
                allow_private=self.settings.http_allow_private,
            )
            return dest
        raise InvalidArgument(f"Unsupported URI {uri!r}: use oss://, file:// or http(s)://.")

    def stat_input(self, uri: str) -> int:
        """The size in bytes of an ``oss://`` or ``file://`` input; ``ObjectNotFound`` if it
        does not exist. ``http(s)://`` sizes are known only by fetching: ``InvalidArgument``."""
        if uri.startswith("file://"):
            return self._local_file(uri).stat().st_size
        if uri.startswith("oss://"):
            bucket, key = parse_oss_uri(uri)
            return self.store.stat(bucket, key).size
        raise InvalidArgument(f"Cannot stat {uri!r}: only oss:// and file:// inputs have a size.")

    def _local_file(self, uri: str) -> Path:
        path = resolve_file_uri(uri, self.settings.allowed_file_roots)
        if not path.is_file():
            raise ObjectNotFound(f"The file {uri} does not exist.")
        return path
