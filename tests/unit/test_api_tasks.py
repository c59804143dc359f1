"""Task creation, validation, reading, listing and cancelling at the RPC edge (no workers:
the memory broker just holds the messages)."""

from __future__ import annotations

import json

import psycopg
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from pipeline import queue, tasks
from pipeline.client import ClientError, ImmClient
from pipeline.models import Task
from tests.conftest import METRICS_TOKEN
from tests.unit.test_api_projects import error_of

SOURCES = [{"URI": "oss://bucket/in/"}]


@pytest.fixture
def project(imm: ImmClient) -> str:
    imm.call("CreateProject", ProjectName="p")
    return "p"


def task_count(imm: ImmClient) -> int:
    services = imm.http.app.state.services  # type: ignore[attr-defined]
    with services.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(Task)) or 0)


def compress(imm: ImmClient, **extra: object) -> dict[str, object]:
    params: dict[str, object] = {
        "ProjectName": "p",
        "Sources": SOURCES,
        "TargetURI": "oss://bucket/out.zip",
    }
    params.update(extra)
    return imm.call("CreateFileCompressionTask", **params)


def test_create_returns_ids_and_get_task_reads_back(imm: ImmClient, project: str) -> None:
    created = compress(imm, UserData="u" * 2048)
    assert created["TaskId"].startswith("FileCompression-")
    assert len(created["EventId"].split("-")[1]) == 27
    task = imm.call(
        "GetTask",
        ProjectName=project,
        TaskType="FileCompression",
        TaskId=created["TaskId"],
        RequestDefinition=True,
    )
    assert task["Status"] == "Running" and task["Progress"] == 0
    assert task["UserData"] == "u" * 2048 and task["EventId"] == created["EventId"]
    assert task["StartTime"].endswith("Z") and task["EndTime"] == ""
    assert json.loads(task["TaskRequestDefinition"])["TargetURI"] == "oss://bucket/out.zip"
    err = error_of(
        lambda: imm.call(
            "GetTask", ProjectName=project, TaskType="Highlight", TaskId=created["TaskId"]
        )
    )
    assert err.code == "ResourceNotFound"


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"TargetURI": None}, "MissingTargetURI"),
        ({"Sources": "[{"}, "InvalidJSON"),
        ({"Sources": {"URI": "x"}}, "InvalidJSON"),
        ({"UserData": "u" * 2049}, "InvalidUserData"),
        ({"TargetURI": "oss://bucket/../etc/passwd"}, "InvalidURI"),
        ({"Sources": [{"URI": "oss://bucket/a/../../x"}]}, "InvalidURI"),
        ({"Sources": [{"URI": "file:///etc/passwd"}]}, "InvalidURI"),
        ({"Sources": [{"URI": "http://127.0.0.1/secret"}]}, "InvalidURI"),
        ({"Sources": [{"URI": "http://169.254.169.254/latest/meta-data"}]}, "InvalidURI"),
        ({"Sources": [{"URI": "oss://bucket/x", "Mode": "regex"}]}, "InvalidSources"),
        ({"Sources": [{"URI": f"oss://bucket/{i}"} for i in range(101)]}, "InvalidSources"),
        ({"CompressedFormat": "rar"}, "InvalidCompressedFormat"),
        ({"Notification": {"Kafka": {}}}, "InvalidNotification"),
        ({"ProjectName": "missing"}, "ResourceNotFound"),
        ({"Extra": "1"}, "InvalidArgument"),
    ],
)
def test_bad_input_is_refused_and_nothing_written(
    imm: ImmClient, project: str, params: dict[str, object], code: str
) -> None:
    with pytest.raises(ClientError) as info:
        compress(imm, **params)
    assert info.value.code == code, info.value.body
    assert info.value.status in (400, 404)
    assert set(info.value.body) >= {"RequestId", "Code", "Message"}
    assert task_count(imm) == 0


def test_client_token_makes_create_idempotent(imm: ImmClient, project: str) -> None:
    first = compress(imm, ClientToken="tok-1")
    again = compress(imm, ClientToken="tok-1")
    assert again["TaskId"] == first["TaskId"] and again["EventId"] == first["EventId"]
    other = compress(imm, ClientToken="tok-2")
    assert other["TaskId"] != first["TaskId"]
    err = error_of(lambda: compress(imm, ClientToken="tok-1", UserData="different"))
    assert err.code == "IdempotentParameterMismatch"
    assert task_count(imm) == 2


