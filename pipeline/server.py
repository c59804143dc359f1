"""Process entry points: the API server, a worker pool, and the embedded ``serve`` supervisor."""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from typing import Any

import uvicorn
from sqlalchemy import select, update

from pipeline import accounts, credentials, migrate, queue
from pipeline.db import Database
from pipeline.errors import ConfigurationError
from pipeline.models import Task
from pipeline.settings import Settings

log = logging.getLogger("openimm.server")
WORKER_RESTART_DELAY = 2.0
WORKER_STOP_GRACE = 30.0


def run_api(settings: Settings) -> None:
    from pipeline.api.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    _check_keys(settings)
    log.info("web console at http://%s:%s/console", settings.host, settings.port)
    uvicorn.Server(api_config(settings, create_app(settings))).run()


def api_config(settings: Settings, app: Any, *, http: str | None = None) -> uvicorn.Config:
    """uvicorn's configuration for the API. The request head (line + headers) is bounded by
    ``OPENIMM_MAX_REQUEST_HEAD_BYTES`` with either parser: long IMM query strings (a
    BatchIndexFileMeta with 100 files is about 30 KB) fit in the 64 KiB default."""
    parser = http or ("httptools" if importlib.util.find_spec("httptools") else "h11")
    protocol: Any = parser
    if parser == "httptools":
        from pipeline.headlimit import bounded_httptools

        protocol = bounded_httptools(settings.max_request_head_bytes)
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=protocol,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        h11_max_incomplete_event_size=settings.max_request_head_bytes,
        log_level="warning",
        access_log=False,
    )


def _check_keys(settings: Settings) -> None:
    """Refuse to start (``ConfigurationError``, logged) without usable keys unless the open
    mode is explicit (OPENIMM_DEV_MODE)."""
    try:
        credentials.load_keys(settings)
    except ConfigurationError as exc:
        log.error("refusing to start: %s", exc.message)
        raise


def run_worker(
    settings: Settings,
    *,
    queues: str,
    concurrency: int,
    hostname: str | None,
    pool: str = "prefork",
) -> int:
    """One Celery pool. ``prefork``: a process per job (isolation, one model copy each);
    ``threads``: one process running ``concurrency`` jobs in threads, which is what lets
    batching kinds (pipeline.jobs ``batching``) share forward passes."""
    _cpu_threads(settings, model_threads(pool, concurrency, os.cpu_count() or 1))
    from workers.celery_app import build_worker_app

    app = build_worker_app(settings)
    if pool == "threads":  # its jobs share this process: no worker_process_init runs
        from workers import runtime

        runtime.init_process(settings, jobs=concurrency)
    names = queue.all_queues(settings) if queues == "all" else queues.split(",")
    if settings.warm_workers:
        from workers import warmup

        warmup.preload(settings, names)  # before the fork: every child starts warm
    node = hostname or f"openimm-{os.getpid()}@%h"
    app.worker_main(
        [
            "worker",
            "-Q",
            ",".join(names),
            "-c",
            str(concurrency),
            "-n",
            node,
            f"--pool={pool}",
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
        ]
    )
    return 0


