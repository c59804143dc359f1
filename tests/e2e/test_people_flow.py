"""The seed-004 flow with the official SDKs against real API, worker and dispatcher processes
on PostgreSQL + Redis: FaceManagement dataset → BatchIndexFileMeta (MNS notification) →
imm:FileMeta:Index (as seed 004's sample of that call) → CreateFigureClusteringTask →
imm:Task:FigureClustering → QueryFigureClusters → SimpleQuery on Figures.FigureClusterId;
then an incremental run, a stale MetaLockVersion, and deletes that empty the cluster.

Photos are generated from the committed astronaut fixture (NASA, public domain): the same
person in several framings, plus a group photo holding her twice, a corrupt JPEG, a text file
and a missing object."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alibabacloud_imm20200930 import models as m
from alibabacloud_imm20200930.client import Client as ImmSdk
from mns.account import Account
from mns.mns_exception import MNSServerException
from mns.queue import Queue, QueueMeta
from mns.subscription import SubscriptionMeta
from mns.topic import TopicMeta
from PIL import Image, ImageEnhance
from Tea.exceptions import TeaException

from tests.e2e.stack import ACCOUNT_ID, KEY_ID, KEY_SECRET, Stack, imm_sdk, launch, wait_until
from tests.realservices import PostgresServer, RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "astronaut.png"
PROJECT, DATASET, BUCKET = "albums", "family", "photos"
# Shapes of seed 004's samples.
EVENT_ID_RE = re.compile(r"^[0-9A-F]{3}-[0-9A-Za-z]{27}$")  # "077-1x2s0rqA6ZOENW6gjAiN5Dl796T"
MESSAGE_ID_RE = re.compile(r"^[0-9A-F]{32}$")  # "129D772E14277FA6182D6E67D354D069"
TASK_ID_RE = re.compile(r"^CreateFigureClusteringTask-[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$")
INDEX_TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+[+-]\d\d:\d\d$")
TASK_TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z$")
MESSAGE_DEADLINE_S = 120.0  # per message; a loaded 2-core machine may index slowly


@pytest.fixture(scope="module")
def stack(
    postgres_server: PostgresServer,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    stack = launch(
        tmp_path_factory.mktemp("people"),
        database_url=postgres_server.create_database("people_e2e"),
        broker_url=redis_server.url(9),
        redis_url=redis_server.url(8),
        dispatcher=True,
        region="cn-local",
    )
    yield stack
    stack.stop_all()


def _photos(folder: Path) -> list[str]:
    """Variants of one face, each a separate photo; names returned in index order."""
    folder.mkdir(parents=True, exist_ok=True)
    base = Image.open(FIXTURE).convert("RGB")
    w, h = base.size
    variants = {
        "p1.jpg": base,
        "p2.jpg": base.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        "p3.jpg": base.resize((int(w * 1.3), int(h * 1.3))),
        "p4.jpg": ImageEnhance.Brightness(base).enhance(1.15),
        "p5.jpg": base.crop((40, 0, w, h - 60)),
    }
    group = Image.new("RGB", (w * 2, h))
    group.paste(base, (0, 0))
    group.paste(variants["p2.jpg"], (w, 0))
    variants["group.jpg"] = group
    for name, img in variants.items():
        img.save(folder / name, quality=92)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00garbage" * 50)
    (folder / "notes.txt").write_text("not a photo")
    return list(variants)


def _queue(stack: Stack) -> Queue:
    account = Account(f"http://{stack.endpoint}", KEY_ID, KEY_SECRET)
    queue = account.get_queue("albums-events")
    queue.create(QueueMeta())
    queue.set_encoding(False)
    topic = account.get_topic("albums")
    topic.create(TopicMeta())
    topic.get_subscription("q").subscribe(
        # as IMM users write it: the numeric account id, not the AccessKeyId
        SubscriptionMeta(endpoint=f"acs:mns:cn-local:{ACCOUNT_ID}:queues/albums-events")
    )
    return queue


def _receive(queue: Queue, deadline: float) -> Any:
    """The next message, long-polling until ``deadline`` (a loaded CI machine may index the
    photos for longer than one 30 s poll)."""
    while True:
        try:
            return queue.receive_message(wait_seconds=30)
        except MNSServerException as exc:
            if exc.type != "MessageNotExist" or time.monotonic() > deadline:
                raise


def _next_message(queue: Queue) -> tuple[dict[str, Any], dict[str, Any]]:
    """(IMM body, content) of the next message; deleted once read. The envelope and body
    fields every message shares are checked against the seed's samples here."""
    msg = _receive(queue, deadline=time.monotonic() + MESSAGE_DEADLINE_S)
    queue.delete_message(msg.receipt_handle)
    envelope = json.loads(msg.message_body)
    assert (envelope["TopicOwner"], envelope["Subscriber"]) == (ACCOUNT_ID, ACCOUNT_ID)
    assert (envelope["TopicName"], envelope["SubscriptionName"]) == ("albums", "q")
    assert MESSAGE_ID_RE.match(envelope["MessageId"]) and envelope["PublishTime"].isdigit()
    body = json.loads(envelope["Message"])
    assert EVENT_ID_RE.match(body["id"]) and body["source"] == "acs.imm"
    assert body["subject"] == f"acs:imm:cn-local:{ACCOUNT_ID}:{PROJECT}/{body['type']}"
    return body, json.loads(body["content"])


