"""Predict wait benchmark: EAS predict latency of the diagnostic Noop service (signed
``POST /api/predict/diagnostic`` → Celery on Redis → worker → PostgreSQL → HTTP response)
with the call woken by push (outbox trigger + LISTEN, the default) against the same API
re-reading the task row every 50 ms (``OPENIMM_SYNC_WAIT_PUSH=0``, the old polling cap), in the
same run on the same services.

    .venv/bin/python benchmarks/predict_wait.py [--calls 200] [--concurrency 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eas_prediction import PredictClient, StringRequest  # noqa: E402

from tests.e2e.stack import KEY_SECRET, Stack, free_port, make_env  # noqa: E402
from tests.realservices import start_postgres, start_redis  # noqa: E402

MODES = {
    "push": {},
    "poll 50 ms": {"OPENIMM_SYNC_WAIT_PUSH": "0", "OPENIMM_SYNC_WAIT_FALLBACK_SECONDS": "0.05"},
}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latencies(stack: Stack, calls: int) -> list[float]:
    client = PredictClient(f"http://{stack.endpoint}", "diagnostic")
    client.set_token(KEY_SECRET)
    client.init()
    body = StringRequest(json.dumps({"input": {"mode": "Noop"}}))
    out = []
    for _ in range(calls):
        start = time.perf_counter()
        response = json.loads(client.predict(body).response_data)
        out.append((time.perf_counter() - start) * 1000)
        assert response.get("success", True) is not False, response
    return out


def measure(stack: Stack, env: dict[str, str], calls: int) -> dict[str, list[float]]:
    """Sequential predict latencies per wait mode, each on its own API process (started and
    stopped here) over the same worker; ``stack`` must run a worker on ``default``."""
    results: dict[str, list[float]] = {}
    for name, extra in MODES.items():
        stack.env = {**env, **extra}
        stack.start_api()
        latencies(stack, 20)  # warm-up
        results[name] = latencies(stack, calls)
        stack.stop("api")
    stack.env = env
    return results


def report(results: dict[str, list[float]]) -> str:
    lines = [
        f"  {name:<12} p50 {statistics.median(lat):7.1f} ms   p99 {pct(lat, 0.99):7.1f} ms"
        for name, lat in results.items()
    ]
    push, poll = results["push"], results["poll 50 ms"]
    lines.append(
        f"\n  ratio push/poll: p50 {statistics.median(push) / statistics.median(poll):.2f}x, "
        f"p99 {pct(push, 0.99) / pct(poll, 0.99):.2f}x; push saves "
        f"{statistics.median(poll) - statistics.median(push):.1f} ms at p50"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()

    pg, rd = start_postgres(), start_redis()
    data = Path(tempfile.mkdtemp(prefix="openimm-bench-"))
    port = free_port()
    env = make_env(data, port, database_url=pg.create_database("bench"), broker_url=rd.url(0))
    stack = Stack(data_dir=data, env=env, port=port)
    try:
        stack.run("migrate")
        stack.start_worker(queues="default", concurrency=args.concurrency)
        results = measure(stack, env, args.calls)
    finally:
        stack.stop_all()
        pg.stop()
        rd.stop()
    print(f"\n{args.calls} sequential predict calls, diagnostic Noop, {os.cpu_count()} cores\n")
    print(report(results))


if __name__ == "__main__":
    main()
