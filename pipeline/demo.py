"""``openimm demo``: the README's first command. Starts the embedded server (API + real
Celery worker processes, models loaded once per pool), then runs every job family on media
that ships with openimm or that the demo makes (``pipeline.demo_media``): people albums,
a highlight, a transcript, super-resolution, image classification, and the tasks'
notifications received on an MNS queue. Prints a table (job, status, time, output) and the
console URL; writes the raw results to ``$OPENIMM_DATA_DIR/demo-report.json``.

On a terminal the server keeps running afterwards so the console can be looked at (Ctrl-C
stops it); otherwise, or with ``--exit``, it stops at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import httpx

from pipeline import accounts, demo_media, demo_steps
from pipeline.client import ImmClient
from pipeline.credentials import client_key
from pipeline.demo_steps import DemoContext, StepResult
from pipeline.settings import Settings

STARTUP_TIMEOUT = 120.0
POLL_INTERVAL = 0.2
REPORT_NAME, SERVER_LOG = "demo-report.json", "demo-server.log"
JOB_STEPS: tuple[Callable[[DemoContext], StepResult], ...] = (
    demo_steps.people,
    demo_steps.highlight,
    demo_steps.transcript,
    demo_steps.super_resolution,
    demo_steps.classification,
)


def run_demo(settings: Settings, *, stay: bool | None = None) -> int:
    """Run the demo; ``stay`` (default: when stdout is a terminal) keeps the server up."""
    demo_media.check_tools()
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C so the server below is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    started = time.monotonic()
    server = _start_server(settings)
    try:
        _wait_healthy(settings, server)
        code = _run(settings, started)
        if stay if stay is not None else sys.stdout.isatty():
            _serve_until_interrupted(settings, server)
        return code
    except KeyboardInterrupt:
        return 130
    finally:
        server.terminate()
        server.wait(60)


def console_url(settings: Settings) -> str:
    return f"http://{settings.host}:{settings.port}/console"


def _start_server(settings: Settings) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "OPENIMM_DATA_DIR": str(settings.resolved_data_dir),
        "OPENIMM_HOST": settings.host,
        "OPENIMM_PORT": str(settings.port),
    }
    print(f"starting embedded openimm (data in {settings.resolved_data_dir}) …", flush=True)
    settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    # The server's log goes to a file so that the demo's own output stays readable.
    with (settings.resolved_data_dir / SERVER_LOG).open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _wait_healthy(settings: Settings, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    url = f"http://{settings.host}:{settings.port}/healthz"
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(
                f"server exited with {server.returncode}; is port {settings.port} free? "
                f"(set OPENIMM_PORT; log in {settings.resolved_data_dir / 'demo-server.log'})"
            )
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(POLL_INTERVAL)
    raise SystemExit("server did not become healthy in time")


def _run(settings: Settings, started: float) -> int:
    endpoint = f"http://{settings.host}:{settings.port}"
    key = client_key(settings)
    if key is None:
        raise SystemExit("openimm demo needs an AccessKey pair (it does not run in dev mode)")
    with tempfile.TemporaryDirectory(prefix="openimm-demo-") as workdir:
        ctx = DemoContext(lambda: ImmClient(endpoint, key), settings.oss_root, Path(workdir))
        account = accounts.load(settings).of(key[0])
        demo_steps.setup_notifications(ctx, endpoint, key, account)
        print("running people albums, highlight, transcript, super-resolution and image")
        print("classification at once (the worker pools load their models once) …", flush=True)
        with ThreadPoolExecutor(len(JOB_STEPS)) as pool:
            results = list(pool.map(lambda step: step(ctx), JOB_STEPS))
    ids = {str(r.task["TaskId"]) for r in results[1:] if r.task.get("TaskId")}
    results.append(demo_steps.notifications(endpoint, key, ids))
    _print_table(results, settings, time.monotonic() - started)
    _write_report(settings, results)
    return 0 if all(r.status == "Succeeded" for r in results) else 1


def _print_table(results: list[StepResult], settings: Settings, total: float) -> None:
    rows = [("JOB", "STATUS", "TIME", "OUTPUT")]
    rows += [(r.job, r.status, f"{r.seconds:.1f} s", r.output) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    print()
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[3]]))
    print()
    for r in results:
        print(f"{r.job}: {r.detail}")
    print(
        f"\nall done in {total:.0f} s (server start included). oss://{demo_steps.BUCKET}/… is "
        f"{settings.oss_root / demo_steps.BUCKET}/…"
    )
    print(
        "Eileen Collins' album is made of one NASA photo and two copies the demo derived "
        "from it (mirrored, brighter and larger); the other photos are distinct originals."
    )
    keys = settings.resolved_data_dir / "access_keys"
    print(f"console: {console_url(settings)}  (sign in with the AccessKey pair in {keys})")


def _write_report(settings: Settings, results: list[StepResult]) -> None:
    path = settings.resolved_data_dir / REPORT_NAME
    path.write_text(json.dumps([asdict(r) for r in results], indent=2, default=str))


def _serve_until_interrupted(settings: Settings, server: subprocess.Popen[bytes]) -> None:
    print(f"the server keeps running at {console_url(settings)}; Ctrl-C stops it", flush=True)
    try:
        server.wait()
    except KeyboardInterrupt:
        print("\nstopping the server …", flush=True)
