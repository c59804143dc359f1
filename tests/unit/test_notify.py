"""Notifications: the three IMM message layers, webhook signatures, retry policies, and the
outbox dispatcher against a real local HTTP receiver (SQLite, no workers)."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from pipeline import accounts, migrate, projects, tasks
from pipeline.client import ClientError, ImmClient
from pipeline.db import Database
from pipeline.ids import utcnow
from pipeline.models import Delivery, Event, Task
from pipeline.notify import dispatcher as dispatcher_mod
from pipeline.notify import policy, topics, webhooks
from pipeline.notify.dispatcher import Dispatcher
from pipeline.settings import Settings
from schemas.events import ImmMessage, MnsEnvelope, TaskContent
from tests.conftest import METRICS_TOKEN

FAST = {
    "base": 0.01,
    "factor": 1,
    "max_interval": 0.01,
    "max_retries": 3,
    "horizon": 30,
    "jitter": 0,
}


class Receiver:
    """A webhook endpoint that fails its first ``failures`` requests with HTTP 500."""

    def __init__(self, failures: int = 0) -> None:
        self.failures, self.requests = failures, []  # type: ignore[var-annotated]
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.requests.append((dict(self.headers.items()), body))
                code = 500 if len(receiver.requests) <= receiver.failures else 204
                self.send_response(code)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture
def env(tmp_path: Path) -> tuple[Settings, Database]:
    settings = Settings(data_dir=tmp_path, http_allow_private=True, region="local")
    migrate.upgrade(settings.db_url)
    db = Database.from_settings(settings)
    with db.session() as s:
        projects.create_project(s, "AK1", "p", {})
        topics.create_topic(s, "AK1", "imm-events")
    return settings, db


def subscribe(db: Database, url: str, fmt: str = "JSON", retry: Any = None) -> str:
    with db.session() as s:
        topic = topics.get_topic(s, "AK1", "imm-events")
        sub = topics.subscribe(
            s,
            topic,
            "hook",
            endpoint=url,
            content_format=fmt,
            retry=retry or FAST,
            allow_private=True,
        )
        return sub.secret


def finished_task(db: Database, user_data: str = "ud") -> Task:
    spec = tasks.NewTask(
        "FileCompression",
        "archive",
        {"TargetURI": "oss://b/x.zip"},
        user_data=user_data,
        notification={"MNS": {"TopicName": "imm-events"}},
    )
    with db.session() as s:
        project = projects.get_project(s, "AK1", "p")
        task, _ = tasks.create(s, project, spec, request_id="REQ-1")
    with db.session() as s:
        tasks.finalize(
            s,
            task.id,
            tasks.SUCCEEDED,
            result={"TargetURI": "oss://b/x.zip"},
            started_at=task.start_time,
        )
        done = s.get(Task, task.id)
        assert done is not None
        return done


def drain(d: Dispatcher, rounds: int = 200) -> None:
    for _ in range(rounds):
        d.run_once()
        with d.db.session() as s:
            if not s.scalar(
                select(func.count()).select_from(Delivery).where(Delivery.status == "pending")
            ):
                return
        threading.Event().wait(0.01)


def test_webhook_carries_the_three_imm_layers_exactly(
    env: tuple[Settings, Database], receiver: Receiver
) -> None:
    settings, db = env
    secret = subscribe(db, receiver.url)
    task = finished_task(db)
    drain(Dispatcher(settings, db))
    assert len(receiver.requests) == 1
    headers, body = receiver.requests[0]
    assert webhooks.verify(secret, {k.lower(): v for k, v in headers.items()}, body)
    envelope = MnsEnvelope.model_validate_json(body)
    assert (envelope.TopicOwner, envelope.TopicName, envelope.SubscriptionName) == (
        accounts.derive("AK1"),  # no AccountId configured: the derived one
        "imm-events",
        "hook",
    )
    assert envelope.MessageMD5 == hashlib.md5(envelope.Message.encode()).hexdigest().upper()
    assert envelope.PublishTime.isdigit()
    message = ImmMessage.model_validate_json(envelope.Message)
    assert message.id == task.event_id and message.source == "acs.imm"
    assert message.type == "imm:Task:FileCompression" and message.time.isdigit()
    assert message.subject == f"acs:imm:local:{accounts.derive('AK1')}:p/imm:Task:FileCompression"
    content = TaskContent.model_validate_json(message.content)
    assert (content.TaskId, content.Status, content.UserData, content.RequestId) == (
        task.id,
        "Succeeded",
        "ud",
        "REQ-1",
    )
    assert json.loads(message.content)["TargetURI"] == "oss://b/x.zip"
    assert list(json.loads(message.content))[:12] == [
        "ProjectName",
        "DatasetName",
        "RequestId",
        "StartTime",
        "EndTime",
        "UserData",
        "TaskType",
        "TaskId",
        "Status",
        "Code",
        "Message",
        "EventSourceId",
    ]


def test_face_clustering_event_type_name() -> None:
    assert tasks.event_type("FaceClustering") == "imm:Task:FigureClustering"


@pytest.mark.parametrize("fmt", ["SIMPLIFIED", "XML"])
def test_other_content_formats(
    env: tuple[Settings, Database], receiver: Receiver, fmt: str
) -> None:
    settings, db = env
    subscribe(db, receiver.url, fmt=fmt)
    task = finished_task(db)
    drain(Dispatcher(settings, db))
    body = receiver.requests[0][1].decode()
    if fmt == "SIMPLIFIED":
        assert json.loads(body)["id"] == task.event_id
    else:
        assert body.startswith("<?xml") and "<MessageMD5>" in body and task.event_id in body


def test_fails_three_times_then_delivered_on_the_fourth(env: tuple[Settings, Database]) -> None:
    settings, db = env
    flaky = Receiver(failures=3)
    secret = subscribe(db, flaky.url)
    finished_task(db)
    drain(Dispatcher(settings, db))
    assert len(flaky.requests) == 4
    ids = {h["webhook-id"] for h, _ in flaky.requests}
    bodies = {b for _, b in flaky.requests}
    assert len(ids) == 1 and len(bodies) == 1  # same id and body on every attempt
    assert webhooks.verify(
        secret, {k.lower(): v for k, v in flaky.requests[-1][0].items()}, flaky.requests[-1][1]
    )
    with db.session() as s:
        delivery = s.scalars(select(Delivery)).one()
        assert (delivery.status, delivery.attempts, delivery.last_status) == ("delivered", 4, 204)
    flaky.server.shutdown()


def test_dead_letter_after_horizon_then_replay(env: tuple[Settings, Database]) -> None:
    settings, db = env
    down = Receiver(failures=10_000)
    subscribe(db, down.url, retry={**FAST, "max_retries": 2})
    task = finished_task(db)
    d = Dispatcher(settings, db)
    drain(d)
    with db.session() as s:
        assert s.scalars(select(Delivery.status)).one() == "dead"
    assert len(down.requests) == 3
    down.failures = 0  # the receiver comes back
    assert dispatcher_mod.replay(db, "AK1", event_id=task.event_id, dead_only=True) == 1
    drain(d)
    with db.session() as s:
        assert s.scalars(select(Delivery.status)).one() == "delivered"
    assert len(down.requests) == 4
    assert dispatcher_mod.replay(db, "someone-else", event_id=task.event_id) == 0
    down.server.shutdown()


def test_unpublished_event_survives_a_dispatcher_crash(
    env: tuple[Settings, Database], receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, db = env
    subscribe(db, receiver.url)
    task = finished_task(db)  # committed: the event sits in the outbox
    crashing = Dispatcher(settings, db)
    monkeypatch.setattr(
        crashing, "_deliveries_for", lambda *a: (_ for _ in ()).throw(RuntimeError("killed"))
    )
    with pytest.raises(RuntimeError):
        crashing.fan_out()  # dies mid fan-out: its transaction rolls back
    with db.session() as s:
        assert s.scalar(select(Event.published_at).where(Event.id == task.event_id)) is None
    fresh = Dispatcher(settings, db)
    drain(fresh)
    drain(fresh)
    assert len(receiver.requests) == 1  # delivered, once


def test_lost_sender_is_retried_after_its_lease_with_the_same_id(
    env: tuple[Settings, Database], receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, db = env
    subscribe(db, receiver.url)
    finished_task(db)
    d = Dispatcher(settings, db)
    d.fan_out()
    monkeypatch.setattr(dispatcher_mod, "LEASE", dispatcher_mod.timedelta(0))
    first = d.claim_due()
    d.send(first[0])  # the POST goes out, then this dispatcher "dies" before anything else
    with db.session() as s:  # simulate the missing record: still pending, lease lapsed
        s.execute(
            dispatcher_mod.update(Delivery).values(
                status="pending", attempts=0, next_attempt_at=utcnow()
            )
        )
    drain(d)
    assert len(receiver.requests) == 2
    assert receiver.requests[0][0]["webhook-id"] == receiver.requests[1][0]["webhook-id"]
    assert receiver.requests[0][1] == receiver.requests[1][1]


def test_retry_policies() -> None:
    decay = policy.parse("EXPONENTIAL_DECAY_RETRY")
    assert (decay.max_retries, decay.horizon, decay.max_interval) == (176, 86400, 512)
    assert all(0.5 <= decay.delay(0) <= 1 for _ in range(50))
    assert 256 <= decay.delay(20) <= 512
    backoff = policy.parse("BACKOFF_RETRY")
    assert all(10 <= backoff.delay(n) <= 20 for n in range(3))
    assert backoff.exhausted(3, 0) and not backoff.exhausted(2, 0)
    with pytest.raises(Exception):  # noqa: B017 - InvalidParameter
        policy.parse("NEVER")


def test_signature_rejects_tampering() -> None:
    secret = webhooks.new_secret()
    head = webhooks.headers(secret, "evt-1", 1700000000, b'{"a":1}')
    assert webhooks.verify(secret, head, b'{"a":1}')
    assert not webhooks.verify(secret, head, b'{"a":2}')
    assert not webhooks.verify(webhooks.new_secret(), head, b'{"a":1}')


def test_topics_api_and_unknown_topic_at_create(imm: ImmClient) -> None:
    imm.call("CreateProject", ProjectName="p")
    with pytest.raises(ClientError) as info:
        imm.call(
            "CreateFileCompressionTask",
            ProjectName="p",
            TargetURI="oss://bkt/x.zip",
            Sources=[{"URI": "oss://bkt/in/"}],
            Notification={"MNS": {"TopicName": "nope"}},
        )
    assert info.value.code == "ResourceNotFound" and "topic" in str(info.value)
    assert imm.call("ListTasks", ProjectName="p")["Tasks"] == []
    imm.call("CreateTopic", TopicName="imm-events")
    with pytest.raises(ClientError) as info:
        imm.call(
            "Subscribe",
            TopicName="imm-events",
            SubscriptionName="s",
            Endpoint="http://127.0.0.1:9/hook",
        )
    assert info.value.code == "InvalidURI"  # private endpoints need OPENIMM_HTTP_ALLOW_PRIVATE
    with pytest.raises(ClientError) as info:
        imm.call("CreateTopic", TopicName="imm-events")
    assert info.value.code == "ResourceAlreadyExists"
    created = imm.call(
        "CreateFileCompressionTask",
        ProjectName="p",
        TargetURI="oss://bkt/x.zip",
        Sources=[{"URI": "oss://bkt/in/"}],
        Notification={"MNS": {"TopicName": "imm-events"}},
    )
    assert created["TaskId"]
    assert [t["TopicName"] for t in imm.call("ListTopics")["Topics"]] == ["imm-events"]


def test_delivery_log_and_replay_over_the_api(imm: ImmClient, settings: Settings) -> None:
    flaky = Receiver(failures=1)
    services = imm.http.app.state.services  # type: ignore[attr-defined]
    services.settings = settings.model_copy(update={"http_allow_private": True})
    imm.call("CreateProject", ProjectName="p")
    imm.call("CreateTopic", TopicName="t1")
    imm.call(
        "Subscribe",
        TopicName="t1",
        SubscriptionName="s",
        Endpoint=flaky.url,
        NotifyStrategy=json.dumps(FAST),
    )
    task_id = imm.call(
        "CreateDiagnosticTask", ProjectName="p", Notification={"MNS": {"TopicName": "t1"}}
    )["TaskId"]
    imm.call("CancelTask", ProjectName="p", TaskId=task_id)  # a terminal event, no worker
    drain(Dispatcher(services.settings, services.db))
    log = imm.call("ListDeliveries", TopicName="t1")["Deliveries"]
    assert len(log) == 1 and log[0]["Status"] == "delivered"
    assert [a["StatusCode"] for a in log[0]["Attempts"]] == [500, 204]
    assert imm.call("ReplayDeliveries", EventId=log[0]["EventId"])["Replayed"] == 1
    drain(Dispatcher(services.settings, services.db))
    assert len(flaky.requests) == 3
    with pytest.raises(ClientError) as info:
        imm.call("ReplayDeliveries")
    assert info.value.code == "InvalidEventId"
    flaky.server.shutdown()


def test_notification_metrics(imm: ImmClient) -> None:
    text = imm.http.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).text
    assert "openimm_delivery_latency_seconds_count 0.0" in text
    assert 'openimm_delivery_attempts{outcome="ok"} 0.0' in text


def test_events_tail_lists_topic_messages(imm: ImmClient) -> None:
    imm.call("CreateProject", ProjectName="p")
    imm.call("CreateTopic", TopicName="t2")
    task_id = imm.call(
        "CreateDiagnosticTask", ProjectName="p", Notification={"MNS": {"TopicName": "t2"}}
    )["TaskId"]
    assert imm.call("ListEvents", TopicName="t2")["Events"] == []  # still running
    imm.call("CancelTask", ProjectName="p", TaskId=task_id)
    events = imm.call("ListEvents", TopicName="t2")["Events"]
    assert len(events) == 1 and events[0]["Message"]["type"] == "imm:Task:Diagnostic"
    assert json.loads(events[0]["Message"]["content"])["Status"] == "Cancelled"
    assert imm.call("ListEvents", TopicName="t2", AfterSeq=events[0]["Seq"])["Events"] == []


def test_queue_dead_letter_after_n_receives(env: tuple[Settings, Database]) -> None:
    from pipeline.notify import queues

    _, db = env
    with db.session() as s:
        queues.create_queue(s, "AK1", "work", {"VisibilityTimeout": "1"})
        queue = queues.get_queue(s, "AK1", "work")
        queues.send(s, queue, "poison")
    for expected in (1, 2):
        with db.session() as s:
            queue = queues.get_queue(s, "AK1", "work")
            got = queues.receive(s, queue, dead_letter_after=2)
            assert got is not None and got.dequeue_count == expected
            s.execute(
                dispatcher_mod.update(queues.MnsMessage).values(next_visible_time=utcnow())
            )  # let its visibility lapse
    with db.session() as s:
        assert queues.receive(s, queues.get_queue(s, "AK1", "work"), dead_letter_after=2) is None
        dead = queues.receive(s, queues.get_queue(s, "AK1", "work-deadletter"), 2)
        assert dead is not None and dead.body == "poison" and dead.dequeue_count == 1
