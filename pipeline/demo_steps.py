"""The job families ``openimm demo`` runs, one function each, through the public API only
(signed IMM RPC, the object routes and the MNS-compatible API), as an SDK user would.

Each step submits its job, waits for it, checks the output for real (a cluster of at least
three photos, the spoken words in the transcript, the window around the planted event, a
larger picture, a label) and returns a ``StepResult`` row of the demo's table."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from pipeline import albums, demo_media
from pipeline.client import ClientError, ImmClient
from pipeline.mns_client import MnsQueues

PROJECT, DATASET, BUCKET = "demo", "people", "demo-bucket"
TOPIC, QUEUE = "demo-events", "demo-inbox"
TASK_TIMEOUT = 600.0  # a guard against a hang: cores shared with other work are slow
POLL_SECONDS = 0.2
HIGHLIGHT_SECONDS = 3
MIN_ALBUM_PHOTOS = 3


@dataclass
class StepResult:
    """One row of the table, plus the raw task (GetTask) for whoever wants to look closer."""

    job: str
    status: str
    seconds: float
    output: str
    detail: str
    task: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DemoContext:
    """What every step needs: a client factory, where media files are, the topic to notify."""

    client: Callable[[], ImmClient]
    oss_root: Path  # the embedded object store: files dropped here are objects
    workdir: Path

    @property
    def notification(self) -> dict[str, Any]:
        return {"MNS": {"TopicName": TOPIC}}

    def drop(self, key: str, make: Callable[[Path], Path]) -> str:
        """Make a media file straight into the demo bucket; its ``oss://`` URI."""
        make(self.oss_root / BUCKET / key)
        return f"oss://{BUCKET}/{key}"


def ensure(client: ImmClient, action: str, **params: Any) -> None:
    """Create something that a previous demo run may have created already."""
    try:
        client.call(action, **params)
    except ClientError as exc:
        if exc.code != "ResourceAlreadyExists":
            raise


def wait(client: ImmClient, task_type: str, task_id: str) -> dict[str, Any]:
    """The task once it has ended, or still Running after ``TASK_TIMEOUT`` (the table then
    says so)."""
    deadline = time.monotonic() + TASK_TIMEOUT
    while True:
        task = client.call("GetTask", ProjectName=PROJECT, TaskType=task_type, TaskId=task_id)
        if task["Status"] != "Running" or time.monotonic() > deadline:
            return task
        time.sleep(POLL_SECONDS)


def setup_notifications(
    ctx: DemoContext, endpoint: str, key: tuple[str, str], account: str
) -> None:
    """Topic ``demo-events`` → MNS queue ``demo-inbox`` of the owner with AccountId
    ``account``: every demo task notifies it."""
    client = ctx.client()
    ensure(client, "CreateProject", ProjectName=PROJECT, Description="openimm demo")
    ensure(client, "CreateTopic", TopicName=TOPIC)
    queues = MnsQueues(endpoint, key)
    try:
        queues.create(QUEUE)
    finally:
        queues.close()
    ensure(
        client,
        "Subscribe",
        TopicName=TOPIC,
        SubscriptionName="to-inbox",
        Endpoint=f"acs:mns:local:{account}:queues/{QUEUE}",
        NotifyContentFormat="JSON",
    )


def people(ctx: DemoContext) -> StepResult:
    """Index a folder of photos into a FaceManagement dataset, then CreateFigureClustering."""
    photos = demo_media.people_photos(ctx.workdir / "photos")
    started = time.monotonic()
    client = ctx.client()
    summary = albums.index_folder(
        client, ctx.workdir / "photos", PROJECT, DATASET, bucket=BUCKET, report=_quiet
    )
    run = summary["Clustering"]
    clusters = albums.people(client, PROJECT, DATASET)
    albums_text = [_album(client, c) for c in clusters]
    biggest = max((c["ImageCount"] for c in clusters), default=0)
    ok = run["Status"] == "Succeeded" and not summary["Errors"] and biggest >= MIN_ALBUM_PHOTOS
    derived = sum(1 for p in photos if p.note.startswith("derived"))
    detail = (
        f"{len(photos)} photos ({derived} derived from one) → {len(clusters)} people: "
        + "; ".join(albums_text)
    )
    return StepResult(
        "people albums",
        _status(run, ok),
        time.monotonic() - started,
        f"oss://{BUCKET}/{DATASET}/ (dataset {DATASET})",
        detail,
        {**run, "Clusters": clusters},
    )


def _album(client: ImmClient, cluster: dict[str, Any]) -> str:
    query = {"Field": "Figures.FigureClusterId", "Operation": "eq", "Value": cluster["ObjectId"]}
    found = client.call(
        "SimpleQuery", ProjectName=PROJECT, DatasetName=DATASET, Query=query, MaxResults=100
    )
    names = sorted(Path(f["URI"]).name for f in found.get("Files", []))
    cluster["Photos"] = names
    return f"{cluster['ImageCount']} photos ({', '.join(names)})"


