"""Image classification through openimm's EAS service against the raw model, in one run.

    .venv/bin/python benchmarks/image_classification.py [--images N] [--requests N]
        [--data /work/shared/data] [--wait-calls 100]

Inputs: every photo of ``shared/data`` (``FOLDERS``, masks left out) as a JPEG of at most
640 px, and each one mirrored: 264 photos, 528 inputs. Every raw round and every service
round covers the same inputs (``--requests`` defaults to all of them).

Raw baseline: the same MobileNetV2 engine (``workers.models.imagenet``) called in a loop in
this process, one image per call. Service: the official ``eas-prediction`` client posting
``{"image": <base64>}`` to ``image_classification`` on real ``openimm api`` + ``openimm
worker -Q image`` processes (PostgreSQL + Redis), with 1, 8 and 32 concurrent clients.
Each service round (1, 8, 32 clients; ``--rounds`` times) runs between two raw rounds and is
compared with their mean, so a change of the shared machine's speed during the run moves both
sides; the summary gives the median ratio over the rounds. Prints throughput ratios
(service / raw), p50 latency overhead at 1 client, top-1 agreement of the service with a
plain evaluation of the same weights (``benchmarks/imagenet_reference.py``) and with the raw
engine over every input, and a top-5 check on the scene photos
of ``shared/data/images`` whose names have an ImageNet class (no ImageNet-labelled set is
available offline). Then the same engine behind a bare HTTP endpoint at 1 and 8 clients
(``benchmarks/bare_endpoint.py``, no task model: what is left of the gap is the cost of a task
per request; skip with ``--bare-rounds 0``). Then, on the same PostgreSQL + Redis, the
push-vs-poll wait figure of ``benchmarks/predict_wait.py`` (skip with ``--wait-calls 0``), and
a summary line.

``BENCH_SETTINGS=torch_threads=1,batch_pool_threads=8`` passes settings to the service
processes (the stack gives them none of the caller's ``OPENIMM_*`` variables).

The raw loop runs with the OpenMP settings the worker processes get (passive waiting, see
``pipeline.server._cpu_threads``), so both sides use the cores the same way. The machine's
load average is printed with the figures: on shared cores the ratios move with it.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path("/work/shared/data")
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
# The raw loop waits the way openimm's workers do (before torch loads); the services get the
# caller's environment unchanged, so a baseline run of older code keeps its own defaults.
OWN_OMP_POLICY = "OMP_WAIT_POLICY" not in os.environ
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from eas_prediction import PredictClient, StringRequest  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks import predict_wait  # noqa: E402
from benchmarks.imagenet_reference import classify_all  # noqa: E402
from tests.e2e.stack import KEY_SECRET, Stack, free_port, make_env, wait_until  # noqa: E402
from tests.realservices import start_postgres, start_redis  # noqa: E402
from workers import models  # noqa: E402
from workers.models.imagenet import ImageNetModel, class_names  # noqa: E402

EXTRA = dict(a.split("=", 1) for a in os.environ.get("BENCH_SETTINGS", "").split(",") if a)
# Every photo set of shared/data (masks and label files left out): a few hundred images.
FOLDERS = ("coco", "images", "faces", "faces2", "headpose", "segmentation", "sr", "ocr")
MASKS = ("_mask", "_person", "_semantic")
# Scene photos of shared/data/images whose subject is an ImageNet-1k class (by clean name).
SCENES = {
    "barn": {"barn"},
    "beach": {"seashore", "sandbar", "lakeshore"},
    "coast": {"seashore", "promontory", "cliff", "sandbar", "breakwater"},
    "fountain": {"fountain"},
    "lighthouse": {"lighthouse", "breakwater", "promontory"},
    "pagoda": {"pagoda", "stupa"},
    "underwater_coral_reef": {"coral reef"},
    "volcano": {"volcano"},
    "mountain": {"alp", "valley", "volcano"},
    "canyon": {"cliff", "valley", "cliff dwelling"},
    "badlands": {"cliff", "valley", "cliff dwelling", "alp"},
    "abbey": {"monastery", "church", "castle", "palace"},
}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def load_images(limit: int, root: Path = SHARED, mirror: bool = True) -> list[tuple[str, bytes]]:
    """The photos of ``FOLDERS`` as JPEGs of at most 640 px (Model Hub callers send photos,
    not originals); with ``mirror``, each also left-right mirrored (``name#mirror``): other
    pixels of the same subject, which doubles the inputs the agreement check covers."""
    found = []
    for folder in FOLDERS:
        for path in sorted((root / folder).rglob("*")):
            if path.suffix.lower() not in (".jpg", ".jpeg", ".png") or path.stem.endswith(MASKS):
                continue
            image = Image.open(path).convert("RGB")
            image.thumbnail((640, 640))
            name = f"{folder}/{path.relative_to(root / folder)}"
            found.append((name, _jpeg(image)))
            if mirror:
                mirrored = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                found.append((f"{name}#mirror", _jpeg(mirrored)))
    return found[:limit]


@dataclass
class RawRun:
    throughput: float
    latencies: list[float]
    top5: dict[str, list[str]]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies)


def run_raw(images: list[tuple[str, bytes]]) -> RawRun:
    model = models.get(ImageNetModel)
    model.classify([Image.open(io.BytesIO(images[0][1]))])  # load + warm up
    latencies, top5 = [], {}
    start = time.perf_counter()
    for name, data in images:
        t0 = time.perf_counter()
        result = model.classify([Image.open(io.BytesIO(data))])[0]
        latencies.append((time.perf_counter() - t0) * 1000)
        top5[name] = [class_names()[i] for i in result.probs.argsort()[::-1][:5]]
    return RawRun(len(images) / (time.perf_counter() - start), latencies, top5)


def best_raw(images: list[tuple[str, bytes]]) -> RawRun:
    """The raw loop with torch's default threads and with one thread: the faster stays the
    baseline for the whole run (on shared cores one thread can win), so the service is never
    compared with a handicapped loop."""
    import torch

    runs = {}
    for threads in dict.fromkeys((torch.get_num_threads(), 1)):
        torch.set_num_threads(threads)
        runs[threads] = run_raw(images)
        print(f"raw loop, {threads} torch thread(s): {runs[threads].throughput:.1f} images/s")
    best = max(runs, key=lambda threads: runs[threads].throughput)
    torch.set_num_threads(best)
    return runs[best]


@dataclass(frozen=True)
class Endpoint:
    endpoint: str  # host:port, as Stack.endpoint


def run_bare(
    images: list[tuple[str, bytes]], rounds: int, requests: int, logs: Path
) -> dict[int, list[float]]:
    """Throughput ratios of the same engine behind a bare HTTP endpoint
    (``benchmarks/bare_endpoint.py``: no task model) at 1 and 8 clients, each round between
    two raw rounds like the service's."""
    ratios: dict[int, list[float]] = {1: [], 8: []}
    if not rounds:
        return ratios
    port = free_port()
    with open(logs / "bare.log", "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bare_endpoint", str(port)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    bare = Endpoint(f"127.0.0.1:{port}")
    try:
        wait_until(lambda: _answers(bare, images), 120, what="bare endpoint")
        before = run_raw(images)
        for round_ in range(1, rounds + 1):
            for clients in ratios:
                tp, lat, _ = run_service(bare, images, clients, requests)
                after = run_raw(images)
                raw_tp = (before.throughput + after.throughput) / 2
                ratios[clients].append(tp / raw_tp)
                print(
                    f"bare endpoint round {round_}, {clients} clients: {tp:6.1f} req/s = "
                    f"{tp / raw_tp:.2f}x raw   p50 {statistics.median(lat):6.1f} ms",
                    flush=True,
                )
                before = after
    finally:
        server.kill()
        server.wait()
    return ratios


def _answers(endpoint: Endpoint, images: list[tuple[str, bytes]]) -> bool:
    try:
        run_service(endpoint, images[:1], 1, 1)
    except Exception:  # not listening yet
        return False
    return True


def client(stack: Stack | Endpoint) -> PredictClient:
    c = PredictClient(f"http://{stack.endpoint}", "image_classification")
    c.set_token(KEY_SECRET)
    c.set_timeout(120_000)
    c.init()
    return c


def run_service(
    stack: Stack | Endpoint, images: list[tuple[str, bytes]], clients: int, requests: int
) -> tuple[float, list[float], dict[str, str]]:
    bodies = [(n, json.dumps({"image": base64.b64encode(d).decode()})) for n, d in images]
    pool = [client(stack) for _ in range(clients)]
    answers: dict[str, str] = {}

    def call(i: int) -> float:
        name, body = bodies[i % len(bodies)]
        t0 = time.perf_counter()
        out = json.loads(pool[i % clients].predict(StringRequest(body)).response_data)
        assert out["success"], out
        answers[name] = out["class_name"]
        return (time.perf_counter() - t0) * 1000

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as executor:
        latencies = list(executor.map(call, range(requests)))
    return requests / (time.perf_counter() - start), latencies, answers


def report_agreement(service: dict[str, str], raw: RawRun, images: list[tuple[str, bytes]]) -> None:
    """Top-1 of the service against a plain evaluation of the same weights
    (``benchmarks/imagenet_reference.py``: eager network, torchvision's transform, full
    decode) and against the engine it runs; each disagreement with the reference's margin
    (top-1 minus top-2 probability), since a near-tie can flip on any preprocessing change."""
    names = class_names()
    refs = classify_all(images)
    reference = {n: names[r.index] for n, r in refs.items()}
    vs_engine = sum(service[n] == raw.top5[n][0] for n in service)
    vs_plain = sum(service[n] == reference[n] for n in service)
    engine_plain = sum(raw.top5[n][0] == reference[n] for n, _ in images)
    print(
        f"\ntop-1 agreement over {len(service)} images: service vs plain reference script "
        f"{vs_plain}/{len(service)}; service vs the raw engine {vs_engine}/{len(service)}; "
        f"raw engine vs plain reference {engine_plain}/{len(images)}"
    )
    for name in sorted(n for n in service if service[n] != reference[n]):
        print(
            f"  {name}: service {service[name]!r}, reference {reference[name]!r} "
            f"(reference p={refs[name].prob:.3f}, margin {refs[name].margin:.3f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_000, help="at most this many inputs")
    parser.add_argument("--requests", type=int, default=0, help="per round; 0: one per input")
    parser.add_argument("--concurrency", type=int, default=16, help="jobs the pool runs at once")
    parser.add_argument("--prefork", action="store_true", help="a prefork pool (no batching)")
    parser.add_argument("--data", type=Path, default=SHARED, help="folder of the photo sets")
    parser.add_argument("--rounds", type=int, default=3, help="service rounds per client count")
    parser.add_argument("--bare-rounds", type=int, default=2, help="bare-endpoint rounds; 0: skip")
    parser.add_argument("--wait-calls", type=int, default=100, help="push-vs-poll calls; 0: skip")
    args = parser.parse_args()
    images = load_images(args.images, args.data)
    if not images:
        raise SystemExit(f"no images under {args.data}/{{{','.join(FOLDERS)}}}")
    args.requests = args.requests or len(images)
    load_before = os.getloadavg()[0]
    first = best_raw(images)
    print(
        f"\n{len(images)} images; raw model loop: {first.throughput:.1f} images/s, "
        f"p50 {first.p50:.1f} ms"
    )

    pg, rd = start_postgres(), start_redis()
    data = Path(tempfile.mkdtemp(prefix="openimm-bench-img-"))
    port = free_port()
    db, broker = pg.create_database("bench"), rd.url(0)
    env = make_env(data, port, database_url=db, broker_url=broker, **EXTRA)
    if OWN_OMP_POLICY:
        env.pop("OMP_WAIT_POLICY")
    stack = Stack(data_dir=data, env=env, port=port)
    levels = (1, 8, 32)
    ratios: dict[int, list[float]] = {c: [] for c in levels}
    overheads: dict[int, list[float]] = {c: [] for c in levels}
    raw_rates: list[float] = []
    waits: dict[str, list[float]] = {}
    bare: dict[int, list[float]] = {}
    try:
        stack.run("migrate")
        stack.start_api()
        # The image queue's pool runs jobs in threads so concurrent requests share forward
        # passes (workers.batching); --prefork measures one process per job instead.
        pool = "prefork" if args.prefork else "threads"
        stack.start_worker("image", "image", args.concurrency, pool=pool)
        run_service(stack, images[:8], 2, 8)  # warm up: model load in every pool process
        agreement: dict[str, str] = {}
        # Shared cores change speed from one minute to the next, so each service round sits
        # between two raw rounds and is compared with their mean (the service is idle while
        # the raw loop runs, and the other way round).
        before = run_raw(images)
        raw_rates.append(before.throughput)
        for round_ in range(1, args.rounds + 1):
            for clients in levels:
                tp, lat, answers = run_service(stack, images, clients, args.requests)
                after = run_raw(images)
                raw_rates.append(after.throughput)
                agreement.update(answers)
                raw_tp = (before.throughput + after.throughput) / 2
                overhead = statistics.median(lat) - (before.p50 + after.p50) / 2
                ratios[clients].append(tp / raw_tp)
                overheads[clients].append(overhead)
                print(
                    f"round {round_}, {clients:>2} clients: {tp:6.1f} req/s = {tp / raw_tp:.2f}x "
                    f"raw ({before.throughput:.1f}/{after.throughput:.1f} images/s before/after)"
                    f"   p50 {statistics.median(lat):7.1f} ms  p99 {pct(lat, 0.99):7.1f} ms   "
                    f"p50 overhead over raw {overhead:6.1f} ms",
                    flush=True,
                )
                before = after
        _, _, answers = run_service(stack, images, 8, len(images))
        agreement.update(answers)
        stack.stop("image")
        stack.stop("api")
        bare = run_bare(images, args.bare_rounds, args.requests, data)
        if args.wait_calls:
            stack.start_worker(queues="default", concurrency=2)
            waits = predict_wait.measure(stack, env, args.wait_calls)
    finally:
        stack.stop_all()
        pg.stop()
        rd.stop()
    report_agreement(agreement, first, images)
    scene_hits = [
        (name, any(c in SCENES[key] for c in top5))
        for name, top5 in first.top5.items()
        for key in SCENES
        if name.startswith(f"images/{key}_sun") and "#" not in name
    ]
    hits = sum(hit for _, hit in scene_hits)
    print(f"scene photos with a matching ImageNet class in the top 5: {hits}/{len(scene_hits)}")
    if waits:
        print(f"\npredict wait, {args.wait_calls} sequential diagnostic Noop calls:")
        print(predict_wait.report(waits))
    if bare.get(1):
        print(
            f"\nthe same engine behind a bare HTTP endpoint (no task model), median of "
            f"{args.bare_rounds} rounds: throughput vs raw 1/8 clients "
            f"{statistics.median(bare[1]):.2f}x / {statistics.median(bare[8]):.2f}x"
        )
    median = {c: statistics.median(ratios[c]) for c in levels}
    print(
        f"\nsummary (median of {args.rounds} rounds, each against the raw rounds on either side; "
        f"raw {min(raw_rates):.1f}-{max(raw_rates):.1f} images/s): throughput vs raw 1/8/32 "
        f"clients {median[1]:.2f}x / {median[8]:.2f}x / {median[32]:.2f}x; p50 overhead at 1 "
        f"client {statistics.median(overheads[1]):.1f} ms; load average {load_before:.1f} -> "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )


if __name__ == "__main__":
    main()
