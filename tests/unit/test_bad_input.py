"""Bad input answers 4xx with a clear Code in the protocol's own shape, never a 500 (issue 9
item 10). Each case here returned 500 InternalError before it was fixed."""

from __future__ import annotations

import hashlib
from email.utils import formatdate
from urllib.parse import urlencode

import httpx
import pytest
from fastapi.testclient import TestClient

from pipeline import eas_auth, paging, query
from pipeline.client import ClientError, ImmClient
from pipeline.notify import queues
from tests.conftest import KEY
from tests.mns_http import MnsHttp, element, error_code

DEEP = "[" * 100_000 + "]" * 100_000  # ~100 k levels: RecursionError in json.loads


def form_call(imm: ImmClient, action: str, **params: str) -> httpx.Response:
    """A signed RPC call with the parameters in a form body (as long values need)."""
    body = urlencode(params).encode()
    extra = {
        "x-acs-action": action,
        "x-acs-version": "2020-09-30",
        "content-type": "application/x-www-form-urlencoded",
    }
    headers = imm._headers("POST", "/", {}, body, extra)
    return imm.http.post("/", content=body, headers=headers)


def rpc_error(imm: ImmClient, action: str, **params: str) -> tuple[int, str]:
    with pytest.raises(ClientError) as info:
        imm.call(action, **params)
    return info.value.status, info.value.code


@pytest.fixture
def project(imm: ImmClient) -> str:
    imm.call("CreateProject", ProjectName="p")
    imm.call("CreateDataset", ProjectName="p", DatasetName="d")
    return "p"


@pytest.fixture
def mns(app_client: TestClient) -> MnsHttp:
    client = MnsHttp(app_client, KEY)
    assert client.create_queue("q").status_code == 201
    return client


@pytest.mark.parametrize(
    ("action", "params"),
    [
        ("CreateFileCompressionTask", {"TargetURI": "oss://bkt/o.zip", "Sources": DEEP}),
        ("SimpleQuery", {"DatasetName": "d", "Query": DEEP}),
        ("BatchIndexFileMeta", {"DatasetName": "d", "Files": DEEP}),
        (
            "CreateFileCompressionTask",
            {"TargetURI": "oss://bkt/o.zip", "Sources": '[{"URI": "oss://bkt/a"}]', "Tags": DEEP},
        ),
    ],
)
def test_deep_json_in_a_structured_parameter(
    imm: ImmClient, project: str, action: str, params: dict[str, str]
) -> None:
    response = form_call(imm, action, ProjectName=project, **params)
    assert response.status_code == 400
    assert response.json()["Code"] == "InvalidJSON"
    assert "nested deeper" in response.json()["Message"]


def test_deep_json_in_an_eas_body(app_client: TestClient) -> None:
    body = ('{"input": ' + DEEP + "}").encode()
    md5, date = hashlib.md5(body).hexdigest(), formatdate(usegmt=True)
    text = eas_auth.string_to_sign(md5, "application/json", date, "diagnostic")
    headers = {
        "authorization": "EAS " + eas_auth.sign(KEY[1], text),
        "content-md5": md5,
        "content-type": "application/json",
        "date": date,
    }
    response = app_client.post("/api/predict/diagnostic", content=body, headers=headers)
    assert response.status_code == 400
    assert response.json()["Code"] == "InvalidArgument"


def test_simple_query_next_token_beyond_64_bits(imm: ImmClient, project: str) -> None:
    spec = query.QuerySpec(dataset_id=0, query=None)
    token = paging.encode([10**20, query.fingerprint(spec)])
    status, code = rpc_error(
        imm, "SimpleQuery", ProjectName=project, DatasetName="d", NextToken=token
    )
    assert (status, code) == (400, "InvalidNextToken")


def test_list_events_after_seq_beyond_64_bits(imm: ImmClient) -> None:
    imm.call("CreateTopic", TopicName="t")
    assert rpc_error(imm, "ListEvents", TopicName="t", AfterSeq=str(10**30)) == (
        400,
        "InvalidAfterSeq",
    )


def test_list_projects_tag_of_the_wrong_type(imm: ImmClient) -> None:
    assert rpc_error(imm, "ListProjects", Tag="[1]") == (400, "InvalidTag")


def test_list_tasks_time_range_of_the_wrong_type(imm: ImmClient, project: str) -> None:
    assert rpc_error(imm, "ListTasks", ProjectName=project, StartTimeRange='{"Start":[1]}') == (
        400,
        "InvalidStartTimeRange",
    )


def test_mns_waitseconds_not_a_number(mns: MnsHttp) -> None:
    response = mns.receive("q", wait="abc")
    assert response.status_code == 400 and error_code(response) == "InvalidArgument"


def test_mns_visibility_timeout_not_a_number(mns: MnsHttp) -> None:
    response = mns.request("PUT", "/queues/q/messages?ReceiptHandle=x&VisibilityTimeout=abc")
    assert response.status_code == 400 and error_code(response) == "InvalidArgument"


@pytest.mark.parametrize(
    "fields",
    [
        {"DelaySeconds": str(10**20)},
        {"DelaySeconds": "abc"},
        {"DelaySeconds": "604801"},
        {"Priority": str(10**30)},
        {"Priority": "0"},
        {"Priority": "17"},
    ],
)
def test_mns_delay_and_priority_out_of_range(mns: MnsHttp, fields: dict[str, str]) -> None:
    response = mns.send("q", "body", **fields)
    assert response.status_code == 400 and error_code(response) == "InvalidArgument"
    assert mns.receive("q").status_code == 404  # nothing was stored


def test_mns_date_without_a_zone(mns: MnsHttp) -> None:
    response = mns.request("GET", "/queues", date="Tue, 01 Dec 2026 19:40:00")
    assert response.status_code == 400 and error_code(response) == "InvalidTimeStamp.Expired"


def test_an_unexpected_error_on_an_mns_path_is_mns_xml(
    app_client: TestClient, mns: MnsHttp, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(queues, "list_queues", broken)
    http = TestClient(app_client.app, raise_server_exceptions=False)  # same app, same services
    response = MnsHttp(http, KEY).request("GET", "/queues")
    assert response.status_code == 500 and error_code(response) == "InternalError"
    assert "a bug" not in response.text and "Traceback" not in response.text


def test_mns_attribute_element_is_bounded(mns: MnsHttp) -> None:
    response = mns.request("PUT", "/queues/q2", element("Queue", {"DelaySeconds": "9" * 40}))
    assert response.status_code == 400 and error_code(response) == "InvalidArgument"


def test_an_integer_beyond_any_float_is_indexed_as_text() -> None:
    from pipeline import fileindex

    assert fileindex._number(10**400) is None  # was OverflowError while indexing file meta
    assert fileindex._number(7) == 7.0


@pytest.mark.parametrize(
    "strategy",
    [
        '{"base": "x", "factor": 1, "max_interval": 1, "max_retries": 1, "horizon": 1}',
        '{"base": 1, "factor": 1e300, "max_interval": 1, "max_retries": 176, "horizon": 9}',
        '{"base": [1], "factor": 1, "max_interval": 1, "max_retries": 1, "horizon": 1}',
    ],
)
def test_a_custom_retry_policy_of_the_wrong_type_or_size(imm: ImmClient, strategy: str) -> None:
    imm.call("CreateTopic", TopicName="t")
    status, code = rpc_error(
        imm,
        "Subscribe",
        TopicName="t",
        SubscriptionName="s",
        Endpoint="http://93.184.216.34/hook",
        NotifyStrategy=strategy,
    )
    assert (status, code) == (400, "InvalidNotifyStrategy")