def highlight(ctx: DemoContext) -> StepResult:
    video = ctx.drop("media/planted.mp4", demo_media.planted_video)
    target = f"oss://{BUCKET}/out/highlight.mp4"
    started = time.monotonic()
    client = ctx.client()
    created = client.call(
        "CreateHighlightTask",
        ProjectName=PROJECT,
        Type="Retrieval",
        Sources=[{"URI": video}],
        Output={"URI": target, "Container": "mp4", "MaxDuration": HIGHLIGHT_SECONDS},
        Notification=ctx.notification,
    )
    task = wait(client, "Highlight", created["TaskId"])
    window = task.get("Highlight") or {}
    start, length = float(window.get("StartTime", -1)), float(window.get("Duration", 0))
    a, b = demo_media.EVENT
    ok = start + length > a and start < b  # the chosen window overlaps the planted event
    detail = f"window {start:.2f}-{start + length:.2f} s (event planted at {a:g}-{b:g} s)"
    return StepResult(
        "highlight", _status(task, ok), time.monotonic() - started, target, detail, task
    )


def transcript(ctx: DemoContext) -> StepResult:
    wav = ctx.drop("media/speech.wav", demo_media.speech)
    target = f"oss://{BUCKET}/out/speech.srt"
    started = time.monotonic()
    client = ctx.client()
    created = client.call(
        "CreateSpeechRecognitionTask",
        ProjectName=PROJECT,
        SourceURI=wav,
        TargetURI=target,
        Language="en",
        Notification=ctx.notification,
    )
    task = wait(client, "SpeechRecognition", created["TaskId"])
    text = " ".join(str(v) for v in (task.get("Transcript") or {}).values())
    heard = [w for w in demo_media.SPOKEN_WORDS if w in text.lower()]
    ok = len(heard) == len(demo_media.SPOKEN_WORDS)
    detail = f"{task.get('Engine', '?')}: {text.strip()!r}"
    return StepResult(
        "transcript", _status(task, ok), time.monotonic() - started, target, detail, task
    )


def super_resolution(ctx: DemoContext) -> StepResult:
    source = ctx.drop("media/face-small.png", demo_media.sr_image)
    target = f"oss://{BUCKET}/out/face-x2.png"
    started = time.monotonic()
    client = ctx.client()
    created = client.call(
        "CreateVideoSuperResolutionTask",
        ProjectName=PROJECT,
        SourceURI=source,
        TargetURI=target,
        Scale=2,
        Notification=ctx.notification,
    )
    task = wait(client, "VideoSuperResolution", created["TaskId"])
    side = demo_media.SR_SIDE
    size = _image_size(client, target) if task["Status"] == "Succeeded" else (0, 0)
    ok = size == (2 * side, 2 * side)
    detail = f"{side}x{side} → {size[0]}x{size[1]}"
    return StepResult(
        "super-resolution", _status(task, ok), time.monotonic() - started, target, detail, task
    )


def _image_size(client: ImmClient, uri: str) -> tuple[int, int]:
    with Image.open(io.BytesIO(client.get_object(uri))) as image:
        return image.size


def classification(ctx: DemoContext) -> StepResult:
    names = demo_media.classification_images(ctx.oss_root / BUCKET / "images")
    started = time.monotonic()
    client = ctx.client()
    created = client.call(
        "CreateImageClassificationTask",
        ProjectName=PROJECT,
        Sources=[{"URI": f"oss://{BUCKET}/images/{n}"} for n in names],
        TopK=3,
        Notification=ctx.notification,
    )
    task = wait(client, "ImageClassification", created["TaskId"])
    results = task.get("Images") or []
    labels = [f"{Path(r['URI']).name}: {r['ClassName']}" for r in results if r.get("ClassName")]
    ok = len(labels) == len(names)
    return StepResult(
        "image classification",
        _status(task, ok),
        time.monotonic() - started,
        f"oss://{BUCKET}/images/ (labels in GetTask)",
        "; ".join(labels),
        task,
    )


def notifications(
    endpoint: str, key: tuple[str, str], task_ids: set[str], timeout: float = 30.0
) -> StepResult:
    """Receive the tasks' IMM messages from the MNS queue (long polling), delete them."""
    started = time.monotonic()
    queues = MnsQueues(endpoint, key)
    seen: dict[str, str] = {}
    try:
        while set(seen) != task_ids and time.monotonic() - started < timeout:
            message = queues.receive(QUEUE, wait_seconds=5)
            if message is None:
                continue
            queues.delete(QUEUE, message.receipt_handle)
            task_id, event = _task_of(message.body)
            if task_id in task_ids:
                seen[task_id] = event
    finally:
        queues.close()
    ok = set(seen) == task_ids
    events = ", ".join(sorted(set(seen.values())))
    return StepResult(
        "notification (MNS)",
        "Succeeded" if ok else f"Failed ({len(seen)}/{len(task_ids)} received)",
        time.monotonic() - started,
        f"MNS queue {QUEUE} (topic {TOPIC})",
        f"{len(seen)} messages: {events}",
        {"Received": seen},
    )


def _task_of(body: str) -> tuple[str, str]:
    """(TaskId, event type) of an MNS JSON envelope carrying an IMM message."""
    imm = json.loads(json.loads(body)["Message"])
    return str(json.loads(imm["content"]).get("TaskId", "")), str(imm["type"])


def _status(task: dict[str, Any], ok: bool) -> str:
    if task["Status"] != "Succeeded":
        return f"{task['Status']} {task.get('Code', '')}".strip()
    return "Succeeded" if ok else "Succeeded, unexpected output"


def _quiet(done: int, total: int, label: str) -> None:
    """index_folder's progress report: the demo prints its table instead."""
