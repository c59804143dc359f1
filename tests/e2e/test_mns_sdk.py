"""The official aliyun-mns-sdk against openimm: a topic pushed to a queue, a task completion
received with long polling, all three message layers checked field by field, visibility
timeout redelivery with DequeueCount, delete by receipt handle."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator

import pytest
from alibabacloud_imm20200930 import models as m
from mns.account import Account
from mns.mns_exception import MNSExceptionBase
from mns.queue import QueueMeta
from mns.subscription import SubscriptionMeta
from mns.topic import TopicMeta

from schemas.events import ImmMessage, MnsEnvelope, TaskContent
from tests.e2e.stack import ACCOUNT_ID, KEY_ID, KEY_SECRET, Stack, imm_sdk, launch, wait_until
from tests.realservices import PostgresServer, RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


@pytest.fixture(scope="module", params=["db-store", "redis-store"])
def mns_stack(
    request: pytest.FixtureRequest,
    postgres_server: PostgresServer,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """Queues in PostgreSQL (no OPENIMM_REDIS_URL) and in Redis (distributed mode)."""
    store = {"redis_url": redis_server.url(12)} if request.param == "redis-store" else {}
    stack = launch(
        tmp_path_factory.mktemp("mns"),
        database_url=postgres_server.create_database(f"mns_e2e_{request.param[:2]}"),
        broker_url=redis_server.url(13),
        dispatcher=True,
        region="cn-local",
        **store,
    )
    yield stack
    stack.stop_all()


def test_task_completion_through_an_mns_queue(mns_stack: Stack) -> None:
    stack = mns_stack
    account = Account(f"http://{stack.endpoint}", KEY_ID, KEY_SECRET)
    queue = account.get_queue("imm-results")
    meta = QueueMeta()
    meta.set_visibilitytimeout(2)
    queue.create(meta)
    queue.set_encoding(False)  # IMM's JSON is text: read it raw (MNS's own advice)
    topic = account.get_topic("imm-topic")
    topic.create(TopicMeta())
    topic.get_subscription("to-queue").subscribe(
        SubscriptionMeta(
            endpoint=f"acs:mns:cn-local:{ACCOUNT_ID}:queues/imm-results",
            notify_content_format="JSON",
        )
    )
    assert [u.rsplit("/", 1)[1] for u in account.list_queue()[0]] == ["imm-results"]

    imm = imm_sdk(stack.endpoint)
    imm.create_project(m.CreateProjectRequest(project_name="mnsp"))
    (stack.data_dir / "oss" / "mbkt").mkdir(parents=True)
    (stack.data_dir / "oss" / "mbkt" / "a.txt").write_text("a")
    created = imm.create_file_compression_task(
        m.CreateFileCompressionTaskRequest(
            project_name="mnsp",
            target_uri="oss://mbkt/o.zip",
            user_data="ud-mns",
            sources=[m.CreateFileCompressionTaskRequestSources(uri="oss://mbkt/a.txt")],
            notification=m.Notification(mns=m.MNS(topic_name="imm-topic")),
        )
    ).body

    first = queue.receive_message(wait_seconds=20)  # long polling until the task ends
    assert first.dequeue_count == 1
    assert first.message_body_md5 == hashlib.md5(first.message_body.encode()).hexdigest().upper()
    envelope = MnsEnvelope.model_validate_json(first.message_body)
    assert (
        envelope.TopicOwner,
        envelope.TopicName,
        envelope.Subscriber,
        envelope.SubscriptionName,
    ) == (ACCOUNT_ID, "imm-topic", ACCOUNT_ID, "to-queue")
    assert envelope.MessageMD5 == hashlib.md5(envelope.Message.encode()).hexdigest().upper()
    assert envelope.PublishTime.isdigit() and re.fullmatch(r"[0-9A-F]{32}", envelope.MessageId)
    body = ImmMessage.model_validate_json(envelope.Message)
    assert (body.id, body.source, body.type) == (
        created.event_id,
        "acs.imm",
        "imm:Task:FileCompression",
    )
    assert body.subject == f"acs:imm:cn-local:{ACCOUNT_ID}:mnsp/imm:Task:FileCompression"
    assert body.time.isdigit()
    content = TaskContent.model_validate_json(body.content)
    assert (
        content.ProjectName,
        content.TaskId,
        content.TaskType,
        content.Status,
        content.UserData,
        content.Code,
        content.Message,
    ) == ("mnsp", created.task_id, "FileCompression", "Succeeded", "ud-mns", "", "")
    assert json.loads(body.content)["TargetURI"] == "oss://mbkt/o.zip"

    # Not deleted: it comes back after the 2 s visibility timeout, DequeueCount 2.
    again = queue.receive_message(wait_seconds=10)
    assert again.message_id == first.message_id and again.dequeue_count == 2
    assert again.receipt_handle != first.receipt_handle
    with pytest.raises(MNSExceptionBase):
        queue.delete_message(first.receipt_handle)  # the old handle is no longer valid
    queue.delete_message(again.receipt_handle)
    with pytest.raises(MNSExceptionBase) as info:
        queue.receive_message(wait_seconds=1)
    assert info.value.type == "MessageNotExist"


def test_mns_errors_and_signatures(mns_stack: Stack) -> None:
    bad = Account(f"http://{mns_stack.endpoint}", KEY_ID, "wrong-secret")
    with pytest.raises(MNSExceptionBase) as info:
        bad.list_queue()
    assert info.value.type == "SignatureDoesNotMatch"
    account = Account(f"http://{mns_stack.endpoint}", KEY_ID, KEY_SECRET)
    with pytest.raises(MNSExceptionBase) as info:
        account.get_queue("no-such-queue").receive_message(wait_seconds=1)
    assert info.value.type == "QueueNotExist"
    with pytest.raises(MNSExceptionBase) as info:
        account.get_topic("no-such-topic").get_subscription("s").subscribe(
            SubscriptionMeta(endpoint=f"acs:mns:x:{KEY_ID}:queues/q")
        )
    assert info.value.type == "TopicNotExist"


def test_send_receive_change_visibility(mns_stack: Stack) -> None:
    account = Account(f"http://{mns_stack.endpoint}", KEY_ID, KEY_SECRET)
    from mns.queue import Message

    queue = account.get_queue("plain")
    queue.create(QueueMeta())
    sent = queue.send_message(Message("héllo"))  # SDK default: base64 on the client
    received = queue.receive_message(wait_seconds=2)
    # the SDK base64-decodes on its side and hands back bytes
    assert received.message_body == "héllo".encode() and received.message_id == sent.message_id
    changed = queue.change_message_visibility(received.receipt_handle, 1)
    assert changed.receipt_handle != received.receipt_handle
    wait_until(lambda: _receive(queue), 10, what="visible again after 1 s")


def _receive(queue: object) -> bool:
    try:
        return bool(queue.receive_message(wait_seconds=1))  # type: ignore[attr-defined]
    except MNSExceptionBase:
        return False


def test_queued_messages_survive_an_openimm_restart(mns_stack: Stack) -> None:
    from mns.queue import Message

    account = Account(f"http://{mns_stack.endpoint}", KEY_ID, KEY_SECRET)
    queue = account.get_queue("durable")
    queue.create(QueueMeta())
    sent = queue.send_message(Message("kept"))
    mns_stack.stop("api")
    mns_stack.start_api()
    got = queue.receive_message(wait_seconds=5)
    assert got.message_id == sent.message_id and got.message_body == b"kept"
    queue.delete_message(got.receipt_handle)
