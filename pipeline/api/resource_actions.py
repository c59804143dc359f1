"""Project and dataset actions (reference §3.1-3.2)."""

from __future__ import annotations

from typing import Any

from pipeline import projects
from pipeline.api import views
from pipeline.api.rpc import action
from pipeline.api.services import Caller, Services
from pipeline.errors import InvalidParameter
from pipeline.params import Params

LIMIT_PARAMS = (
    "ProjectMaxDatasetCount",
    "DatasetMaxBindCount",
    "DatasetMaxFileCount",
    "DatasetMaxEntityCount",
    "DatasetMaxRelationCount",
    "DatasetMaxTotalFileSize",
)
LIMIT_RANGES = {
    "ProjectMaxDatasetCount": (1, 1_000_000_000),
    "DatasetMaxBindCount": (1, 10),
    "DatasetMaxFileCount": (1, 100_000_000),
    "DatasetMaxEntityCount": (1, 10_000_000_000),
    "DatasetMaxRelationCount": (1, 100_000_000_000),
    "DatasetMaxTotalFileSize": (1, 90_000_000_000_000_000),
}
PROJECT_FIELDS = "ProjectName Description ServiceRole TemplateId Tag " + " ".join(LIMIT_PARAMS)
DATASET_FIELDS = "ProjectName DatasetName Description TemplateId WorkflowParameters " + " ".join(
    LIMIT_PARAMS[1:]
)


def _description(p: Params) -> str | None:
    return p.str("Description", max_bytes=256) or None


def _limits(p: Params, names: tuple[str, ...]) -> dict[str, int | None]:
    return {n: p.int(n, minimum=LIMIT_RANGES[n][0], maximum=LIMIT_RANGES[n][1]) for n in names}


def _tags(p: Params) -> list[dict[str, Any]] | None:
    """IMM's ``Tag``: a JSON array of ``{"Key": …, "Value": …}`` with string values."""
    tags = p.json("Tag", list)
    if tags is not None and not all(
        isinstance(t, dict)
        and isinstance(t.get("Key"), str)
        and isinstance(t.get("Value", ""), str)
        for t in tags
    ):
        raise InvalidParameter("Tag", 'Expected [{"Key": "…", "Value": "…"}].')
    return tags


def _project_fields(p: Params) -> dict[str, Any]:
    tags = _tags(p)
    return {
        "description": _description(p),
        "service_role": p.str("ServiceRole") or None,
        "template_id": p.str("TemplateId", max_bytes=128) or None,
        "tags": None
        if tags is None
        else [{"TagKey": str(t["Key"]), "TagValue": str(t.get("Value", ""))} for t in tags],
        "limits": _limits(p, LIMIT_PARAMS),
    }


def _dataset_fields(p: Params) -> dict[str, Any]:
    workflow = p.json("WorkflowParameters", list)
    return {
        "description": _description(p),
        "template_id": p.str("TemplateId", max_bytes=128) or None,
        "workflow_parameters": workflow,
        "limits": _limits(p, LIMIT_PARAMS[1:]),
    }


@action("CreateProject", PROJECT_FIELDS)
def create_project(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    name = p.name("ProjectName")
    fields = _project_fields(p)
    with svc.db.session() as s:
        project = projects.create_project(s, caller.owner, name, fields)
        return {"Project": views.project(project)}


@action("GetProject", "ProjectName WithStatistics")
def get_project(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    name = p.name("ProjectName")
    with_stats = p.bool("WithStatistics")
    with svc.db.session() as s:
        project = projects.get_project(s, caller.owner, name)
        count = projects.dataset_count(s, project) if with_stats else 0
        return {"Project": views.project(project, count)}


@action("ListProjects", "MaxResults NextToken Prefix Tag")
def list_projects(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    tags = _tags(p) or []
    max_results = p.int("MaxResults", default=100, minimum=0, maximum=200) or 100
    with svc.db.session() as s:
        rows, token = projects.list_projects(
            s,
            caller.owner,
            prefix=p.str("Prefix"),
            tags=tags,
            max_results=max_results,
            next_token=p.str("NextToken"),
        )
        return {"Projects": [views.project(r) for r in rows], "NextToken": token}


@action("UpdateProject", PROJECT_FIELDS)
def update_project(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    name = p.name("ProjectName")
    fields = _project_fields(p)
    with svc.db.session() as s:
        project = projects.update_project(s, caller.owner, name, fields)
        return {"Project": views.project(project)}


@action("DeleteProject", "ProjectName")
def delete_project(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    name = p.name("ProjectName")
    with svc.db.session() as s:
        projects.delete_project(s, caller.owner, name)
    return {}


@action("CreateDataset", DATASET_FIELDS)
def create_dataset(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    project_name, name = p.name("ProjectName"), p.name("DatasetName")
    fields = _dataset_fields(p)
    with svc.db.session() as s:
        project = projects.get_project(s, caller.owner, project_name)
        dataset = projects.create_dataset(s, project, name, fields)
        return {"Dataset": views.dataset(dataset, project.name)}


@action("GetDataset", "ProjectName DatasetName WithStatistics")
def get_dataset(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    project_name, name = p.name("ProjectName"), p.name("DatasetName")
    p.bool("WithStatistics")  # statistics are always current here; validate the flag only
    with svc.db.session() as s:
        project = projects.get_project(s, caller.owner, project_name)
        return {"Dataset": views.dataset(projects.get_dataset(s, project, name), project.name)}


@action("ListDatasets", "ProjectName MaxResults NextToken Prefix")
def list_datasets(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    project_name = p.name("ProjectName")
    max_results = p.int("MaxResults", default=100, minimum=0, maximum=200) or 100
    with svc.db.session() as s:
        project = projects.get_project(s, caller.owner, project_name)
        rows, token = projects.list_datasets(
            s,
            project,
            prefix=p.str("Prefix"),
            max_results=max_results,
            next_token=p.str("NextToken"),
        )
        return {"Datasets": [views.dataset(r, project.name) for r in rows], "NextToken": token}


@action("UpdateDataset", DATASET_FIELDS)
def update_dataset(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    project_name, name = p.name("ProjectName"), p.name("DatasetName")
    fields = _dataset_fields(p)
    with svc.db.session() as s:
        project = projects.get_project(s, caller.owner, project_name)
        dataset = projects.update_dataset(s, project, name, fields)
        return {"Dataset": views.dataset(dataset, project.name)}


@action("DeleteDataset", "ProjectName DatasetName")
def delete_dataset(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    project_name, name = p.name("ProjectName"), p.name("DatasetName")
    with svc.db.session() as s:
        project = projects.get_project(s, caller.owner, project_name)
        projects.delete_dataset(s, project, name)
    return {}
