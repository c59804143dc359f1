"""pipeline.mns_client (the demo's MNS consumer) against the in-process MNS API: its
signatures are accepted, and create / send / receive / delete behave as the SDK's do."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from pipeline.api.app import create_app
from pipeline.mns_client import MnsError, MnsQueues
from pipeline.settings import Settings
from tests.conftest import KEY
from tests.mns_http import MnsHttp


@pytest.fixture
def http(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        data_dir=tmp_path / "data", broker_url="memory://", access_keys=f"{KEY[0]}:{KEY[1]}"
    )
    with TestClient(create_app(settings)) as client:
        yield client


def test_a_message_sent_is_received_once_and_deleted(http: TestClient) -> None:
    # Given a queue created by the client and a message sent with the SDK's signing
    queues = MnsQueues("http://testserver", KEY, http=http)
    queues.create("inbox")
    queues.create("inbox")  # again, with the same attributes: no error
    assert MnsHttp(http, KEY).send("inbox", '{"hello": 1}').status_code == 201
    # When it is received and deleted
    message = queues.receive("inbox", wait_seconds=0)
    assert message is not None and message.body == '{"hello": 1}' and message.message_id
    queues.delete("inbox", message.receipt_handle)
    # Then the queue is empty
    assert queues.receive("inbox", wait_seconds=0) is None


def test_a_wrong_secret_is_an_mns_error(http: TestClient) -> None:
    queues = MnsQueues("http://testserver", (KEY[0], "not-the-secret"), http=http)
    with pytest.raises(MnsError) as info:
        queues.create("inbox")
    assert info.value.status == 403 and info.value.code == "SignatureDoesNotMatch"
