"""IMM RPC response shapes (field names exactly as the 2020-09-30 API spells them)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Tag(_Model):
    TagKey: str
    TagValue: str


class Project(_Model):
    ProjectName: str
    Description: str = ""
    ServiceRole: str = "AliyunIMMDefaultRole"
    TemplateId: str = ""
    CreateTime: str
    UpdateTime: str
    ProjectQueriesPerSecond: int = 100
    EngineConcurrency: int = 100
    ProjectMaxDatasetCount: int
    DatasetMaxBindCount: int
    DatasetMaxFileCount: int
    DatasetMaxEntityCount: int
    DatasetMaxRelationCount: int
    DatasetMaxTotalFileSize: int
    DatasetCount: int = 0
    FileCount: int = 0
    TotalFileSize: int = 0
    Tags: list[Tag] = []


class Dataset(_Model):
    ProjectName: str
    DatasetName: str
    Description: str = ""
    TemplateId: str = ""
    CreateTime: str
    UpdateTime: str
    DatasetMaxBindCount: int
    DatasetMaxFileCount: int
    DatasetMaxEntityCount: int
    DatasetMaxRelationCount: int
    DatasetMaxTotalFileSize: int
    BindCount: int = 0
    FileCount: int = 0
    TotalFileSize: int = 0
    WorkflowParameters: list[dict[str, str]] = []


class TaskInfo(_Model):
    """One task as ListTasks returns it (no ProjectName/EventId, reference §1.4)."""

    TaskId: str
    TaskType: str
    Status: str
    Code: str = ""
    Message: str = ""
    StartTime: str = ""
    EndTime: str = ""
    Progress: int = 0
    UserData: str = ""
    Tags: dict[str, Any] = {}
    TaskRequestDefinition: str | None = None


class GetTaskResponse(TaskInfo):
    RequestId: str
    ProjectName: str
    EventId: str


class CreateTaskResponse(_Model):
    RequestId: str
    TaskId: str
    EventId: str


class ErrorResponse(_Model):
    RequestId: str
    HostId: str
    Code: str
    Message: str
    Recommend: str = ""


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of every published shape, keyed by model name."""
    models: list[type[BaseModel]] = [
        Project,
        Dataset,
        TaskInfo,
        GetTaskResponse,
        CreateTaskResponse,
        ErrorResponse,
    ]
    from schemas.events import event_schemas

    return {**{m.__name__: m.model_json_schema() for m in models}, **event_schemas()}
