"""CreateFigureClusteringTask and CreateFigureClustersMergingTask (reference §3.6).

A clustering run is incremental: it takes the faces no run has seen yet plus the faces left
independent before (they may now find a group), leaves manually placed faces alone, and asks
``workers.models.clustering.plan`` where each goes. It runs inside the transaction that ends the
task, after locking the dataset row, so runs of one dataset are serialised (PostgreSQL row lock;
SQLite has one writer anyway) while runs of different datasets proceed in parallel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline import figure_store, figures, fileindex, projects
from workers.context import JobContext, Transactional
from workers.models import clustering

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from pipeline.models import Dataset


def process(ctx: JobContext) -> Transactional:
    return Transactional(lambda session: cluster_dataset(session, ctx.request))


def merge(ctx: JobContext) -> Transactional:
    return Transactional(lambda session: figure_store.merge_clusters(session, ctx.request))


def _existing(session: Session, dataset: Dataset) -> list[clustering.ExistingCluster]:
    return [
        clustering.ExistingCluster(
            cluster_id=row.cluster_id,
            centroid=figures.embedding(row.centroid),
            size=row.size,
            file_ids=row.file_ids,
        )
        for row in figure_store.clusters_of(session, dataset)
    ]


def _candidates(
    session: Session, dataset: Dataset
) -> tuple[list[clustering.Candidate], dict[str, str]]:
    """Faces this run may place, and the cluster id each had before it."""
    candidates, previous = [], {}
    for fid, file_id, emb, ok, cid in figure_store.placeable_faces(session, dataset):
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
    figure_store.assign_figures(session, changes)
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


def _create_clusters(session: Session, dataset: Dataset, plan: clustering.Plan) -> dict[str, str]:
    """Insert the plan's new clusters; returns plan key → ``Cluster-<uuid>``."""
    new = [(n.centroid, len(n.figure_ids)) for n in plan.new_clusters]
    ids = figure_store.create_clusters(session, dataset, new)
    return {n.key: cid for n, cid in zip(plan.new_clusters, ids, strict=True)}
