"""Push wake-up of MNS long polls across processes: a message put by another process (the
dispatcher in distributed mode) wakes a receiver waiting in the API process, through
PostgreSQL LISTEN/NOTIFY (database store) or Redis pub/sub (Redis store). The fallback
re-check interval is set far beyond the test, so only the push can wake the receiver."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from pipeline.api.app import create_app
from pipeline.notify.wake import HUB
from pipeline.settings import Settings
from tests.conftest import KEY
from tests.e2e.stack import wait_until
from tests.mns_http import MnsHttp

pytestmark = pytest.mark.integration

PUT_FROM_ANOTHER_PROCESS = """
import time
from pipeline.db import Database
from pipeline.notify import queues
from pipeline.notify.store import open_message_store
from pipeline.settings import Settings

settings = Settings()
db = Database.from_settings(settings)
with db.session() as s:
    queue = queues.get_queue(s, "AK1", "work")
store = open_message_store(settings, db)
print(time.monotonic(), flush=True)  # CLOCK_MONOTONIC: comparable across processes
store.put(queue, "from-another-process")
"""


@pytest.fixture(params=["pg-db-store", "redis-store"])
def settings(request: pytest.FixtureRequest, tmp_path: Path, fresh_database: str) -> Settings:
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis-store" else ""
    return Settings(
        data_dir=tmp_path / "data",
        database_url=fresh_database,
        redis_url=redis_url,
        broker_url="memory://",
        access_keys=f"{KEY[0]}:{KEY[1]}",
        mns_poll_interval_seconds=3600,
    )


@pytest.fixture
def mns(settings: Settings) -> Iterator[MnsHttp]:
    with TestClient(create_app(settings)) as http:
        yield MnsHttp(http, KEY)


def _listening(mns: MnsHttp) -> bool:
    listener = mns.http.app.state.services.messages.listener  # type: ignore[union-attr]
    return listener is not None and listener.ready.is_set()


def test_a_put_in_another_process_wakes_the_receiver(mns: MnsHttp, settings: Settings) -> None:
    assert mns.create_queue("work").status_code == 201
    result: dict[str, Any] = {}

    def receive() -> None:
        result["response"] = mns.receive("work", 20)
        result["at"] = time.monotonic()

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    wait_until(lambda: HUB.waiting_count() >= 1, 10, 0.01, "a waiting receiver")
    wait_until(lambda: _listening(mns), 10, 0.01, "the LISTEN/SUBSCRIBE in place")
    env = {
        **os.environ,
        "OPENIMM_DATABASE_URL": settings.database_url,
        "OPENIMM_REDIS_URL": settings.redis_url,
        "OPENIMM_DATA_DIR": str(settings.data_dir),
    }
    put = subprocess.run(
        [sys.executable, "-c", PUT_FROM_ANOTHER_PROCESS],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    put_at = float(put.stdout.split()[0])
    thread.join(30)
    response = result["response"]
    assert response.status_code == 200
    assert b"from-another-process" in response.content
    assert float(result["at"]) - put_at < 1.0  # pushed, not the 20 s timeout
