"""Storage: URI rules (traversal, roots, private addresses), the local store's atomic writes
and the S3 store's error mapping (botocore Stubber, no server). HTTP fetching and MediaIO are
in test_storage_http.py."""

from __future__ import annotations

import io
import os
import socket
import stat
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from botocore.stub import ANY, Stubber

from pipeline.errors import (
    FileTooLarge,
    ForbiddenURI,
    InvalidArgument,
    ObjectNotFound,
    StorageError,
)
from pipeline.storage import (
    LocalStore,
    S3Store,
    check_public_host,
    parse_oss_prefix,
    parse_oss_uri,
    resolve_file_uri,
)

# --- oss:// URIs ----------------------------------------------------------------------------


def test_parse_oss_uri_accepts_plain_keys() -> None:
    assert parse_oss_uri("oss://my-bucket/a/b c/ü.jpg") == ("my-bucket", "a/b c/ü.jpg")
    assert parse_oss_uri("oss://abc/" + "k" * 1023) == ("abc", "k" * 1023)
    assert parse_oss_prefix("oss://my-bucket/dir/") == ("my-bucket", "dir/")
    assert parse_oss_prefix("oss://my-bucket/") == ("my-bucket", "")
    assert parse_oss_prefix("oss://my-bucket") == ("my-bucket", "")


@pytest.mark.parametrize(
    "uri",
    [
        "oss://b1b/../x",
        "oss://bkt/a/../../x",
        "oss://bkt//etc",
        "oss://bkt/./x",
        "oss://bkt/a/..",
        "oss://bkt/a/./b",
    ],
)
def test_traversal_is_forbidden(uri: str) -> None:
    with pytest.raises(ForbiddenURI) as info:
        parse_oss_uri(uri)
    assert uri in info.value.message
    with pytest.raises(ForbiddenURI):
        parse_oss_prefix(uri + "/")


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("oss://B/x", "bucket"),
        ("oss://ab/x", "bucket"),
        ("oss://-bkt/x", "bucket"),
        ("oss://bucket.oss-cn-hangzhou.aliyuncs.com/x", "endpoint-style"),
        ("oss://bkt/a\\b", "'\\'"),
        ("oss://bkt/a\x00b", "control"),
        ("oss://bkt/a\x85b", "control"),
        ("http://bkt/x", "expected oss://"),
        ("oss://bkt/", "empty"),
        ("oss://bkt/a//b", "empty path segments"),
        ("oss://bkt/" + "k" * 1024, "1023 bytes"),
    ],
)
def test_malformed_oss_uris_say_what_is_wrong(uri: str, why: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_oss_uri(uri)
    assert not isinstance(info.value, ForbiddenURI)
    assert why in info.value.message and repr(uri) in info.value.message


def test_prefix_rules() -> None:
    with pytest.raises(ForbiddenURI):
        parse_oss_prefix("oss://bkt//")
    with pytest.raises(InvalidArgument):
        parse_oss_prefix("oss://bkt/a//")


# --- file:// and hosts ----------------------------------------------------------------------


def test_file_uris_only_under_roots(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "ok.txt").write_text("x")
    outside = tmp_path / "secret.txt"
    outside.write_text("s")
    (root / "escape").symlink_to(outside)
    (tmp_path / "root-link").symlink_to(root)
    assert resolve_file_uri(f"file://{root}/sub/ok.txt", [root]) == root / "sub" / "ok.txt"
    assert resolve_file_uri(f"file://{root}/sub/ok%2Etxt", [root]) == root / "sub" / "ok.txt"
    # A root given through a symlink still admits the files under its target.
    assert resolve_file_uri(f"file://{root}/sub/ok.txt", [tmp_path / "root-link"]).is_file()
    for uri in (
        f"file://{outside}",
        f"file://{root}/escape",
        f"file://{root}/../secret.txt",
        f"file://{root}/sub/%2E%2E/%2E%2E/secret.txt",
    ):
        with pytest.raises(ForbiddenURI) as info:
            resolve_file_uri(uri, [root])
        assert "OPENIMM_FILE_ROOTS" in info.value.message
    with pytest.raises(ForbiddenURI):
        resolve_file_uri(f"file://{root}/sub/ok.txt", [])
    for bad in (f"file://host{root}/sub/ok.txt", "file:relative.txt", f"oss://{root}"):
        with pytest.raises(InvalidArgument):
            resolve_file_uri(bad, [root])


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "10.0.0.1",
        "169.254.169.254",
        "::1",
        "::ffff:127.0.0.1",
        "localhost",
        "192.168.1.1",
        "0.0.0.0",
        "100.64.0.1",
        "224.0.0.1",
        "fe80::1",
    ],
)
def test_private_hosts_are_refused_unless_allowed(host: str) -> None:
    with pytest.raises(ForbiddenURI) as info:
        check_public_host(host, allow_private=False)
    assert "OPENIMM_HTTP_ALLOW_PRIVATE" in info.value.message
    check_public_host(host, allow_private=True)


