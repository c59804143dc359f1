"""FileCompression's source rules (prefix/fullname, Alias) and its failure modes."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import InvalidArgument, ObjectNotFound, ResourceNotFound
from pipeline.settings import Settings
from pipeline.storage import LocalStore, MediaIO
from workers.context import Cancelled, JobContext
from workers.processors import compression


def make_ctx(tmp_path: Path, request: dict[str, Any], report: Any = None) -> JobContext:
    settings = Settings(data_dir=tmp_path / "data")
    store = LocalStore(settings.oss_root)
    for key in ("d/a.txt", "d/sub/b.txt", "d2/c.txt", "one.bin"):
        store.put_bytes("bkt", key, key.encode() * 10)
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return JobContext(
        task_id="t",
        task_type="FileCompression",
        request=request,
        settings=settings,
        store=store,
        media=MediaIO(settings, store),
        workroot=work,
        report=report or (lambda pct: True),
    )


def names(tmp_path: Path, sources: list[dict[str, str]]) -> list[str]:
    ctx = make_ctx(tmp_path, {"Sources": sources, "TargetURI": "oss://bkt/out.zip"})
    return [e.arcname for e in compression.plan(ctx, sources)]


def test_alias_rules(tmp_path: Path) -> None:
    assert names(tmp_path, [{"URI": "oss://bkt/d/"}]) == ["d/a.txt", "d/sub/b.txt"]
    assert names(tmp_path, [{"URI": "oss://bkt/d/", "Alias": "/new/"}]) == [
        "new/a.txt",
        "new/sub/b.txt",
    ]
    assert names(tmp_path, [{"URI": "oss://bkt/d/", "Alias": "/"}]) == ["a.txt", "sub/b.txt"]
    assert names(
        tmp_path, [{"URI": "oss://bkt/one.bin", "Alias": "/x/renamed.bin", "Mode": "fullname"}]
    ) == ["x/renamed.bin"]
    # prefix mode matches by prefix, not directory: "d" covers d/ and d2/
    assert names(tmp_path, [{"URI": "oss://bkt/d"}]) == ["d/a.txt", "d/sub/b.txt", "d2/c.txt"]


def test_missing_sources_fail_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ResourceNotFound):
        names(tmp_path, [{"URI": "oss://bkt/nothing/"}])
    with pytest.raises(ObjectNotFound):
        names(tmp_path, [{"URI": "oss://bkt/d", "Mode": "fullname"}])
    with pytest.raises(InvalidArgument):
        names(tmp_path, [{"URI": "oss://bkt/one.bin", "Alias": "/../../x", "Mode": "fullname"}])


def test_process_writes_zip_atomically_and_cancel_leaves_nothing(tmp_path: Path) -> None:
    request = {"Sources": [{"URI": "oss://bkt/d/"}], "TargetURI": "oss://bkt/out/z.zip"}
    ctx = make_ctx(tmp_path, request)
    result = compression.process(ctx)
    assert result["FileCount"] == 2
    target = ctx.settings.oss_root / "bkt" / "out" / "z.zip"
    assert zipfile.ZipFile(target).read("d/sub/b.txt") == b"d/sub/b.txt" * 10
    cancelled = make_ctx(
        tmp_path, {**request, "TargetURI": "oss://bkt/out/never.zip"}, report=lambda pct: False
    )
    with pytest.raises(Cancelled):
        compression.process(cancelled)
    assert not (ctx.settings.oss_root / "bkt" / "out" / "never.zip").exists()


def test_file_sources_under_roots_are_archived(tmp_path: Path) -> None:
    root = tmp_path / "media"
    root.mkdir()
    (root / "clip.txt").write_text("local file")
    request = {
        "Sources": [{"URI": f"file://{root}/clip.txt", "Alias": "/in/clip.txt"}],
        "TargetURI": "oss://bkt/out/f.zip",
    }
    ctx = make_ctx(tmp_path, request)
    ctx.settings = ctx.settings.model_copy(update={"file_roots": str(root)})
    ctx.media = MediaIO(ctx.settings, ctx.store)
    compression.process(ctx)
    archive = zipfile.ZipFile(ctx.settings.oss_root / "bkt" / "out" / "f.zip")
    assert archive.read("in/clip.txt") == b"local file"
    assert (root / "clip.txt").exists()  # the source is read in place, never moved


def test_windows_style_aliases_are_normalised_or_refused(tmp_path: Path) -> None:
    """Attack (issue 9 item 9): '\\' and drive letters must not survive into member names."""
    one = {"URI": "oss://bkt/one.bin", "Mode": "fullname"}
    assert names(tmp_path, [{**one, "Alias": "/C:/Windows/x.txt"}]) == ["Windows/x.txt"]
    assert names(tmp_path, [{**one, "Alias": "/a\\b\\c.txt"}]) == ["a/b/c.txt"]
    for alias in ("/..\\..\\evil.txt", "/C:\\..\\evil.txt", "/x/\x01.txt"):
        with pytest.raises(InvalidArgument):
            names(tmp_path, [{**one, "Alias": alias}])
