"""People albums from a folder of photos, for ``openimm index`` and ``openimm people``.

A client-side workflow over the public API (the same calls an SDK user makes): create the
project and a ``Official:FaceManagement`` dataset if missing, upload the photos, index them in
batches of 100, wait, then run figure clustering. Index responses carry the internal
``TaskId`` (an openimm extension next to IMM's ``EventId``) so progress can be followed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from pipeline.client import ClientError, ImmClient

MEDIA_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".mp4", ".mov", ".mkv"}
)
BATCH = 100
POLL_SECONDS = 0.5


def media_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES
    )


def ensure_dataset(client: ImmClient, project: str, dataset: str) -> None:
    for action, params in (
        ("CreateProject", {"ProjectName": project}),
        (
            "CreateDataset",
            {
                "ProjectName": project,
                "DatasetName": dataset,
                "TemplateId": "Official:FaceManagement",
            },
        ),
    ):
        try:
            client.call(action, **params)
        except ClientError as exc:
            if exc.code != "ResourceAlreadyExists":
                raise


def progress_bar(done: int, total: int, label: str, out: TextIO = sys.stderr) -> None:
    width = 30
    filled = width * done // max(total, 1)
    out.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label}")
    if done >= total:
        out.write("\n")
    out.flush()


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def wait_task(
    client: ImmClient, project: str, task_type: str, task_id: str, timeout: float = 3600
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        task = client.call("GetTask", ProjectName=project, TaskType=task_type, TaskId=task_id)
        if task["Status"] != "Running" or time.monotonic() > deadline:
            return task
        time.sleep(POLL_SECONDS)


def index_folder(
    client: ImmClient,
    folder: Path,
    project: str,
    dataset: str,
    *,
    bucket: str = "openimm-photos",
    report: Callable[[int, int, str], None] = progress_bar,
) -> dict[str, Any]:
    """Upload, index and cluster; returns counts and per-file errors."""
    paths = media_files(folder)
    if not paths:
        raise SystemExit(f"No photos or videos found under {folder}.")
    ensure_dataset(client, project, dataset)
    uris = []
    for n, path in enumerate(paths, 1):
        uri = f"oss://{bucket}/{dataset}/{path.relative_to(folder).as_posix()}"
        client.put_object(uri, path)
        uris.append(uri)
        report(n, len(paths), "uploaded")
    errors: list[dict[str, str]] = []
    done = 0
    for chunk in _chunks(uris, BATCH):
        reply = client.call(
            "BatchIndexFileMeta",
            ProjectName=project,
            DatasetName=dataset,
            Files=[{"URI": u} for u in chunk],
        )
        task = wait_task(client, project, "FileMetaBatchIndex", reply["TaskId"])
        errors += [f for f in task.get("Files", []) if f.get("Error")]
        done += len(chunk)
        report(done, len(uris), "indexed")
    reply = client.call("CreateFigureClusteringTask", ProjectName=project, DatasetName=dataset)
    clustering = wait_task(client, project, "FaceClustering", reply["TaskId"])
    return {"Files": len(uris), "Errors": errors, "Clustering": clustering}


def people(client: ImmClient, project: str, dataset: str) -> list[dict[str, Any]]:
    clusters: list[dict[str, Any]] = []
    token = ""
    while True:
        page = client.call(
            "QueryFigureClusters",
            ProjectName=project,
            DatasetName=dataset,
            Sort="ImageCount",
            Order="desc",
            NextToken=token or None,
        )
        clusters += page["FigureClusters"]
        token = page.get("NextToken", "")
        if not token:
            return clusters
