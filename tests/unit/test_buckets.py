"""Buckets belong to owners (issue 9 item 1) and uploads signed with their body hash (item 12).

AK1 (``imm``) and AK2 (``imm_other``) share one in-process server. Every attack here was
accepted before buckets had owners.
"""

from __future__ import annotations

import hashlib
import json
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from pipeline import buckets
from pipeline.api.media_actions import _sr_request
from pipeline.api.services import Caller, Services
from pipeline.cli import main as cli_main
from pipeline.client import ClientError, ImmClient
from pipeline.db import Database
from pipeline.errors import BucketAccessDenied
from pipeline.models import Bucket, Task
from pipeline.settings import Settings
from pipeline.storage import LocalStore
from pipeline.storage.uri import BUCKET_RE
from workers import runtime

SECRET = b"owner A's private bytes"


def services(client: ImmClient) -> Services:
    svc: Services = client.http.app.state.services  # type: ignore[attr-defined]
    return svc


def put_bytes(client: ImmClient, uri: str, data: bytes, tmp_path: Path) -> dict[str, object]:
    src = tmp_path / hashlib.sha256(data).hexdigest()[:12]
    src.write_bytes(data)
    return client.put_object(uri, src)


def denied(call: object) -> ClientError:
    with pytest.raises(ClientError) as info:
        call()  # type: ignore[operator]
    assert info.value.status == 403 and info.value.code == "AccessDenied", info.value.body
    return info.value


@pytest.fixture
def a_bucket(imm: ImmClient, tmp_path: Path) -> str:
    """AK1's bucket ``alpha`` holding ``secret.txt``."""
    put_bytes(imm, "oss://alpha/docs/secret.txt", SECRET, tmp_path)
    return "alpha"


def test_another_owner_cannot_get_list_or_overwrite(
    imm: ImmClient, imm_other: ImmClient, a_bucket: str, settings: Settings, tmp_path: Path
) -> None:
    # Given AK1 owns alpha, when AK2 reads, lists, overwrites or adds objects in it
    denied(lambda: imm_other.get_object("oss://alpha/docs/secret.txt"))
    denied(lambda: imm_other.list_objects("oss://alpha/"))
    denied(lambda: imm_other.list_objects("oss://alpha/docs/"))
    denied(lambda: put_bytes(imm_other, "oss://alpha/docs/secret.txt", b"pwned", tmp_path))
    denied(lambda: put_bytes(imm_other, "oss://alpha/new.txt", b"planted", tmp_path))
    # then AK1's object is unchanged and nothing was added
    assert imm.get_object("oss://alpha/docs/secret.txt") == SECRET
    assert [o["URI"] for o in imm.list_objects("oss://alpha/")] == ["oss://alpha/docs/secret.txt"]
    assert not (settings.oss_root / "alpha" / "new.txt").exists()
    # and AK2 still has its own buckets
    put_bytes(imm_other, "oss://beta/mine.txt", b"b", tmp_path)
    assert imm_other.get_object("oss://beta/mine.txt") == b"b"
    denied(lambda: imm.get_object("oss://beta/mine.txt"))


def test_first_write_claims_and_a_failed_upload_claims_nothing(
    imm: ImmClient, imm_other: ImmClient, settings: Settings, tmp_path: Path
) -> None:
    svc = services(imm)
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 2048)
    svc.settings = settings.model_copy(update={"upload_max_bytes": 1024})
    with pytest.raises(ClientError):
        imm.put_object("oss://gamma/big.bin", big)
    with svc.db.session() as s:
        assert s.get(Bucket, "gamma") is None
    put_bytes(imm_other, "oss://gamma/small.bin", b"ok", tmp_path)  # so AK2 can still take it
    with svc.db.session() as s:
        row = s.get(Bucket, "gamma")
        assert row is not None and row.owner == "AK2"


def project_for(client: ImmClient, name: str) -> str:
    client.call("CreateProject", ProjectName=name)
    return name


def task_count(client: ImmClient) -> int:
    with services(client).db.session() as s:
        return len(s.scalars(select(Task.id)).all())


def test_compression_over_another_owners_bucket_is_refused_at_create(
    imm_other: ImmClient, a_bucket: str
) -> None:
    project = project_for(imm_other, "b-project")

    def compress(**params: object) -> object:
        base: dict[str, object] = {"ProjectName": project, "TargetURI": "oss://beta/out.zip"}
        return imm_other.call("CreateFileCompressionTask", **(base | params))

    denied(lambda: compress(Sources=[{"URI": "oss://alpha/"}]))
    denied(lambda: compress(Sources=[{"URI": "oss://alpha/docs/secret.txt", "Mode": "fullname"}]))
    denied(lambda: compress(SourceManifestURI="oss://alpha/manifest.json"))
    denied(lambda: compress(Sources=[{"URI": "oss://beta/x"}], TargetURI="oss://alpha/out.zip"))
    assert task_count(imm_other) == 0  # nothing queued


