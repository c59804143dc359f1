"""MNS long polling: receivers are woken by push (not by re-reading the store), capped per
owner; queue/topic/subscription quotas (issue 9 item 8). In-process app on SQLite."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from pipeline.api.app import create_app
from pipeline.client import ClientError
from pipeline.notify import topics
from pipeline.notify.dispatcher import Dispatcher
from pipeline.notify.wake import HUB
from pipeline.settings import Settings
from tests.conftest import KEY, OTHER_KEY, signed
from tests.e2e.stack import wait_until
from tests.mns_http import MnsHttp, element, error_code

NEVER = 3600.0  # a fallback re-check interval no test waits for: only a push can wake


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[Callable[..., tuple[TestClient, Settings]]]:
    clients: list[TestClient] = []

    def make(**overrides: Any) -> tuple[TestClient, Settings]:
        settings = Settings(
            data_dir=tmp_path / "data",
            broker_url="memory://",
            access_keys=f"{KEY[0]}:{KEY[1]},{OTHER_KEY[0]}:{OTHER_KEY[1]}",
            **overrides,
        )
        client = TestClient(create_app(settings))
        client.__enter__()
        clients.append(client)
        return client, settings

    yield make
    for client in clients:
        client.__exit__(None, None, None)


class Receiver:
    """A long poll running in a thread; ``elapsed`` is measured from its start."""

    def __init__(self, mns: MnsHttp, queue: str, wait: int) -> None:
        self.response: httpx.Response | None = None
        self.done_at = 0.0
        self.thread = threading.Thread(target=self._run, args=(mns, queue, wait), daemon=True)
        self.thread.start()

    def _run(self, mns: MnsHttp, queue: str, wait: int) -> None:
        self.response = mns.receive(queue, wait)
        self.done_at = time.monotonic()

    def result(self, timeout: float = 30) -> httpx.Response:
        self.thread.join(timeout)
        assert self.response is not None, "the receiver did not return"
        return self.response


def _waiting(count: int) -> None:
    wait_until(lambda: HUB.waiting_count() >= count, 10, 0.01, f"{count} waiting receivers")


def test_a_send_wakes_a_waiting_receiver_by_push(make_app: Callable[..., Any]) -> None:
    http, _ = make_app(mns_poll_interval_seconds=NEVER)
    mns = MnsHttp(http, KEY)
    mns.create_queue("work")
    receiver = Receiver(mns, "work", 20)
    _waiting(1)
    sent_at = time.monotonic()
    assert mns.send("work", "hello").status_code == 201
    response = receiver.result()
    assert response.status_code == 200 and b"<MessageBody>hello</MessageBody>" in response.content
    assert receiver.done_at - sent_at < 1.0  # woken by the put, not a 20 s timeout
    assert HUB.waiting_count() == 0


def test_the_dispatcher_writing_a_topic_message_wakes_the_receiver(
    make_app: Callable[..., Any],
) -> None:
    http, settings = make_app(mns_poll_interval_seconds=NEVER, region="local")
    mns = MnsHttp(http, KEY)
    mns.create_queue("events")
    imm = signed(http)
    imm.call("CreateTopic", TopicName="t")
    endpoint = topics.queue_endpoint("local", KEY[0], "events")
    imm.call("Subscribe", TopicName="t", SubscriptionName="s", Endpoint=endpoint)
    receiver = Receiver(mns, "events", 20)
    _waiting(1)
    published = mns.request("POST", "/topics/t/messages", element("Message", {"MessageBody": "x"}))
    assert published.status_code == 201
    dispatcher = Dispatcher(settings, http.app.state.services.db)  # its own message store
    sent_at = time.monotonic()
    assert dispatcher.run_once() >= 1
    response = receiver.result()
    assert response.status_code == 200 and receiver.done_at - sent_at < 1.0
    dispatcher.pool.shutdown()


def test_a_delayed_message_is_received_when_it_turns_visible(make_app: Callable[..., Any]) -> None:
    http, _ = make_app(mns_poll_interval_seconds=NEVER)
    mns = MnsHttp(http, KEY)
    mns.create_queue("later")
    started = time.monotonic()
    assert mns.send("later", "soon", DelaySeconds="1").status_code == 201
    response = mns.receive("later", 20)
    assert response.status_code == 200
    assert 0.9 < time.monotonic() - started < 5  # at its visible time, not after the 20 s


def test_long_polls_are_capped_per_owner(make_app: Callable[..., Any]) -> None:
    http, _ = make_app(mns_poll_interval_seconds=NEVER, mns_max_long_polls_per_owner=2)
    mns, other = MnsHttp(http, KEY), MnsHttp(http, OTHER_KEY)
    mns.create_queue("capped")
    other.create_queue("capped")
    receivers = [Receiver(mns, "capped", 20) for _ in range(2)]
    _waiting(2)
    started = time.monotonic()
    refused = mns.receive("capped", 20)
    assert refused.status_code == 429 and error_code(refused) == "LongPollLimitExceeded"
    assert time.monotonic() - started < 5  # refused at once, not after the wait
    assert mns.receive("capped", 0).status_code == 404  # a plain (non-waiting) receive is fine
    assert other.receive("capped", 1).status_code == 404  # another owner has its own slots
    for n in range(2):
        mns.send("capped", f"m{n}")
    assert [r.result().status_code for r in receivers] == [200, 200]
    late = Receiver(mns, "capped", 20)  # the slots are free again
    _waiting(1)
    mns.send("capped", "m2")
    assert late.result().status_code == 200


def test_quotas_of_queues_topics_and_subscriptions(make_app: Callable[..., Any]) -> None:
    http, _ = make_app(
        mns_max_queues_per_owner=2, mns_max_topics_per_owner=1, mns_max_subscriptions_per_topic=1
    )
    mns, imm = MnsHttp(http, KEY), signed(http)
    assert [mns.create_queue(n).status_code for n in ("q1", "q2", "q1")] == [201, 201, 204]
    over = mns.create_queue("q3")
    assert over.status_code == 400 and error_code(over) == "QueueNumExceeded"
    assert MnsHttp(http, OTHER_KEY).create_queue("q3").status_code == 201  # per owner

    imm.call("CreateTopic", TopicName="t1")
    with pytest.raises(ClientError) as info:
        imm.call("CreateTopic", TopicName="t2")
    assert (info.value.status, info.value.code) == (400, "LimitExceededError")
    over = mns.request("PUT", "/topics/t3", element("Topic", {}))
    assert over.status_code == 400 and error_code(over) == "TopicNumExceeded"

    endpoint = topics.queue_endpoint("local", KEY[0], "q1")
    imm.call("Subscribe", TopicName="t1", SubscriptionName="s1", Endpoint=endpoint)
    with pytest.raises(ClientError) as info:
        imm.call("Subscribe", TopicName="t1", SubscriptionName="s2", Endpoint=endpoint)
    assert info.value.code == "LimitExceededError"
    body = element("Subscription", {"Endpoint": endpoint})
    over = mns.request("PUT", "/topics/t1/subscriptions/s3", body)
    assert over.status_code == 400 and error_code(over) == "SubscriptionNumExceeded"
    listed = imm.call("ListSubscriptions", TopicName="t1")["Subscriptions"]
    assert [s["SubscriptionName"] for s in listed] == ["s1"]  # nothing written on refusal
