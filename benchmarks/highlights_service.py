"""Video highlights through the EAS service end to end: time ÷ clip duration for 5 s, 10 s
and 60 s clips, measured as a user sees it — the ``eas-prediction`` client calling real
``openimm`` processes — against ``workers.processors.highlights`` called in-process on the same clip
(the work itself, no service around it) in the same run.

    nice -n 10 .venv/bin/python benchmarks/highlights_service.py [--repeats 5]
        [--stacks serve,split,distributed]

Stacks (``--stacks``, comma-separated; default ``serve``):
- ``serve``: ``openimm serve``, the README's embedded server (SQLite, filesystem broker, its
  worker pools and dispatcher thread);
- ``split``: ``openimm api`` + ``openimm worker -Q highlight -c 1`` on the embedded SQLite and
  filesystem broker (no dispatcher: the API learns that a task ended by re-reading it);
- ``distributed``: PostgreSQL + Redis (started from installed binaries, tests/realservices.py),
  ``openimm api``, ``openimm worker -Q highlight -c 1`` and ``openimm dispatcher``.

Each clip length gets a freshly started stack, waited for until its pools are ready and
warmed: the first call is the first job of its pool process, the later calls the steady
state. Every call is split into phases from its task row (``start_time`` = row written,
``end_time`` = result written), the worker log (Celery's "received" line) and the client's
clock: accept (request → task row), queued (row → the pool has the message: broker polling),
work (received → result written: child hand-over, probe, decode, scoring, cut, store) and
wake (result → the client has the response: the API noticing, HTTP).

The code measured is whatever ``pipeline``/``workers`` import: run it with
``PYTHONPATH=<other worktree>`` to measure another tree (its stacks inherit the path).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

# Appended, not prepended: a PYTHONPATH naming another worktree wins (see the docstring).
sys.path.append(str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")

from eas_prediction import PredictClient, StringRequest
from sqlalchemy import select

from pipeline.db import Database
from pipeline.models import Task
from pipeline.settings import Settings
from tests.e2e.stack import KEY_SECRET, Stack, free_port, launch, make_env, wait_until
from tests.mediagen import planted_video
from workers.processors import highlights

LENGTHS = (5, 10, 60)
STARTUP_S = 600  # a pool preloading its models on a loaded 2-core machine
PHASES = ("accept", "queued", "work", "wake")


@dataclass
class Call:
    total: float
    phases: dict[str, float]


def clips(folder: Path) -> dict[int, Path]:
    """One planted clip per length (generated once per run)."""
    out = {}
    folder.mkdir(parents=True, exist_ok=True)
    for seconds in LENGTHS:
        event = (seconds // 3, seconds // 3 + max(2, seconds // 4))
        out[seconds] = planted_video(folder / f"clip{seconds}.mp4", seconds=seconds, event=event)
    return out


def put(stack: Stack, clip: Path) -> str:
    """Drop ``clip`` into the stack's embedded object store; its ``oss://`` URI."""
    folder = stack.data_dir / "oss" / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(clip, folder / clip.name)
    return f"oss://bench/{clip.name}"


def predict(stack: Stack, url: str) -> tuple[float, float, float]:
    """One call: (wall clock before, after, seconds spent)."""
    client = PredictClient(f"http://{stack.endpoint}", "video_highlight")
    client.set_token(KEY_SECRET)
    client.set_retry_count(1)
    client.set_timeout(600_000)
    client.init()
    body = json.dumps({"input": {"url": url}})
    before, started = time.time(), time.perf_counter()
    reply = json.loads(client.predict(StringRequest(body)).response_data)
    spent = time.perf_counter() - started
    if not reply.get("success"):
        raise SystemExit(f"predict failed: {reply}")
    return before, time.time(), spent


def phases(db: Database, log: str, before: float, after: float) -> dict[str, float]:
    """The call's phases: its task row (the newest Highlight row) and the worker log's
    "received" line for it (the pool's local-time clock, milliseconds)."""
    with db.session() as s:
        rows = s.scalars(select(Task).where(Task.task_type == "Highlight")).all()
        row = max(rows, key=lambda t: t.start_time)
        task_id, created = row.id, row.start_time.timestamp()
        ended = row.end_time.timestamp() if row.end_time else after
    found = re.search(rf"\[([0-9-]+ [0-9:,]+): \w+/\w+\] Task \S+\[{task_id}\] received", log)
    if found is None:
        raise SystemExit(f"no 'received' line for {task_id} in the worker log")
    received = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return {
        "accept": created - before,
        "queued": received - created,
        "work": ended - received,
        "wake": after - ended,
    }


def in_process(path: Path, tmp: Path) -> float:
    settings = Settings()
    started = time.perf_counter()
    timeline = highlights.analyse(path, max_seconds=None, settings=settings)
    window = highlights.best_window(timeline, 5.0)
    highlights.cut(path, tmp / "cut.mp4", window, "mp4", whole=highlights.covers(window, timeline))
    return time.perf_counter() - started


# ---- stacks ---------------------------------------------------------------------------------


