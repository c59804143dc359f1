"""File meta service (reference §3.3-3.4): input validation, the File document, and the
writes that indexing, UpdateFileMeta and DeleteFileMeta make — each keeping the document,
its faces, the search index and the dataset's counters consistent in one transaction."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from pipeline import fileindex
from pipeline.errors import InvalidParameter, LimitExceeded, ResourceNotFound
from pipeline.ids import resource_time, utcnow
from pipeline.models import DEFAULT_LIMITS, Dataset, Figure, FigureCluster, File, Project

UNAVAILABLE = "figure-cluster-id-unavailable"
INDEPENDENT = "figure-cluster-id-independent"
RESERVED_CLUSTER_IDS = frozenset({UNAVAILABLE, INDEPENDENT})
MAX_BATCH = 100
MAX_CUSTOM_LABELS = 100
MAX_URI_BYTES = 2048
MEDIA_TYPES = ("image", "video", "audio", "document", "archive", "other")
# InputFile fields a user may set when indexing (reference §3.3); the rest is probed.
USER_FIELDS = (
    "CustomId",
    "CustomLabels",
    "MediaType",
    "ContentType",
    "FileHash",
    "LatLong",
    "ProduceTime",
    "Title",
    "Artist",
    "AlbumArtist",
    "Composer",
    "Performer",
    "Album",
    "Labels",
    "Addresses",
)
INPUT_FIELDS = frozenset({"URI", "OSSURI", "Figures", *USER_FIELDS})
STR_FIELDS = frozenset(USER_FIELDS) - {"CustomLabels", "Labels", "Addresses"}


def object_id(dataset_id: int, uri: str) -> str:
    """IMM's 64-hex ObjectId, stable for a URI within a dataset."""
    return hashlib.sha256(f"{dataset_id}\n{uri}".encode()).hexdigest()


# ---- input validation ---------------------------------------------------------------------


def input_file(value: Any, param: str, *, for_update: bool = False) -> dict[str, Any]:
    """A validated ``InputFile``; raises ``Invalid<param>`` naming the problem."""
    if not isinstance(value, dict):
        raise InvalidParameter(param, "Each file must be a JSON object.")
    # The official SDK serialises unset list fields as [] (Figures, Labels, Addresses):
    # treat empty and null values as absent.
    value = {k: v for k, v in value.items() if v is not None and v != []}
    if for_update:
        _check_update(value, param)
    unknown = set(value) - INPUT_FIELDS
    if unknown:
        raise InvalidParameter(param, f"Unknown field(s): {', '.join(sorted(unknown))}.")
    uri = value.get("URI")
    if not isinstance(uri, str) or not uri:
        raise InvalidParameter(param, "Each file needs a URI.")
    if len(uri.encode()) > MAX_URI_BYTES:
        raise InvalidParameter(param, f"URI must be at most {MAX_URI_BYTES} bytes.")
    for name in STR_FIELDS & set(value):
        if not isinstance(value[name], str):
            raise InvalidParameter(param, f"{name} must be a string.")
    labels = value.get("CustomLabels")
    if labels is not None:
        _check_labels(labels, param)
    if value.get("MediaType") and value["MediaType"] not in MEDIA_TYPES:
        raise InvalidParameter(param, f"MediaType must be one of {', '.join(MEDIA_TYPES)}.")
    if "Figures" in value and not for_update:
        raise InvalidParameter(param, "Figures can only be set with UpdateFileMeta.")
    return value


def _check_labels(labels: Any, param: str) -> None:
    if not isinstance(labels, dict):
        raise InvalidParameter(param, "CustomLabels must be a JSON object.")
    if len(labels) > MAX_CUSTOM_LABELS:
        raise LimitExceeded(f"Index KV count exceeded, should be no more than {MAX_CUSTOM_LABELS}.")
    for key, val in labels.items():
        if not key or len(key) > 128 or not isinstance(val, str) or len(val) > 1024:
            raise InvalidParameter(
                param, "CustomLabels keys are 1-128 characters and values strings ≤ 1024."
            )


def _check_update(value: dict[str, Any], param: str) -> None:
    allowed = {"URI", "CustomId", "CustomLabels", "Figures"}
    extra = set(value) - allowed
    if extra:
        raise InvalidParameter(
            param, f"Only CustomLabels, CustomId and Figures can be updated, not {sorted(extra)}."
        )
    figures = value.get("Figures", [])
    if not isinstance(figures, list) or not all(
        isinstance(f, dict) and isinstance(f.get("FigureId"), str) for f in figures
    ):
        raise InvalidParameter(param, "Figures must be a list of {FigureId, FigureClusterId}.")