def _fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> None:
    def getaddrinfo(host: str, *_: object, **__: object) -> list[tuple[Any, ...]]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "not found")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 0)) for a in answers[host]]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_host_checks_every_address_and_reports_unresolvable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _fake_dns(monkeypatch, {"public.test": ["8.8.8.8"], "mixed.test": ["8.8.8.8", "10.1.2.3"]})
    check_public_host("public.test", allow_private=False)
    with pytest.raises(ForbiddenURI, match=r"10\.1\.2\.3"):
        check_public_host("mixed.test", allow_private=False)
    for host in ("nowhere.test", ""):
        with pytest.raises(InvalidArgument) as info:
            check_public_host(host, allow_private=True)
        assert not isinstance(info.value, ForbiddenURI)


# --- the local store ------------------------------------------------------------------------


def test_local_store_round_trip_and_listing(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("bkt", "a/1.txt", b"one")
    store.put_bytes("bkt", "a/b/2.txt", b"two")
    store.put_bytes("bkt", "c.txt", b"three")
    assert (tmp_path / "bkt" / "a" / "1.txt").read_bytes() == b"one"  # the documented layout
    (tmp_path / "bkt" / "dropped.bin").write_bytes(b"cp")  # a user's `cp` is an object too
    (tmp_path / "bkt" / "a" / ".openimm-tmp-abc").write_bytes(b"half")  # a write in progress
    assert [o.key for o in store.list("bkt", "a/")] == ["a/1.txt", "a/b/2.txt"]
    assert [o.key for o in store.list("bkt")] == ["a/1.txt", "a/b/2.txt", "c.txt", "dropped.bin"]
    assert [o.key for o in store.list("bkt", "a/b")] == ["a/b/2.txt"]
    assert [o.key for o in store.list("bkt", "c")] == ["c.txt"]
    assert list(store.list("bkt", "zzz/")) == [] and list(store.list("nobucket")) == []
    info = store.stat("bkt", "c.txt")
    assert info.size == 5 and abs(info.mtime - time.time()) < 60 and store.exists("bkt", "c.txt")
    store.delete("bkt", "c.txt")
    store.delete("bkt", "c.txt")  # missing is fine
    store.delete("bkt", "a")  # a "directory" is not an object: nothing happens
    assert not store.exists("bkt", "c.txt") and store.exists("bkt", "a/1.txt")
    for read in (store.get_bytes, store.stat):
        with pytest.raises(ObjectNotFound):
            read("bkt", "c.txt")
    with pytest.raises(ObjectNotFound):
        store.get_bytes("nobucket", "x")
    with pytest.raises(ObjectNotFound):
        store.get_bytes("bkt", "a")  # a directory


def test_local_store_files_and_streams(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "oss")
    src = tmp_path / "src.bin"
    src.write_bytes(b"z" * 3_000_000)
    store.put_file("bkt", "big.bin", src)
    store.get_to_file("bkt", "big.bin", tmp_path / "out" / "copy.bin")
    assert (tmp_path / "out" / "copy.bin").read_bytes() == src.read_bytes()
    assert store.put_stream("bkt", "s.bin", io.BytesIO(b"abc"), max_bytes=3) == 3
    assert store.get_bytes("bkt", "s.bin") == b"abc"
    umask = os.umask(0o022)
    os.umask(umask)
    mode = stat.S_IMODE((tmp_path / "oss" / "bkt" / "s.bin").stat().st_mode)
    assert mode == 0o666 & ~umask  # like a `cp`, not mkstemp's 0600


def test_oversize_stream_leaves_nothing_behind(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("bkt", "keep.bin", b"old")
    with pytest.raises(FileTooLarge):
        store.put_stream("bkt", "keep.bin", io.BytesIO(b"x" * 5000), max_bytes=4096)
    with pytest.raises(FileTooLarge):
        store.put_stream("bkt", "new.bin", io.BytesIO(b"x" * 5000), max_bytes=4096)
    assert store.get_bytes("bkt", "keep.bin") == b"old"  # the old object is intact
    assert sorted(p.name for p in (tmp_path / "bkt").iterdir()) == ["keep.bin"]  # no temp file


def test_failed_fill_leaves_nothing_behind(tmp_path: Path) -> None:
    class Broken(io.RawIOBase):
        def readinto(self, buffer: Any) -> int:
            raise OSError("disk on fire")

    store = LocalStore(tmp_path)
    with pytest.raises(OSError, match="disk on fire"):
        store.put_stream("bkt", "x.bin", Broken(), max_bytes=1 << 20)  # type: ignore[arg-type]
    assert list((tmp_path / "bkt").iterdir()) == []


def test_store_refuses_escaping_keys_even_without_uri_parsing(tmp_path: Path) -> None:
    root = tmp_path / "oss"
    store = LocalStore(root)
    for bucket, key in [("bkt", "../../escape"), ("bkt", "/tmp/escape"), ("..", "escape")]:
        with pytest.raises(ForbiddenURI):
            store.put_bytes(bucket, key, b"x")
    with pytest.raises(ForbiddenURI):
        store.put_bytes("bkt", "a/..", b"x")  # the bucket directory itself
    assert not (tmp_path / "escape").exists() and not (root / "escape").exists()
    # A symlink inside the bucket pointing outside is neither readable nor listed.
    (tmp_path / "secret").write_text("s")
    store.put_bytes("bkt", "ok", b"1")
    (root / "bkt" / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(ForbiddenURI):
        store.get_bytes("bkt", "link")
    assert [o.key for o in store.list("bkt")] == ["ok"]


def test_file_and_directory_keys_conflict_cleanly(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("bkt", "a", b"file")
    with pytest.raises(StorageError, match="conflicts"):
        store.put_bytes("bkt", "a/b", b"x")
    store.put_bytes("bkt", "d/e", b"x")
    with pytest.raises(StorageError, match="conflicts"):
        store.put_bytes("bkt", "d", b"x")
    assert sorted(p.name for p in (tmp_path / "bkt" / "d").iterdir()) == ["e"]


# --- S3 (botocore Stubber; no server) -------------------------------------------------------


@pytest.fixture
def s3() -> Iterator[tuple[S3Store, Stubber]]:
    store = S3Store("http://127.0.0.1:9", "ak", "sk", "eu-west-1")
    with Stubber(store.client) as stub:
        yield store, stub
        stub.assert_no_pending_responses()


def test_s3_errors_map_to_imm_errors(s3: tuple[S3Store, Stubber]) -> None:
    store, stub = s3
    stub.add_client_error("head_object", service_error_code="404", http_status_code=404)
    with pytest.raises(ObjectNotFound):
        store.stat("bkt", "missing")
    stub.add_client_error("get_object", service_error_code="NoSuchKey", http_status_code=404)
    with pytest.raises(ObjectNotFound):
        store.get_bytes("bkt", "missing")
    stub.add_client_error("get_object", service_error_code="NoSuchBucket", http_status_code=404)
    with pytest.raises(ObjectNotFound):
        store.get_bytes("nobucket", "x")
    stub.add_client_error("head_object", service_error_code="404", http_status_code=404)
    assert store.exists("bkt", "missing") is False
    stub.add_client_error("get_object", service_error_code="AccessDenied", http_status_code=403)
    with pytest.raises(StorageError, match="AccessDenied") as info:
        store.get_bytes("bkt", "x")
    assert not isinstance(info.value, ObjectNotFound)
    stub.add_client_error("delete_object", service_error_code="NoSuchBucket")
    store.delete("nobucket", "x")  # missing is fine
    stub.add_client_error("list_objects_v2", service_error_code="NoSuchBucket")
    assert list(store.list("nobucket")) == []


def test_s3_put_creates_missing_bucket_once(s3: tuple[S3Store, Stubber]) -> None:
    store, stub = s3
    stub.add_client_error("head_bucket", service_error_code="404", http_status_code=404)
    stub.add_response(
        "create_bucket",
        {},
        {"Bucket": "bkt", "CreateBucketConfiguration": {"LocationConstraint": "eu-west-1"}},
    )
    stub.add_response("put_object", {}, {"Bucket": "bkt", "Key": "a", "Body": b"1"})
    stub.add_response("put_object", {}, {"Bucket": "bkt", "Key": "b", "Body": b"2"})
    store.put_bytes("bkt", "a", b"1")
    store.put_bytes("bkt", "b", b"2")  # no second head_bucket: the stubber would refuse it


def test_s3_oversize_stream_sends_nothing(s3: tuple[S3Store, Stubber]) -> None:
    store, _stub = s3
    with pytest.raises(FileTooLarge):
        store.put_stream("bkt", "x", io.BytesIO(b"x" * 5000), max_bytes=4096)


def test_s3_list_pages_and_skips_folder_markers(s3: tuple[S3Store, Stubber]) -> None:
    store, stub = s3
    when = datetime(2024, 1, 1, tzinfo=UTC)
    page1 = {
        "IsTruncated": True,
        "NextContinuationToken": "t",
        "Contents": [{"Key": "a/", "Size": 0, "LastModified": when}],
    }
    page2 = {"IsTruncated": False, "Contents": [{"Key": "a/1", "Size": 7, "LastModified": when}]}
    stub.add_response("list_objects_v2", page1, {"Bucket": "bkt", "Prefix": "a/"})
    stub.add_response(
        "list_objects_v2", page2, {"Bucket": "bkt", "Prefix": "a/", "ContinuationToken": ANY}
    )
    objects = list(store.list("bkt", "a/"))
    assert [(o.key, o.size, o.mtime) for o in objects] == [("a/1", 7, when.timestamp())]


def test_s3_transfers_map_errors_and_send_no_default_checksums(
    s3: tuple[S3Store, Stubber], tmp_path: Path
) -> None:
    store, stub = s3
    src = tmp_path / "src.bin"
    src.write_bytes(b"abc")
    stub.add_response("head_bucket", {}, {"Bucket": "bkt"})
    # Exactly these parameters: no ChecksumAlgorithm, which some S3-compatible stores reject.
    stub.add_response("put_object", {}, {"Bucket": "bkt", "Key": "k", "Body": ANY})
    store.put_file("bkt", "k", src)
    stub.add_client_error("put_object", service_error_code="AccessDenied", http_status_code=403)
    with pytest.raises(StorageError, match="AccessDenied"):
        store.put_file("bkt", "k2", src)
    stub.add_client_error("get_object", service_error_code="NoSuchKey", http_status_code=404)
    with pytest.raises(ObjectNotFound):
        store.get_to_file("bkt", "missing", tmp_path / "out.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.bin"]  # no partial download


def test_scratch_objects_skip_the_fsync_that_durable_ones_get(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a local store whose fsyncs are counted
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    store = LocalStore(tmp_path)
    # When one object is written durably (the default) and one as scratch (a staged input)
    store.put_bytes("photos", "kept.jpg", b"kept")
    assert len(synced) == 1
    store.put_bytes("photos", "inputs/staged.jpg", b"staged", durable=False)
    # Then only the durable one was fsynced, and both read back whole
    assert len(synced) == 1
    assert store.get_bytes("photos", "kept.jpg") == b"kept"
    assert store.get_bytes("photos", "inputs/staged.jpg") == b"staged"