def model_threads(pool: str, concurrency: int, cores: int) -> int:
    """Intra-op threads for each model runtime of a pool on ``cores`` cores.

    Prefork: the cores divided between the processes, each running its own forward passes,
    so the pool uses each core once instead of every job's model asking for all of them.

    Threads: one batcher runs one forward pass at a time, and it gets every core but one. The
    pool's jobs decode their images, talk to the database and the broker in Python meanwhile,
    and an OpenMP region that needs every core waits at its barrier for whichever thread one
    of them pre-empted. benchmarks/image_classification.py on 2 cores, frozen MobileNetV2,
    same run: the raw loop did 32.3 images/s with one thread against 24.3 with two; the
    service 22.4 requests/s at 8 clients with one thread, 21.5 with two in the run before.
    """
    if pool == "threads":
        return max(1, cores - 1)
    return max(1, cores // max(1, concurrency))


def _cpu_threads(settings: Settings, default: int) -> None:
    """Thread settings of the model runtimes, before any of them loads in this process.

    Intra-op threads: ``OPENIMM_TORCH_THREADS``, or ``default`` (:func:`model_threads`).

    OpenMP's default is to spin while it waits for the other threads of a parallel region;
    on cores shared with the API, the database and other pools, a spinning thread burns the
    core its partner needs (one MobileNetV2 pass took 10x its CPU, measured on 2 shared
    cores), so waiting is passive unless the environment says otherwise."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    threads = settings.torch_threads or default
    if settings.torch_threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    else:
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    if "torch" in sys.modules:  # imported already: it read the environment then
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def recover_embedded(settings: Settings, db: Database) -> int:
    """Re-enqueue Running tasks whose message is gone (the machine stopped mid-job).

    For the embedded filesystem broker, which loses a delivered-but-unacknowledged message
    when its worker dies; ``serve`` calls this before starting workers, when no job can be in
    flight (so every lease is a dead one). Later losses are the lease reaper's job (it runs in
    the dispatcher thread); Redis brokers also redeliver by visibility timeout.
    """
    queued = queue.embedded_queued_ids(settings.broker_folder / "queue")
    with db.session() as s:
        running = s.execute(
            select(Task.id, Task.task_type, Task.queue).where(Task.status == "Running")
        ).all()
    celery = queue.make_celery(settings)
    lost = [row for row in running if row.id not in queued]
    for row in lost:
        queue.enqueue(celery, row.id, row.task_type, row.queue, settings)
    if lost:
        with db.session() as s:  # queued again: the reaper must not send a second message
            s.execute(
                update(Task)
                .where(Task.id.in_([row.id for row in lost]), Task.status == "Running")
                .values(lease_expires_at=None, worker="")
            )
    return len(lost)


def _die_with_parent() -> None:
    """Linux: the embedded worker pool gets SIGTERM (warm shutdown) if ``serve`` dies, even
    by SIGKILL, so no orphan keeps consuming the data dir's queue."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class WorkerSupervisor(threading.Thread):
    """Keeps one Celery worker pool process alive and restarts it if it dies.

    Used by ``openimm worker`` and by the embedded ``serve``. Why: on a broker connection loss
    (e.g. a Redis restart) Celery 5.7 / kombu occasionally exits with "Unrecoverable error"
    instead of reconnecting; jobs are safe in the broker (late ack, AOF), so a restart is all
    it takes. SIGTERM is forwarded for Celery's warm shutdown (running jobs finish).
    """

    def __init__(
        self,
        settings: Settings,
        args: list[str],
        *,
        stop_grace: float | None,
        die_with_parent: bool,
    ) -> None:
        super().__init__(daemon=True, name="worker-supervisor")
        self.settings, self.args = settings, args
        self.stop_grace, self.die_with_parent = stop_grace, die_with_parent
        self.stopping = threading.Event()
        self.proc: subprocess.Popen[bytes] | None = None
        self._db: Database | None = None  # made when a pool first exits
        self._celery: Any = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "OPENIMM_DATA_DIR": str(self.settings.resolved_data_dir)}
        cmd = [sys.executable, "-m", "pipeline.cli", "worker", "--no-supervise", *self.args]
        preexec = _die_with_parent if self.die_with_parent else None
        return subprocess.Popen(cmd, env=env, preexec_fn=preexec)

    def run(self) -> None:
        while not self.stopping.is_set():
            self.proc = self._spawn()
            self.proc.wait()
            if not self.stopping.is_set():
                log.warning("worker pool exited with %s; restarting", self.proc.returncode)
                self._requeue_jobs_of(self.proc.pid)
                self.stopping.wait(WORKER_RESTART_DELAY)

    def _requeue_jobs_of(self, pid: int) -> None:
        """The jobs the exited process ran go back to their queues now, not a lease later
        (``leases.requeue_held_by``). The process is dead, so nothing can renew its leases.
        Jobs run in it in a ``--pool threads`` or ``solo`` pool, the batching image pool
        among them: a crash there takes every in-flight predict with it. A prefork pool's
        jobs run in its children, whose deaths Celery handles itself; a whole prefork worker
        killed is left to the reaper."""
        from pipeline import leases

        holder = f"{socket.gethostname()}:{pid}"
        try:
            if self._db is None:
                self._db = Database.from_settings(self.settings)
            if self._celery is None:
                self._celery = queue.make_celery(self.settings)
            requeued = leases.requeue_held_by(self.settings, self._db, self._celery, holder)
        except Exception as exc:  # the reaper still re-enqueues them once the leases expire
            log.warning("could not re-enqueue the exited pool's jobs now: %s", exc)
            return
        if requeued:
            log.warning("re-enqueued %d job(s) the exited pool was running", requeued)

    def stop(self) -> None:
        self.stopping.set()
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # warm shutdown: running jobs finish
            try:
                self.proc.wait(self.stop_grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def supervise_worker(settings: Settings, args: list[str]) -> int:
    """``openimm worker``: run the pool under a supervisor until SIGTERM/SIGINT. The stop waits
    as long as running jobs need: the orchestrator's grace period is the limit."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    supervisor = WorkerSupervisor(settings, args, stop_grace=None, die_with_parent=True)
    supervisor.start()
    stop.wait()
    supervisor.stop()
    return 0


def run_dispatcher(settings: Settings) -> int:
    """The outbox dispatcher as its own process (distributed mode); SIGTERM stops it."""
    from pipeline.notify.dispatcher import Dispatcher

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    db = Database.from_settings(settings)
    log.info("dispatcher running")
    Dispatcher(settings, db).run_forever(stop)
    db.dispose()
    return 0


def _start_dispatcher_thread(settings: Settings) -> threading.Event:
    from pipeline.notify.dispatcher import Dispatcher

    stop = threading.Event()
    dispatcher = Dispatcher(settings, Database.from_settings(settings))
    threading.Thread(
        target=dispatcher.run_forever, args=(stop,), daemon=True, name="dispatcher"
    ).start()
    return stop


def serve(settings: Settings) -> int:
    """Embedded default: migrate, recover, start the worker pool and the notification
    dispatcher, run the API until stopped."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    _check_keys(settings)
    migrate.upgrade(settings.db_url)
    keys = credentials.load_keys(settings)
    db = Database.from_settings(settings)
    if settings.is_embedded_broker:
        recovered = recover_embedded(settings, db)
        if recovered:
            log.info("re-enqueued %d task(s) interrupted by the last stop", recovered)
    db.dispose()
    _announce(settings, keys)
    supervisors = [
        WorkerSupervisor(settings, args, stop_grace=WORKER_STOP_GRACE, die_with_parent=True)
        for args in embedded_pools(settings)
    ]
    for supervisor in supervisors:
        supervisor.start()
    dispatcher_stop = _start_dispatcher_thread(settings)
    # uvicorn re-raises the SIGTERM it caught once it has stopped; by default that would kill
    # this process before the pools below are stopped, leaving them running without a parent.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        run_api(settings)
    finally:
        dispatcher_stop.set()
        for supervisor in supervisors:
            supervisor.stop()
    return 0


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def embedded_pools(settings: Settings) -> list[list[str]]:
    """``serve``'s worker pools: a prefork pool for every queue but the batching ones, and a
    threads pool for the queues of batching kinds (one process, one model copy, requests
    batched), so the embedded default batches image services as a cluster would."""
    batching = queue.batching_queues(settings)
    others = [q for q in queue.all_queues(settings) if q not in batching]
    pools = [["-Q", ",".join(others), "-c", str(settings.worker_concurrency), "-n", "embedded@%h"]]
    if batching:
        threads = str(settings.batch_pool_threads)
        name = "embedded-batch@%h"
        pools.append(["-Q", ",".join(batching), "-c", threads, "--pool", "threads", "-n", name])
    return pools


def _announce(settings: Settings, keys: dict[str, str]) -> None:
    where = f"http://{settings.host}:{settings.port}"
    if keys:
        source = "OPENIMM_ACCESS_KEYS" if settings.access_keys else credentials.keys_path(settings)
        ids = accounts.load(settings)
        for key_id in keys:
            log.info(
                "openimm at %s; AccessKeyId %s, AccountId %s (secret in %s)",
                where,
                key_id,
                ids.of(key_id),
                source,
            )
    else:
        log.warning("openimm at %s in DEV MODE: requests are not authenticated", where)
