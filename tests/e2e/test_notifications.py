"""Task completions reach webhook subscribers through real processes: the API, a worker pool
and the ``openimm dispatcher`` on PostgreSQL + Redis — including when the dispatcher is down
at commit time."""

from __future__ import annotations

import json
import signal

import pytest

from pipeline.client import ImmClient
from pipeline.notify import webhooks
from schemas.events import ImmMessage, MnsEnvelope
from tests.e2e.stack import KEY_ID, KEY_SECRET, Stack, wait_until
from tests.unit.test_notify import Receiver

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


@pytest.fixture(scope="module")
def client(stack: Stack) -> ImmClient:
    stack.env["OPENIMM_HTTP_ALLOW_PRIVATE"] = "1"  # the test receiver lives on 127.0.0.1
    stack.stop("api")
    stack.start_api()
    imm = ImmClient(stack.endpoint, (KEY_ID, KEY_SECRET))
    imm.call("CreateProject", ProjectName="n")
    imm.call("CreateTopic", TopicName="imm-events")
    return imm


def run_task(stack: Stack, imm: ImmClient, user_data: str) -> str:
    task_id = str(
        imm.call(
            "CreateDiagnosticTask",
            ProjectName="n",
            UserData=user_data,
            Notification={"MNS": {"TopicName": "imm-events"}},
        )["TaskId"]
    )

    def done() -> bool:
        task = imm.call("GetTask", ProjectName="n", TaskType="Diagnostic", TaskId=task_id)
        return task["Status"] == "Succeeded"

    wait_until(done, 60, what="task succeeded")
    return task_id


def test_completion_is_pushed_signed_and_once(stack: Stack, client: ImmClient) -> None:
    receiver = Receiver(failures=1)  # first attempt fails: exercised retry in production
    sub = client.call(
        "Subscribe",
        TopicName="imm-events",
        SubscriptionName="hook1",
        Endpoint=receiver.url,
        NotifyStrategy=json.dumps(
            {"base": 0.2, "factor": 2, "max_interval": 1, "max_retries": 5, "horizon": 60}
        ),
    )
    stack.start_dispatcher()
    try:
        task_id = run_task(stack, client, "hello")
        wait_until(lambda: len(receiver.requests) >= 2, 30, what="webhook delivered")
        headers, body = receiver.requests[-1]
        assert webhooks.verify(
            sub["Subscription"]["Secret"], {k.lower(): v for k, v in headers.items()}, body
        )
        content = json.loads(
            ImmMessage.model_validate_json(MnsEnvelope.model_validate_json(body).Message).content
        )
        assert (content["TaskId"], content["Status"], content["UserData"]) == (
            task_id,
            "Succeeded",
            "hello",
        )
        log = client.call("ListDeliveries", EventId=headers["webhook-id"])["Deliveries"]
        assert [a["StatusCode"] for a in log[0]["Attempts"]] == [500, 204]
    finally:
        stack.stop("dispatcher")
        client.call("Unsubscribe", TopicName="imm-events", SubscriptionName="hook1")
        receiver.server.shutdown()


def test_dispatcher_down_at_commit_still_delivers_once(stack: Stack, client: ImmClient) -> None:
    receiver = Receiver()
    client.call(
        "Subscribe", TopicName="imm-events", SubscriptionName="hook2", Endpoint=receiver.url
    )
    try:
        task_id = run_task(stack, client, "while-down")  # no dispatcher: outbox holds it
        assert receiver.requests == []
        stack.start_dispatcher("dispatcher-a")
        wait_until(lambda: receiver.requests, 30, what="delivery after restart")
        stack.stop("dispatcher-a", sig=signal.SIGKILL)
        stack.start_dispatcher("dispatcher-b")  # a second dispatcher must not resend
        run_task(stack, client, "after")  # proves dispatcher-b is working
        wait_until(lambda: len(receiver.requests) == 2, 30, what="second delivery")
        ids = [
            json.loads(MnsEnvelope.model_validate_json(b).Message)["id"]
            for _, b in receiver.requests
        ]
        assert len(set(ids)) == 2
        first = json.loads(
            ImmMessage.model_validate_json(
                MnsEnvelope.model_validate_json(receiver.requests[0][1]).Message
            ).content
        )
        assert first["TaskId"] == task_id
    finally:
        stack.stop("dispatcher-b")
        receiver.server.shutdown()
