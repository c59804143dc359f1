"""Bucket claims under concurrency on real PostgreSQL: many owners' first writes to one new
bucket at the same moment leave exactly one owner; everyone else is refused."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import select

from pipeline import buckets, migrate
from pipeline.db import Database
from pipeline.errors import BucketAccessDenied
from pipeline.models import Bucket
from pipeline.settings import Settings
from pipeline.storage import LocalStore, ScopedStore

pytestmark = pytest.mark.integration
OWNERS = [f"LTAIrace{n}" for n in range(12)]


@pytest.fixture
def policy(fresh_database: str, tmp_path: Path) -> buckets.BucketPolicy:
    settings = Settings(
        database_url=fresh_database,
        data_dir=tmp_path,
        access_keys=",".join(f"{o}:s" for o in OWNERS),
    )
    migrate.upgrade(settings.db_url)
    return buckets.BucketPolicy(
        Database(settings.db_url, pool_size=len(OWNERS)), LocalStore(settings.oss_root), settings
    )


def test_concurrent_first_writes_have_one_winner(policy: buckets.BucketPolicy) -> None:
    # Given twelve owners writing to the same new bucket through their scoped stores at once
    results: dict[str, str] = {}
    start = threading.Barrier(len(OWNERS))

    def write(owner: str) -> None:
        store = ScopedStore(policy.store, policy, owner)
        start.wait()
        try:
            store.put_bytes("contested", f"{owner}.txt", owner.encode())
            results[owner] = "stored"
        except BucketAccessDenied:
            results[owner] = "denied"

    threads = [threading.Thread(target=write, args=(o,)) for o in OWNERS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # Then one owner holds the bucket, and only its object is in it
    winners = [o for o, r in results.items() if r == "stored"]
    assert len(results) == len(OWNERS) and len(winners) == 1
    with policy.db.session() as s:
        assert s.scalars(select(Bucket.owner).where(Bucket.name == "contested")).all() == winners
    assert [o.key for o in policy.store.list("contested")] == [f"{winners[0]}.txt"]
    policy.db.dispose()


def test_dropped_in_bucket_settles_once_for_the_first_key(policy: buckets.BucketPolicy) -> None:
    policy.store.put_bytes("dropped", "x", b"x")  # raw store: like a `cp` into the data dir
    start = threading.Barrier(4)
    seen: list[bool] = []

    def read(owner: str) -> None:
        start.wait()
        try:
            seen.append(policy.require(owner, "dropped", buckets.READ))
        except BucketAccessDenied:
            seen.append(False)

    threads = [threading.Thread(target=read, args=(o,)) for o in OWNERS[:4]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(seen) == [False, False, False, True]  # only OWNERS[0], the first key
    with policy.db.session() as s:
        assert s.get(Bucket, "dropped").owner == OWNERS[0]  # type: ignore[union-attr]
    policy.db.dispose()
