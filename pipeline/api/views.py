"""ORM rows → IMM response objects (``schemas.imm``)."""

from __future__ import annotations

import json
from typing import Any

from pipeline.ids import resource_time, task_time
from pipeline.models import DEFAULT_LIMITS, Dataset, Project, Task
from schemas import imm


def _limits(row_limits: dict[str, int], prefix: str = "") -> dict[str, int]:
    merged = {**DEFAULT_LIMITS, **row_limits}
    return {k: int(v) for k, v in merged.items() if k.startswith(prefix)}


def project(p: Project, dataset_count: int = 0) -> dict[str, Any]:
    return imm.Project(
        ProjectName=p.name,
        Description=p.description,
        ServiceRole=p.service_role,
        TemplateId=p.template_id,
        CreateTime=resource_time(p.create_time),
        UpdateTime=resource_time(p.update_time),
        DatasetCount=dataset_count,
        Tags=[imm.Tag(**t) for t in p.tags],
        **_limits(p.limits),
    ).model_dump()


def dataset(d: Dataset, project_name: str) -> dict[str, Any]:
    return imm.Dataset(
        ProjectName=project_name,
        DatasetName=d.name,
        Description=d.description,
        TemplateId=d.template_id,
        CreateTime=resource_time(d.create_time),
        UpdateTime=resource_time(d.update_time),
        FileCount=d.file_count,
        TotalFileSize=d.total_file_size,
        WorkflowParameters=d.workflow_parameters,
        **_limits(d.limits, "Dataset"),
    ).model_dump()


# Keys the API adds to a task's stored request for the worker, not sent by the client: the
# owner and template the job runs for, and the EAS front door's translations of its input.
INTERNAL_REQUEST_KEYS = frozenset(
    {"Owner", "TemplateId", "MaxSeconds", "MaxMicroseconds", "AutoSuffix"}
)


def request_definition(request: dict[str, Any]) -> str:
    """``TaskRequestDefinition``: the create request as a JSON string, internals removed."""
    return json.dumps({k: v for k, v in request.items() if k not in INTERNAL_REQUEST_KEYS})


def task_info(t: Task, with_definition: bool = False) -> dict[str, Any]:
    info = imm.TaskInfo(
        TaskId=t.id,
        TaskType=t.task_type,
        Status=t.status,
        Code=t.code,
        Message=t.message,
        StartTime=task_time(t.start_time),
        EndTime=task_time(t.end_time),
        Progress=t.progress,
        UserData=t.user_data,
        Tags=t.tags,
        TaskRequestDefinition=request_definition(t.request) if with_definition else None,
    )
    return info.model_dump(exclude_none=True)


def get_task(t: Task, request_id: str, with_definition: bool) -> dict[str, Any]:
    body = task_info(t, with_definition)
    # openimm extension: the task's results (what its notification carries) are also readable
    # here, for clients without a topic; IMM's own keys take precedence.
    return {
        **(t.result or {}),
        **body,
        "ProjectName": t.project_name,
        "EventId": t.event_id,
        "RequestId": request_id,
    }
