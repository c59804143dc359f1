"""FileCompression: pack OSS objects (by prefix or exact name) into a zip at TargetURI.

Alias rules follow IMM: no Alias keeps the object key as the path in the archive; an Alias
ending in "/" places matched files under that directory (relative to the source prefix); an
Alias naming a file renames a single matched object. The archive is built in the job's work
directory and stored with one atomic put, so a failed or cancelled job leaves no partial zip.
"""

from __future__ import annotations

import json
import posixpath
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import zipnames
from pipeline.errors import InvalidArgument, LimitExceeded, ResourceNotFound
from pipeline.storage import parse_oss_prefix, parse_oss_uri
from workers.context import JobContext

MAX_ENTRIES = 80_000  # IMM's SourceManifestURI limit


@dataclass(frozen=True)
class Entry:
    """One archive member. ``bucket`` is empty for file:// and http(s):// sources (an
    openimm extension), which are fetched through ``MediaIO`` with its root/size limits."""

    bucket: str
    key: str
    arcname: str
    size: int


def process(ctx: JobContext) -> dict[str, Any]:
    sources = _sources(ctx)
    entries = plan(ctx, sources)
    target_bucket, target_key = parse_oss_uri(ctx.request["TargetURI"])
    archive = ctx.workdir / "archive.zip"
    total = sum(e.size for e in entries) or 1
    done = 0
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        for entry in entries:
            local = _materialize(ctx, entry)
            zf.write(local, entry.arcname)
            done += entry.size or local.stat().st_size
            if local.parent == ctx.workdir / "fetch":
                local.unlink()
            ctx.progress(int(95 * done / total))
    ctx.progress(97, force=True)
    ctx.store.put_file(target_bucket, target_key, archive)
    return {
        "TargetURI": ctx.request["TargetURI"],
        "FileCount": len(entries),
        "Size": archive.stat().st_size,
    }


def _materialize(ctx: JobContext, entry: Entry) -> Path:
    fetch_dir = ctx.workdir / "fetch"
    fetch_dir.mkdir(exist_ok=True)
    if not entry.bucket:
        return ctx.media.fetch(entry.key, fetch_dir)
    local = fetch_dir / "object"
    ctx.store.get_to_file(entry.bucket, entry.key, local)
    return local


def _sources(ctx: JobContext) -> list[dict[str, Any]]:
    if ctx.request.get("Sources"):
        return list(ctx.request["Sources"])
    manifest = ctx.request.get("SourceManifestURI", "")
    bucket, key = parse_oss_uri(manifest)
    try:
        data = json.loads(ctx.store.get_bytes(bucket, key))
    except ValueError:
        raise InvalidArgument(f"SourceManifestURI {manifest} is not a JSON array.") from None
    if not isinstance(data, list) or not all(isinstance(s, dict) and s.get("URI") for s in data):
        raise InvalidArgument(f"SourceManifestURI {manifest} must be a JSON array of {{URI}}.")
    if len(data) > MAX_ENTRIES:
        raise LimitExceeded(f"SourceManifestURI holds more than {MAX_ENTRIES} rules.")
    return data


def plan(ctx: JobContext, sources: list[dict[str, Any]]) -> list[Entry]:
    """Resolve every source rule to objects and archive names; fail before writing anything."""
    entries: list[Entry] = []
    seen: set[str] = set()
    for source in sources:
        for entry in _resolve(ctx, source):
            if entry.arcname in seen:
                continue  # two rules matched the same path: keep the first, as zip tools do
            seen.add(entry.arcname)
            entries.append(entry)
    if len(entries) > MAX_ENTRIES:
        raise LimitExceeded(f"The sources match more than {MAX_ENTRIES} files.")
    return entries


def _resolve(ctx: JobContext, source: dict[str, Any]) -> list[Entry]:
    uri = str(source["URI"])
    alias = source.get("Alias") or ""
    if not uri.startswith("oss://"):
        name = posixpath.basename(uri.split("?", 1)[0].rstrip("/")) or "download"
        return [Entry("", uri, _arcname("", name, alias, 1), 0)]
    mode = source.get("Mode") or "prefix"
    bucket, key = parse_oss_prefix(uri)
    if mode == "fullname":
        info = ctx.store.stat(bucket, key)
        matches = [(info.key, info.size)]
    else:
        matches = [(o.key, o.size) for o in ctx.store.list(bucket, key)]
    if not matches:
        raise ResourceNotFound("file", uri)
    return [Entry(bucket, k, _arcname(key, k, alias, len(matches)), size) for k, size in matches]


def _arcname(prefix: str, key: str, alias: str, count: int) -> str:
    if alias:  # '/..\\x', '/C:/x': normalised (or refused) before it shapes any name
        alias = "/" + zipnames.member_name(alias, "Alias")
    if not alias:
        name = key
    elif alias.endswith("/") or count > 1:
        base = prefix if prefix.endswith("/") else posixpath.dirname(prefix) + "/"
        relative = key[len(base) :] if key.startswith(base) else posixpath.basename(key)
        name = posixpath.join(alias.rstrip("/") + "/", relative)
    else:
        name = alias
    name = zipnames.member_name(name).rstrip("/")
    if not name:
        raise InvalidArgument(f"Alias {alias!r} produces an empty path in the archive.")
    return name
