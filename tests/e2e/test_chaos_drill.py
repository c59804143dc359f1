"""The chaos drill of issue 10, bounded to a few minutes and run with the default lease
settings: FileCompression tasks submitted at 15/s through the official IMM SDK (ClientTokens,
retries) while, in this order, the worker group is SIGKILLed, the dispatcher is SIGKILLed,
Redis restarts and PostgreSQL stops for 3 s. Nothing may be lost, doubled or left unnotified,
and the API may answer an outage only with 503."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from alibabacloud_imm20200930 import models as m
from alibabacloud_imm20200930.client import Client as ImmSdk
from alibabacloud_tea_openapi.utils import Utils
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine

from pipeline.client import ImmClient
from pipeline.models import Event, Task
from schemas.events import MnsEnvelope
from tests.e2e.stack import KEY_ID, KEY_SECRET, Stack, imm_sdk, launch, sdk_call, wait_until
from tests.realservices import PostgresServer, RedisServer
from tests.unit.test_notify import Receiver

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(600)]
TASKS = 100
RATE = 15.0
PG_OUTAGE_SECONDS = 3.0
RETRY_FOR_SECONDS = 90.0
INPUT_BYTES = 1 << 20


@pytest.fixture
def own_servers(
    own_postgres: PostgresServer, own_redis: RedisServer
) -> tuple[PostgresServer, RedisServer]:
    return own_postgres, own_redis  # the drill stops both: they are its own


@pytest.fixture
def drill_stack(own_servers: tuple[PostgresServer, RedisServer], tmp_path: Path) -> Iterator[Stack]:
    pg, rd = own_servers
    stack = launch(
        tmp_path,
        database_url=pg.create_database("drill"),
        broker_url=rd.url(0),
        worker=False,
        http_allow_private="1",  # the webhook receiver lives on 127.0.0.1
    )
    stack.start_worker("worker-1", queues="archive", concurrency=2)
    stack.start_dispatcher("dispatcher-1")
    yield stack
    stack.stop_all()


class Traffic:
    """The drill's clients: creates with ClientTokens, retried on 503 and connection errors,
    and a poller listing tasks all along. Records every error status and connection error."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.local = threading.local()
        self.statuses: Counter[int] = Counter()
        self.resets: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def sdk(self) -> ImmSdk:
        if not hasattr(self.local, "sdk"):
            self.local.sdk = imm_sdk(self.endpoint)
        return self.local.sdk  # type: ignore[no-any-return]

    def _record(self, exc: Exception) -> None:
        with self.lock:
            # Tea/darabonba SDK errors carry the HTTP status; anything else is a transport
            # error (connection reset/refused), which must not happen: the API stays up.
            status = getattr(exc, "statusCode", None) or getattr(exc, "status_code", None)
            if status is not None:
                self.statuses[int(status)] += 1
            else:
                self.resets.append(f"{type(exc).__name__}: {exc}"[:300])

    def create(self, i: int) -> str:
        # The SDK's request model has no ClientToken field; its generic call_api sends the
        # same CreateFileCompressionTask call (same signer and transport) with one.
        query = {
            "ProjectName": "drill",
            "TargetURI": f"oss://media/out/{i}.zip",
            "Sources": json.dumps([{"URI": "oss://media/in/"}]),
            "Notification": json.dumps({"MNS": {"TopicName": "drill-done"}}),
            "ClientToken": f"drill-{i}",
        }
        deadline = time.monotonic() + RETRY_FOR_SECONDS
        while True:
            try:
                body = sdk_call(self.sdk(), "CreateFileCompressionTask", Utils.query(query))
                return str(body["TaskId"])
            except Exception as exc:
                self._record(exc)
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def poll(self) -> None:
        request = m.ListTasksRequest(project_name="drill", max_results=20)
        while not self.stop.wait(0.1):
            try:
                self.sdk().list_tasks(request)
            except Exception as exc:
                self._record(exc)


def _submit_paced(traffic: Traffic) -> list[str]:
    start = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        futures = []
        for i in range(TASKS):
            time.sleep(max(0.0, start + i / RATE - time.monotonic()))
            futures.append(pool.submit(traffic.create, i))
        return [f.result() for f in futures]


def _leased(engine: Engine) -> bool:
    with engine.connect() as conn:
        query = select(func.count()).select_from(Task).where(Task.lease_expires_at.is_not(None))
        return bool(conn.execute(query.where(Task.status == "Running")).scalar())