def _index(sdk: ImmSdk, uris: list[str], user_data: str) -> str:
    reply = sdk.batch_index_file_meta(
        m.BatchIndexFileMetaRequest(
            project_name=PROJECT,
            dataset_name=DATASET,
            files=[m.InputFile(uri=u, custom_labels={"album": "trip"}) for u in uris],
            notification=m.Notification(mns=m.MNS(topic_name="albums")),
            user_data=user_data,
        )
    ).body
    assert reply.event_id
    return str(reply.event_id)


def _cluster(sdk: ImmSdk, queue: Queue) -> dict[str, Any]:
    created = sdk.create_figure_clustering_task(
        m.CreateFigureClusteringTaskRequest(
            project_name=PROJECT,
            dataset_name=DATASET,
            notification=m.Notification(mns=m.MNS(topic_name="albums")),
            user_data="cluster-run",
        )
    ).body
    body, content = _next_message(queue)
    assert body["type"] == "imm:Task:FigureClustering" and body["id"] == created.event_id
    assert TASK_ID_RE.match(created.task_id) and content["TaskId"] == created.task_id
    assert (content["Status"], content["Code"], content["Message"]) == ("Succeeded", "", "Success")
    assert content["TaskType"] == "FaceClustering" and content["DatasetName"] == DATASET
    assert TASK_TIME_RE.match(content["StartTime"]) and TASK_TIME_RE.match(content["EndTime"])
    assert content["UserData"] == "cluster-run" and content["EventSourceId"] == ""
    task = sdk.get_task(
        m.GetTaskRequest(project_name=PROJECT, task_type="FaceClustering", task_id=created.task_id)
    ).body
    assert (task.status, task.message) == ("Succeeded", "Success")
    return content


