"""Issue 9 attacks on the in-process API (items 2, 3, 5, 6, 8, 11): each was accepted before
the fix. The same attacks against real server processes are in tests/e2e/test_security.py."""

from __future__ import annotations

import base64
import hashlib
from email.utils import formatdate
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from pipeline import mns_auth
from pipeline.api.app import create_app
from pipeline.client import ClientError, ImmClient
from pipeline.settings import Settings
from tests.conftest import KEY, METRICS_TOKEN


def _signed_headers(imm: ImmClient, action: str, query: dict[str, str]) -> list[tuple[str, str]]:
    extra = {"x-acs-action": action, "x-acs-version": "2020-09-30"}
    return list(imm._headers("POST", "/", query, b"", extra).items())


def _post(app_client: TestClient, query: dict[str, str], headers: list[tuple[str, str]]):  # type: ignore[no-untyped-def]
    return app_client.post("/", params=query, headers=headers)


# ---- 2: a second x-acs-action swaps the action ---------------------------------------------


def test_a_second_action_header_cannot_swap_a_signed_request(
    app_client: TestClient, imm: ImmClient
) -> None:
    imm.call("CreateProject", ProjectName="p")
    query = {"ProjectName": "p"}
    headers = _signed_headers(imm, "GetProject", query)
    swapped = [("x-acs-action", "DeleteProject"), *headers]
    response = _post(app_client, query, swapped)
    assert response.status_code == 400
    assert response.json()["Code"] == "InvalidArgument.Duplicated"
    assert imm.call("GetProject", ProjectName="p")["Project"]["ProjectName"] == "p"


def test_an_action_parameter_disagreeing_with_the_header_is_refused(
    app_client: TestClient, imm: ImmClient
) -> None:
    imm.call("CreateProject", ProjectName="p")
    query = {"ProjectName": "p", "Action": "DeleteProject"}
    response = _post(app_client, query, _signed_headers(imm, "GetProject", query))
    assert response.json()["Code"] == "InvalidArgument.Duplicated"
    repeated = app_client.post(
        "/?ProjectName=p&ProjectName=q", headers=_signed_headers(imm, "GetProject", {})
    )
    assert repeated.json()["Code"] == "InvalidArgument.Duplicated"
    assert imm.call("GetProject", ProjectName="p")["Project"]["ProjectName"] == "p"


# ---- 3: no keys is never open unless dev mode is explicit ----------------------------------


def test_no_keys_without_dev_mode_refuses_requests(app_client: TestClient) -> None:
    app_client.app.state.services.keys = {}  # type: ignore[attr-defined]
    response = app_client.post("/", params={"Action": "ListProjects"})
    assert response.status_code == 503
    assert response.json()["Code"] == "Forbidden.NoAccessKeys"
    assert app_client.get("/queues").status_code == 503
    assert app_client.post("/api/predict/diagnostic", content=b"{}").status_code == 503


@pytest.mark.parametrize("content", ["", "\n", "not-a-pair\n"])
def test_an_empty_or_malformed_key_file_refuses_to_start(tmp_path: Path, content: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "access_keys").write_text(content)
    settings = Settings(data_dir=data, broker_url="memory://")
    from pipeline.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="access_keys"), TestClient(create_app(settings)):
        pass


# ---- 5: replays ----------------------------------------------------------------------------


def test_a_replayed_signed_create_is_refused(app_client: TestClient, imm: ImmClient) -> None:
    imm.call("CreateProject", ProjectName="p")
    query = {"ProjectName": "p", "Mode": "Noop"}
    headers = _signed_headers(imm, "CreateDiagnosticTask", query)
    first = _post(app_client, query, headers)
    assert first.status_code == 200, first.text
    again = _post(app_client, query, headers)
    assert again.status_code == 403
    assert again.json()["Code"] == "SignatureNonceUsed"
    assert len(imm.call("ListTasks", ProjectName="p")["Tasks"]) == 1


# ---- 6 + 5: MNS bodies and replays ---------------------------------------------------------


def _mns(
    method: str, path: str, body: bytes, *, md5: str | None = None, signed_body: bytes | None = None
) -> dict[str, str]:
    headers = {
        "date": formatdate(usegmt=True),
        "content-type": "text/xml;charset=UTF-8",
        "x-mns-version": "2015-06-06",
    }
    digest = hashlib.md5(body if signed_body is None else signed_body).hexdigest()
    if md5 is None:
        md5 = base64.b64encode(digest.encode()).decode()
    if md5:
        headers["content-md5"] = md5
    headers["authorization"] = f"MNS {KEY[0]}:" + mns_auth.sign(KEY[1], method, headers, path)
    return headers


def _message(text: str) -> bytes:
    return f"<Message><MessageBody>{text}</MessageBody></Message>".encode()


def _count(app_client: TestClient) -> int:
    headers = _mns("GET", "/queues/q", b"")
    xml = app_client.get("/queues/q", headers=headers).text
    return int(xml.split("<ActiveMessages>")[1].split("<")[0])


