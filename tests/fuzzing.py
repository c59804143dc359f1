"""Property-based fuzz of the three front doors (IMM RPC, MNS, EAS predict) against the
in-process app: random parameter names, values, types and sizes, deep and odd JSON,
duplicated headers, odd encodings and bad signatures. Every response must be

- below 500 (the one exception: a synchronous call's own ``OperationTimeout``, 504),
- free of stack traces and Python exception names,
- in the protocol's shape (IMM JSON with RequestId/Code/Message; MNS error XML; EAS JSON),
- and a refused request must leave the row counts of the state tables unchanged.

Used by ``tests/unit/test_fuzz_front_doors.py`` (bounded, in CI) and
``scripts/fuzz_front_doors.py`` (as many examples as asked for).
"""

from __future__ import annotations

import hashlib
import json
from email.utils import formatdate
from typing import Any
from urllib.parse import quote, urlencode
from xml.etree import ElementTree

import httpx
from fastapi.testclient import TestClient
from hypothesis import strategies as st
from sqlalchemy import func, select

from pipeline import eas_auth
from pipeline.api import eas, rpc
from pipeline.client import ImmClient
from pipeline.models import Event, MnsMessage, MnsQueue, Project, Subscription, Task, Topic
from pipeline.notify.messages import MNS_XMLNS
from pipeline.settings import Settings
from tests.mns_http import MnsHttp

STATE_TABLES = (Task, Project, Event, MnsMessage, MnsQueue, Topic, Subscription)
LEAKS = ("Traceback", 'File "/', "RecursionError", "OverflowError", "AttributeError", "KeyError")
LEAKS += ("TypeError", "sqlalchemy", "psycopg", "sqlite3")


TEXT_CHARS = st.characters(exclude_categories=("Cs",))  # lone surrogates cannot be sent


def text(max_size: int) -> st.SearchStrategy[str]:
    return st.text(TEXT_CHARS, max_size=max_size)


def fuzz_settings(data_dir: Any, keys: str) -> Settings:
    """No workers (memory broker); synchronous calls give up fast."""
    return Settings(
        data_dir=data_dir,
        broker_url="memory://",
        access_keys=keys,
        diagnostics=True,
        predict_timeout_seconds=0.2,
        mns_poll_interval_seconds=0.05,
    )


# ---- values ---------------------------------------------------------------------------------

JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
ODD_NUMBERS = st.sampled_from(
    ["abc", "-1", "0", "1", "1e3", "0x10", "1.5", "", " 7 ", "9" * 40, "-" + "9" * 25, "١٢"]
) | st.integers(min_value=-(10**30), max_value=10**30).map(str)


def deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


ODD_JSON = st.sampled_from(
    [
        deep_json(100_000),
        deep_json(40),
        '{"a":' * 5000 + "1" + "}" * 5000,
        "NaN",
        "[Infinity]",
        '["\\u0000"]',
        '{"Start": [1], "End": {}}',
        "[1]",
        '[{"Key": 1}]',
        "{",
        '"\\ud800"',
        '"' + "x" * 1_100_000 + '"',
    ]
)
PARAM_VALUES = (
    text(max_size=40)
    | ODD_NUMBERS
    | ODD_JSON
    | JSON_VALUES.map(lambda v: json.dumps(v))
    | st.sampled_from(["oss://bkt/a.jpg", "oss://bkt/", "file:///etc/passwd", "http://127.0.0.1/"])
    | st.sampled_from(["fuzzp", "p-1", "\x00", "..", "%00", "a" * 300])
)
IMM_NAMES = sorted({n for spec in rpc.ACTIONS.values() for n in spec.params})


# ---- RPC ------------------------------------------------------------------------------------


@st.composite
def rpc_requests(draw: st.DrawFn) -> dict[str, Any]:
    action = draw(st.sampled_from(sorted(rpc.ACTIONS)) | text(max_size=12))
    known = sorted(rpc.ACTIONS[action].params) if action in rpc.ACTIONS else IMM_NAMES
    names = st.sampled_from(known or IMM_NAMES) | st.sampled_from(IMM_NAMES) | text(max_size=8)
    params = draw(st.dictionaries(names, PARAM_VALUES, max_size=6))
    if "ProjectName" in known and draw(st.booleans()):
        params["ProjectName"] = "fuzzp"
    long = any(len(v) > 4096 for v in params.values())  # too long for a URL: a form body
    return {
        "action": action,
        "params": params,
        "in_body": long or draw(st.booleans()),
        "signing": draw(st.sampled_from(["good", "good", "good", "bad", "none"])),
        "duplicate_action": draw(st.sampled_from([None, "DeleteProject", action])),
        "raw_body": draw(st.sampled_from([None, b"%FF%FE=%ZZ&&=", b"\xff\xfe\x00", b"a=" * 50]))
        if draw(st.booleans())
        else None,
    }