def test_people_albums_flow(stack: Stack) -> None:
    sdk = imm_sdk(stack.endpoint)
    queue = _queue(stack)
    names = _photos(stack.data_dir / "oss" / BUCKET)
    sdk.create_project(m.CreateProjectRequest(project_name=PROJECT))
    sdk.create_dataset(
        m.CreateDatasetRequest(
            project_name=PROJECT, dataset_name=DATASET, template_id="Official:FaceManagement"
        )
    )
    first = [f"oss://{BUCKET}/{n}" for n in names if n != "p5.jpg"]
    bad = [f"oss://{BUCKET}/corrupt.jpg", f"oss://{BUCKET}/notes.txt", f"oss://{BUCKET}/nope.jpg"]
    event_id = _index(sdk, first + bad, "batch-1")

    # imm:FileMeta:Index (seed 004's BatchIndexFileMeta sample): no TaskId/Status, Success,
    # the indexer's summary, per-file "[Code] message", times with the server's offset
    body, content = _next_message(queue)
    assert (body["type"], body["id"]) == ("imm:FileMeta:Index", event_id)
    assert "TaskId" not in content and content["Success"] is True
    assert (content["ProjectName"], content["DatasetName"]) == (PROJECT, DATASET)
    assert content["Message"] == "3 of 8 files failed." and content["UserData"] == "batch-1"
    assert INDEX_TIME_RE.match(content["StartTime"]) and INDEX_TIME_RE.match(content["EndTime"])
    errors = {f["URI"].rsplit("/", 1)[1]: f["Error"] for f in content["Files"]}
    assert all(errors[n] == "" for n in names if n != "p5.jpg")
    assert (
        errors["corrupt.jpg"].startswith("[InvalidArgument] ") and "image" in errors["corrupt.jpg"]
    )
    assert errors["notes.txt"].startswith("[InvalidArgument] Unsupported file type")
    assert errors["nope.jpg"] == "[InvalidArgument] File does not exist."
    assert all(f["CustomLabels"] == {"album": "trip"} for f in content["Files"])

    meta = sdk.get_file_meta(
        m.GetFileMetaRequest(project_name=PROJECT, dataset_name=DATASET, uri=first[0])
    ).body.files[0]
    assert (meta.image_width, meta.image_height, meta.media_type) == (512, 512, "image")
    assert meta.content_type == "image/jpeg" and meta.custom_labels == {"album": "trip"}
    assert meta.owner_id == ACCOUNT_ID and meta.orientation == 0  # no EXIF orientation
    assert re.fullmatch(r"[0-9A-F]{32}", meta.file_hash) and meta.etag == f'"{meta.file_hash}"'
    assert len(meta.figures) == 1
    face = meta.figures[0]
    assert face.figure_cluster_id == "figure-cluster-id-unavailable"
    assert face.boundary.width > 75 and face.face_quality > 0.8

    # First clustering run: one person; the group photo's second face cannot join her.
    run = _cluster(sdk, queue)
    assert run["NewClusterCount"] == 1 and run["UpdatedClusterCount"] == 0
    assert run["UpdatedFigureCount"] == 6  # 5 faces placed + 1 left independent
    (cluster_id,) = run["NewClusterIds"]
    assert cluster_id.startswith("Cluster-")
    clusters = sdk.query_figure_clusters(
        m.QueryFigureClustersRequest(
            project_name=PROJECT, dataset_name=DATASET, with_total_count=True
        )
    ).body
    assert clusters.total_count == 1
    cluster = clusters.figure_clusters[0]
    assert (cluster.object_id, cluster.face_count, cluster.image_count) == (cluster_id, 5, 5)
    assert cluster.meta_lock_version == 0 and cluster.cover.figures[0].figure_id
    assert cluster.owner_id == ACCOUNT_ID and cluster.cover.owner_id == ACCOUNT_ID

    found = sdk.simple_query(
        m.SimpleQueryRequest(
            project_name=PROJECT,
            dataset_name=DATASET,
            query=m.SimpleQuery(field="Figures.FigureClusterId", operation="eq", value=cluster_id),
            max_results=100,
        )
    ).body
    assert found.total_hits == 5
    assert {f.uri.rsplit("/", 1)[1] for f in found.files} == {
        "p1.jpg",
        "p2.jpg",
        "p3.jpg",
        "p4.jpg",
        "group.jpg",
    }
    group = next(f for f in found.files if f.uri.endswith("group.jpg"))
    assert sorted(f.figure_cluster_id for f in group.figures) == sorted(
        [cluster_id, "figure-cluster-id-independent"]
    )

    # Naming survives; a stale MetaLockVersion is a conflict.
    sdk.update_figure_cluster(
        m.UpdateFigureClusterRequest(
            project_name=PROJECT,
            dataset_name=DATASET,
            figure_cluster=m.FigureClusterForReq(
                object_id=cluster_id, name="Eileen", meta_lock_version=0
            ),
        )
    )
    with pytest.raises(TeaException) as info:
        sdk.update_figure_cluster(
            m.UpdateFigureClusterRequest(
                project_name=PROJECT,
                dataset_name=DATASET,
                figure_cluster=m.FigureClusterForReq(
                    object_id=cluster_id, name="X", meta_lock_version=0
                ),
            )
        )
    assert info.value.code == "StatusConflict"

    # Which cluster is the face in this photo? (synchronous) and the most similar faces (task).
    hits = sdk.search_image_figure_cluster(
        m.SearchImageFigureClusterRequest(
            project_name=PROJECT, dataset_name=DATASET, source_uri=f"oss://{BUCKET}/p5.jpg"
        )
    ).body.clusters
    assert [h.cluster_id for h in hits] == [cluster_id] and hits[0].similarity > 0.5
    searching = sdk.create_faces_searching_task(
        m.CreateFacesSearchingTaskRequest(
            project_name=PROJECT,
            dataset_name=DATASET,
            sources=[m.CreateFacesSearchingTaskRequestSources(uri=f"oss://{BUCKET}/p5.jpg")],
            max_result=3,
            notification=m.Notification(mns=m.MNS(topic_name="albums")),
        )
    ).body
    body, content = _next_message(queue)
    assert body["type"] == "imm:Task:FacesSearching" and content["TaskId"] == searching.task_id
    (found_faces,) = content["SimilarFaces"]
    similar = found_faces["SimilarFaces"]
    assert len(similar) == 3 and all(0.5 < f["Similarity"] <= 1 for f in similar)
    assert similar == sorted(similar, key=lambda f: -f["Similarity"])

    # Incremental: one new photo joins the existing, named cluster.
    _index(sdk, [f"oss://{BUCKET}/p5.jpg"], "batch-2")
    _next_message(queue)
    run = _cluster(sdk, queue)
    assert (run["NewClusterCount"], run["UpdatedClusterCount"], run["UpdatedFigureCount"]) == (
        0,
        1,
        1,
    )
    assert run["UpdatedClusterIds"] == [cluster_id]
    got = sdk.get_figure_cluster(
        m.GetFigureClusterRequest(project_name=PROJECT, dataset_name=DATASET, object_id=cluster_id)
    ).body.figure_cluster
    assert (got.name, got.face_count, got.meta_lock_version) == ("Eileen", 6, 1)

    # Deleting every photo of the person removes the cluster.
    sdk.batch_delete_file_meta(
        m.BatchDeleteFileMetaRequest(
            project_name=PROJECT,
            dataset_name=DATASET,
            uris=[f"oss://{BUCKET}/{n}" for n in names],
        )
    )
    left = sdk.query_figure_clusters(
        m.QueryFigureClustersRequest(project_name=PROJECT, dataset_name=DATASET)
    ).body
    assert left.figure_clusters == [] or left.figure_clusters is None