def test_list_tasks_filters_sort_and_paging(imm: ImmClient, project: str) -> None:
    ids = [
        imm.call("CreateDiagnosticTask", ProjectName=project, Tags={"batch": str(i % 2)})["TaskId"]
        for i in range(5)
    ]
    ids += [compress(imm)["TaskId"]]
    all_ids = sorted(ids)
    seen: list[str] = []
    token = ""
    while True:
        page = imm.call("ListTasks", ProjectName=project, MaxResults=2, NextToken=token or None)
        assert page["MaxResults"] == "2" and page["ProjectName"] == project
        seen += [t["TaskId"] for t in page["Tasks"]]
        token = page["NextToken"]
        if not token:
            break
    assert seen == all_ids
    desc = imm.call("ListTasks", ProjectName=project, Order="desc")["Tasks"]
    assert [t["TaskId"] for t in desc] == all_ids[::-1]
    by_type = imm.call("ListTasks", ProjectName=project, TaskTypes=["FileCompression"])["Tasks"]
    assert [t["TaskId"] for t in by_type] == [ids[-1]]
    tagged = imm.call("ListTasks", ProjectName=project, TagSelector="batch=1")["Tasks"]
    assert sorted(t["TaskId"] for t in tagged) == sorted([ids[1], ids[3]])
    assert all(t["Tags"] == {"batch": "1"} for t in tagged)
    by_start = imm.call("ListTasks", ProjectName=project, Sort="StartTime", MaxResults=3)
    more = imm.call(
        "ListTasks",
        ProjectName=project,
        Sort="StartTime",
        MaxResults=3,
        NextToken=by_start["NextToken"],
    )
    assert [t["TaskId"] for t in by_start["Tasks"] + more["Tasks"]] == ids
    window = imm.call(
        "ListTasks",
        ProjectName=project,
        StartTimeRange={"Start": "2000-01-01T00:00:00Z", "End": "2001-01-01T00:00:00Z"},
    )
    assert window["Tasks"] == []
    assert (
        error_of(lambda: imm.call("ListTasks", ProjectName=project, MaxResults=101)).code
        == "InvalidMaxResults"
    )
    assert (
        error_of(lambda: imm.call("ListTasks", ProjectName=project, Status="Queued")).code
        == "InvalidStatus"
    )


def test_cancel_task(imm: ImmClient, project: str) -> None:
    task_id = imm.call("CreateDiagnosticTask", ProjectName=project, Mode="Sleep")["TaskId"]
    cancelled = imm.call("CancelTask", ProjectName=project, TaskId=task_id)
    assert cancelled["Status"] == "Cancelled" and cancelled["Code"] == "TaskCancelled"
    assert cancelled["EndTime"].endswith("Z")
    err = error_of(lambda: imm.call("CancelTask", ProjectName=project, TaskId=task_id))
    assert err.code == "StatusConflict"
    listed = imm.call("ListTasks", ProjectName=project, Status="Cancelled")["Tasks"]
    assert [t["TaskId"] for t in listed] == [task_id]


def test_long_query_string_is_accepted(imm: ImmClient, project: str) -> None:
    sources = [
        {
            "URI": f"oss://bucket/a/rather/long/prefix/for/every/one/of/the/files/file-{i:04d}.jpg",
            "Alias": f"/renamed/with/a/long/alias/in/the/archive/for/this/file/number-{i:04d}.jpg",
        }
        for i in range(100)
    ]
    assert len(json.dumps(sources)) > 16_000
    assert compress(imm, Sources=sources)["TaskId"]


def test_healthz_and_metrics(imm: ImmClient, project: str) -> None:
    compress(imm)
    assert imm.http.get("/healthz").json() == {"status": "ok"}
    text = imm.http.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).text
    assert 'openimm_tasks{status="Running",task_type="FileCompression"} 1.0' in text
    assert "openimm_queue_depth" in text


def test_unsafe_zip_aliases_are_refused_before_queueing(imm: ImmClient, project: str) -> None:
    """Attack (issue 9 item 9): '/..\\..\\evil.txt' passed the API's '..' check."""
    for alias in ("/..\\..\\evil.txt", "/C:\\..\\x.txt"):
        sources = [{"URI": "oss://bucket/one.bin", "Alias": alias, "Mode": "fullname"}]
        err = error_of(lambda sources=sources: compress(imm, Sources=sources))
        assert err.code == "InvalidSources" and "'..'" in str(err)
    assert task_count(imm) == 0


_PG_DOWN = OperationalError("INSERT", {}, psycopg.OperationalError("connection refused"))


@pytest.mark.parametrize(
    ("dependency", "module", "step", "failure"),
    [
        ("database", tasks, "create_unkeyed", _PG_DOWN),
        ("task queue", queue, "enqueue", RedisConnectionError("Connection refused")),
    ],
)
def test_an_outage_at_create_is_a_503_that_says_nothing_was_created(
    imm: ImmClient,
    project: str,
    monkeypatch: pytest.MonkeyPatch,
    dependency: str,
    module: object,
    step: str,
    failure: Exception,
) -> None:
    """A retry after this answer cannot duplicate a task: none exists, and the caller is told."""

    def down(*_: object, **__: object) -> None:
        raise failure

    monkeypatch.setattr(module, step, down)
    err = error_of(lambda: compress(imm))
    assert err.status == 503 and err.code == "ServiceUnavailable"
    assert str(err.body["Message"]) == (
        f"The {dependency} is unavailable; the task was not created. Retry later."
    )
    assert task_count(imm) == 0
