"""CreateFigureClusteringTask and CreateFigureClustersMergingTask (reference §3.6).

A clustering run is incremental: it takes the faces no run has seen yet plus the faces left
independent before (they may now find a group), leaves manually placed faces alone, and asks
``workers.clustering.plan`` where each goes. It runs inside the transaction that ends the task,
after locking the dataset row, so runs of one dataset are serialised (PostgreSQL row lock;
SQLite has one writer anyway) while runs of different datasets proceed in parallel.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from typing import Any

import numpy as np
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from pipeline import figures, fileindex, files, projects
from pipeline.errors import InvalidParameter
from pipeline.ids import utcnow
from pipeline.models import Dataset, Figure, FigureCluster, Project
from workers import clustering
from workers.context import JobContext, Transactional


def process(ctx: JobContext) -> Transactional:
    return Transactional(lambda session: cluster_dataset(session, ctx.request))


def merge(ctx: JobContext) -> Transactional:
    return Transactional(lambda session: merge_clusters(session, ctx.request))


def _existing(session: Session, dataset: Dataset) -> list[clustering.ExistingCluster]:
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
        clustering.ExistingCluster(
            cluster_id=cid,
            centroid=figures.embedding(centroid),
            size=size,
            file_ids=file_ids.get(cid, set()),
        )
        for cid, centroid, size in clusters
    ]


def _candidates(
    session: Session, dataset: Dataset
) -> tuple[list[clustering.Candidate], dict[str, str]]:
    """Faces this run may place, and the cluster id each had before it."""
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
    candidates, previous = [], {}
    for fid, file_id, emb, ok, cid in rows:
        candidates.append(
            clustering.Candidate(
                figure_id=fid, file_id=file_id, embedding=figures.embedding(emb), qualified=ok
            )
        )
        previous[fid] = cid
    return candidates, previous


def cluster_dataset(session: Session, request: dict[str, Any]) -> dict[str, Any]:
    dataset = projects.job_dataset(session, request, lock=True)
    candidates, previous = _candidates(session, dataset)
    plan = clustering.plan(_existing(session, dataset), candidates)
    new_ids = _create_clusters(session, dataset, plan)
    changes: list[dict[str, Any]] = []
    for cand in candidates:
        target = plan.assignments.get(cand.figure_id, clustering.INDEPENDENT)
        target = new_ids.get(target, target)
        changes.append(
            {
                "id": cand.figure_id,
                "cluster_id": target,
                "cluster_confidence": float(plan.similarity.get(cand.figure_id, 0.0)),
                "clustered": True,
            }
        )
    if changes:
        session.execute(update(Figure), changes)
    moved = {c["id"] for c in changes if previous.get(c["id"]) != c["cluster_id"]}
    updated = sorted(set(plan.updated) - set(new_ids.values()))
    figures.refresh(session, set(new_ids.values()) | set(updated))
    fileindex.set_figure_clusters(
        session,
        [
            {
                "file_id": cand.file_id,
                "figure_id": cand.figure_id,
                "cluster_id": change["cluster_id"],
                "confidence": change["cluster_confidence"],
            }
            for cand, change in zip(candidates, changes, strict=True)
            if cand.figure_id in moved
        ],
    )
    return {
        "NewClusterCount": len(new_ids),
        "UpdatedClusterCount": len(updated),
        "UpdatedFigureCount": len(moved),
        "NewClusterIds": sorted(new_ids.values()),
        "UpdatedClusterIds": updated,
    }


def _files_of(session: Session, figure_ids: list[str]) -> set[str]:
    out: set[str] = set()
    for start in range(0, len(figure_ids), 500):
        chunk = figure_ids[start : start + 500]
        out |= set(session.scalars(select(Figure.file_id).where(Figure.id.in_(chunk))))
    return out


def _create_clusters(session: Session, dataset: Dataset, plan: clustering.Plan) -> dict[str, str]:
    """Insert the plan's new clusters; returns plan key → ``Cluster-<uuid>``."""
    now = utcnow()
    project = session.get(Project, dataset.project_id)
    assert project is not None
    ids = {}
    for new in plan.new_clusters:
        cid = f"Cluster-{uuid.uuid4()}"
        ids[new.key] = cid
        session.add(
            FigureCluster(
                id=cid,
                dataset_id=dataset.id,
                owner=project.owner,
                project_name=project.name,
                dataset_name=dataset.name,
                centroid=np.asarray(new.centroid, dtype=np.float32).tobytes(),
                centroid_size=len(new.figure_ids),
                create_time=now,
                update_time=now,
            )
        )
    session.flush()
    return ids


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