def send_rpc(imm: ImmClient, other: ImmClient, req: dict[str, Any]) -> httpx.Response:
    params = {k: v for k, v in req["params"].items()}
    body = urlencode(params).encode() if req["in_body"] else b""
    if req["raw_body"] is not None:
        body = req["raw_body"]
    query = {} if req["in_body"] else params
    extra = {"x-acs-action": req["action"], "x-acs-version": "2020-09-30"}
    if body:
        extra["content-type"] = "application/x-www-form-urlencoded"
    signer = imm if req["signing"] != "bad" else other
    headers = signer._headers("POST", "/", query, body, extra)
    if req["signing"] == "bad":
        headers["Authorization"] = headers["Authorization"].replace("AK2", "AK1")
    if req["signing"] == "none":
        headers.pop("Authorization", None)
    items = [(k, v.encode()) for k, v in headers.items()]  # non-ASCII values sent as UTF-8
    if req["duplicate_action"] is not None:
        items.insert(0, ("x-acs-action", req["duplicate_action"].encode()))
    url = "/?" + urlencode(query, quote_via=quote) if query else "/"
    return imm.http.post(url, content=body, headers=items)


def check_rpc(response: httpx.Response) -> None:
    check_common(response)
    data = response.json()
    assert isinstance(data, dict) and data.get("RequestId"), response.text[:300]
    if response.status_code >= 400:
        assert data.get("Code") and data.get("Message"), response.text[:300]


# ---- MNS ------------------------------------------------------------------------------------

MNS_ROUTES = [
    ("PUT", "/queues/{q}", "Queue"),
    ("DELETE", "/queues/{q}", None),
    ("GET", "/queues", None),
    ("GET", "/queues/{q}", None),
    ("POST", "/queues/{q}/messages", "Message"),
    ("GET", "/queues/{q}/messages", None),
    ("DELETE", "/queues/{q}/messages", None),
    ("PUT", "/queues/{q}/messages", None),
    ("PUT", "/topics/{q}", "Topic"),
    ("DELETE", "/topics/{q}", None),
    ("GET", "/topics", None),
    ("POST", "/topics/{q}/messages", "Message"),
    ("PUT", "/topics/{q}/subscriptions/{q}", "Subscription"),
    ("DELETE", "/topics/{q}/subscriptions/{q}", None),
    ("GET", "/topics/{q}/subscriptions", None),
]
MNS_FIELDS = [
    "MessageBody",
    "DelaySeconds",
    "Priority",
    "VisibilityTimeout",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "PollingWaitSeconds",
    "Endpoint",
    "NotifyStrategy",
    "NotifyContentFormat",
]
# Never a valid long wait: the fuzz must not sit in 30 s polls.
WAITS = st.sampled_from(["abc", "-1", "0", "1", "31", "9" * 30, "", "1.5", "%00"])
QUERY_NAMES = st.sampled_from(["waitseconds", "VisibilityTimeout", "ReceiptHandle", "x"])
DATES = st.sampled_from(
    [None, None, "Tue, 01 Dec 2026 19:40:00", "yesterday", "", "Mon, 01 Jan 1900 00:00:00 GMT"]
)


@st.composite
def mns_requests(draw: st.DrawFn) -> dict[str, Any]:
    method, path, root = draw(st.sampled_from(MNS_ROUTES))
    name = draw(st.sampled_from(["fq", "fq", "bad name", "a" * 300, "-x", "%2e%2e"]))
    field_values = ODD_NUMBERS | text(max_size=30) | st.sampled_from(["acs:mns:x:AK1:queues/fq"])
    fields = draw(st.dictionaries(st.sampled_from(MNS_FIELDS), field_values, max_size=4))
    if fields.get("PollingWaitSeconds", "").strip().isdigit():
        fields["PollingWaitSeconds"] = "0"
    query = draw(st.dictionaries(QUERY_NAMES, text(max_size=10) | ODD_NUMBERS, max_size=2))
    if "waitseconds" in query:
        query["waitseconds"] = draw(WAITS)
    body_kind = draw(st.sampled_from(["xml", "xml", "garbage", "dtd", "wrong-root", "empty"]))
    return {
        "method": method,
        "path": path.replace("{q}", name),
        "root": root or "Queue",
        "fields": fields,
        "query": query,
        "body_kind": body_kind,
        "date": draw(DATES),
        "signing": draw(st.sampled_from(["good", "good", "good", "bad", "none"])),
    }


def _mns_body(req: dict[str, Any]) -> bytes:
    kind, root = req["body_kind"], req["root"]
    children = "".join(
        f"<{k}>{_xml_text(v)}</{k}>" for k, v in req["fields"].items() if isinstance(v, str)
    )
    if kind == "garbage":
        return b"\xff\xfe<not xml" + children.encode()
    if kind == "dtd":
        return b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><Queue>&a;</Queue>'
    if kind == "empty":
        return b""
    tag = "Wrong" if kind == "wrong-root" else root
    return f'<?xml version="1.0"?><{tag} xmlns="{MNS_XMLNS}">{children}</{tag}>'.encode()


