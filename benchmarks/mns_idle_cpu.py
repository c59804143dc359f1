"""Idle cost of MNS long polling: CPU time the API process spends while N receivers (the
official aliyun-mns-sdk, ``wait_seconds=20``) wait on an empty queue, against the same
process with no receivers (the raw baseline) in the same run.

    .venv/bin/python benchmarks/mns_idle_cpu.py [--receivers 20] [--seconds 10] [--store redis|db]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mns.account import Account  # noqa: E402
from mns.mns_exception import MNSExceptionBase  # noqa: E402
from mns.queue import QueueMeta  # noqa: E402

from tests.e2e.stack import KEY_ID, KEY_SECRET, Stack, free_port, make_env  # noqa: E402
from tests.realservices import start_redis  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def measure(pid: int, seconds: float) -> float:
    """Share of one core the process used over ``seconds``."""
    start = cpu_seconds(pid)
    time.sleep(seconds)
    return (cpu_seconds(pid) - start) / seconds


def receive(endpoint: str) -> None:
    queue = Account(endpoint, KEY_ID, KEY_SECRET).get_queue("idle")
    # MessageNotExist after the wait is expected: the queue stays empty.
    with contextlib.suppress(MNSExceptionBase):
        queue.receive_message(wait_seconds=20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--receivers", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--store", choices=["redis", "db"], default="redis")
    args = parser.parse_args()
    redis = start_redis() if args.store == "redis" else None
    data = Path(tempfile.mkdtemp(prefix="openimm-idle-"))
    port = free_port()
    store = {"redis_url": redis.url(1)} if redis is not None else {}
    stack = Stack(data_dir=data, env=make_env(data, port, **store), port=port)
    try:
        stack.run("migrate")
        stack.start_api()
        endpoint = f"http://{stack.endpoint}"
        Account(endpoint, KEY_ID, KEY_SECRET).get_queue("idle").create(QueueMeta())
        pid = stack.procs["api"].pid
        baseline = measure(pid, args.seconds)
        threads = [
            threading.Thread(target=receive, args=(endpoint,), daemon=True)
            for _ in range(args.receivers)
        ]
        for thread in threads:
            thread.start()
        time.sleep(2)  # let every receive reach its wait (a measurement window, not a sync)
        waiting = measure(pid, min(args.seconds, 17))
        print(
            f"API process CPU ({args.store} store): idle {baseline * 100:.1f} % of a core; "
            f"with {args.receivers} waiting long polls {waiting * 100:.1f} % "
            f"({(waiting - baseline) * 100 / args.receivers:.2f} % per receiver)"
        )
    finally:
        stack.stop_all()
        if redis is not None:
            redis.stop()


if __name__ == "__main__":
    main()
