"""Face search: CreateFacesSearchingTask (results through the notification, and GetTask) and
SearchImageFigureCluster (a synchronous IMM call; run here as a queued task that the HTTP
request waits for, so the API process never loads dlib).

Both detect the faces of the source image(s), then compare each with the dataset's stored
embeddings (FacesSearching) or with the cluster centroids (SearchImageFigureCluster).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import figure_store, figures, projects
from workers.context import JobContext, Transactional
from workers.models import clustering

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

# Beyond this embedding distance two faces are not reported as similar at all.
MAX_DISTANCE = 0.6


def _source_faces(ctx: JobContext, uri: str, n: int) -> list[Any]:
    from workers import models
    from workers.models import faces

    local = ctx.media.fetch(uri, ctx.workdir / f"src{n}")
    rgb, _info = faces.load_image(local, ctx.settings.image_max_pixels)
    analyzer = models.get(
        faces.FaceAnalyzer,
        detector=ctx.settings.face_detector,
        max_side=ctx.settings.face_max_side,
    )
    return list(analyzer.analyze(rgb))


def _similarity(distance: float) -> float:
    return round(clustering.distance_to_similarity(distance), 4)


def _boundary(face: Any) -> dict[str, int]:
    return {
        "Left": int(face.left),
        "Top": int(face.top),
        "Width": int(face.width),
        "Height": int(face.height),
    }


def process(ctx: JobContext) -> Transactional:
    """FacesSearching: for every face in every source, the most similar stored faces."""
    sources = ctx.request["Sources"]
    found = [(s["URI"], _source_faces(ctx, s["URI"], n)) for n, s in enumerate(sources)]
    limit = int(ctx.request.get("MaxResult") or 5)
    return Transactional(lambda session: _search_faces(session, ctx.request, found, limit))


def _search_faces(
    session: Session, request: dict[str, Any], found: list[tuple[str, list[Any]]], limit: int
) -> dict[str, Any]:
    dataset = projects.job_dataset(session, request, lock=False)
    rows = figure_store.dataset_faces(session, dataset)
    matrix = (
        np.stack([figures.embedding(r[1]) for r in rows])
        if rows
        else np.zeros((0, 128), np.float32)
    )
    results = []
    for uri, faces in found:
        for face in faces:
            dist = np.linalg.norm(matrix - np.asarray(face.embedding, np.float32), axis=1)
            order = [i for i in np.argsort(dist, kind="stable") if dist[i] <= MAX_DISTANCE]
            results.append(
                {
                    "URI": uri,
                    "Boundary": _boundary(face),
                    "SimilarFaces": [
                        {
                            "URI": rows[i][3],
                            "FigureId": rows[i][0],
                            "Similarity": round(
                                clustering.distance_to_similarity(float(dist[i])), 4
                            ),
                            "Boundary": rows[i][2].get("Boundary", {}),
                        }
                        for i in order[:limit]
                    ],
                }
            )
    return {"SimilarFaces": results}


def search_clusters(ctx: JobContext) -> Transactional:
    """SearchImageFigureCluster: which clusters the faces in one image belong to."""
    faces = _source_faces(ctx, ctx.request["SourceURI"], 0)
    return Transactional(lambda session: _match_clusters(session, ctx.request, faces))


def _match_clusters(session: Session, request: dict[str, Any], faces: list[Any]) -> dict[str, Any]:
    dataset = projects.job_dataset(session, request, lock=False)
    rows = figure_store.cluster_centroids(session, dataset)
    clusters = []
    for face in faces:
        if not rows:
            break
        centroids = np.stack([figures.embedding(c) for _, c in rows])
        dist = np.linalg.norm(centroids - np.asarray(face.embedding, np.float32), axis=1)
        best = int(np.argmin(dist))
        if dist[best] <= MAX_DISTANCE:
            clusters.append(
                {
                    "ClusterId": rows[best][0],
                    "Similarity": _similarity(float(dist[best])),
                    "Boundary": _boundary(face),
                }
            )
    return {"Clusters": clusters}
