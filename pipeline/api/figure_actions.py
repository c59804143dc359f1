"""Figure clustering actions (reference §3.6)."""

from __future__ import annotations

from typing import Any

from pipeline import figures
from pipeline.api.file_actions import DATASET, _dataset
from pipeline.api.rpc import action
from pipeline.api.services import Caller, Services
from pipeline.api.submission import (
    COMMON_TASK_PARAMS,
    check_uri,
    common_params,
    submit,
    time_range,
    wait_for_task,
)
from pipeline.errors import InvalidParameter, LimitExceeded
from pipeline.params import Params

MAX_MERGE_SOURCES = 100


def _dataset_task(
    svc: Services, caller: Caller, p: Params, task_type: str, extra: dict[str, Any]
) -> dict[str, Any]:
    common = common_params(p)
    with svc.db.session() as s:
        project, dataset = _dataset(s, caller, p)
        names = (project.name, dataset.name)
    request = {"Owner": caller.owner, "ProjectName": names[0], "DatasetName": names[1], **extra}
    return submit(svc, caller, names[0], task_type, request, common, dataset_name=names[1])


@action("CreateFigureClusteringTask", COMMON_TASK_PARAMS + " DatasetName")
def create_figure_clustering_task(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    # IMM's GetTask calls this task type FaceClustering; its event is imm:Task:FigureClustering.
    return _dataset_task(svc, caller, p, "FaceClustering", {})


@action("CreateFigureClustersMergingTask", COMMON_TASK_PARAMS + " DatasetName To From Froms")
def create_figure_clusters_merging_task(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    to = p.str("To", required=True)
    single, many = p.str("From"), p.json("Froms", list)
    if bool(single) == bool(many):
        raise InvalidParameter("From", "Specify exactly one of From and Froms.")
    froms = [single] if single else many
    if not all(isinstance(f, str) and f for f in froms):
        raise InvalidParameter("Froms", "Expected a JSON array of cluster ids.")
    if len(froms) > MAX_MERGE_SOURCES:
        raise LimitExceeded(f"At most {MAX_MERGE_SOURCES} source clusters.")
    with svc.db.session() as s:  # unknown clusters fail now, not in the worker
        _, dataset = _dataset(s, caller, p)
        for cid in [to, *froms]:
            figures.get(s, dataset, cid)
    return _dataset_task(svc, caller, p, "FigureClustersMerging", {"To": to, "Froms": froms})


@action(
    "QueryFigureClusters",
    DATASET + " CreateTimeRange UpdateTimeRange CustomLabels Sort Order MaxResults "
    "NextToken WithTotalCount",
)
def query_figure_clusters(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    labels = p.str("CustomLabels")
    if labels and "=" not in labels:
        raise InvalidParameter("CustomLabels", "Expected key=value.")
    sort = p.choice("Sort", (*figures.SORT_FIELDS, "ObjectId"), default="ObjectId")
    order = p.choice("Order", ("asc", "desc"), default="asc")
    max_results = p.int("MaxResults", default=0, minimum=0, maximum=100) or 100
    with svc.db.session() as s:
        _, dataset = _dataset(s, caller, p)
        rows, token, total = figures.query(
            s,
            dataset,
            create_range=time_range(p, "CreateTimeRange"),
            update_range=time_range(p, "UpdateTimeRange"),
            custom_labels=tuple(labels.split("=", 1)) if labels else None,  # type: ignore[arg-type]
            sort=sort,
            desc=order == "desc",
            max_results=max_results,
            next_token=p.str("NextToken"),
            with_total=p.bool("WithTotalCount"),
        )
        out: dict[str, Any] = {
            "FigureClusters": figures.views(s, rows, svc.accounts.of(caller.owner)),
            "NextToken": token,
        }
        if total is not None:
            out["TotalCount"] = total
        return out


@action("GetFigureCluster", DATASET + " ObjectId")
def get_figure_cluster(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    object_id = p.str("ObjectId", required=True)
    with svc.db.session() as s:
        _, dataset = _dataset(s, caller, p)
        cluster = figures.get(s, dataset, object_id)
        return {"FigureCluster": figures.views(s, [cluster], svc.accounts.of(caller.owner))[0]}


@action("BatchGetFigureCluster", DATASET + " ObjectIds")
def batch_get_figure_cluster(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    ids = p.json("ObjectIds", list, required=True)
    if not all(isinstance(i, str) for i in ids) or len(ids) > 100:
        raise InvalidParameter("ObjectIds", "Expected a JSON array of at most 100 cluster ids.")
    with svc.db.session() as s:
        _, dataset = _dataset(s, caller, p)
        rows = [s.get(figures.FigureCluster, object_id) for object_id in ids]
        found = [c for c in rows if c is not None and c.dataset_id == dataset.id]
        return {"FigureClusters": figures.views(s, found, svc.accounts.of(caller.owner))}


@action("UpdateFigureCluster", DATASET + " FigureCluster")
def update_figure_cluster(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    value = p.json("FigureCluster", dict, required=True)
    allowed = {"ObjectId", "Name", "CustomId", "CustomLabels", "MetaLockVersion", "Cover"}
    extra = set(value) - allowed
    if extra:
        raise InvalidParameter(
            "FigureCluster", f"Only the cover, name and labels can change, not {sorted(extra)}."
        )
    with svc.db.session() as s:
        _, dataset = _dataset(s, caller, p)
        figures.update(s, dataset, value)
    return {}


@action("CreateFacesSearchingTask", COMMON_TASK_PARAMS + " DatasetName Sources MaxResult")
def create_faces_searching_task(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    sources = p.json("Sources", list, required=True)
    if not sources or len(sources) > 4:
        raise InvalidParameter("Sources", "Expected 1 to 4 sources.")
    for src in sources:
        if not isinstance(src, dict) or not isinstance(src.get("URI"), str):
            raise InvalidParameter("Sources", "Every source needs a URI string.")
        check_uri(svc, caller, src["URI"], "Sources")
    max_result = p.int("MaxResult", default=5, minimum=0, maximum=100) or 5
    extra = {"Sources": [{"URI": s["URI"]} for s in sources], "MaxResult": max_result}
    return _dataset_task(svc, caller, p, "FacesSearching", extra)


@action("SearchImageFigureCluster", DATASET + " SourceURI CredentialConfig")
def search_image_figure_cluster(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    """Synchronous in IMM: queued here (the API never loads dlib) and awaited."""
    source = p.str("SourceURI", required=True)
    check_uri(svc, caller, source, "SourceURI")
    p.json("CredentialConfig", dict)
    created = _dataset_task(svc, caller, p, "ImageFigureClusterSearch", {"SourceURI": source})
    task = wait_for_task(svc, caller, created["TaskId"], svc.settings.predict_timeout_seconds)
    return {"Clusters": task.result.get("Clusters", [])}
