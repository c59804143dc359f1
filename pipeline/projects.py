"""Project and dataset service: CRUD scoped to the owner (AccessKeyId)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pipeline import paging
from pipeline.errors import (
    LimitExceeded,
    ResourceAlreadyExists,
    ResourceNotFound,
    StatusConflict,
)
from pipeline.ids import utcnow
from pipeline.models import DEFAULT_LIMITS, Dataset, Project, Task

MAX_PROJECTS_PER_OWNER = 100  # IMM's default per-region quota


def job_dataset(session: Session, request: dict[str, Any], *, lock: bool) -> Dataset:
    """The dataset a job's request names (``Owner``, ``ProjectName``, ``DatasetName``).

    ``lock``: hold its row until the transaction ends (``FOR UPDATE OF datasets``: the joined
    project row stays free for the project's other datasets), so jobs that change one
    dataset's faces, clusters or counters take turns while datasets proceed in parallel.
    """
    query = (
        select(Dataset)
        .join(Project, Project.id == Dataset.project_id)
        .where(
            Project.owner == request["Owner"],
            Project.name == request["ProjectName"],
            Dataset.name == request["DatasetName"],
        )
    )
    dataset = session.scalar(query.with_for_update(of=Dataset) if lock else query)
    if dataset is None:
        raise ResourceNotFound("dataset", request["DatasetName"])
    return dataset


def get_project(session: Session, owner: str, name: str) -> Project:
    project = session.scalar(select(Project).where(Project.owner == owner, Project.name == name))
    if project is None:
        raise ResourceNotFound("project", name)
    return project


def create_project(session: Session, owner: str, name: str, fields: dict[str, Any]) -> Project:
    count = session.scalar(select(func.count()).where(Project.owner == owner)) or 0
    if count >= MAX_PROJECTS_PER_OWNER:
        raise LimitExceeded("Message: resource count exceeds the limit (100 projects).")
    now = utcnow()
    project = Project(
        owner=owner,
        name=name,
        create_time=now,
        update_time=now,
        limits={k: v for k, v in DEFAULT_LIMITS.items()},
    )
    _apply_project_fields(project, fields)
    session.add(project)
    try:
        session.flush()
    except IntegrityError:
        raise ResourceAlreadyExists("project", name) from None
    return project


def update_project(session: Session, owner: str, name: str, fields: dict[str, Any]) -> Project:
    project = get_project(session, owner, name)
    _apply_project_fields(project, fields)
    project.update_time = utcnow()
    return project


def _apply_project_fields(project: Project, fields: dict[str, Any]) -> None:
    for attr in ("description", "service_role", "template_id", "tags"):
        if fields.get(attr) is not None:
            setattr(project, attr, fields[attr])
    limits = dict(project.limits)
    limits.update({k: v for k, v in fields.get("limits", {}).items() if v is not None})
    project.limits = limits


def delete_project(session: Session, owner: str, name: str) -> None:
    project = get_project(session, owner, name)
    has_datasets = session.scalar(select(func.count()).where(Dataset.project_id == project.id))
    if has_datasets:
        raise StatusConflict("Message: cannot delete when sub resoures exist")
    running = session.scalar(
        select(func.count()).where(Task.project_id == project.id, Task.status == "Running")
    )
    if running:
        raise StatusConflict("Message: cannot delete while tasks are running")
    session.delete(project)


def list_projects(
    session: Session,
    owner: str,
    *,
    prefix: str,
    tags: list[dict[str, str]],
    max_results: int,
    next_token: str,
) -> tuple[Sequence[Project], str]:
    query = select(Project).where(Project.owner == owner).order_by(Project.name)
    if prefix:
        query = query.where(Project.name.startswith(prefix, autoescape=True))
    after = paging.decode(next_token)
    if after:
        query = query.where(Project.name > str(after[0]))
    # Tag filters are few and projects per owner ≤ 100, so filtering in Python is fine.
    rows = [p for p in session.scalars(query) if _has_tags(p, tags)]
    page = rows[:max_results]
    token = paging.encode([page[-1].name]) if len(rows) > max_results else ""
    return page, token


def _has_tags(project: Project, wanted: list[dict[str, str]]) -> bool:
    have = {(t.get("TagKey"), t.get("TagValue")) for t in project.tags}
    return all((w.get("Key"), w.get("Value")) in have for w in wanted)


def get_dataset(session: Session, project: Project, name: str) -> Dataset:
    dataset = session.scalar(
        select(Dataset).where(Dataset.project_id == project.id, Dataset.name == name)
    )
    if dataset is None:
        raise ResourceNotFound("dataset", name)
    return dataset


def create_dataset(
    session: Session, project: Project, name: str, fields: dict[str, Any]
) -> Dataset:
    count = session.scalar(select(func.count()).where(Dataset.project_id == project.id)) or 0
    if count >= project.limits.get(
        "ProjectMaxDatasetCount", DEFAULT_LIMITS["ProjectMaxDatasetCount"]
    ):
        raise LimitExceeded("Message: resource count exceeds the limit (ProjectMaxDatasetCount).")
    now = utcnow()
    defaults = {k: v for k, v in project.limits.items() if k.startswith("Dataset")}
    dataset = Dataset(
        project_id=project.id, name=name, create_time=now, update_time=now, limits=defaults
    )
    _apply_dataset_fields(dataset, fields)
    session.add(dataset)
    try:
        session.flush()
    except IntegrityError:
        raise ResourceAlreadyExists("dataset", name) from None
    return dataset


def update_dataset(
    session: Session, project: Project, name: str, fields: dict[str, Any]
) -> Dataset:
    dataset = get_dataset(session, project, name)
    _apply_dataset_fields(dataset, fields)
    dataset.update_time = utcnow()
    return dataset


def _apply_dataset_fields(dataset: Dataset, fields: dict[str, Any]) -> None:
    for attr in ("description", "template_id", "workflow_parameters"):
        if fields.get(attr) is not None:
            setattr(dataset, attr, fields[attr])
    limits = dict(dataset.limits)
    limits.update({k: v for k, v in fields.get("limits", {}).items() if v is not None})
    dataset.limits = limits


def delete_dataset(session: Session, project: Project, name: str) -> None:
    dataset = get_dataset(session, project, name)
    running = session.scalar(
        select(func.count()).where(
            Task.project_id == project.id, Task.dataset_name == name, Task.status == "Running"
        )
    )
    if running:
        raise StatusConflict("Message: cannot delete a dataset while its tasks are running")
    if dataset.file_count:
        # IMM: file metas must be removed first (DeleteFileMeta / BatchDeleteFileMeta).
        raise StatusConflict("Message: cannot delete when sub resoures exist")
    session.delete(dataset)


def list_datasets(
    session: Session, project: Project, *, prefix: str, max_results: int, next_token: str
) -> tuple[Sequence[Dataset], str]:
    query = select(Dataset).where(Dataset.project_id == project.id).order_by(Dataset.name)
    if prefix:
        query = query.where(Dataset.name.startswith(prefix, autoescape=True))
    after = paging.decode(next_token)
    if after:
        query = query.where(Dataset.name > str(after[0]))
    rows = list(session.scalars(query.limit(max_results + 1)))
    page = rows[:max_results]
    token = paging.encode([page[-1].name]) if len(rows) > max_results else ""
    return page, token


def dataset_count(session: Session, project: Project) -> int:
    return session.scalar(select(func.count()).where(Dataset.project_id == project.id)) or 0
