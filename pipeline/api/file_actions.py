"""File meta and SimpleQuery actions (reference §3.3, §3.7)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from pipeline import figures, files, projects, query
from pipeline.api.rpc import action
from pipeline.api.services import Caller, Services
from pipeline.api.submission import USER_DATA_MAX_BYTES, check_uri, notification, submit
from pipeline.errors import ImmError, InvalidParameter, LimitExceeded
from pipeline.models import Dataset, Project
from pipeline.params import Params

DATASET = "ProjectName DatasetName"


def _dataset(s: Session, caller: Caller, p: Params) -> tuple[Project, Dataset]:
    project = projects.get_project(s, caller.owner, p.name("ProjectName"))
    return project, projects.get_dataset(s, project, p.name("DatasetName"))


def _uris(p: Params, name: str) -> list[str]:
    values = p.json(name, list, required=True)
    if not values or not all(isinstance(u, str) and u for u in values):
        raise InvalidParameter(name, "Expected a non-empty JSON array of URI strings.")
    if len(values) > files.MAX_BATCH:
        raise LimitExceeded(f"At most {files.MAX_BATCH} URIs per call; got {len(values)}.")
    return list(values)


def _index(svc: Services, caller: Caller, p: Params, entries: list[Any], kind: str) -> dict:
    param = "File" if kind == "FileMetaIndex" else "Files"
    checked = [files.input_file(e, param) for e in entries]
    for entry in checked:
        check_uri(svc, caller, entry["URI"], param)
    with svc.db.session() as s:
        project, dataset = _dataset(s, caller, p)
        template = dataset.template_id or project.template_id
        names = (project.name, dataset.name)
    request = {
        "Owner": caller.owner,
        "ProjectName": names[0],
        "DatasetName": names[1],
        "TemplateId": template,
        "Files": checked,
    }
    common = {
        "user_data": p.str("UserData", max_bytes=USER_DATA_MAX_BYTES),
        "tags": {},
        "notification": notification(p),
        "client_token": p.str("ClientToken") or None,
    }
    result = submit(svc, caller, names[0], kind, request, common, dataset_name=names[1])
    # TaskId is an openimm extension (GetTask with TaskType FileMetaBatchIndex|FileMetaIndex
    # shows progress and per-file results); IMM clients read EventId only.
    return {"EventId": result["EventId"], "TaskId": result["TaskId"]}


@action("IndexFileMeta", DATASET + " File Notification UserData CredentialConfig")
def index_file_meta(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    entry = p.json("File", dict, required=True)
    return _index(svc, caller, p, [entry], "FileMetaIndex")


@action("BatchIndexFileMeta", DATASET + " Files Notification UserData CredentialConfig")
def batch_index_file_meta(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    entries = p.json("Files", list, required=True)
    if not entries:
        raise InvalidParameter("Files", "Expected at least one file.")
    if len(entries) > files.MAX_BATCH:
        raise LimitExceeded(f"At most {files.MAX_BATCH} files per call; got {len(entries)}.")
    return _index(svc, caller, p, entries, "FileMetaBatchIndex")


def _with_fields(p: Params) -> list[str] | None:
    value = p.json("WithFields", list)
    if value is not None and not all(isinstance(v, str) for v in value):
        raise InvalidParameter("WithFields", "Expected a JSON array of field names.")
    return value


@action("GetFileMeta", DATASET + " URI WithFields")
def get_file_meta(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    uri, with_fields = p.str("URI", required=True), _with_fields(p)
    with svc.db.session() as s:
        _, dataset = _dataset(s, caller, p)
        docs = files.get_by_uris(s, dataset, [uri], svc.accounts.of(caller.owner))
        return {"Files": [files.project(d, with_fields) for d in docs]}


@action("BatchGetFileMeta", DATASET + " URIs WithFields")
def batch_get_file_meta(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    uris, with_fields = _uris(p, "URIs"), _with_fields(p)
    with svc.db.session() as s:
        _, dataset = _dataset(s, caller, p)
        docs = files.get_by_uris(s, dataset, uris, svc.accounts.of(caller.owner))
        return {"Files": [files.project(d, with_fields) for d in docs]}


def _after_face_changes(s: Session, touched: set[str]) -> None:
    removed = set(figures.refresh(s, touched))
    figures.reindex_files(s, figures.affected_files(s, touched - removed))


@action("UpdateFileMeta", DATASET + " File")
def update_file_meta(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    entry = files.input_file(p.json("File", dict, required=True), "File", for_update=True)
    with svc.db.session() as s:
        _, dataset = _dataset(s, caller, p)
        _after_face_changes(s, files.update(s, dataset, entry))
    return {}


@action("BatchUpdateFileMeta", DATASET + " Files")
def batch_update_file_meta(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    entries = p.json("Files", list, required=True)
    if len(entries) > files.MAX_BATCH:
        raise LimitExceeded(f"At most {files.MAX_BATCH} files per call; got {len(entries)}.")
    results = []
    with svc.db.session() as s:
        _, dataset = _dataset(s, caller, p)
        for entry in entries:
            uri = entry.get("URI", "") if isinstance(entry, dict) else ""
            try:
                with s.begin_nested():  # partial success: one bad entry changes nothing
                    checked = files.input_file(entry, "Files", for_update=True)
                    _after_face_changes(s, files.update(s, dataset, checked))
                results.append({"URI": uri, "Success": True, "Message": ""})
            except ImmError as exc:
                results.append({"URI": uri, "Success": False, "Message": exc.message})
    return {"Files": results}


@action("DeleteFileMeta", DATASET + " URI")
def delete_file_meta(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    uri = p.str("URI", required=True)
    with svc.db.session() as s:
        _, dataset = _dataset(s, caller, p)
        _after_face_changes(s, files.delete_files(s, dataset, [uri]))
    return {}


@action("BatchDeleteFileMeta", DATASET + " URIs")
def batch_delete_file_meta(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    uris = _uris(p, "URIs")
    with svc.db.session() as s:
        _, dataset = _dataset(s, caller, p)
        _after_face_changes(s, files.delete_files(s, dataset, uris))
    return {}


# ---- SimpleQuery ----------------------------------------------------------------------------


def _sort(p: Params) -> list[tuple[str, bool]]:
    names = [n.strip() for n in p.str("Sort").split(",") if n.strip()]
    if len(names) > query.MAX_SORT_FIELDS:
        raise InvalidParameter("Sort", f"At most {query.MAX_SORT_FIELDS} sort fields.")
    raw_order = p.str("Order")
    orders = [o.strip().lower() for o in raw_order.split(",")] if raw_order else []
    if any(o not in ("asc", "desc") for o in orders) or len(orders) > max(len(names), 1):
        raise InvalidParameter("Order", "A comma list of asc|desc matching Sort.")
    # IMM: no Order → every field descending; a shorter Order → the rest ascending.
    return [
        (n, (orders[i] == "desc") if i < len(orders) else not orders) for i, n in enumerate(names)
    ]


def _aggregations(p: Params) -> list[tuple[str, str]]:
    value = p.json("Aggregations", list) or []
    out = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("Field"), str):
            raise InvalidParameter("Aggregations", "Each item needs Field and Operation.")
        if item.get("Operation") not in query.AGG_OPS:
            ops = ", ".join(sorted(query.AGG_OPS))
            raise InvalidParameter("Aggregations", f"Operation must be one of {ops}.")
        out.append((item["Field"], item["Operation"]))
    if len(out) > 20:
        raise InvalidParameter("Aggregations", "At most 20 aggregations per call.")
    return out


@action(
    "SimpleQuery",
    DATASET + " Query Aggregations Sort Order MaxResults NextToken WithFields WithoutTotalHits",
)
def simple_query(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    node = p.json("Query", dict)
    if node is not None:
        query.validate(node)
    aggs = _aggregations(p)
    limit = query.MAX_GROUPS if aggs else query.MAX_FILES
    max_results = p.int("MaxResults", default=0, minimum=0, maximum=limit) or 100
    with_fields, with_total = _with_fields(p), not p.bool("WithoutTotalHits")
    with svc.db.session() as s:
        _, dataset = _dataset(s, caller, p)
        spec = query.QuerySpec(
            dataset_id=dataset.id,
            query=node or None,
            sort=_sort(p),
            max_results=max_results,
            next_token=p.str("NextToken"),
            with_total=with_total,
            aggregations=aggs,
        )
        result = query.run(s, spec)
        out: dict[str, Any] = {"NextToken": result.next_token}
        if aggs:
            out["Aggregations"] = result.aggregations
        else:
            docs = files.documents(s, result.file_ids, svc.accounts.of(caller.owner))
            out["Files"] = [files.project(d, with_fields) for d in docs]
        if result.total_hits is not None:
            out["TotalHits"] = result.total_hits
        return out