def test_video_faces_and_probe(stack: Stack) -> None:
    """A video gets ffprobe fields and one figure per person across its sampled frames."""
    import subprocess

    sdk = imm_sdk(stack.endpoint)
    folder = stack.data_dir / "oss" / BUCKET
    folder.mkdir(parents=True, exist_ok=True)
    clip = folder / "clip.mp4"
    video_in = ["-loop", "1", "-t", "3", "-i", str(FIXTURE)]
    audio_in = ["-f", "lavfi", "-t", "3", "-i", "sine=frequency=440:sample_rate=16000"]
    encode = ["-r", "5", "-pix_fmt", "yuv420p", "-c:v", "libx264", "-c:a", "aac", str(clip)]
    subprocess.run(["ffmpeg", "-v", "error", "-y", *video_in, *audio_in, *encode], check=True)
    sdk.create_dataset(
        m.CreateDatasetRequest(
            project_name=PROJECT, dataset_name="clips", template_id="Official:FaceManagement"
        )
    )
    client = _client(stack)
    reply = client.call(
        "IndexFileMeta",
        ProjectName=PROJECT,
        DatasetName="clips",
        File={"URI": f"oss://{BUCKET}/clip.mp4"},
    )
    task = wait_until(
        lambda: _done(client, reply["TaskId"], "FileMetaIndex"), 120, what="video indexed"
    )
    assert task["Status"] == "Succeeded" and task["Files"][0]["Error"] == ""
    meta = sdk.get_file_meta(
        m.GetFileMetaRequest(
            project_name=PROJECT, dataset_name="clips", uri=f"oss://{BUCKET}/clip.mp4"
        )
    ).body.files[0]
    assert meta.media_type == "video" and meta.content_type == "video/mp4"
    assert abs(meta.duration - 3) < 0.5 and (meta.video_width, meta.video_height) == (512, 512)
    assert [s.codec_name for s in meta.audio_streams] == ["aac"]
    assert len(meta.figures) == 1  # one person across all sampled frames


def _client(stack: Stack) -> Any:
    from pipeline.client import ImmClient

    return ImmClient(stack.endpoint, (KEY_ID, KEY_SECRET))


def _done(client: Any, task_id: str, task_type: str) -> dict[str, Any] | None:
    task = client.call("GetTask", ProjectName=PROJECT, TaskType=task_type, TaskId=task_id)
    return task if task["Status"] != "Running" else None


def test_cli_index_and_people(stack: Stack, tmp_path: Path) -> None:
    """`openimm index ./photos --dataset d` then `openimm people --dataset d`."""
    import subprocess
    import sys

    folder = tmp_path / "my photos"
    names = _photos(folder)
    for extra in ("corrupt.jpg", "notes.txt", "group.jpg"):
        (folder / extra).unlink()
    run = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "index", str(folder), "--dataset", "cli"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert f"indexed {len(names) - 1}/{len(names) - 1} files" in run.stdout
    assert "clustering Succeeded: 1 new people" in run.stdout
    assert "indexed" in run.stderr and "#" in run.stderr  # the progress bar
    people = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "people", "--dataset", "cli", "--json"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    clusters = json.loads(people.stdout)
    assert [(c["ImageCount"], c["FaceCount"]) for c in clusters] == [(5, 5)]
