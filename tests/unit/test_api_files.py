"""File meta, SimpleQuery and figure-cluster actions at the RPC edge: bad input gets an IMM
error and writes nothing (no workers: the memory broker just holds the messages)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from pipeline.client import ImmClient
from pipeline.models import Task
from tests.unit.test_api_projects import error_of


@pytest.fixture
def dataset(imm: ImmClient) -> str:
    imm.call("CreateProject", ProjectName="p")
    imm.call(
        "CreateDataset", ProjectName="p", DatasetName="d", TemplateId="Official:FaceManagement"
    )
    return "d"


def task_count(imm: ImmClient) -> int:
    services = imm.http.app.state.services  # type: ignore[attr-defined]
    with services.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(Task)) or 0)


def call(imm: ImmClient, action: str, **params: Any) -> dict[str, Any]:
    return imm.call(action, ProjectName="p", DatasetName="d", **params)


def test_index_returns_event_id_and_hides_the_job_from_list_tasks(
    imm: ImmClient, dataset: str
) -> None:
    reply = call(imm, "BatchIndexFileMeta", Files=[{"URI": "oss://bkt/a.jpg"}], UserData="u")
    assert reply["EventId"] and reply["TaskId"].startswith("FileMetaBatchIndex-")
    assert imm.call("ListTasks", ProjectName="p")["Tasks"] == []
    listed = imm.call("ListTasks", ProjectName="p", TaskTypes=["FileMetaBatchIndex"])["Tasks"]
    assert [t["TaskId"] for t in listed] == [reply["TaskId"]]
    one = call(imm, "IndexFileMeta", File={"URI": "oss://bkt/c.jpg", "CustomId": "x"})
    assert one["TaskId"].startswith("FileMetaIndex-")


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"Files": [{"URI": f"oss://bkt/{i}.jpg"} for i in range(101)]}, "LimitExceededError"),
        ({"Files": "[{"}, "InvalidJSON"),
        ({"Files": []}, "InvalidFiles"),
        ({"Files": [{"URI": "oss://bkt/a.jpg", "Bogus": 1}]}, "InvalidFiles"),
        ({"Files": [{"URI": "ftp://h/a.jpg"}]}, "InvalidFiles"),
        ({"Files": [{"URI": "oss://bkt/../../etc/passwd"}]}, "InvalidURI"),
        ({"Files": [{"URI": "file:///etc/passwd"}]}, "InvalidURI"),
        ({"Files": [{"URI": "http://127.0.0.1/a.jpg"}]}, "InvalidURI"),
        ({"Files": [{"URI": "oss://bkt/a.jpg", "Figures": [{"FigureId": "x"}]}]}, "InvalidFiles"),
        ({"Files": [{"URI": "oss://bkt/a.jpg", "CustomLabels": {"k": 1}}]}, "InvalidFiles"),
        (
            {
                "Files": [
                    {"URI": "oss://bkt/a.jpg", "CustomLabels": {f"k{i}": "v" for i in range(101)}}
                ]
            },
            "LimitExceededError",
        ),
        (
            {"Files": [{"URI": "oss://bkt/a.jpg"}], "Notification": {"MNS": {"TopicName": "nope"}}},
            "ResourceNotFound",
        ),
        ({}, "MissingFiles"),
    ],
)
def test_bad_index_requests_write_nothing(
    imm: ImmClient, dataset: str, params: dict[str, Any], code: str
) -> None:
    err = error_of(lambda: call(imm, "BatchIndexFileMeta", **params))
    assert err.code == code, err.body
    assert err.body["RequestId"] and err.body["Message"]
    assert task_count(imm) == 0


def test_unknown_project_or_dataset(imm: ImmClient, dataset: str) -> None:
    err = error_of(
        lambda: imm.call(
            "BatchIndexFileMeta", ProjectName="p", DatasetName="zz", Files=[{"URI": "oss://bkt/a"}]
        )
    )
    assert err.code == "ResourceNotFound" and "dataset" in err.body["Message"]
    err = error_of(lambda: imm.call("GetFileMeta", ProjectName="q", DatasetName="d", URI="x"))
    assert err.code == "ResourceNotFound" and "project" in err.body["Message"]


def test_get_update_delete_of_unindexed_files(imm: ImmClient, dataset: str) -> None:
    assert call(imm, "GetFileMeta", URI="oss://bkt/none.jpg")["Files"] == []
    call(imm, "DeleteFileMeta", URI="oss://bkt/none.jpg")  # IMM: succeeds anyway
    err = error_of(lambda: call(imm, "UpdateFileMeta", File={"URI": "oss://bkt/none.jpg"}))
    assert err.code == "ResourceNotFound"
    err = error_of(lambda: call(imm, "UpdateFileMeta", File={"URI": "oss://bkt/a", "Size": 3}))
    assert err.code == "InvalidFile" and "can be updated" in err.body["Message"]
    batch = call(
        imm,
        "BatchUpdateFileMeta",
        Files=[{"URI": "oss://bkt/none.jpg", "CustomId": "x"}, {"URI": "oss://bkt/y", "Size": 1}],
    )
    assert [f["Success"] for f in batch["Files"]] == [False, False]


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"Query": "{not json"}, "InvalidJSON"),
        ({"Query": {"Field": "Size", "Operation": "match", "Value": "1"}}, "InvalidQuery"),
        ({"Query": {"Field": "Size", "Operation": "eq", "Value": 1}}, "InvalidQuery"),
        ({"Sort": "a,b,c,d,e,f"}, "InvalidSort"),
        ({"Order": "up"}, "InvalidOrder"),
        ({"MaxResults": 101}, "InvalidMaxResults"),
        ({"Aggregations": [{"Field": "Size", "Operation": "median"}]}, "InvalidAggregations"),
        ({"NextToken": "!!!"}, "InvalidNextToken"),
    ],
)
def test_bad_simple_queries(
    imm: ImmClient, dataset: str, params: dict[str, Any], code: str
) -> None:
    assert error_of(lambda: call(imm, "SimpleQuery", **params)).code == code


def test_query_depth_over_five_is_refused(imm: ImmClient, dataset: str) -> None:
    node: dict[str, Any] = {"Field": "Size", "Operation": "gt", "Value": "1"}
    for _ in range(5):
        node = {"Operation": "and", "SubQueries": [node]}
    err = error_of(lambda: call(imm, "SimpleQuery", Query=node))
    assert err.code == "InvalidQuery" and "deeper than 5" in err.body["Message"]


def test_empty_dataset_queries(imm: ImmClient, dataset: str) -> None:
    result = call(imm, "SimpleQuery", Query={"Field": "Size", "Operation": "gt", "Value": "1"})
    assert result["Files"] == [] and result["TotalHits"] == 0 and result["NextToken"] == ""
    aggs = call(imm, "SimpleQuery", Aggregations=[{"Field": "Size", "Operation": "sum"}])
    assert aggs["Aggregations"] == [{"Field": "Size", "Operation": "sum", "Value": 0.0}]
    clusters = call(imm, "QueryFigureClusters", WithTotalCount=True)
    assert clusters["FigureClusters"] == [] and clusters["TotalCount"] == 0


def test_cluster_actions_on_unknown_clusters(imm: ImmClient, dataset: str) -> None:
    err = error_of(lambda: call(imm, "GetFigureCluster", ObjectId="Cluster-nope"))
    assert err.code == "ResourceNotFound"
    err = error_of(
        lambda: call(imm, "UpdateFigureCluster", FigureCluster={"ObjectId": "Cluster-nope"})
    )
    assert err.code == "ResourceNotFound"
    err = error_of(
        lambda: call(imm, "UpdateFigureCluster", FigureCluster={"ObjectId": "x", "FaceCount": 1})
    )
    assert err.code == "InvalidFigureCluster"
    err = error_of(lambda: call(imm, "CreateFigureClustersMergingTask", To="Cluster-a", From="b"))
    assert err.code == "ResourceNotFound"
    err = error_of(lambda: call(imm, "CreateFigureClustersMergingTask", To="Cluster-a"))
    assert err.code == "InvalidFrom"
    assert call(imm, "BatchGetFigureCluster", ObjectIds=["Cluster-x"])["FigureClusters"] == []
    assert task_count(imm) == 0
    created = call(imm, "CreateFigureClusteringTask")
    assert created["TaskId"].startswith("CreateFigureClusteringTask-")


def test_delete_dataset_with_files_conflicts(imm: ImmClient, dataset: str) -> None:
    services = imm.http.app.state.services  # type: ignore[attr-defined]
    from pipeline.models import Dataset

    with services.db.session() as s:
        row = s.scalar(select(Dataset).where(Dataset.name == "d"))
        row.file_count = 1
    err = error_of(lambda: imm.call("DeleteDataset", ProjectName="p", DatasetName="d"))
    assert err.code == "StatusConflict"
