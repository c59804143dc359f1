"""Clustering runs against the database (SQLite here; the e2e flow runs it on PostgreSQL):
incremental runs, names and manual moves surviving later runs, deletes, merges, and the rule
that two faces of one photo never share a cluster. Embeddings are synthetic."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from pipeline import figures, files, migrate, projects, query
from pipeline.db import Database
from pipeline.errors import StatusConflict
from pipeline.figure_store import merge_clusters
from pipeline.models import Dataset, Figure, FigureCluster
from workers.processors.figure_clustering import cluster_dataset

REQUEST = {"Owner": "o", "ProjectName": "p", "DatasetName": "d"}
RNG = np.random.default_rng(7)
PEOPLE = {name: RNG.normal(size=128).astype(np.float32) for name in "ABC"}
for _v in PEOPLE.values():
    _v *= 0.45 / np.linalg.norm(_v) * 2  # person centres ~0.9 apart, like dlib identities


def face_vec(person: str) -> np.ndarray:
    noise = RNG.normal(size=128).astype(np.float32)
    return PEOPLE[person] + noise * (0.15 / np.linalg.norm(noise))


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    migrate.upgrade(url)
    database = Database(url)
    with database.session() as s:
        project = projects.create_project(s, "o", "p", {})
        projects.create_dataset(s, project, "d", {})
    yield database
    database.dispose()


def add_photo(db: Database, name: str, people: list[str], *, qualified: bool = True) -> list[str]:
    ids = [f"{name}-{i}" for i in range(len(people))]
    with db.session() as s:
        dataset = s.scalar(select(Dataset))
        assert dataset is not None
        faces = [
            files.NewFace(
                figure_id=fid,
                attrs={"FaceQuality": 0.9},
                embedding=face_vec(person).tobytes(),
                qualified=qualified,
                quality=0.9,
            )
            for fid, person in zip(ids, people, strict=True)
        ]
        item = files.Indexed(
            uri=f"oss://bkt/{name}.jpg",
            media_type="image",
            size=10,
            doc={"FileHash": name},
            faces=faces,
        )
        files.store_indexed(s, dataset, item)
    return ids


def run(db: Database) -> dict:
    with db.session() as s:
        return cluster_dataset(s, REQUEST)


def cluster_of(db: Database, figure_id: str) -> str:
    with db.session() as s:
        fig = s.get(Figure, figure_id)
        assert fig is not None
        return fig.cluster_id


def test_incremental_runs_names_moves_and_deletes(db: Database) -> None:
    a = [add_photo(db, f"a{i}", ["A"])[0] for i in range(3)]
    b = [add_photo(db, f"b{i}", ["B"])[0] for i in range(2)]
    first = run(db)
    assert first["NewClusterCount"] == 1 and first["UpdatedFigureCount"] == 5
    (cid_a,) = first["NewClusterIds"]
    assert {cluster_of(db, f) for f in a} == {cid_a}
    assert {cluster_of(db, f) for f in b} == {files.INDEPENDENT}  # only 2 faces of B

    # Name A; a third photo of B lets B form a group from the earlier independents.
    with db.session() as s:
        dataset = s.scalar(select(Dataset))
        figures.update(s, dataset, {"ObjectId": cid_a, "Name": "Alice", "MetaLockVersion": 0})
        with pytest.raises(StatusConflict):
            figures.update(s, dataset, {"ObjectId": cid_a, "Name": "X", "MetaLockVersion": 0})
    b.append(add_photo(db, "b2", ["B"])[0])
    a.append(add_photo(db, "a3", ["A"], qualified=False)[0])  # low quality may join A
    second = run(db)
    assert second["NewClusterCount"] == 1 and second["UpdatedClusterIds"] == [cid_a]
    (cid_b,) = second["NewClusterIds"]
    assert {cluster_of(db, f) for f in b} == {cid_b}
    assert cluster_of(db, a[3]) == cid_a
    with db.session() as s:
        cluster = s.get(FigureCluster, cid_a)
        assert cluster is not None
        assert (cluster.name, cluster.face_count, cluster.image_count) == ("Alice", 4, 4)

    # A manual move survives the next run.
    with db.session() as s:
        dataset = s.scalar(select(Dataset))
        move = {
            "URI": "oss://bkt/a0.jpg",
            "Figures": [{"FigureId": a[0], "FigureClusterId": cid_b}],
        }
        figures.refresh(s, files.update(s, dataset, move))
    add_photo(db, "a4", ["A"])
    run(db)
    assert cluster_of(db, a[0]) == cid_b

    # SimpleQuery sees cluster membership.
    with db.session() as s:
        dataset = s.scalar(select(Dataset))
        assert dataset is not None
        spec = query.QuerySpec(
            dataset_id=dataset.id,
            query={"Field": "Figures.FigureClusterId", "Operation": "eq", "Value": cid_b},
        )
        assert query.run(s, spec).total_hits == 4  # b0, b1, b2 + the moved a0

    # Deleting every photo of B (and the moved face) removes cluster B.
    with db.session() as s:
        dataset = s.scalar(select(Dataset))
        touched = files.delete_files(
            s,
            dataset,
            ["oss://bkt/b0.jpg", "oss://bkt/b1.jpg", "oss://bkt/b2.jpg", "oss://bkt/a0.jpg"],
        )
        assert figures.refresh(s, touched) == [cid_b]
        assert s.get(FigureCluster, cid_b) is None


def test_two_faces_of_one_photo_never_share_a_cluster(db: Database) -> None:
    for i in range(3):
        add_photo(db, f"solo{i}", ["A"])
    pair = add_photo(db, "twins", ["A", "A"])
    result = run(db)
    assert result["NewClusterCount"] == 1
    got = sorted(cluster_of(db, f) for f in pair)
    assert got == sorted([result["NewClusterIds"][0], files.INDEPENDENT])


def test_merge_moves_faces_and_removes_the_source(db: Database) -> None:
    for i in range(3):
        add_photo(db, f"a{i}", ["A"])
        add_photo(db, f"c{i}", ["C"])
    ids = run(db)["NewClusterIds"]
    assert len(ids) == 2
    with db.session() as s:
        out = merge_clusters(s, {**REQUEST, "To": ids[0], "Froms": [ids[1]]})
    assert out["MergedClusterIds"] == [ids[1]] and out["UpdatedFigureCount"] == 3
    with db.session() as s:
        merged = s.get(FigureCluster, ids[0])
        assert merged is not None and merged.face_count == 6
    # Merged faces are manual: a later run does not pull them apart again.
    run(db)
    with db.session() as s:
        assert s.scalar(select(FigureCluster).where(FigureCluster.id == ids[1])) is None


def test_query_figure_clusters_sort_filter_and_paging(db: Database) -> None:
    from datetime import UTC, datetime, timedelta

    for i in range(5):
        add_photo(db, f"a{i}", ["A"])
    for i in range(4):
        add_photo(db, f"b{i}", ["B"])
    for i in range(3):
        add_photo(db, f"c{i}", ["C"])
    ids = run(db)["NewClusterIds"]
    assert len(ids) == 3
    with db.session() as s:
        dataset = s.scalar(select(Dataset))
        assert dataset is not None
        biggest = max(ids, key=lambda c: s.get(FigureCluster, c).face_count)  # type: ignore[union-attr]
        figures.update(s, dataset, {"ObjectId": biggest, "CustomLabels": {"role": "me"}})
    everything = (None, None)

    def page(**kw: object) -> tuple[list[FigureCluster], str, int | None]:
        args = {
            "create_range": everything,
            "update_range": everything,
            "custom_labels": None,
            "sort": "FaceCount",
            "desc": True,
            "max_results": 100,
            "next_token": "",
            "with_total": True,
            **kw,
        }
        with db.session() as s:
            dataset = s.scalar(select(Dataset))
            return figures.query(s, dataset, **args)  # type: ignore[arg-type]

    rows, token, total = page()
    assert [c.face_count for c in rows] == [5, 4, 3] and token == "" and total == 3
    first, token, _ = page(max_results=2, sort="FaceCount", desc=False)
    second, last, _ = page(max_results=2, sort="FaceCount", desc=False, next_token=token)
    assert [c.face_count for c in first + second] == [3, 4, 5] and token and last == ""
    labelled, _, total = page(custom_labels=("role", "me"))
    assert [c.id for c in labelled] == [biggest] and total == 1
    future = datetime.now(UTC) + timedelta(days=1)
    assert page(create_range=(future, None))[0] == []
