"""Clustering runs on real PostgreSQL: concurrent runs of ONE dataset are serialised (the second
sees the first's clusters and adds nothing), runs of different datasets do not wait for each
other's lock."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from sqlalchemy import func, select

from pipeline import files, migrate, projects
from pipeline.db import Database
from pipeline.models import Dataset, FigureCluster
from pipeline.settings import Settings
from workers.processors import figure_clustering

pytestmark = pytest.mark.integration
RNG = np.random.default_rng(3)


@pytest.fixture
def db(fresh_database: str) -> Database:
    url = Settings(database_url=fresh_database).db_url
    migrate.upgrade(url)
    database = Database(url, pool_size=8)
    with database.session() as s:
        project = projects.create_project(s, "o", "p", {})
        for name in ("d1", "d2"):
            projects.create_dataset(s, project, name, {})
    return database


def _fill(db: Database, dataset_name: str, people: int, per_person: int) -> None:
    with db.session() as s:
        dataset = s.scalar(select(Dataset).where(Dataset.name == dataset_name))
        assert dataset is not None
        for p in range(people):
            centre = RNG.normal(size=128).astype(np.float32)
            centre *= 0.9 / np.linalg.norm(centre)
            for k in range(per_person):
                noise = RNG.normal(size=128).astype(np.float32)
                vec = centre + noise * (0.15 / np.linalg.norm(noise))
                files.store_indexed(
                    s,
                    dataset,
                    files.Indexed(
                        uri=f"oss://bkt/{p}-{k}.jpg",
                        media_type="image",
                        size=1,
                        doc={"FileHash": f"{p}-{k}"},
                        faces=[
                            files.NewFace(
                                figure_id=f"{dataset_name}-{p}-{k}",
                                attrs={},
                                embedding=vec.astype(np.float32).tobytes(),
                                qualified=True,
                                quality=0.9,
                            )
                        ],
                    ),
                )


def _run(db: Database, dataset_name: str) -> dict:
    with db.session() as s:
        return figure_clustering.cluster_dataset(
            s, {"Owner": "o", "ProjectName": "p", "DatasetName": dataset_name}
        )


def test_concurrent_runs_of_one_dataset_are_serialised(db: Database) -> None:
    _fill(db, "d1", people=6, per_person=4)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: _run(db, "d1"), range(4)))
    assert sorted(r["NewClusterCount"] for r in results) == [0, 0, 0, 6]
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(FigureCluster)) == 6


def test_a_locked_dataset_does_not_block_another(db: Database) -> None:
    _fill(db, "d2", people=3, per_person=3)
    holding = threading.Event()
    release = threading.Event()

    def hold_d1() -> None:
        with db.session() as s:
            projects.job_dataset(
                s, {"Owner": "o", "ProjectName": "p", "DatasetName": "d1"}, lock=True
            )
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold_d1)
    holder.start()
    assert holding.wait(5)
    started = time.monotonic()
    assert _run(db, "d2")["NewClusterCount"] == 3
    assert time.monotonic() - started < 5  # did not wait for d1's lock
    release.set()
    holder.join()