@pytest.fixture
def queue(app_client: TestClient) -> str:
    body = b"<Queue></Queue>"
    response = app_client.put("/queues/q", content=body, headers=_mns("PUT", "/queues/q", body))
    assert response.status_code == 201, response.text
    return "q"


def test_mns_body_must_match_its_signed_content_md5(app_client: TestClient, queue: str) -> None:
    path = "/queues/q/messages"
    swapped = _mns("POST", path, _message("evil"), signed_body=_message("good"))
    response = app_client.post(path, content=_message("evil"), headers=swapped)
    assert response.status_code == 400
    assert "<Code>InvalidDigest</Code>" in response.text
    missing = _mns("POST", path, _message("x"), md5="")
    assert app_client.post(path, content=_message("x"), headers=missing).status_code == 400
    rfc = base64.b64encode(hashlib.md5(_message("ok")).digest()).decode()
    accepted = _mns("POST", path, _message("ok"), md5=rfc)
    assert app_client.post(path, content=_message("ok"), headers=accepted).status_code == 201
    assert _count(app_client) == 1


def test_a_replayed_mns_send_is_stored_once(app_client: TestClient, queue: str) -> None:
    path = "/queues/q/messages"
    headers = _mns("POST", path, _message("once"))
    assert app_client.post(path, content=_message("once"), headers=headers).status_code == 201
    again = app_client.post(path, content=_message("once"), headers=headers)
    assert again.status_code == 403
    assert "<Code>SignatureNonceUsed</Code>" in again.text
    assert _count(app_client) == 1


# ---- 8: body limits before reading ---------------------------------------------------------


def test_oversize_bodies_get_413_in_each_protocols_shape(
    app_client: TestClient, imm: ImmClient, queue: str
) -> None:
    big = b"x" * (4 << 20 | 1)
    headers = dict(_signed_headers(imm, "ListProjects", {}))
    rpc = app_client.post("/", content=big, headers=headers)
    assert rpc.status_code == 413 and rpc.json()["Code"] == "RequestEntityTooLarge"
    mns = app_client.post("/queues/q/messages", content=big, headers=_mns("POST", "/q", b""))
    assert mns.status_code == 413 and "<Code>RequestEntityTooLarge</Code>" in mns.text
    eas_headers = {"authorization": "EAS x", "date": formatdate(usegmt=True)}
    eas = app_client.post(
        "/api/predict/diagnostic", content=b"x" * (8 << 20 | 1), headers=eas_headers
    )
    assert eas.status_code == 413 and eas.json()["success"] is False


def test_unsigned_requests_are_refused_before_their_body_is_read(
    app_client: TestClient,
) -> None:
    reads: list[int] = []

    def body():  # type: ignore[no-untyped-def]
        for _ in range(64):
            reads.append(1)
            yield b"x" * (1 << 20)

    response = app_client.post("/", content=body())
    assert response.status_code == 401
    assert len(reads) <= 1  # the client's first chunk may be in flight; nothing more is read


async def _echo_length(scope: Scope, receive: Receive, send: Send) -> None:
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})


@pytest.mark.anyio
async def test_streamed_bodies_are_counted_without_a_content_length() -> None:
    from pipeline.api.limits import BodyLimitMiddleware
    from pipeline.errors import RequestTooLarge

    app = BodyLimitMiddleware(_echo_length, limit_for=lambda path: 10)
    chunks = [b"12345", b"67890", b"1"]

    async def receive() -> Message:
        body = chunks.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(chunks)}

    async def send(message: Message) -> None:
        return None

    scope = {"type": "http", "path": "/", "headers": []}
    with pytest.raises(RequestTooLarge):
        await app(scope, receive, send)


# ---- 11: operator endpoints ----------------------------------------------------------------


def test_metrics_need_the_token_and_docs_are_off(app_client: TestClient) -> None:
    assert app_client.get("/metrics").status_code == 403
    wrong = app_client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    right = app_client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert right.status_code == 200 and "openimm_queue_depth" in right.text
    assert app_client.get("/docs").status_code == 404
    assert app_client.get("/openapi.json").status_code == 404


def test_docs_in_dev_mode_and_metrics_off_without_token(settings: Settings) -> None:
    dev = settings.model_copy(update={"dev_mode": True, "api_docs": False, "metrics_token": ""})
    with TestClient(create_app(dev)) as client:
        assert client.get("/openapi.json").status_code == 200
    prod = settings.model_copy(update={"metrics_token": "", "api_docs": True})
    with TestClient(create_app(prod)) as client:
        assert client.get("/metrics").status_code == 403
        assert client.get("/docs").status_code == 200


def test_imm_client_still_works(imm: ImmClient) -> None:
    imm.call("CreateProject", ProjectName="ok")
    with pytest.raises(ClientError):
        imm.call("GetProject", ProjectName="missing")