# ---- the document ---------------------------------------------------------------------------


def figure_doc(fig: Figure) -> dict[str, Any]:
    return {
        **fig.attrs,
        "FigureId": fig.id,
        "FigureType": "face",
        "FigureClusterId": fig.cluster_id,
        "FigureClusterConfidence": round(fig.cluster_confidence, 4),
    }


def document(f: File, figures: list[Figure], owner_id: str = "") -> dict[str, Any]:
    """The IMM ``File``; ``owner_id`` is the owner's account id (pipeline.accounts) shown as
    ``OwnerId`` (the stored search index leaves OwnerId out, so it may be omitted there)."""
    doc: dict[str, Any] = {
        "URI": f.uri,
        "ProjectName": f.project_name,
        "DatasetName": f.dataset_name,
        "OwnerId": owner_id or f.owner,
        "ObjectId": f.id,
        "ObjectType": "file",
        "ObjectStatus": "Indexed",
        "CreateTime": resource_time(f.create_time),
        "UpdateTime": resource_time(f.update_time),
        **f.doc,
    }
    if f.media_type in ("image", "video"):
        doc["Figures"] = [figure_doc(fig) for fig in figures]
        doc["FigureCount"] = len(figures)
    return doc


def project(doc: dict[str, Any], with_fields: list[str] | None) -> dict[str, Any]:
    """``WithFields``: keep only the named top-level fields (URI always stays)."""
    if not with_fields:
        return doc
    keep = {*with_fields, "URI"}
    return {k: v for k, v in doc.items() if k in keep}


def figures_of(session: Session, file_ids: Iterable[str]) -> dict[str, list[Figure]]:
    ids = list(file_ids)
    out: dict[str, list[Figure]] = defaultdict(list)
    if not ids:
        return out
    rows = session.scalars(select(Figure).where(Figure.file_id.in_(ids)).order_by(Figure.id))
    for fig in rows:
        out[fig.file_id].append(fig)
    return out


def documents(session: Session, file_ids: list[str], owner_id: str) -> list[dict[str, Any]]:
    """The documents of ``file_ids``, in that order (missing ids skipped)."""
    if not file_ids:
        return []
    rows = {f.id: f for f in session.scalars(select(File).where(File.id.in_(file_ids)))}
    figs = figures_of(session, rows)
    return [document(rows[i], figs.get(i, []), owner_id) for i in file_ids if i in rows]


def reindex(session: Session, f: File, figures: list[Figure] | None = None) -> None:
    if figures is None:
        figures = figures_of(session, [f.id]).get(f.id, [])
    fileindex.rebuild(session, f.id, f.dataset_id, document(f, figures))


def get_by_uris(
    session: Session, dataset: Dataset, uris: list[str], owner_id: str
) -> list[dict[str, Any]]:
    return documents(session, [object_id(dataset.id, u) for u in uris], owner_id)


# ---- writes ---------------------------------------------------------------------------------


@dataclass
class NewFace:
    """One face found by the indexer, ready to store."""

    figure_id: str
    attrs: dict[str, Any]
    embedding: bytes
    qualified: bool
    quality: float


@dataclass
class Indexed:
    """The indexer's result for one file."""

    uri: str
    media_type: str
    size: int
    doc: dict[str, Any]
    faces: list[NewFace] | None = None  # None: the template does not detect faces
    user: dict[str, Any] = field(default_factory=dict)


def store_indexed(session: Session, dataset: Dataset, item: Indexed) -> set[str]:
    """Insert or replace one file's document and faces; returns clusters that lost faces.

    Re-indexing unchanged content (same FileHash) keeps the existing faces, so clusters,
    names and manual moves survive a re-index.
    """
    now = utcnow()
    fid = object_id(dataset.id, item.uri)
    existing = session.get(File, fid)
    if existing is None:
        _check_capacity(session, dataset, item.size)
    doc = {**item.doc, **{k: v for k, v in item.user.items() if k in USER_FIELDS}}
    touched: set[str] = set()
    owner, project_name = _owner_of(session, dataset)
    if existing is None:
        f = File(
            id=fid,
            dataset_id=dataset.id,
            owner=owner,
            project_name=project_name,
            dataset_name=dataset.name,
            uri=item.uri,
            create_time=now,
            update_time=now,
        )
        session.add(f)
        dataset.file_count += 1
    else:
        f = existing
        dataset.total_file_size -= f.size
        same = f.doc.get("FileHash") == doc.get("FileHash")
        if item.faces is not None and not same:
            touched = _drop_faces(session, fid)
        elif same:
            item.faces = None  # keep the stored faces
    f.owner, f.project_name = owner, project_name
    f.media_type, f.size, f.doc, f.update_time = item.media_type, item.size, doc, now
    dataset.total_file_size += item.size
    session.flush()
    if item.faces:
        _add_faces(session, f, item.faces)
    reindex(session, f)
    return touched


