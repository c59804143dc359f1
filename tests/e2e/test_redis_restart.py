"""Redis (the broker and the MNS message store, AOF on) restarts in the middle of a burst of
tasks with notifications: nothing is lost — every task ends Succeeded once and every
completion reaches the queue once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mns.account import Account
from mns.mns_exception import MNSExceptionBase
from mns.queue import QueueMeta
from mns.subscription import SubscriptionMeta
from mns.topic import TopicMeta
from sqlalchemy import create_engine, func, select

from pipeline.client import ClientError, ImmClient
from pipeline.models import Event, Task
from tests.e2e.stack import KEY_ID, KEY_SECRET, Stack, launch, wait_until
from tests.realservices import PostgresServer, RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
BURST = 30


@pytest.fixture
def burst_stack(
    postgres_server: PostgresServer, own_redis: RedisServer, tmp_path: Path
) -> Iterator[Stack]:
    stack = launch(
        tmp_path,
        database_url=postgres_server.create_database("burst"),
        broker_url=own_redis.url(0),
        dispatcher=True,
        redis_url=own_redis.url(1),
        visibility_timeout_seconds="5",
    )
    yield stack
    stack.stop_all()


def _create(client: ImmClient, i: int) -> str:
    """Create with a ClientToken, retrying while the broker is away (503, nothing created)."""

    def attempt() -> str | None:
        try:
            return str(
                client.call(
                    "CreateDiagnosticTask",
                    ProjectName="b",
                    Mode="Sleep",
                    Seconds=0,
                    ClientToken=f"burst-{i}",
                    Notification={"MNS": {"TopicName": "done"}},
                )["TaskId"]
            )
        except ClientError as exc:
            assert exc.code == "ServiceUnavailable", exc.body
            return None

    return wait_until(attempt, 60, 0.2, what=f"task {i} created")


def test_redis_restart_mid_burst_loses_nothing(burst_stack: Stack, own_redis: RedisServer) -> None:
    account = Account(f"http://{burst_stack.endpoint}", KEY_ID, KEY_SECRET)
    queue = account.get_queue("done-q")
    queue.create(QueueMeta())
    queue.set_encoding(False)
    topic = account.get_topic("done")
    topic.create(TopicMeta())
    topic.get_subscription("q").subscribe(
        SubscriptionMeta(endpoint=f"acs:mns:local:{KEY_ID}:queues/done-q")
    )
    client = ImmClient(burst_stack.endpoint, (KEY_ID, KEY_SECRET))
    client.call("CreateProject", ProjectName="b")

    ids = [_create(client, i) for i in range(BURST // 2)]
    own_redis.restart()  # SIGTERM → AOF flushed → start again on the same port and dir
    ids += [_create(client, i) for i in range(BURST // 2, BURST)]
    assert len(set(ids)) == BURST

    engine = create_engine(
        burst_stack.env["OPENIMM_DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://")
    )

    def all_done() -> bool:
        with engine.connect() as conn:
            return (
                conn.execute(
                    select(func.count()).select_from(Task).where(Task.status == "Succeeded")
                ).scalar()
                == BURST
            )

    wait_until(all_done, 120, 0.5, what="every task succeeded")
    with engine.connect() as conn:
        per_task = conn.execute(select(Event.task_id, func.count()).group_by(Event.task_id)).all()
    assert len(per_task) == BURST and all(n == 1 for _, n in per_task)

    received: set[str] = set()

    def drain() -> bool:
        try:
            message = queue.receive_message(wait_seconds=1)
        except MNSExceptionBase:
            return len(received) == BURST
        received.add(message.message_id)
        queue.delete_message(message.receipt_handle)
        return len(received) == BURST

    wait_until(drain, 90, 0, what="every notification received")
