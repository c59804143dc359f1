"""Bucket ownership end to end: two owners on real API + worker processes (PostgreSQL +
Redis), the official IMM SDK and the ``openimm`` CLI. Owner A is the first configured key."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from alibabacloud_imm20200930 import models as m
from alibabacloud_imm20200930.client import Client as ImmSdk
from alibabacloud_tea_openapi.models import Config
from Tea.exceptions import TeaException

os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
from eas_prediction import PredictClient, StringRequest
from eas_prediction.exception import PredictException

from pipeline.buckets import eas_bucket
from pipeline.client import ClientError, ImmClient
from tests.e2e.stack import Stack, launch, wait_until
from tests.e2e.test_image_services import FIXTURES
from tests.realservices import PostgresServer, RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
A, B = ("LTAIownerA", "secret-a"), ("LTAIownerB", "secret-b")


@pytest.fixture(scope="module")
def stack(
    postgres_server: PostgresServer,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    stack = launch(
        tmp_path_factory.mktemp("owners"),
        database_url=postgres_server.create_database("e2e_bucket_owners"),
        broker_url=redis_server.url(14),
        access_keys=f"{A[0]}:{A[1]},{B[0]}:{B[1]}",
    )
    yield stack
    stack.stop_all()


def sdk_for(stack: Stack, key: tuple[str, str]) -> ImmSdk:
    config = Config(
        access_key_id=key[0],
        access_key_secret=key[1],
        endpoint=stack.endpoint,
        protocol="http",
        read_timeout=60000,
        connect_timeout=5000,
    )
    return ImmSdk(config)


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def a_files(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A's folder uploaded with ``openimm cp`` (which signs with the first key: A)."""
    folder = tmp_path_factory.mktemp("a-files")
    (folder / "secret.txt").write_text("A only")
    (folder / "plan.txt").write_text("also A's")
    done = cli(stack, "cp", str(folder), "oss://a-private/docs/")
    assert done.returncode == 0, done.stderr
    return "a-private"


@pytest.fixture(scope="module")
def projects(stack: Stack) -> dict[str, ImmSdk]:
    clients = {"a": sdk_for(stack, A), "b": sdk_for(stack, B)}
    for name, client in clients.items():
        client.create_project(m.CreateProjectRequest(project_name=f"p-{name}"))
    return clients


def http_for(stack: Stack, key: tuple[str, str]) -> ImmClient:
    return ImmClient(stack.endpoint, key)


def wait_terminal(sdk: ImmSdk, project: str, task_id: str) -> m.GetTaskResponseBody:
    def done() -> m.GetTaskResponseBody | None:
        request = m.GetTaskRequest(
            project_name=project, task_type="FileCompression", task_id=task_id
        )
        body = sdk.get_task(request).body
        return body if body.status != "Running" else None

    return wait_until(done, 120, what=f"{task_id} terminal")


def test_cp_claims_the_bucket_and_b_cannot_touch_it(
    stack: Stack, a_files: str, tmp_path: Path
) -> None:
    b = http_for(stack, B)
    for attempt in (
        lambda: b.get_object("oss://a-private/docs/secret.txt"),
        lambda: b.list_objects("oss://a-private/"),
        lambda: b.put_object("oss://a-private/docs/secret.txt", tmp_path / "evil.txt"),
    ):
        (tmp_path / "evil.txt").write_text("B was here")
        with pytest.raises(ClientError) as info:
            attempt()
        assert (info.value.status, info.value.code) == (403, "AccessDenied")
    stored = stack.data_dir / "oss" / "a-private" / "docs" / "secret.txt"
    assert stored.read_text() == "A only"
    listing = cli(stack, "buckets", "list")
    assert listing.returncode == 0 and A[0] in listing.stdout and "a-private" in listing.stdout


def test_b_compression_over_a_bucket_is_refused_at_create(
    projects: dict[str, ImmSdk], a_files: str
) -> None:
    request = m.CreateFileCompressionTaskRequest(
        project_name="p-b",
        target_uri="oss://b-out/steal.zip",
        sources=[m.CreateFileCompressionTaskRequestSources(uri="oss://a-private/")],
    )
    with pytest.raises(TeaException) as info:
        projects["b"].create_file_compression_task(request)
    assert info.value.code == "AccessDenied"
    listed = projects["b"].list_tasks(m.ListTasksRequest(project_name="p-b")).body
    assert not listed.tasks


