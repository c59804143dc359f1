"""Projects and datasets over the RPC edge (SQLite, in-process app, memory broker)."""

from __future__ import annotations

import pytest

from pipeline.client import ClientError, ImmClient


def error_of(call: object) -> ClientError:
    assert callable(call)
    with pytest.raises(ClientError) as info:
        call()
    assert info.value.body["RequestId"]  # every error carries a RequestId
    return info.value


def test_project_lifecycle(imm: ImmClient) -> None:
    created = imm.call(
        "CreateProject",
        ProjectName="p1",
        Description="first",
        Tag=[{"Key": "env", "Value": "test"}],
        DatasetMaxFileCount=5,
    )
    project = created["Project"]
    assert created["RequestId"]
    assert project["ProjectName"] == "p1" and project["Description"] == "first"
    assert project["Tags"] == [{"TagKey": "env", "TagValue": "test"}]
    assert project["DatasetMaxFileCount"] == 5
    assert project["ProjectMaxDatasetCount"] == 1_000_000_000
    assert project["CreateTime"] == project["UpdateTime"]

    updated = imm.call("UpdateProject", ProjectName="p1", Description="second")["Project"]
    assert updated["Description"] == "second" and updated["UpdateTime"] >= project["UpdateTime"]
    assert imm.call("GetProject", ProjectName="p1")["Project"]["Description"] == "second"

    imm.call("DeleteProject", ProjectName="p1")
    assert error_of(lambda: imm.call("GetProject", ProjectName="p1")).code == "ResourceNotFound"


def test_duplicate_and_invalid_names(imm: ImmClient) -> None:
    imm.call("CreateProject", ProjectName="dup")
    err = error_of(lambda: imm.call("CreateProject", ProjectName="dup"))
    assert err.code == "ResourceAlreadyExists" and err.status == 409
    assert (
        error_of(lambda: imm.call("CreateProject", ProjectName="1bad")).code == "InvalidProjectName"
    )
    assert (
        error_of(lambda: imm.call("CreateProject", ProjectName="x" * 129)).code
        == "InvalidProjectName"
    )
    assert error_of(lambda: imm.call("CreateProject")).code == "MissingProjectName"
    assert (
        error_of(lambda: imm.call("CreateProject", ProjectName="ok", Tag="{not json")).code
        == "InvalidJSON"
    )
    err = error_of(lambda: imm.call("CreateProject", ProjectName="ok", Bogus="1"))
    assert err.code == "InvalidArgument" and "Bogus" in str(err)
    assert error_of(lambda: imm.call("NoSuchAction")).code == "InvalidAction.NotFound"


def test_owners_are_isolated(imm: ImmClient, imm_other: ImmClient) -> None:
    imm.call("CreateProject", ProjectName="mine")
    assert (
        error_of(lambda: imm_other.call("GetProject", ProjectName="mine")).code
        == "ResourceNotFound"
    )
    imm_other.call("CreateProject", ProjectName="mine")  # same name, other owner: fine
    assert [p["ProjectName"] for p in imm_other.call("ListProjects")["Projects"]] == ["mine"]


def test_list_projects_paging_and_prefix(imm: ImmClient) -> None:
    for i in range(5):
        imm.call("CreateProject", ProjectName=f"proj{i}")
    imm.call("CreateProject", ProjectName="other")
    first = imm.call("ListProjects", MaxResults=2, Prefix="proj")
    assert [p["ProjectName"] for p in first["Projects"]] == ["proj0", "proj1"]
    names = [p["ProjectName"] for p in first["Projects"]]
    token = first["NextToken"]
    while token:
        page = imm.call("ListProjects", MaxResults=2, Prefix="proj", NextToken=token)
        names += [p["ProjectName"] for p in page["Projects"]]
        token = page["NextToken"]
    assert names == [f"proj{i}" for i in range(5)]
    assert error_of(lambda: imm.call("ListProjects", NextToken="!!!")).code == "InvalidNextToken"


def test_dataset_lifecycle_and_delete_conflict(imm: ImmClient) -> None:
    imm.call("CreateProject", ProjectName="p")
    dataset = imm.call(
        "CreateDataset", ProjectName="p", DatasetName="d", TemplateId="Official:FaceManagement"
    )["Dataset"]
    assert dataset["DatasetName"] == "d" and dataset["TemplateId"] == "Official:FaceManagement"
    assert dataset["ProjectName"] == "p" and dataset["DatasetMaxBindCount"] == 10
    assert (
        error_of(lambda: imm.call("CreateDataset", ProjectName="p", DatasetName="d")).code
        == "ResourceAlreadyExists"
    )
    assert (
        error_of(lambda: imm.call("CreateDataset", ProjectName="nope", DatasetName="d")).code
        == "ResourceNotFound"
    )
    imm.call("UpdateDataset", ProjectName="p", DatasetName="d", Description="faces")
    got = imm.call("GetDataset", ProjectName="p", DatasetName="d")["Dataset"]
    assert got["Description"] == "faces"
    assert [d["DatasetName"] for d in imm.call("ListDatasets", ProjectName="p")["Datasets"]] == [
        "d"
    ]
    err = error_of(lambda: imm.call("DeleteProject", ProjectName="p"))
    assert err.code == "StatusConflict"
    imm.call("DeleteDataset", ProjectName="p", DatasetName="d")
    imm.call("DeleteProject", ProjectName="p")


def test_bad_signature_and_unsigned_requests(imm: ImmClient) -> None:
    bad = ImmClient("http://testserver", ("AK1", "wrong"))
    bad.http = imm.http
    assert error_of(lambda: bad.call("ListProjects")).code == "SignatureDoesNotMatch"
    unknown = ImmClient("http://testserver", ("NOPE", "x"))
    unknown.http = imm.http
    assert error_of(lambda: unknown.call("ListProjects")).code == "InvalidAccessKeyId.NotFound"
    anonymous = ImmClient("http://testserver", None)
    anonymous.http = imm.http
    err = error_of(lambda: anonymous.call("ListProjects"))
    assert err.code == "MissingAuthorization" and err.status == 401
