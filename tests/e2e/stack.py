"""Run real ``openimm`` processes (API + worker pools) for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from alibabacloud_imm20200930.client import Client as ImmSdk
from alibabacloud_tea_openapi.models import Config

KEY_ID, KEY_SECRET = "LTAIe2eKey", "e2e-secret"
ACCOUNT_ID = "1413397765600042"  # the third OPENIMM_ACCESS_KEYS field: TopicOwner, OwnerId
METRICS_TOKEN = "e2e-metrics-token"
STARTUP_TIMEOUT = 180.0  # generous: a worker pool preloads its models before it is ready


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@dataclass
class Stack:
    data_dir: Path
    env: dict[str, str]
    port: int
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: Path | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log_dir = self.logs or self.data_dir
        out = (log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", *args],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def run(self, *args: str) -> None:
        subprocess.run(
            [sys.executable, "-m", "pipeline.cli", *args],
            env=self.env,
            check=True,
            capture_output=True,
        )

    def start_api(self) -> None:
        self._start("api", "api")
        wait_until(self._healthy, STARTUP_TIMEOUT, what="API /healthz")

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"http://{self.endpoint}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def start_worker(
        self, name: str = "worker", queues: str = "all", concurrency: int = 2, pool: str = ""
    ) -> subprocess.Popen[bytes]:
        """``openimm worker`` (supervised) for ``queues``; ``pool`` e.g. ``threads`` for the
        batching image pool (default: the settings' pool)."""
        args = ["-Q", queues, "-c", str(concurrency), "-n", f"{name}@%h"]
        proc = self._start(name, "worker", *args, *(["--pool", pool] if pool else []))
        wait_until(lambda: "ready" in self.log(name), STARTUP_TIMEOUT, what=f"{name} ready")
        return proc

    def start_dispatcher(self, name: str = "dispatcher") -> subprocess.Popen[bytes]:
        proc = self._start(name, "dispatcher")
        wait_until(
            lambda: "dispatcher running" in self.log(name), STARTUP_TIMEOUT, what=f"{name} running"
        )
        return proc

    def log(self, name: str) -> str:
        path = (self.logs or self.data_dir) / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


def make_env(data_dir: Path, port: int, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENIMM_")}
    env.update(
        {
            "OPENIMM_DATA_DIR": str(data_dir),
            "OPENIMM_PORT": str(port),
            "OPENIMM_HOST": "127.0.0.1",
            "OPENIMM_ACCESS_KEYS": f"{KEY_ID}:{KEY_SECRET}:{ACCOUNT_ID}",
            "OPENIMM_DIAGNOSTICS": "1",
            "OPENIMM_METRICS_TOKEN": METRICS_TOKEN,
        }
    )
    env.update({f"OPENIMM_{k.upper()}": v for k, v in settings.items()})
    return env


def launch(
    data_dir: Path,
    *,
    database_url: str,
    broker_url: str,
    worker: bool = True,
    dispatcher: bool = False,
    **settings: str,
) -> Stack:
    """Migrate, then start the API (and optionally a worker pool and a dispatcher)."""
    port = free_port()
    env = make_env(data_dir, port, database_url=database_url, broker_url=broker_url, **settings)
    stack = Stack(data_dir=data_dir, env=env, port=port)
    stack.run("migrate")
    stack.start_api()
    if worker:
        stack.start_worker()
    if dispatcher:
        stack.start_dispatcher()
    return stack


def sdk_call(sdk: ImmSdk, action: str, query: dict[str, str]) -> dict[str, Any]:
    """One RPC call through the official SDK's generic ``call_api`` (same signer and transport
    as its typed methods), for what the typed models lack: extension actions, ``ClientToken``."""
    from alibabacloud_tea_openapi import utils_models as om
    from darabonba.runtime import RuntimeOptions

    spec = om.Params(
        action=action,
        version="2020-09-30",
        protocol="HTTP",
        pathname="/",
        method="POST",
        auth_type="AK",
        style="RPC",
        req_body_type="formData",
        body_type="json",
    )
    response = sdk.call_api(spec, om.OpenApiRequest(query=query), RuntimeOptions())
    return dict(response["body"])


def imm_sdk(endpoint: str, secret: str = KEY_SECRET) -> ImmSdk:
    """The official alibabacloud-imm20200930 client pointed at an openimm endpoint."""
    return ImmSdk(
        Config(
            access_key_id=KEY_ID,
            access_key_secret=secret,
            endpoint=endpoint,
            protocol="http",
            read_timeout=60000,
            connect_timeout=5000,
        )
    )