def test_chaos_drill_loses_nothing(
    drill_stack: Stack, own_servers: tuple[PostgresServer, RedisServer]
) -> None:
    stack, (pg, rd) = drill_stack, own_servers
    # Given a project, a topic with a webhook subscriber and input files
    receiver = Receiver()
    client = ImmClient(stack.endpoint, (KEY_ID, KEY_SECRET))
    client.call("CreateProject", ProjectName="drill")
    client.call("CreateTopic", TopicName="drill-done")
    client.call(
        "Subscribe",
        TopicName="drill-done",
        SubscriptionName="hook",
        Endpoint=receiver.url,
        NotifyStrategy=json.dumps(
            {"base": 0.5, "factor": 2, "max_interval": 5, "max_retries": 50, "horizon": 600}
        ),
    )
    inputs = stack.data_dir / "oss" / "media" / "in"
    inputs.mkdir(parents=True)
    (inputs / "a.txt").write_text("alpha" * 200)
    (inputs / "b.bin").write_bytes(os.urandom(INPUT_BYTES))  # a job takes a moment: killable
    engine = create_engine(
        stack.env["OPENIMM_DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://")
    )
    traffic = Traffic(stack.endpoint)
    poller = threading.Thread(target=traffic.poll, daemon=True)
    poller.start()
    drill_started = time.monotonic()

    # When tasks stream in at 15/s while the faults hit, in the order
    with ThreadPoolExecutor(1) as submitter:
        submitted = submitter.submit(_submit_paced, traffic)
        wait_until(lambda: "succeeded" in stack.log("worker-1"), 60, what="first job done")
        wait_until(lambda: _leased(engine), 60, 0.01, what="a job in flight")
        stack.stop("worker-1", sig=signal.SIGKILL)  # the whole worker group, mid-job
        stack.start_worker("worker-2", queues="archive", concurrency=2)
        stack.stop("dispatcher-1", sig=signal.SIGKILL)
        stack.start_dispatcher("dispatcher-2")
        rd.restart()
        pg.pause()
        time.sleep(PG_OUTAGE_SECONDS)
        pg.resume()
        ids = submitted.result(timeout=240)

    # Then every task ends Succeeded exactly once (no hang, no loss, no double)
    def finished() -> int:
        try:
            with engine.connect() as conn:
                return int(
                    conn.execute(
                        select(func.count()).select_from(Task).where(Task.status != "Running")
                    ).scalar()
                    or 0
                )
        except Exception:  # the database may still be coming back
            return 0

    try:
        wait_until(lambda: finished() == TASKS, 240, 0.5, what="every task finished")
    except AssertionError as exc:  # say which tasks hung and what the processes logged
        raise AssertionError(f"{exc}\n{_hung(engine, stack)}") from None
    with engine.connect() as conn:
        by_status = select(Task.status, func.count()).group_by(Task.status)
        statuses = {status: n for status, n in conn.execute(by_status).all()}
        events = select(Event.task_id, func.count()).group_by(Event.task_id)
        per_task = {task_id: n for task_id, n in conn.execute(events).all()}
        attempts = Counter(conn.execute(select(Task.attempts)).scalars().all())
    assert len(set(ids)) == TASKS and statuses == {"Succeeded": TASKS}
    assert set(per_task) == set(ids) and set(per_task.values()) == {1}

    # And every completion reaches the webhook (at least once, one event id per task)
    def notified() -> dict[str, set[str]]:
        by_task: dict[str, set[str]] = {}
        for _, body in list(receiver.requests):
            message = json.loads(MnsEnvelope.model_validate_json(body).Message)
            content = json.loads(message["content"])
            by_task.setdefault(content["TaskId"], set()).add(message["id"])
        return by_task

    wait_until(lambda: len(notified()) == TASKS, 120, 0.5, what="every task notified")
    by_task = notified()
    assert set(by_task) == set(ids) and all(len(v) == 1 for v in by_task.values())
    elapsed = time.monotonic() - drill_started
    traffic.stop.set()
    poller.join(10)
    receiver.server.shutdown()

    # And the API answered the outage with 503 only, on connections that stayed open
    server_errors = {s: n for s, n in traffic.statuses.items() if s >= 500}
    print(
        f"\nchaos drill: {TASKS} tasks in {elapsed:.0f} s; attempts {dict(attempts)}; "
        f"HTTP errors {dict(traffic.statuses)}; connection errors {len(traffic.resets)}; "
        f"webhook requests {len(receiver.requests)}"
    )
    assert set(server_errors) <= {503}, server_errors
    assert traffic.resets == [], traffic.resets[:5]
    # And the invariant holds, and the logs stay quiet (one line per state change)
    stack.run("doctor")
    for name in ("api", "dispatcher-2"):
        assert "Traceback" not in stack.log(name), stack.log(name)[-3000:]
    assert stack.log("dispatcher-2").count("database unavailable") <= 2


def _hung(engine: Engine, stack: Stack) -> str:
    """The tasks still Running (attempts, worker, lease, heartbeat) and each process's last
    log lines: what a drill that timed out needs to be diagnosed after its files are gone."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(Task.id, Task.attempts, Task.worker, Task.lease_expires_at, Task.heartbeat_at)
            .where(Task.status == "Running")
            .limit(20)
        ).all()
    lines = [f"still Running: {len(rows)} (first 20)", *(str(tuple(r)) for r in rows)]
    for name in ("api", "worker-1", "worker-2", "dispatcher-1", "dispatcher-2"):
        tail = stack.log(name).splitlines()[-15:]
        lines += [f"--- {name}.log (last {len(tail)} lines)", *tail]
    return "\n".join(lines)
