"""Notification benchmark: terminal commit → message receivable (MNS queue via the official
aliyun-mns-sdk, long polling) and → webhook received, p50/p99 at 50 and 500 events/s; and
events/s one dispatcher sustains (webhook push, 16 parallel POSTs) on this machine.

    .venv/bin/python benchmarks/notify_latency.py [--events 500]

Commits are made by the same code path workers use (tasks.finalize: status + outbox event in
one transaction) so the figures isolate the notification path from task execution.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import queue as queue_mod
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mns.account import Account  # noqa: E402
from mns.mns_exception import MNSExceptionBase  # noqa: E402
from mns.queue import QueueMeta  # noqa: E402
from mns.subscription import SubscriptionMeta  # noqa: E402
from mns.topic import TopicMeta  # noqa: E402

from pipeline import projects, tasks  # noqa: E402
from pipeline.client import ImmClient  # noqa: E402
from pipeline.db import Database  # noqa: E402
from pipeline.settings import Settings  # noqa: E402
from tests.e2e.stack import KEY_ID, KEY_SECRET, Stack, free_port, make_env, wait_until  # noqa: E402
from tests.realservices import start_postgres, start_redis  # noqa: E402

arrivals: dict[str, float] = {}
hook_times: Any = None  # multiprocessing queue: (TaskId, arrival time) from the receiver


class Hook(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a production receiver would

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        now = time.time()
        content = json.loads(json.loads(json.loads(body)["Message"])["content"])
        hook_times.put(("hook:" + content["TaskId"], now))
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


def serve_hook(port_out: Any, times: Any) -> None:
    """The webhook receiver, in its own process so it does not share the benchmark's GIL."""
    global hook_times
    hook_times = times
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    port_out.put(server.server_address[1])
    server.serve_forever()


