"""Spine benchmark: N small tasks through the full openimm path (signed API create → Celery on
Redis → worker → PostgreSQL terminal state) against a raw Celery no-op round trip on the same
Redis broker, in the same run, with the same worker concurrency.

    .venv/bin/python benchmarks/spine_throughput.py [--tasks 500] [--rate 50] [--concurrency 2]

Throughput: N tasks submitted as fast as the client can, first submit → last completion.
Latency: tasks submitted at a fixed rate (default 50/s); create → Succeeded per task, from the
task row's StartTime/EndTime (raw Celery: send → task body done).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.client import ImmClient  # noqa: E402
from tests.e2e.stack import KEY_ID, KEY_SECRET, Stack, free_port, make_env, wait_until  # noqa: E402
from tests.realservices import start_postgres, start_redis  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_openimm(
    stack: Stack, engine: object, n: int, rate: float | None
) -> tuple[float, list[float]]:
    client = ImmClient(stack.endpoint, (KEY_ID, KEY_SECRET))
    project = f"bench{int(time.time() * 1000)}"
    client.call("CreateProject", ProjectName=project)

    def create(_: int) -> str:
        return str(client.call("CreateDiagnosticTask", ProjectName=project)["TaskId"])

    start = time.perf_counter()
    if rate is None:
        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(create, range(n)))
    else:
        ids = []
        for i in range(n):
            target = start + i / rate
            time.sleep(max(0.0, target - time.perf_counter()))
            ids.append(create(i))
    query = text("SELECT count(*) FROM tasks WHERE project_name = :p AND status != 'Running'")
    with engine.connect() as conn:  # type: ignore[attr-defined]
        wait_until(
            lambda: conn.execute(query, {"p": project}).scalar() == n,
            600,
            0.02,
            "openimm tasks done",
        )
        elapsed = time.perf_counter() - start
        rows = conn.execute(
            text(
                "SELECT EXTRACT(EPOCH FROM end_time - start_time), status FROM tasks "
                "WHERE project_name = :p"
            ),
            {"p": project},
        ).all()
    assert all(r[1] == "Succeeded" for r in rows), "some tasks did not succeed"
    return n / elapsed, [float(r[0]) * 1000 for r in rows]


def run_raw(broker: str, n: int, rate: float | None) -> tuple[float, list[float]]:
    from benchmarks.raw_celery import app

    store = redis.Redis.from_url(broker)
    store.delete("raw-bench")
    start = time.perf_counter()
    for i in range(n):
        if rate is not None:
            time.sleep(max(0.0, start + i / rate - time.perf_counter()))
        app.send_task("raw.noop", args=[time.time(), str(i)])
    wait_until(lambda: store.hlen("raw-bench") == n, 600, 0.02, "raw tasks done")
    elapsed = time.perf_counter() - start
    latencies = []
    for value in store.hgetall("raw-bench").values():
        sent, done = (float(x) for x in value.decode().split(":"))
        latencies.append((done - sent) * 1000)
    return n / elapsed, latencies


def report(name: str, throughput: float, lat: list[float]) -> None:
    print(
        f"{name:<28} {throughput:8.1f} tasks/s   p50 {statistics.median(lat):7.1f} ms   "
        f"p99 {pct(lat, 0.99):7.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()

    pg, rd = start_postgres(), start_redis()
    data = Path(tempfile.mkdtemp(prefix="openimm-bench-"))
    port = free_port()
    db_url = pg.create_database("bench")
    env = make_env(data, port, database_url=db_url, broker_url=rd.url(0))
    stack = Stack(data_dir=data, env=env, port=port)
    raw_env = {**os.environ, "BENCH_BROKER": rd.url(1), "PYTHONPATH": str(ROOT)}
    raw_worker = None
    try:
        stack.run("migrate")
        stack.start_api()
        stack.start_worker(queues="default", concurrency=args.concurrency)
        raw_worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "benchmarks.raw_celery",
                "worker",
                "-c",
                str(args.concurrency),
                "--without-gossip",
                "--without-mingle",
                "-l",
                "WARNING",
            ],
            env=raw_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.environ["BENCH_BROKER"] = rd.url(1)
        engine = create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
        run_raw(rd.url(1), 50, None)  # warm-up both paths
        run_openimm(stack, engine, 50, None)

        print(
            f"\n{args.tasks} tasks, worker concurrency {args.concurrency}, "
            f"{os.cpu_count()} cores, Redis broker, PostgreSQL state\n"
        )
        raw_tp, raw_lat = run_raw(rd.url(1), args.tasks, None)
        imm_tp, imm_lat = run_openimm(stack, engine, args.tasks, None)
        print("max throughput (burst):")
        report("  raw Celery no-op", raw_tp, raw_lat)
        report("  openimm create→Succeeded", imm_tp, imm_lat)
        print(f"  ratio openimm/raw throughput: {imm_tp / raw_tp:.2f}x (target ≥ 0.5x)\n")

        raw_tp, raw_lat = run_raw(rd.url(1), args.tasks, args.rate)
        imm_tp, imm_lat = run_openimm(stack, engine, args.tasks, args.rate)
        print(f"paced at {args.rate:.0f} tasks/s:")
        report("  raw Celery no-op", raw_tp, raw_lat)
        report("  openimm create→Succeeded", imm_tp, imm_lat)
        print(
            f"  openimm p99 {pct(imm_lat, 0.99):.1f} ms (target ≤ 100 ms); "
            f"p99 ratio openimm/raw {pct(imm_lat, 0.99) / max(pct(raw_lat, 0.99), 1e-9):.1f}x"
        )
    finally:
        if raw_worker:
            raw_worker.terminate()
            raw_worker.wait(30)
        stack.stop_all()
        pg.stop()
        rd.stop()


if __name__ == "__main__":
    main()