def test_worker_refuses_b_manifest_naming_a_objects(
    stack: Stack, projects: dict[str, ImmSdk], a_files: str, tmp_path: Path
) -> None:
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps([{"URI": "oss://a-private/docs/secret.txt"}]))
    http_for(stack, B).put_object("oss://b-in/manifest.json", manifest)
    request = m.CreateFileCompressionTaskRequest(
        project_name="p-b",
        target_uri="oss://b-out/manifest.zip",
        source_manifest_uri="oss://b-in/manifest.json",
    )
    task_id = projects["b"].create_file_compression_task(request).body.task_id
    body = wait_terminal(projects["b"], "p-b", task_id)
    assert (body.status, body.code) == ("Failed", "AccessDenied")
    assert not (stack.data_dir / "oss" / "b-out" / "manifest.zip").exists()


def test_a_compresses_its_own_files_and_a_share_lets_b_read(
    stack: Stack, projects: dict[str, ImmSdk], a_files: str
) -> None:
    request = m.CreateFileCompressionTaskRequest(
        project_name="p-a",
        target_uri="oss://a-private/out/all.zip",
        sources=[m.CreateFileCompressionTaskRequestSources(uri="oss://a-private/docs/")],
    )
    task_id = projects["a"].create_file_compression_task(request).body.task_id
    assert wait_terminal(projects["a"], "p-a", task_id).status == "Succeeded"
    archive = zipfile.ZipFile(
        io.BytesIO(http_for(stack, A).get_object("oss://a-private/out/all.zip"))
    )
    assert sorted(archive.namelist()) == ["docs/plan.txt", "docs/secret.txt"]
    shared = cli(stack, "buckets", "share", "a-private", "--with", B[0], "--read-only")
    assert shared.returncode == 0, shared.stderr
    assert http_for(stack, B).get_object("oss://a-private/docs/secret.txt") == b"A only"


def test_dropped_in_folder_belongs_to_the_first_key(stack: Stack) -> None:
    folder = stack.data_dir / "oss" / "dropped-in"
    folder.mkdir(parents=True)
    (folder / "x.txt").write_text("dropped")
    with pytest.raises(ClientError) as info:
        http_for(stack, B).get_object("oss://dropped-in/x.txt")
    assert info.value.code == "AccessDenied"
    assert http_for(stack, A).get_object("oss://dropped-in/x.txt") == b"dropped"


# ---- the image services (issue 12) under a second owner -----------------------------------


@pytest.fixture(scope="module")
def a_photo(stack: Stack) -> str:
    """A photo in A's own bucket (``openimm cp`` signs with A), shared with nobody."""
    done = cli(stack, "cp", str(FIXTURES / "coffee.jpg"), "oss://a-photos/coffee.jpg")
    assert done.returncode == 0, done.stderr
    return "oss://a-photos/coffee.jpg"


def predict_as(stack: Stack, key: tuple[str, str], service: str, body: object) -> PredictException:
    """The official EAS client's failure for ``key``'s call (the call must be refused)."""
    client = PredictClient(f"http://{stack.endpoint}", service)
    client.set_token(key[1])
    client.set_retry_count(1)
    client.init()
    with pytest.raises(PredictException) as info:
        client.predict(StringRequest(json.dumps(body)))
    return info.value


def test_b_cannot_classify_a_photo_of_a_by_its_uri(stack: Stack, a_photo: str) -> None:
    refused = predict_as(stack, B, "image_classification", {"input": {"url": a_photo}})
    answer = json.loads(refused.message)
    assert refused.code == 403 and answer["success"] is False
    assert answer["error_code"] == 403 and "AccessDenied" in answer["error_msg"]
    # nor an inline image A staged: the staging bucket is A's, whatever key B guesses
    staged = f"oss://{eas_bucket('eas-outputs', A[0])}/inputs/guess.jpg"
    refused = predict_as(stack, B, "image_classification", {"input": {"url": staged}})
    assert refused.code == 403 and json.loads(refused.message)["success"] is False


def test_b_classification_task_over_a_photo_is_refused_at_create(
    stack: Stack, projects: dict[str, ImmSdk], a_photo: str
) -> None:
    sources = [{"URI": a_photo}]
    with pytest.raises(ClientError) as info:
        http_for(stack, B).call("CreateImageClassificationTask", ProjectName="p-b", Sources=sources)
    assert (info.value.status, info.value.code) == (403, "AccessDenied")
    listed = projects["b"].list_tasks(m.ListTasksRequest(project_name="p-b")).body
    assert not [t for t in listed.tasks if t.task_type == "ImageClassification"]
    # the refusal is about the owner, not the request: A's own call is accepted
    created = http_for(stack, A).call(
        "CreateImageClassificationTask", ProjectName="p-a", Sources=sources
    )
    assert created["TaskId"]
