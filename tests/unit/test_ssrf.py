"""Server-side request forgery (issue 9 item 4): URL parser disagreement and DNS rebinding,
against the subscribe check, the webhook sender, input validation and the input fetcher.

Tests that could connect to a non-loopback address run in a network namespace that has only
``lo`` (``unshare -n``): a public address is then unreachable, nothing leaves the machine, and
a real receiver on 127.0.0.1 inside the namespace tells whether a request got through.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline import netpolicy
from pipeline.client import ClientError, ImmClient
from pipeline.errors import InvalidArgument

ROOT = Path(__file__).resolve().parents[2]
UNSHARE = ("unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh")
PUBLIC = "93.184.216.34"  # any global address: unreachable inside the namespace
TRICKS = (
    "http://127.0.0.1:{port}\\@" + PUBLIC + "/a",
    "http://127.0.0.1:{port}%2f@" + PUBLIC + "/a",
    "http://127.0.0.1:{port}%2F@" + PUBLIC + ":80/a",
    "http://x@127.0.0.1:{port}@" + PUBLIC + "/a",
)


def _isolated(snippet: str, tmp_path: Path) -> dict[str, Any]:
    """Run ``snippet`` (which prints one JSON line) in a namespace with only loopback."""
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed for the network-namespace tests")
    script = tmp_path / "isolated.py"
    script.write_text(RECEIVER + snippet)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMP_DIR": str(tmp_path)}
    done = subprocess.run(
        [*UNSHARE, sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


RECEIVER = """
import json, os, socket, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HITS = []

class Handler(BaseHTTPRequestHandler):
    def _hit(self):
        HITS.append(f"{self.command} {self.path}")
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    do_GET = do_POST = _hit
    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
PORT = server.server_address[1]
TMP = Path(os.environ["TMP_DIR"])

def dispatcher():
    from pipeline import migrate
    from pipeline.db import Database
    from pipeline.notify.dispatcher import Dispatcher
    from pipeline.settings import Settings
    (TMP / "data").mkdir(exist_ok=True)
    settings = Settings(data_dir=TMP / "data", http_allow_private=False)
    migrate.upgrade(settings.db_url)
    return Dispatcher(settings, Database.from_settings(settings))

def post(d, endpoint):
    from datetime import datetime, UTC
    from types import SimpleNamespace
    from pipeline.notify import webhooks
    from pipeline.notify.dispatcher import Due
    due = Due(1, 0, datetime.now(UTC), SimpleNamespace(id="ev-1"), "t", "s", endpoint,
              "JSON", webhooks.new_secret(), {})
    return d._post(due, "msg-1", b"{}", "application/json")

def fetch(url):
    from pipeline.errors import ImmError
    from pipeline.storage import fetch_http
    try:
        fetch_http(url, TMP / "fetched", max_bytes=1000, timeout=5, allow_private=False)
        return "fetched"
    except ImmError as exc:
        return f"{exc.code}: {exc.message}"
