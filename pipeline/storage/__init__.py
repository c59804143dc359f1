"""Object storage: the ``ObjectStore`` port, its backends, URI rules and input fetching."""

from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.errors import InvalidArgument
from pipeline.settings import Settings
from pipeline.storage.base import ObjectInfo, ObjectStore
from pipeline.storage.local import LocalStore
from pipeline.storage.s3 import S3Store
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
    "check_public_host",
    "fetch_http",
    "open_store",
    "parse_oss_prefix",
    "parse_oss_uri",
    "resolve_file_uri",
]


def open_store(settings: Settings) -> ObjectStore:
    if settings.s3_endpoint_url:
        return S3Store(
            settings.s3_endpoint_url,
            settings.s3_access_key_id,
            settings.s3_secret_access_key,
            settings.s3_region,
        )
    return LocalStore(settings.oss_root)


class MediaIO:
    """Materialise an input URI (oss://, file:// under roots, public http(s)://) locally."""

    def __init__(self, settings: Settings, store: ObjectStore) -> None:
        self.settings, self.store = settings, store

    def fetch(self, uri: str, dest_dir: Path) -> Path:
        name = Path(uri.rstrip("/").rsplit("/", 1)[-1] or "input").name
        dest = dest_dir / name
        if uri.startswith("oss://"):
            bucket, key = parse_oss_uri(uri)
            self.store.get_to_file(bucket, key, dest)
            return dest
        if uri.startswith("file://"):
            return resolve_file_uri(uri, self.settings.allowed_file_roots)
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

    def copy_to(self, uri: str, dest: Path) -> None:
        shutil.copyfile(self.fetch(uri, dest.parent), dest)
