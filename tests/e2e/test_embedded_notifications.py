"""The embedded default (`openimm serve`: SQLite, filesystem broker, dispatcher thread, worker
processes) delivers task completions to an MNS queue read with the official aliyun-mns-sdk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mns.account import Account
from mns.mns_exception import MNSServerException
from mns.queue import QueueMeta
from mns.subscription import SubscriptionMeta
from mns.topic import TopicMeta

from pipeline.client import ImmClient
from schemas.events import ImmMessage, MnsEnvelope
from tests.e2e.stack import KEY_ID, KEY_SECRET, free_port, wait_until

pytestmark = pytest.mark.e2e
RECEIVE_DEADLINE = 240.0


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENIMM_")}
    env.update(
        {
            "OPENIMM_DATA_DIR": str(tmp_path / "data"),
            "OPENIMM_PORT": str(port),
            "OPENIMM_ACCESS_KEYS": f"{KEY_ID}:{KEY_SECRET}",
            "OPENIMM_DIAGNOSTICS": "1",
        }
    )
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "serve"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def healthy() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, 60, what="embedded server")
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)


def test_embedded_completions_reach_an_mns_queue(served: str) -> None:
    account = Account(f"http://{served}", KEY_ID, KEY_SECRET)
    queue = account.get_queue("results")
    queue.create(QueueMeta())
    queue.set_encoding(False)
    topic = account.get_topic("done")
    topic.create(TopicMeta())
    topic.get_subscription("q").subscribe(
        SubscriptionMeta(endpoint=f"acs:mns:local:{KEY_ID}:queues/results")
    )
    client = ImmClient(served, (KEY_ID, KEY_SECRET))
    client.call("CreateProject", ProjectName="p")
    ids = {
        client.call(
            "CreateDiagnosticTask", ProjectName="p", Notification={"MNS": {"TopicName": "done"}}
        )["TaskId"]
        for _ in range(5)
    }
    seen: set[str] = set()
    # The first tasks wait for the worker pool to load its models (slow on shared cores).
    deadline = time.monotonic() + RECEIVE_DEADLINE
    while len(seen) < len(ids) and time.monotonic() < deadline:
        try:
            message = queue.receive_message(wait_seconds=20)
        except MNSServerException as exc:
            assert exc.type == "MessageNotExist", exc
            continue
        body = ImmMessage.model_validate_json(
            MnsEnvelope.model_validate_json(message.message_body).Message
        )
        content = json.loads(body.content)
        assert content["Status"] == "Succeeded"
        seen.add(content["TaskId"])
        queue.delete_message(message.receipt_handle)
    assert seen == ids
