"""``openimm demo``: the README's first command. Starts the embedded server (API + real
Celery worker processes), drops files into the local object store, runs a FileCompression
task through the queue, polls GetTask to Succeeded, shows the zip, and stops the server."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import zipfile

import httpx

from pipeline.client import ClientError, ImmClient
from pipeline.credentials import client_key
from pipeline.settings import Settings

STARTUP_TIMEOUT = 60.0
TASK_TIMEOUT = 120.0
POLL_INTERVAL = 0.2
DEMO_PROJECT, DEMO_BUCKET = "demo", "demo-bucket"


def run_demo(settings: Settings) -> int:
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C so the server below is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    server = _start_server(settings)
    try:
        _wait_healthy(settings, server)
        client = ImmClient(f"{settings.host}:{settings.port}", client_key(settings))
        return _run(settings, client)
    finally:
        server.terminate()
        server.wait(60)


def _start_server(settings: Settings) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "OPENIMM_DATA_DIR": str(settings.resolved_data_dir),
        "OPENIMM_HOST": settings.host,
        "OPENIMM_PORT": str(settings.port),
    }
    print(f"starting embedded openimm (data in {settings.resolved_data_dir}) …")
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "serve"], env=env)


def _wait_healthy(settings: Settings, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    url = f"http://{settings.host}:{settings.port}/healthz"
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(
                f"server exited with {server.returncode}; is port "
                f"{settings.port} free? (set OPENIMM_PORT)"
            )
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(POLL_INTERVAL)
    raise SystemExit("server did not become healthy in time")


def _seed_files(settings: Settings) -> list[str]:
    # Files dropped into $OPENIMM_DATA_DIR/oss/<bucket>/ are objects: no upload needed.
    folder = settings.oss_root / DEMO_BUCKET / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(3):
        path = folder / f"note-{i}.txt"
        path.write_text(f"openimm demo file {i}\n" * (i + 1))
        names.append(f"photos/{path.name}")
    return names


def _run(settings: Settings, client: ImmClient) -> int:
    names = _seed_files(settings)
    try:
        client.call("CreateProject", ProjectName=DEMO_PROJECT, Description="openimm demo")
    except ClientError as exc:
        if exc.code != "ResourceAlreadyExists":
            raise
    target = f"oss://{DEMO_BUCKET}/out/demo-{int(time.time())}.zip"
    created = client.call(
        "CreateFileCompressionTask",
        ProjectName=DEMO_PROJECT,
        Sources=[{"URI": f"oss://{DEMO_BUCKET}/photos/"}],
        TargetURI=target,
        UserData="hello from openimm demo",
    )
    task_id = created["TaskId"]
    print(f"created {task_id}; polling GetTask …")
    task = _poll(client, task_id)
    print(f"{task_id}: {task['Status']} {task['Code']} {task['Message']}".rstrip())
    if task["Status"] != "Succeeded":
        return 1
    listing = zipfile.ZipFile(io.BytesIO(client.get_object(target))).namelist()
    print(f"{target} holds {sorted(listing)}")
    return 0 if sorted(listing) == sorted(names) else 1


def _poll(client: ImmClient, task_id: str) -> dict[str, object]:
    deadline = time.monotonic() + TASK_TIMEOUT
    while time.monotonic() < deadline:
        task = client.call(
            "GetTask", ProjectName=DEMO_PROJECT, TaskType="FileCompression", TaskId=task_id
        )
        if task["Status"] != "Running":
            return task
        time.sleep(POLL_INTERVAL)
    raise SystemExit(f"{task_id} did not finish within {TASK_TIMEOUT} s")