"""


# --- the parser ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1\\@8.8.8.8/a",
        "http://127.0.0.1%2f@8.8.8.8/a",
        "http://user:pw@8.8.8.8/",
        "http://8.8.8.8 /",
        "http://8.8.8.8/a b",
        "http://8.8.8.8/\x00",
        "http://\u0435xample.com/",  # Cyrillic e: IDNA-encode it (xn--...) instead
        "http://8.8.8.8:0/",
        "http://8.8.8.8:65536/",
        "http://8.8.8.8:+80/",
        "http://8.8.8.8:/",
        "http://0x7f.1/",
        "http://2130706433/",
        "http://017.0.0.1/",
        "http://127.1/",
        "http://[::1%25lo]/",
        "http://[127.0.0.1]/",
        "http://exa_mple.com/",
        "http://example.com./",
        "http:///path",
        "ftp://8.8.8.8/",
        "file:///etc/passwd",
        "http://8.8.8.8" + "/a" * 5000,
    ],
)
def test_ambiguous_urls_are_refused_by_the_one_parser(url: str) -> None:
    with pytest.raises(InvalidArgument):
        netpolicy.parse_http_url(url)


def test_plain_urls_parse_to_what_is_connected() -> None:
    target = netpolicy.parse_http_url("HTTPS://Example.COM:8443/a/b?x=1&y=%2F#frag")
    assert (target.scheme, target.host, target.port) == ("https", "example.com", 8443)
    assert target.target == "/a/b?x=1&y=%2F" and target.host_header == "example.com:8443"
    v6 = netpolicy.parse_http_url("http://[2001:db8::1]")
    assert (v6.host, v6.port, v6.target, v6.host_header) == (
        "2001:db8::1",
        80,
        "/",
        "[2001:db8::1]",
    )
    assert netpolicy.parse_http_url("http://xn--e1afmkfd.xn--p1ai/").host == "xn--e1afmkfd.xn--p1ai"


# --- validation at the API (only literals are resolved: no traffic) ---------------------------


def test_subscribe_and_input_checks_refuse_parser_tricks(imm: ImmClient) -> None:
    """Attack: urlsplit saw the public host after '\\@' or '%2f@', urllib3 the loopback one."""
    imm.call("CreateProject", ProjectName="p")
    imm.call("CreateTopic", TopicName="t")
    for trick in TRICKS:
        url = trick.format(port=9)
        with pytest.raises(ClientError) as info:
            imm.call("Subscribe", TopicName="t", SubscriptionName="s", Endpoint=url)
        assert info.value.code == "InvalidEndpoint", url
        with pytest.raises(ClientError) as info:
            imm.call(
                "CreateFileCompressionTask",
                ProjectName="p",
                TargetURI="oss://bkt/x.zip",
                Sources=[{"URI": url}],
            )
        assert info.value.code.startswith("Invalid"), url
    assert imm.call("ListSubscriptions", TopicName="t")["Subscriptions"] == []
    assert imm.call("ListTasks", ProjectName="p")["Tasks"] == []


# --- sending and fetching, inside a namespace with only loopback -------------------------------


def test_parser_tricks_never_reach_a_loopback_receiver(tmp_path: Path) -> None:
    """Attack: a webhook (or an input) stored with a trick URL made urllib3 deliver to
    127.0.0.1 while OPENIMM_HTTP_ALLOW_PRIVATE is off."""
    snippet = f"""
tricks = {list(TRICKS)!r}
d = dispatcher()
outcomes = [post(d, t.format(port=PORT)) for t in tricks]
fetched = [fetch(t.format(port=PORT)) for t in tricks]
print(json.dumps({{"hits": HITS, "outcomes": outcomes, "fetched": fetched}}))
"""
    result = _isolated(snippet, tmp_path)
    assert result["hits"] == []
    assert all(status is None for status, _error in result["outcomes"]), result
    assert all(f.startswith("Invalid") for f in result["fetched"]), result


def test_dns_rebinding_is_pinned_to_the_checked_address(tmp_path: Path) -> None:
    """Attack: a name resolving to a public address at check time and to 127.0.0.1 at
    connect time delivered to loopback. The connection must go to the checked address."""
    snippet = f"""
real = socket.getaddrinfo
answers = {{"n": 0}}

def rebinding(host, *args, **kwargs):
    if host != "rebind.test":
        return real(host, *args, **kwargs)
    answers["n"] += 1
    address = "{PUBLIC}" if answers["n"] % 2 == 1 else "127.0.0.1"
    return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, PORT))]

socket.getaddrinfo = rebinding
d = dispatcher()
outcomes = [post(d, f"http://rebind.test:{{PORT}}/hook") for _ in range(2)]
answers["n"] = 0
fetched = fetch(f"http://rebind.test:{{PORT}}/input")
print(json.dumps({{"hits": HITS, "outcomes": outcomes, "fetched": fetched}}))
"""
    result = _isolated(snippet, tmp_path)
    assert result["hits"] == [], result
    assert all(status is None for status, _error in result["outcomes"]), result
    assert result["fetched"].startswith("Invalid"), result


def test_a_public_looking_name_that_connects_to_loopback_sends_nothing(tmp_path: Path) -> None:
    """The peer check: even if resolution were fooled, no request is written to a private
    peer (fetch_http used to read the response first and refuse after)."""
    snippet = """
from pipeline import netpolicy
netpolicy.resolve = lambda host, port, allow: ["127.0.0.1"]  # "checked", but loopback
d = dispatcher()
outcome = post(d, f"http://public.test:{PORT}/hook")
fetched = fetch(f"http://public.test:{PORT}/input")
print(json.dumps({"hits": HITS, "outcome": outcome, "fetched": fetched}))
"""
    result = _isolated(snippet, tmp_path)
    assert result["hits"] == [], result
    assert result["outcome"][0] is None and "private address" in result["outcome"][1]
    assert result["fetched"].startswith("InvalidURI") or "private" in result["fetched"], result
