"""Figure clusters (reference §3.6): statistics, the IMM view, queries and user updates.

Cluster statistics are recomputed from the faces whenever a run, a move or a delete touches a
cluster, so counts can never drift; a cluster left without faces is removed, as IMM does.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.orm import Session

from pipeline import files, paging
from pipeline.errors import InvalidParameter, ResourceNotFound, StatusConflict
from pipeline.ids import resource_time, utcnow
from pipeline.models import Dataset, Figure, FigureCluster, File
from pipeline.params import bounded_int, parse_int

SORT_FIELDS = {
    "ImageCount": FigureCluster.image_count,
    "VideoCount": FigureCluster.video_count,
    "FaceCount": FigureCluster.face_count,
    "CreateTime": FigureCluster.create_time,
    "UpdateTime": FigureCluster.update_time,
    "ProjectName": FigureCluster.project_name,
    "DatasetName": FigureCluster.dataset_name,
    "GroupName": FigureCluster.name,
    "Gender": FigureCluster.name,  # no gender model: sorts like GroupName (documented)
}


def embedding(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype=np.float32)


def refresh(session: Session, cluster_ids: set[str]) -> list[str]:
    """Recompute counts, cover and centroid of ``cluster_ids``; delete empty ones.
    Returns the ids that were deleted."""
    removed = []
    ids = sorted(cluster_ids - files.RESERVED_CLUSTER_IDS)
    for start in range(0, len(ids), 500):  # bounded IN lists, one query per chunk
        chunk = ids[start : start + 500]
        members: dict[str, list[Figure]] = {cid: [] for cid in chunk}
        for fig in session.scalars(select(Figure).where(Figure.cluster_id.in_(chunk))):
            members[fig.cluster_id].append(fig)
        clusters = session.scalars(select(FigureCluster).where(FigureCluster.id.in_(chunk)))
        for cluster in clusters:
            if members[cluster.id]:
                _stats(cluster, members[cluster.id])
            else:
                session.delete(cluster)
                removed.append(cluster.id)
    session.flush()
    return removed


def _stats(cluster: FigureCluster, members: list[Figure]) -> None:
    cluster.face_count = len(members)
    cluster.image_count = len({m.file_id for m in members if m.media_type == "image"})
    cluster.video_count = len({m.file_id for m in members if m.media_type == "video"})
    vectors = np.stack([embedding(m.embedding) for m in members])
    cluster.centroid = vectors.mean(axis=0).astype(np.float32).tobytes()
    cluster.centroid_size = len(members)
    ids = {m.id for m in members}
    if not (cluster.cover_manual and cluster.cover_figure_id in ids):
        cluster.cover_manual = False
        best = max(members, key=lambda m: (m.quality, m.id))
        cluster.cover_figure_id = best.id
    cluster.update_time = utcnow()


def views(
    session: Session, clusters: Sequence[FigureCluster], owner_id: str
) -> list[dict[str, Any]]:
    """IMM ``FigureCluster`` objects (``OwnerId``: the owner's account id); the covers of a
    whole page load in two queries."""
    cover_ids = [c.cover_figure_id for c in clusters if c.cover_figure_id]
    covers = {f.id: f for f in session.scalars(select(Figure).where(Figure.id.in_(cover_ids)))}
    file_ids = [f.file_id for f in covers.values()]
    docs = {f.id: f for f in session.scalars(select(File).where(File.id.in_(file_ids)))}
    out = []
    for cluster in clusters:
        fig = covers.get(cluster.cover_figure_id)
        f = docs.get(fig.file_id) if fig is not None else None
        cover = files.document(f, [fig], owner_id) if f is not None and fig is not None else {}
        out.append(_view(cluster, cover, owner_id))
    return out


def _view(cluster: FigureCluster, cover: dict[str, Any], owner_id: str) -> dict[str, Any]:
    return {
        "ObjectId": cluster.id,
        "ObjectType": "figure-cluster",
        "OwnerId": owner_id,
        "ProjectName": cluster.project_name,
        "DatasetName": cluster.dataset_name,
        "Name": cluster.name,
        "CustomId": cluster.custom_id,
        "CustomLabels": cluster.custom_labels,
        "Cover": cover,
        "ImageCount": cluster.image_count,
        "VideoCount": cluster.video_count,
        "FaceCount": cluster.face_count,
        "MetaLockVersion": cluster.meta_lock_version,
        "CreateTime": resource_time(cluster.create_time),
        "UpdateTime": resource_time(cluster.update_time),
    }


def get(session: Session, dataset: Dataset, object_id: str) -> FigureCluster:
    cluster = session.get(FigureCluster, object_id)
    if cluster is None or cluster.dataset_id != dataset.id:
        raise ResourceNotFound("figure cluster", object_id)
    return cluster


def query(
    session: Session,
    dataset: Dataset,
    *,
    create_range: tuple[datetime | None, datetime | None],
    update_range: tuple[datetime | None, datetime | None],
    custom_labels: tuple[str, str] | None,
    sort: str,
    desc: bool,
    max_results: int,
    next_token: str,
    with_total: bool,
) -> tuple[list[FigureCluster], str, int | None]:
    """QueryFigureClusters: filters, sort, keyset paging on (sort value, ObjectId)."""
    stmt = select(FigureCluster).where(FigureCluster.dataset_id == dataset.id)
    for bound, (low, high) in (
        (FigureCluster.create_time, create_range),
        (FigureCluster.update_time, update_range),
    ):
        if low is not None:
            stmt = stmt.where(bound >= low)
        if high is not None:
            stmt = stmt.where(bound <= high)
    if custom_labels is not None:
        key, value = custom_labels
        stmt = stmt.where(FigureCluster.custom_labels[key].as_string() == value)
    total = _count(session, stmt) if with_total else None
    column: Any = SORT_FIELDS.get(sort, FigureCluster.id)
    after = paging.decode(next_token)
    if after:
        stmt = stmt.where(_after(column, after, desc))
    order = [column.desc(), FigureCluster.id.desc()] if desc else [column.asc(), FigureCluster.id]
    rows = list(session.scalars(stmt.order_by(*order).limit(max_results + 1)))
    page = rows[:max_results]
    token = ""
    if len(rows) > max_results:
        last = page[-1]
        value = getattr(last, column.key)
        token = paging.encode(
            [value.isoformat() if isinstance(value, datetime) else value, last.id]
        )
    return page, token, total


def _count(session: Session, stmt: Select[Any]) -> int:
    return int(session.scalar(select(func.count()).select_from(stmt.subquery())) or 0)


def _after(column: Any, after: list[Any], desc: bool) -> Any:
    bad = InvalidParameter("NextToken", "The token is malformed.")
    if len(after) != 2 or not isinstance(after[1], str):
        raise bad
    value, last_id = after
    if column.key.endswith("_count"):
        value = bounded_int(value)
    elif column.key.endswith("_time"):
        try:
            value = datetime.fromisoformat(value) if isinstance(value, str) else None
        except ValueError:
            raise bad from None
    elif not isinstance(value, str):
        value = None
    if value is None:  # a token made for another Sort, or forged
        raise bad
    if desc:
        return or_(column < value, and_(column == value, FigureCluster.id < last_id))
    return or_(column > value, and_(column == value, FigureCluster.id > last_id))


def update(session: Session, dataset: Dataset, value: dict[str, Any]) -> FigureCluster:
    """UpdateFigureCluster: Name, CustomId, CustomLabels, Cover; optimistic MetaLockVersion."""
    cluster = get(session, dataset, str(value.get("ObjectId", "")))
    lock = _lock_version(value.get("MetaLockVersion"))
    if lock is not None and lock != cluster.meta_lock_version:
        raise StatusConflict(
            f"Message: MetaLockVersion {lock} is stale; the cluster is at "
            f"{cluster.meta_lock_version}. Read it again and retry."
        )
    if "Name" in value:
        cluster.name = str(value["Name"])[:256]
    if "CustomId" in value:
        cluster.custom_id = str(value["CustomId"])[:256]
    if "CustomLabels" in value:
        if not isinstance(value["CustomLabels"], dict):
            raise InvalidParameter("FigureCluster", "CustomLabels must be an object.")
        cluster.custom_labels = value["CustomLabels"]
    cover = value.get("Cover") or {}
    figures = cover.get("Figures") if isinstance(cover, dict) else None
    if figures is not None and not (
        isinstance(figures, list) and all(isinstance(f, dict) for f in figures)
    ):
        raise InvalidParameter("FigureCluster", 'Cover must be {"Figures": [{"FigureId": …}]}.')
    if figures:
        _set_cover(session, cluster, str(figures[0].get("FigureId", "")))
    cluster.meta_lock_version += 1
    cluster.update_time = utcnow()
    session.flush()
    return cluster


def _lock_version(raw: Any) -> int | None:
    """MetaLockVersion as the SDK sends it (a JSON number, or digits in a string)."""
    if raw is None:
        return None
    version = bounded_int(raw)
    if version is None and isinstance(raw, str):
        try:
            version = parse_int(raw)
        except ValueError:
            version = None
    if version is None:
        raise InvalidParameter("FigureCluster", "MetaLockVersion must be an integer.")
    return version


def _set_cover(session: Session, cluster: FigureCluster, figure_id: str) -> None:
    fig = session.get(Figure, figure_id)
    if fig is None or fig.cluster_id != cluster.id:
        raise InvalidParameter("FigureCluster", f"Cover face {figure_id} is not in this cluster.")
    cluster.cover_figure_id, cluster.cover_manual = figure_id, True


def affected_files(session: Session, cluster_ids: set[str]) -> list[str]:
    if not cluster_ids:
        return []
    stmt = select(Figure.file_id).where(Figure.cluster_id.in_(cluster_ids)).distinct()
    return list(session.scalars(stmt))


def reindex_files(session: Session, file_ids: set[str] | list[str]) -> None:
    """Rebuild the search rows of files whose faces changed cluster."""
    ids = sorted(set(file_ids))
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        rows = {f.id: f for f in session.scalars(select(File).where(File.id.in_(chunk)))}
        figs = files.figures_of(session, chunk)
        for fid, f in rows.items():
            files.reindex(session, f, figs.get(fid, []))