def _xml_text(value: str) -> str:
    return "".join(c for c in value if c.isprintable()).replace("&", "&amp;").replace("<", "&lt;")


def send_mns(http: TestClient, key: tuple[str, str], req: dict[str, Any]) -> httpx.Response:
    query = urlencode(req["query"], quote_via=quote)
    resource = req["path"] + (f"?{query}" if query else "")
    body = _mns_body(req)
    signer = MnsHttp(http, key if req["signing"] == "good" else (key[0], "wrong"))
    date = req["date"] or formatdate(usegmt=True)
    headers = signer.headers(req["method"], resource, body, date=date)
    if req["signing"] == "none":
        headers.pop("authorization")
    return http.request(req["method"], resource, content=body, headers=headers)


def check_mns(response: httpx.Response) -> None:
    check_common(response)
    if response.status_code < 400 and not response.content:
        return  # 201/204 without a body, as MNS answers
    root = ElementTree.fromstring(response.content)
    assert root.tag.startswith(f"{{{MNS_XMLNS}}}"), response.text[:300]
    if response.status_code >= 400:
        assert root.tag == f"{{{MNS_XMLNS}}}Error", response.text[:300]
        assert root.findtext(f"{{{MNS_XMLNS}}}Code"), response.text[:300]


# ---- EAS ------------------------------------------------------------------------------------


@st.composite
def eas_requests(draw: st.DrawFn) -> dict[str, Any]:
    service = draw(st.sampled_from(sorted(eas.SERVICES)) | st.text("abc-_~", min_size=1))
    body = draw(
        JSON_VALUES.map(lambda v: json.dumps({"input": v}).encode())
        | ODD_JSON.map(str.encode)
        | st.binary(max_size=64)
        | st.sampled_from(
            [
                b'{"input": {"url": "oss://bkt/a.jpg", "play_duration": 1e400}}',
                b'{"input": {"url": "oss://bkt/a.mp4", "play_duration": ' + b"9" * 40 + b"}}",
                b'{"input": {"mode": "Sleep", "seconds": ' + b"9" * 30 + b"}}",
                b'{"input": {"url": "file:///etc/passwd"}}',
                b'{"input": 5}',
            ]
        )
    )
    return {
        "service": service,
        "body": body,
        "signing": draw(st.sampled_from(["good", "good", "bad", "none", "stale"])),
    }


def send_eas(http: TestClient, key: tuple[str, str], req: dict[str, Any]) -> httpx.Response:
    body, service = req["body"], req["service"]
    md5 = hashlib.md5(body).hexdigest()
    date = "Mon, 01 Jan 2001 00:00:00 GMT" if req["signing"] == "stale" else formatdate(usegmt=True)
    text = eas_auth.string_to_sign(md5, "application/json", date, service)
    token = key[1] if req["signing"] != "bad" else "wrong"
    headers = {
        "authorization": "EAS " + eas_auth.sign(token, text),
        "content-md5": md5,
        "content-type": "application/json",
        "date": date,
    }
    if req["signing"] == "none":
        headers.pop("authorization")
    return http.post(f"/api/predict/{quote(service, safe='')}", content=body, headers=headers)


def check_eas(response: httpx.Response) -> None:
    check_common(response)
    data = response.json()
    assert isinstance(data, dict), response.text[:300]
    if response.status_code >= 400:
        assert data.get("Code") or data.get("success") is False, response.text[:300]


# ---- shared checks ---------------------------------------------------------------------------


def check_common(response: httpx.Response) -> None:
    status = response.status_code
    text = response.text
    timed_out = status == 504 and "OperationTimeout" in text
    assert status < 500 or timed_out, f"{status}: {text[:500]}"
    for leak in LEAKS:
        assert leak not in text, f"{leak!r} leaked: {text[:500]}"


def row_counts(http: TestClient) -> dict[str, int]:
    db = http.app.state.services.db  # type: ignore[attr-defined]
    with db.session() as s:
        return {
            t.__tablename__: int(s.scalar(select(func.count()).select_from(t)) or 0)
            for t in STATE_TABLES
        }


def check_nothing_written(before: dict[str, int], after: dict[str, int], status: int) -> None:
    """A refused request (4xx) writes nothing. (A 504 sync timeout leaves its cancelled task.)"""
    if 400 <= status < 500:
        assert before == after, f"refused with {status} but rows changed: {before} → {after}"


def seed(imm: ImmClient, mns: MnsHttp) -> None:
    """Resources the fuzz's requests can reach deeper code through."""
    imm.call("CreateProject", ProjectName="fuzzp")
    imm.call("CreateDataset", ProjectName="fuzzp", DatasetName="fuzzd")
    imm.call("CreateTopic", TopicName="fq")
    mns.create_queue("fq")
    mns.send("fq", "seeded")