def _warmed(stack: Stack, name: str, pools: int, child_warmers: int) -> Callable[[], bool]:
    """Every pool ready and, where a pool's queues warm something in each process (asr: the
    Whisper engine, in a background thread), every process done with it."""

    def check() -> bool:
        text = stack.log(name)
        return text.count(" ready.") >= pools and text.count("process warmed") >= child_warmers

    return check


@contextmanager
def serve_stack(data_dir: Path) -> Iterator[Stack]:
    port = free_port()
    stack = Stack(data_dir=data_dir, env=make_env(data_dir, port), port=port)
    data_dir.mkdir(parents=True, exist_ok=True)
    log = (data_dir / "serve.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "serve"],
        env=stack.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until(stack._healthy, STARTUP_S, what="openimm serve /healthz")
        # Two pools (prefork for all but the image queue, threads for it); the prefork pool's two
        # processes load the Whisper engine in the background.
        wait_until(_warmed(stack, "serve", 2, 2), STARTUP_S, interval=0.5, what="serve's pools")
        yield stack
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@contextmanager
def split_stack(data_dir: Path, database_url: str = "", broker_url: str = "") -> Iterator[Stack]:
    stack = launch(data_dir, database_url=database_url, broker_url=broker_url, worker=False)
    try:
        if database_url:
            stack.start_dispatcher()
        stack.start_worker(queues="highlight", concurrency=1)
        wait_until(_warmed(stack, "worker", 1, 0), STARTUP_S, interval=0.5, what="the pool")
        yield stack
    finally:
        stack.stop_all()


@contextmanager
def distributed_stack(data_dir: Path, services: ExitStack) -> Iterator[Stack]:
    from tests.realservices import start_postgres, start_redis

    if not hasattr(distributed_stack, "servers"):
        pg, redis = start_postgres(), start_redis()
        services.callback(pg.stop)
        services.callback(redis.stop)
        distributed_stack.servers = (pg, redis, iter(range(1, 100)))  # type: ignore[attr-defined]
    pg, redis, counter = distributed_stack.servers  # type: ignore[attr-defined]
    n = next(counter)
    url = pg.create_database(f"hl_bench_{n}")
    with split_stack(data_dir, url, redis.url(n % 16)) as stack:
        yield stack


def measure(
    kind: str, data_dir: Path, repeats: int, files: dict[int, Path], services: ExitStack
) -> dict[int, list[Call]]:
    """Per clip length, on a freshly started stack each: the first call, then the others."""
    out = {}
    for seconds in LENGTHS:
        folder = data_dir / f"{kind}-{seconds}"
        if kind == "serve":
            started = serve_stack(folder)
        elif kind == "split":
            started = split_stack(folder)
        else:
            started = distributed_stack(folder, services)
        with started as stack:
            settings = Settings(data_dir=stack.data_dir, database_url=_db_url(stack))
            db = Database(settings.db_url)
            url = put(stack, files[seconds])
            calls = []
            for _ in range(repeats + 1):
                before, after, spent = predict(stack, url)
                log = stack.log("serve" if kind == "serve" else "worker")
                calls.append(Call(spent, phases(db, log, before, after)))
            db.dispose()
            out[seconds] = calls
    return out


def _db_url(stack: Stack) -> str:
    return stack.env.get("OPENIMM_DATABASE_URL", "")


# ---- report ---------------------------------------------------------------------------------


def report(kind: str, results: dict[int, list[Call]], work: dict[int, float]) -> None:
    print(f"\n{kind}: time / clip duration (first call, later median); x = ÷ in-process")
    print(f"{'clip s':>7}{'first':>8}{'later':>8}{'in-proc':>9}{'first x':>9}{'later x':>9}")
    for seconds, calls in results.items():
        first, later = calls[0].total, statistics.median(c.total for c in calls[1:])
        raw = work[seconds]
        print(
            f"{seconds:>7}{first / seconds:>8.3f}{later / seconds:>8.3f}{raw / seconds:>9.3f}"
            f"{first / raw:>9.2f}{later / raw:>9.2f}"
        )
    print(f"  phases, s (first call | later median): {', '.join(PHASES)}")
    for seconds, calls in results.items():
        first = " ".join(f"{calls[0].phases[p]:.2f}" for p in PHASES)
        later = " ".join(f"{statistics.median(c.phases[p] for c in calls[1:]):.2f}" for p in PHASES)
        print(f"{seconds:>7} s clip: {first} | {later}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=5, help="calls after the first")
    parser.add_argument("--stacks", default="serve", help="serve,split,distributed")
    args = parser.parse_args()
    kinds = [k for k in args.stacks.split(",") if k]
    if not set(kinds) <= {"serve", "split", "distributed"} or args.repeats < 1:
        parser.error("--stacks takes serve, split, distributed; --repeats at least 1")
    import pipeline

    print(f"code under test: {Path(pipeline.__file__).parents[1]}; {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="hl-bench-") as name, ExitStack() as services:
        tmp = Path(name)
        files = clips(tmp / "clips")
        in_process(files[5], tmp)  # warm this process's imports and models
        work = {s: min(in_process(path, tmp) for _ in range(2)) for s, path in files.items()}
        for kind in kinds:
            report(kind, measure(kind, tmp, args.repeats, files, services), work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
