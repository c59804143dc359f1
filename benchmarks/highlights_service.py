"""Video highlights through the EAS service end to end: time ÷ clip duration for 5 s, 10 s
and 60 s clips, measured as a user sees it — the ``eas-prediction`` client calling a real
``openimm api`` with a real ``openimm worker`` pool (embedded SQLite + filesystem broker, no
servers), against ``workers.processors.highlights`` called in-process on the same clip (the work
itself, no service around it) in the same run.

    nice -n 10 .venv/bin/python benchmarks/highlights_service.py [--repeats 5] [--no-compare]

Each clip length gets a freshly started stack, so its first call is the first job of that
pool process (what the 8-10 s clips of the report paid); the later calls are the steady
state. Unless ``--no-compare``, everything runs twice: on stacks started with
``OPENIMM_WARM_WORKERS=0`` (the behaviour before: no warm-up) and with the defaults, so the
before/after figures come from one run on one machine. (The API's faster re-reading of a waiting
task, 0.25 s → 0.05 s cap, is in both.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")

from eas_prediction import PredictClient, StringRequest  # noqa: E402

from pipeline.settings import Settings  # noqa: E402
from tests.e2e.stack import KEY_SECRET, Stack, launch, wait_until  # noqa: E402
from tests.mediagen import planted_video  # noqa: E402
from workers.processors import highlights  # noqa: E402

LENGTHS = (5, 10, 60)


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


def predict(stack: Stack, url: str) -> float:
    client = PredictClient(f"http://{stack.endpoint}", "video_highlight")
    client.set_token(KEY_SECRET)
    client.set_retry_count(1)
    client.set_timeout(600_000)
    client.init()
    body = json.dumps({"input": {"url": url}})
    started = time.perf_counter()
    reply = json.loads(client.predict(StringRequest(body)).response_data)
    spent = time.perf_counter() - started
    if not reply.get("success"):
        raise SystemExit(f"predict failed: {reply}")
    return spent


def in_process(path: Path, tmp: Path) -> float:
    settings = Settings()
    started = time.perf_counter()
    timeline = highlights.analyse(path, max_seconds=None, settings=settings)
    window = highlights.best_window(timeline, 5.0)
    highlights.cut(path, tmp / "cut.mp4", window, "mp4", whole=highlights.covers(window, timeline))
    return time.perf_counter() - started


@contextmanager
def stack_at(data_dir: Path, warm: bool) -> Iterator[Stack]:
    stack = launch(
        data_dir,
        database_url="",
        broker_url="",
        worker=False,
        warm_workers="1" if warm else "0",
    )
    try:
        stack.start_worker(queues="highlight", concurrency=1)
        if warm:  # a server started a while ago: its pool processes are warm
            wait_until(lambda: "preloaded" in stack.log("worker"), 300, what="warm-up")
        yield stack
    finally:
        stack.stop_all()


def measure(
    data_dir: Path, warm: bool, repeats: int, files: dict[int, Path]
) -> dict[int, tuple[float, list[float]]]:
    """Per clip length, on a freshly started pool each: (first call s, [later calls s])."""
    out = {}
    for seconds in LENGTHS:
        with stack_at(data_dir / f"len{seconds}", warm) as stack:
            url = put(stack, files[seconds])
            cold = predict(stack, url)
            out[seconds] = (cold, [predict(stack, url) for _ in range(repeats)])
    return out


def report(label: str, results: dict[int, tuple[float, list[float]]], work: dict[int, float]):  # type: ignore[no-untyped-def]
    print(f"\n{label}")
    print(f"{'clip s':>7}{'first call':>12}{'later median':>14}{'in-process':>12}")
    for seconds, (cold, warm) in results.items():
        median = statistics.median(warm)
        print(
            f"{seconds:>7}{cold / seconds:>12.3f}{median / seconds:>14.3f}"
            f"{work[seconds] / seconds:>12.3f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-compare", action="store_true", help="skip the warm-up-off stack")
    args = parser.parse_args()
    print(f"time / clip duration (lower is better), {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="hl-bench-") as name:
        tmp = Path(name)
        files = clips(tmp / "clips")
        in_process(files[5], tmp)  # warm this process's imports and models
        work = {s: min(in_process(path, tmp) for _ in range(2)) for s, path in files.items()}
        modes = [True] if args.no_compare else [False, True]
        for warm in modes:
            label = "after: warm workers" if warm else "before: OPENIMM_WARM_WORKERS=0"
            report(label, measure(tmp / f"run-{warm}", warm, args.repeats, files), work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
