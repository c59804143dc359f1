"""The database side of the face jobs: index commits, clustering runs, merges and face search.

The processors (``workers.processors.indexing``, ``figure_clustering``, ``face_search``) detect
faces and decide where they go; everything they read from or write to the database goes
through these functions, called inside the transaction that ends their task with the session
the runtime hands them. Embeddings travel as the raw float32 bytes the rows store
(``figures.embedding`` turns them into arrays).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from pipeline import figures, files, projects
from pipeline.errors import ImmError, InvalidParameter
from pipeline.ids import utcnow
from pipeline.models import Dataset, Figure, FigureCluster, File, Project

CHUNK = 500  # bounded IN lists


class StoredFace(NamedTuple):
    figure_id: str
    embedding: bytes
    attrs: dict[str, Any]
    uri: str  # the file the face is in


class ClusterRow(NamedTuple):
    cluster_id: str
    centroid: bytes
    size: int
    file_ids: set[str]  # files with a face in the cluster


class PlaceableFace(NamedTuple):
    figure_id: str
    file_id: str
    embedding: bytes
    qualified: bool
    cluster_id: str  # where it is now (a reserved id when unplaced)


# ---- indexing -------------------------------------------------------------------------------


def store_indexed_files(
    session: Session, dataset: Dataset, items: Sequence[files.Indexed | None]
) -> list[str]:
    """Store each indexed file in its own savepoint (a file over the dataset's limits fails
    alone), then refresh the clusters that lost faces. Returns, per item, its error as IMM
    reports it (``[Code] message``), '' when stored or when the item is None (nothing to store).
    """
    touched: set[str] = set()
    errors = []
    for item in items:
        error = ""
        if item is not None:
            try:
                with session.begin_nested():
                    touched |= files.store_indexed(session, dataset, item)
            except ImmError as exc:
                error = f"[{exc.code}] {exc.message}"
        errors.append(error)
    removed = set(figures.refresh(session, touched))
    figures.reindex_files(session, figures.affected_files(session, touched - removed))
    return errors


# ---- face search ----------------------------------------------------------------------------


def dataset_faces(session: Session, dataset: Dataset) -> list[StoredFace]:
    """Every face of the dataset with its file's URI, by figure id."""
    rows = session.execute(
        select(Figure.id, Figure.embedding, Figure.attrs, File.uri)
        .join(File, File.id == Figure.file_id)
        .where(Figure.dataset_id == dataset.id)
        .order_by(Figure.id)
    )
    return [StoredFace(*row) for row in rows]


def cluster_centroids(session: Session, dataset: Dataset) -> list[tuple[str, bytes]]:
    """(cluster id, centroid) of every cluster of the dataset, by id."""
    rows = session.execute(
        select(FigureCluster.id, FigureCluster.centroid)
        .where(FigureCluster.dataset_id == dataset.id)
        .order_by(FigureCluster.id)
    )
    return [(cid, centroid) for cid, centroid in rows]


# ---- clustering runs ------------------------------------------------------------------------


def clusters_of(session: Session, dataset: Dataset) -> list[ClusterRow]:
    """The dataset's clusters with their centroid, centroid size and member files."""
    file_ids: dict[str, set[str]] = defaultdict(set)
    rows = session.execute(
        select(Figure.cluster_id, Figure.file_id).where(
            Figure.dataset_id == dataset.id,
            Figure.cluster_id.not_in(files.RESERVED_CLUSTER_IDS),
        )
    )
    for cid, fid in rows:
        file_ids[cid].add(fid)
    clusters = session.execute(
        select(FigureCluster.id, FigureCluster.centroid, FigureCluster.centroid_size).where(
            FigureCluster.dataset_id == dataset.id
        )
    )
    return [
        ClusterRow(cid, centroid, size, file_ids.get(cid, set()))
        for cid, centroid, size in clusters
    ]


def placeable_faces(session: Session, dataset: Dataset) -> list[PlaceableFace]:
    """Faces a clustering run may place: not placed by hand, and new or left independent."""
    rows = session.execute(
        select(Figure.id, Figure.file_id, Figure.embedding, Figure.qualified, Figure.cluster_id)
        .where(
            Figure.dataset_id == dataset.id,
            Figure.manual.is_(False),
            or_(
                Figure.clustered.is_(False),
                Figure.cluster_id.in_(files.RESERVED_CLUSTER_IDS),
            ),
        )
        .order_by(Figure.id)
    )
    return [PlaceableFace(*row) for row in rows]


def create_clusters(
    session: Session, dataset: Dataset, new: Sequence[tuple[np.ndarray, int]]
) -> list[str]:
    """Insert one cluster per (centroid, face count); returns their ``Cluster-<uuid>`` ids."""
    now = utcnow()
    project = session.get(Project, dataset.project_id)
    assert project is not None
    ids = []
    for centroid, size in new:
        cid = f"Cluster-{uuid.uuid4()}"
        ids.append(cid)
        session.add(
            FigureCluster(
                id=cid,
                dataset_id=dataset.id,
                owner=project.owner,
                project_name=project.name,
                dataset_name=dataset.name,
                centroid=np.asarray(centroid, dtype=np.float32).tobytes(),
                centroid_size=size,
                create_time=now,
                update_time=now,
            )
        )
    session.flush()
    return ids


def assign_figures(session: Session, changes: list[dict[str, Any]]) -> None:
    """Bulk update of figure rows: each change is ``{"id": …, <column>: value, …}``."""
    if changes:
        session.execute(update(Figure), changes)


# ---- merges ---------------------------------------------------------------------------------


def merge_clusters(session: Session, request: dict[str, Any]) -> dict[str, Any]:
    """Move every face of the ``From`` clusters to ``To`` and remove the emptied clusters.
    A source holding a face of a photo that ``To`` already has keeps that face (two faces of
    one photo never share a cluster), so such a source survives with what is left."""
    dataset = projects.job_dataset(session, request, lock=True)
    to = figures.get(session, dataset, request["To"])
    sources = [figures.get(session, dataset, cid) for cid in request["Froms"]]
    if any(src.id == to.id for src in sources):
        raise InvalidParameter("From", "A cluster cannot be merged into itself.")
    taken = set(session.scalars(select(Figure.file_id).where(Figure.cluster_id == to.id)))
    moved: list[str] = []
    for src in sources:
        for fig in session.scalars(select(Figure).where(Figure.cluster_id == src.id)):
            if fig.file_id in taken:
                continue
            fig.cluster_id, fig.manual = to.id, True
            taken.add(fig.file_id)
            moved.append(fig.id)
    session.flush()
    removed = figures.refresh(session, {to.id, *(s.id for s in sources)})
    figures.reindex_files(session, _files_of(session, moved))
    return {
        "To": to.id,
        "Froms": [s.id for s in sources],
        "MergedClusterIds": removed,
        "UpdatedFigureCount": len(moved),
    }


def _files_of(session: Session, figure_ids: list[str]) -> set[str]:
    out: set[str] = set()
    for start in range(0, len(figure_ids), CHUNK):
        chunk = figure_ids[start : start + CHUNK]
        out |= set(session.scalars(select(Figure.file_id).where(Figure.id.in_(chunk))))
    return out