def test_other_task_kinds_check_inputs_and_outputs_at_create(
    imm_other: ImmClient, a_bucket: str
) -> None:
    project = project_for(imm_other, "b-media")
    imm_other.call("CreateDataset", ProjectName=project, DatasetName="d")
    secret = "oss://alpha/docs/secret.txt"
    denied(
        lambda: imm_other.call(
            "CreateVideoSuperResolutionTask",
            ProjectName=project,
            SourceURI=secret,
            TargetURI="oss://beta/o.mp4",
        )
    )
    denied(
        lambda: imm_other.call(
            "CreateSpeechRecognitionTask",
            ProjectName=project,
            SourceURI="oss://beta/in.wav",
            TargetURI="oss://alpha/t.json",
        )
    )
    denied(
        lambda: imm_other.call(
            "IndexFileMeta", ProjectName=project, DatasetName="d", File={"URI": secret}
        )
    )
    denied(
        lambda: imm_other.call(
            "CreateHighlightTask",
            ProjectName=project,
            Type="Retrieval",
            Sources=[{"URI": "oss://beta/v.mp4"}],
            Output={"URI": "oss://alpha/h.mp4"},
        )
    )
    assert task_count(imm_other) == 0


@pytest.fixture
def worker(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run jobs in this process through the real runtime (claim → process → finalize)."""
    monkeypatch.setattr(runtime, "_state", None)
    yield
    if runtime._state is not None:
        runtime._state.db.dispose()


def test_worker_refuses_a_manifest_listing_another_owners_object(
    imm: ImmClient,
    imm_other: ImmClient,
    a_bucket: str,
    settings: Settings,
    tmp_path: Path,
    worker: None,
) -> None:
    # Given AK2's own manifest that names AK1's object (allowed at create: the manifest is AK2's)
    manifest = json.dumps([{"URI": "oss://alpha/docs/secret.txt"}]).encode()
    put_bytes(imm_other, "oss://beta/manifest.json", manifest, tmp_path)
    project = project_for(imm_other, "b-project")
    created = imm_other.call(
        "CreateFileCompressionTask",
        ProjectName=project,
        SourceManifestURI="oss://beta/manifest.json",
        TargetURI="oss://beta/out.zip",
    )
    # When a worker runs it
    assert runtime.run(created["TaskId"], settings) == "Failed"
    # Then the task fails AccessDenied and no archive of AK1's file exists
    task = imm_other.call(
        "GetTask", ProjectName=project, TaskType="FileCompression", TaskId=created["TaskId"]
    )
    assert task["Status"] == "Failed" and task["Code"] == "AccessDenied", task
    assert not (settings.oss_root / "beta" / "out.zip").exists()


def test_worker_writes_an_owners_archive_of_its_own_files(
    imm: ImmClient, a_bucket: str, settings: Settings, worker: None
) -> None:
    project = project_for(imm, "a-project")
    created = imm.call(
        "CreateFileCompressionTask",
        ProjectName=project,
        Sources=[{"URI": "oss://alpha/docs/"}],
        TargetURI="oss://alpha-out/out.zip",
    )
    assert runtime.run(created["TaskId"], settings) == "Succeeded"
    with zipfile.ZipFile(settings.oss_root / "alpha-out" / "out.zip") as archive:
        assert archive.read("docs/secret.txt") == SECRET
    with services(imm).db.session() as s:
        row = s.get(Bucket, "alpha-out")
        assert row is not None and row.owner == "AK1"  # a task output claimed it


def test_eas_output_buckets_are_per_owner_and_reserved(
    imm: ImmClient, imm_other: ImmClient, tmp_path: Path
) -> None:
    svc = services(imm)
    body = {"input": {"url": "oss://not-yet/v.mp4"}}
    targets = {
        owner: _sr_request(body, svc, Caller(owner=owner, request_id="r"))["TargetURI"]
        for owner in ("AK1", "AK2")
    }
    bucket_1 = buckets.eas_bucket(svc.settings.eas_output_bucket, "AK1")
    bucket_2 = buckets.eas_bucket(svc.settings.eas_output_bucket, "AK2")
    assert bucket_1 != bucket_2 and bucket_1.startswith("eas-outputs-")
    assert BUCKET_RE.match(bucket_1) and BUCKET_RE.match(buckets.eas_bucket("a" * 63, "AK1"))
    assert targets["AK1"].startswith(f"oss://{bucket_1}/video_super_resolution/")
    assert targets["AK2"].startswith(f"oss://{bucket_2}/video_super_resolution/")
    # AK2 cannot squat AK1's output bucket before AK1's first predict call, nor probe it:
    # reading it is refused as it will be once it exists
    denied(lambda: put_bytes(imm_other, f"oss://{bucket_1}/x", b"squat", tmp_path))
    before = denied(lambda: imm_other.get_object(f"oss://{bucket_1}/inputs/x.jpg"))
    denied(lambda: imm_other.list_objects(f"oss://{bucket_1}/"))
    put_bytes(imm, f"oss://{bucket_1}/x", b"mine", tmp_path)
    after = denied(lambda: imm_other.get_object(f"oss://{bucket_1}/inputs/x.jpg"))
    assert before.body["Message"] == after.body["Message"]  # no "has A used EAS yet?" oracle


def test_shares_grant_read_then_write_and_can_be_withdrawn(
    imm: ImmClient, imm_other: ImmClient, a_bucket: str, tmp_path: Path
) -> None:
    policy = services(imm).buckets
    buckets.share(policy, "alpha", "AK2", buckets.READ)
    assert imm_other.get_object("oss://alpha/docs/secret.txt") == SECRET
    assert len(imm_other.list_objects("oss://alpha/")) == 1
    error = denied(lambda: put_bytes(imm_other, "oss://alpha/docs/secret.txt", b"x", tmp_path))
    assert "read-only" in str(error.body["Message"])
    buckets.share(policy, "alpha", "AK2", buckets.WRITE)
    put_bytes(imm_other, "oss://alpha/from-b.txt", b"hello", tmp_path)
    assert imm.get_object("oss://alpha/from-b.txt") == b"hello"
    buckets.unshare(policy.db, "alpha", "AK2")
    denied(lambda: imm_other.get_object("oss://alpha/docs/secret.txt"))


def test_a_dropped_in_folder_belongs_to_the_first_key(
    imm: ImmClient, imm_other: ImmClient, settings: Settings, tmp_path: Path
) -> None:
    folder = settings.oss_root / "dropped"
    folder.mkdir(parents=True)
    (folder / "photo.jpg").write_bytes(b"jpeg")
    # The second key, even first to touch it, gets nothing — reads or writes
    denied(lambda: imm_other.list_objects("oss://dropped/"))
    denied(lambda: put_bytes(imm_other, "oss://dropped/photo.jpg", b"pwned", tmp_path))
    # the first key of OPENIMM_ACCESS_KEYS owns it, and the row now says so
    assert imm.get_object("oss://dropped/photo.jpg") == b"jpeg"
    with services(imm).db.session() as s:
        row = s.get(Bucket, "dropped")
        assert row is not None and row.owner == "AK1"


def test_concurrent_first_writes_have_exactly_one_winner(settings: Settings) -> None:
    from pipeline import migrate

    settings.resolved_data_dir.mkdir(parents=True)
    migrate.upgrade(settings.db_url)
    db = Database(settings.db_url)
    policy = buckets.BucketPolicy(db, LocalStore(settings.oss_root), settings)
    owners = [f"AK{n}" for n in range(8)]
    outcomes: dict[str, str] = {}
    start = threading.Barrier(len(owners))

    def claim(owner: str) -> None:
        start.wait()
        try:
            policy.require(owner, "contested", buckets.WRITE)
            outcomes[owner] = "won"
        except BucketAccessDenied:
            outcomes[owner] = "denied"

    threads = [threading.Thread(target=claim, args=(o,)) for o in owners]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    winners = [o for o, r in outcomes.items() if r == "won"]
    assert len(outcomes) == len(owners) and len(winners) == 1
    with db.session() as s:
        assert s.get(Bucket, "contested").owner == winners[0]  # type: ignore[union-attr]
    db.dispose()


def test_an_owners_own_bucket_is_looked_up_once_and_grants_stay_live(
    settings: Settings,
) -> None:
    # Given a bucket claimed by AK1 and shared read-only with AK2
    from sqlalchemy import event

    from pipeline import migrate

    settings.resolved_data_dir.mkdir(parents=True)
    migrate.upgrade(settings.db_url)
    db = Database(settings.db_url)
    policy = buckets.BucketPolicy(db, LocalStore(settings.oss_root), settings)
    policy.require("AK1", "mine", buckets.WRITE)
    buckets.share(policy, "mine", "AK2", buckets.READ)
    statements: list[str] = []
    event.listen(db.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    # When the owner touches it again and again: no more database reads
    for _ in range(5):
        assert policy.require("AK1", "mine", buckets.READ)
        assert policy.require("AK1", "mine", buckets.WRITE)
    assert statements == []
    # And a grantee is checked every time, so withdrawing the grant takes effect at once
    assert policy.require("AK2", "mine", buckets.READ)
    buckets.unshare(db, "mine", "AK2")
    with pytest.raises(BucketAccessDenied):
        policy.require("AK2", "mine", buckets.READ)
    db.dispose()


def signed_put(imm: ImmClient, uri: str, body: bytes, signed_body: bytes) -> httpx.Response:
    """PUT ``body`` with x-acs-content-sha256 (signed) set to the hash of ``signed_body``."""
    route = "/oss/" + uri.removeprefix("oss://")
    headers = imm._headers("PUT", route, {}, signed_body)
    return imm.http.put(route, content=body, headers=headers)


def test_put_signed_with_the_real_body_hash(imm: ImmClient, settings: Settings) -> None:
    data = b"signed body" * 1000
    response = signed_put(imm, "oss://hashed/a.bin", data, data)
    assert response.status_code == 200, response.text
    assert imm.get_object("oss://hashed/a.bin") == data


def test_put_whose_body_differs_from_its_signed_hash_stores_nothing(
    imm: ImmClient, settings: Settings
) -> None:
    response = signed_put(imm, "oss://hashed/b.bin", b"tampered", b"original")
    assert response.status_code == 400 and response.json()["Code"] == "InvalidDigest"
    assert not (settings.oss_root / "hashed").exists()
    # and over an existing object, the old content stays
    assert signed_put(imm, "oss://hashed/b.bin", b"v1", b"v1").status_code == 200
    assert signed_put(imm, "oss://hashed/b.bin", b"v2-evil", b"v2").status_code == 400
    assert imm.get_object("oss://hashed/b.bin") == b"v1"
    spool = settings.resolved_data_dir / "spool"
    assert [p.name for p in spool.iterdir() if p.name.startswith("upload-")] == []


def test_cli_creates_shares_and_lists_buckets(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPENIMM_DATA_DIR", str(settings.resolved_data_dir))
    monkeypatch.setenv("OPENIMM_ACCESS_KEYS", settings.access_keys)
    (settings.oss_root / "loose").mkdir(parents=True)
    assert cli_main(["buckets", "create", "team", "--owner", "AK2"]) == 0
    assert cli_main(["buckets", "create", "team", "--owner", "AK1"]) == 1  # not stolen
    assert cli_main(["buckets", "share", "team", "--with", "AK1", "--read-only"]) == 0
    assert cli_main(["buckets", "share", "team"]) == 2
    assert cli_main(["buckets", "list"]) == 0
    out = capsys.readouterr().out
    assert "team" in out and "AK1:read" in out
    assert "loose" in out and "AK1 (unclaimed)" in out
    assert cli_main(["buckets", "unshare", "team", "--with", "AK1"]) == 0
    assert cli_main(["buckets", "unshare", "team", "--with", "AK1"]) == 1


def test_s3_buckets_follow_the_same_table(settings: Settings) -> None:
    from botocore.stub import Stubber

    from pipeline import migrate
    from pipeline.storage import S3Store

    settings.resolved_data_dir.mkdir(parents=True)
    migrate.upgrade(settings.db_url)
    db = Database(settings.db_url)
    store = S3Store("http://127.0.0.1:9", "ak", "sk", "eu-west-1")
    policy = buckets.BucketPolicy(db, store, settings)
    with Stubber(store.client) as stub:
        # A bucket made outside openimm (no row) belongs to the first key, even if AK2 is first
        stub.add_response("head_bucket", {}, {"Bucket": "legacy"})
        with pytest.raises(BucketAccessDenied):
            policy.require("AK2", "legacy", buckets.READ)
        assert policy.require("AK1", "legacy", buckets.READ)
        # A bucket S3 does not have is claimed by its first writer
        stub.add_client_error("head_bucket", service_error_code="404", http_status_code=404)
        assert policy.require("AK2", "fresh", buckets.WRITE)
        with pytest.raises(BucketAccessDenied):
            policy.require("AK1", "fresh", buckets.WRITE)
        stub.assert_no_pending_responses()
    db.dispose()