def _owner_of(session: Session, dataset: Dataset) -> tuple[str, str]:
    proj = session.get(Project, dataset.project_id)
    assert proj is not None
    return proj.owner, proj.name


def _check_capacity(session: Session, dataset: Dataset, size: int) -> None:
    limits = {**DEFAULT_LIMITS, **(dataset.limits or {})}
    if dataset.file_count + 1 > limits["DatasetMaxFileCount"]:
        raise LimitExceeded("Message: resource count exceeds the limit (DatasetMaxFileCount)")
    if dataset.total_file_size + size > limits["DatasetMaxTotalFileSize"]:
        raise LimitExceeded("Message: resource count exceeds the limit (DatasetMaxTotalFileSize)")


def _add_faces(session: Session, f: File, faces: list[NewFace]) -> None:
    for face in faces:
        session.add(
            Figure(
                id=face.figure_id,
                file_id=f.id,
                dataset_id=f.dataset_id,
                media_type=f.media_type,
                cluster_id=UNAVAILABLE,
                cluster_confidence=0.0,
                clustered=False,
                manual=False,
                qualified=face.qualified,
                quality=face.quality,
                attrs=face.attrs,
                embedding=face.embedding,
            )
        )
    session.flush()


def _drop_faces(session: Session, file_id: str) -> set[str]:
    clusters = set(
        session.scalars(select(Figure.cluster_id).where(Figure.file_id == file_id).distinct())
    )
    session.execute(delete(Figure).where(Figure.file_id == file_id))
    return clusters - RESERVED_CLUSTER_IDS


def update(session: Session, dataset: Dataset, value: dict[str, Any]) -> set[str]:
    """UpdateFileMeta: CustomLabels, CustomId, Figures moves. Returns touched clusters."""
    f = session.get(File, object_id(dataset.id, value["URI"]))
    if f is None:
        raise ResourceNotFound("file", value["URI"])
    doc = dict(f.doc)
    for name in ("CustomId", "CustomLabels"):
        if name in value:
            doc[name] = value[name]
    f.doc, f.update_time = doc, utcnow()
    touched = _move_faces(session, dataset, f, value.get("Figures", []))
    reindex(session, f)
    return touched


def _move_faces(
    session: Session, dataset: Dataset, f: File, moves: list[dict[str, Any]]
) -> set[str]:
    """Move faces to another cluster (or out: reserved ids). A moved face is ``manual``: later
    clustering runs leave it where the user put it."""
    touched: set[str] = set()
    figures = {fig.id: fig for fig in figures_of(session, [f.id]).get(f.id, [])}
    for move in moves:
        fig = figures.get(move["FigureId"])
        if fig is None:
            raise ResourceNotFound("figure", move["FigureId"])
        target = str(move.get("FigureClusterId") or INDEPENDENT)
        if target not in RESERVED_CLUSTER_IDS:
            cluster = session.get(FigureCluster, target)
            if cluster is None or cluster.dataset_id != dataset.id:
                raise ResourceNotFound("figure cluster", target)
            clash = [o for o in figures.values() if o.id != fig.id and o.cluster_id == target]
            if clash:
                raise InvalidParameter(
                    "File", "Two faces of one file cannot belong to the same figure cluster."
                )
        touched |= {fig.cluster_id, target}
        fig.cluster_id, fig.manual, fig.clustered = target, True, True
        fig.cluster_confidence = 1.0
    session.flush()
    return touched - RESERVED_CLUSTER_IDS


def delete_files(session: Session, dataset: Dataset, uris: list[str]) -> set[str]:
    """DeleteFileMeta: absent files are fine (IMM succeeds); returns touched clusters."""
    touched: set[str] = set()
    for uri in uris:
        f = session.get(File, object_id(dataset.id, uri))
        if f is None:
            continue
        touched |= _drop_faces(session, f.id)
        dataset.file_count = max(0, dataset.file_count - 1)
        dataset.total_file_size = max(0, dataset.total_file_size - f.size)
        session.delete(f)
    session.flush()
    return touched


def file_count(session: Session, dataset: Dataset) -> int:
    return int(session.scalar(select(func.count()).where(File.dataset_id == dataset.id)) or 0)