def collect_hooks(times: Any, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            task_id, when = times.get(timeout=0.2)
        except queue_mod.Empty:
            continue
        arrivals[task_id] = when


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def commit_events(db: Database, topic: str, n: int, rate: float | None) -> dict[str, float]:
    """Create n Running tasks, then finalize them at ``rate``/s; returns commit times."""
    with db.session() as s:
        project = projects.get_project(s, KEY_ID, "bench")
        created = [
            tasks.create(
                s,
                project,
                tasks.NewTask(
                    "Diagnostic", "default", {}, notification={"MNS": {"TopicName": topic}}
                ),
                request_id="r",
            )[0]
            for _ in range(n)
        ]
        started = [(t.id, t.start_time) for t in created]
    committed: dict[str, float] = {}
    t0 = time.perf_counter()
    for i, (task_id, start) in enumerate(started):
        if rate:
            time.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
        with db.session() as s:
            tasks.finalize(s, task_id, tasks.SUCCEEDED, started_at=start)
        committed[task_id] = time.time()
    return committed


def consume_queue(endpoint: str, times: Any) -> None:
    """The SDK consumer, in its own process (receive → delete, as an IMM consumer does)."""
    queue = Account(endpoint, KEY_ID, KEY_SECRET).get_queue("bench-q")
    queue.set_encoding(False)
    while True:
        try:
            message = queue.receive_message(wait_seconds=1)
        except MNSExceptionBase:
            continue
        now = time.time()
        content = json.loads(json.loads(json.loads(message.message_body)["Message"])["content"])
        times.put(("queue:" + content["TaskId"], now))
        queue.delete_message(message.receipt_handle)


def run_rate(db: Database, n: int, rate: float) -> None:
    arrivals.clear()
    committed = commit_events(db, "bench", n, rate)
    wait_until(lambda: len(arrivals) >= 2 * n, 300, 0.05, "all notifications")
    for kind in ("queue", "hook"):
        lat = [(arrivals[f"{kind}:{k}"] - v) * 1000 for k, v in committed.items()]
        name = "MNS queue (SDK receive)" if kind == "queue" else "webhook received"
        print(
            f"  {rate:>5.0f} ev/s  {name:<24} p50 {statistics.median(lat):7.1f} ms   "
            f"p99 {pct(lat, 0.99):7.1f} ms"
        )


def raw_posts(url: str, n: int) -> float:
    """POSTs/s of bare urllib3 (16 threads) to the same receiver: the ceiling for pushes."""
    from concurrent.futures import ThreadPoolExecutor

    import urllib3

    pool = urllib3.PoolManager(maxsize=16, retries=False)

    def post(i: int) -> None:
        content = json.dumps({"TaskId": f"raw-{i}", "pad": "x" * 1200})
        body = json.dumps({"Message": json.dumps({"content": content})})
        pool.request("POST", url, body=body, headers={"content-type": "application/json"})

    with ThreadPoolExecutor(16) as threads:
        start = time.perf_counter()
        list(threads.map(post, range(n)))
        return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument(
        "--store",
        choices=["redis", "db"],
        default="redis",
        help="MNS queue messages in Redis (distributed mode, default) or in the database",
    )
    args = parser.parse_args()
    pg, rd = start_postgres(), start_redis()
    data = Path(tempfile.mkdtemp(prefix="openimm-nbench-"))
    port = free_port()
    db_url = pg.create_database("nbench")
    store = {"redis_url": rd.url(1)} if args.store == "redis" else {}
    env = make_env(
        data, port, database_url=db_url, broker_url=rd.url(0), http_allow_private="1", **store
    )
    stack = Stack(data_dir=data, env=env, port=port)
    times, port_out = multiprocessing.Queue(), multiprocessing.Queue()
    hook = multiprocessing.Process(target=serve_hook, args=(port_out, times), daemon=True)
    hook.start()
    hook_port = port_out.get(timeout=30)
    stop = threading.Event()
    threading.Thread(target=collect_hooks, args=(times, stop), daemon=True).start()
    consumer: multiprocessing.Process | None = None
    try:
        stack.run("migrate")
        stack.start_api()
        client = ImmClient(stack.endpoint, (KEY_ID, KEY_SECRET))
        client.call("CreateProject", ProjectName="bench")
        account = Account(f"http://{stack.endpoint}", KEY_ID, KEY_SECRET)
        account.get_queue("bench-q").create(QueueMeta())
        account.get_topic("bench").create(TopicMeta())
        account.get_topic("bench").get_subscription("q").subscribe(
            SubscriptionMeta(endpoint=f"acs:mns:local:{KEY_ID}:queues/bench-q")
        )
        hook_url = f"http://127.0.0.1:{hook_port}/hook"
        client.call("Subscribe", TopicName="bench", SubscriptionName="hook", Endpoint=hook_url)
        client.call("CreateTopic", TopicName="sustained")
        client.call("Subscribe", TopicName="sustained", SubscriptionName="hook", Endpoint=hook_url)
        consumer = multiprocessing.Process(
            target=consume_queue, args=(f"http://{stack.endpoint}", times), daemon=True
        )
        consumer.start()
        db = Database(Settings(database_url=db_url).db_url)
        stack.start_dispatcher()
        print(f"\nnotification latency, terminal commit → delivered ({args.events} events)")
        run_rate(db, args.events, 50)
        run_rate(db, args.events, 500)

        stack.stop("dispatcher")  # sustained: a backlog, then one dispatcher drains it
        arrivals.clear()
        n = args.events * 6
        commit_events(db, "sustained", n, None)
        t0 = time.perf_counter()
        stack.start_dispatcher("dispatcher-sustained")
        wait_until(
            lambda: sum(k.startswith("hook:") for k in list(arrivals)) >= n,
            600,
            0.05,
            "backlog drained",
        )
        elapsed = time.perf_counter() - t0
        hooks = sorted(t for k, t in list(arrivals.items()) if k.startswith("hook:"))
        steady = (len(hooks) - 1) / (hooks[-1] - hooks[0])
        print(
            f"\none dispatcher drained {n} webhook deliveries in {elapsed:.1f} s including "
            f"its process start: {n / elapsed:.0f} events/s overall; sustained (first to last "
            f"delivery) {steady:.0f} events/s (target >= 1000)"
        )
        raw = raw_posts(hook_url, n)
        print(
            f"raw baseline: urllib3, 16 threads, same receiver and body size: {raw:.0f} POST/s; "
            f"dispatcher / raw = {steady / raw:.2f}"
        )
    finally:
        stop.set()
        if consumer is not None:
            consumer.terminate()
        stack.stop_all()
        hook.terminate()
        pg.stop()
        rd.stop()


if __name__ == "__main__":
    main()
