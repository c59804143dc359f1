"""Media: a viewer per finished media task (highlight next to its source with the window on
the score curve, a transcript whose timestamps seek the audio, super-resolution before/after)
and a playground per EAS service, generated from the job-kind declarations
(``pipeline.jobs``): a later service gets its playground with no console code, and its
answer is drawn by whichever small renderer below recognises its shape (JSON always)."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from pipeline import jobs
from pipeline.api import eas
from pipeline.api.services import Caller
from pipeline.buckets import eas_bucket
from pipeline.console import auth, plots, tasks
from pipeline.console.pages import ConsoleError, call, owner, render, services, try_call
from pipeline.errors import ImmError
from pipeline.params import loads

router = APIRouter()
MEDIA_TASK_TYPES = ("Highlight", "SpeechRecognition", "VideoSuperResolution")
MAX_UPLOAD_BYTES = 20 << 20
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")


def object_url(uri: str) -> str:
    return "/console/object?" + urlencode({"uri": uri})


# ---- renderers: one per result shape --------------------------------------------------------


def _labels(out: dict[str, Any]) -> list[tuple[str, float]] | None:
    probs = out.get("class_probs")
    if isinstance(probs, dict) and probs:
        ranked = sorted(probs.items(), key=lambda kv: -float(kv[1]))[:8]
        return [(str(k), float(v)) for k, v in ranked]
    labels = out.get("Labels")
    if isinstance(labels, list) and labels and all(isinstance(x, dict) for x in labels):
        return [(str(x.get("LabelName")), float(x.get("LabelConfidence", 0))) for x in labels]
    return None


def _boxes(out: dict[str, Any]) -> list[dict[str, Any]] | None:
    found = []
    for value in out.values():
        if isinstance(value, list):
            found += [
                x for x in value if isinstance(x, dict) and isinstance(x.get("Boundary"), dict)
            ]
    return found or None


def _media(out: dict[str, Any]) -> str | None:
    path = out.get("oss_path")
    return object_url(path) if isinstance(path, str) and path.startswith("oss://") else None


def _transcript(out: dict[str, Any]) -> list[tuple[float, str]] | None:
    """Model Hub ``asr`` output: {start µs: text}."""
    # Sentences of one segment are joined by ";" in Model Hub's answer.
    rows = [(int(k) / 1e6, str(v).replace(";", " ")) for k, v in out.items() if str(k).isdigit()]
    return sorted(rows) or None


def _scalars(out: dict[str, Any]) -> list[tuple[str, Any]] | None:
    rows = []
    for key, value in out.items():
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], int | float):
            value = value[0]
        if isinstance(value, int | float) and not isinstance(value, bool):
            rows.append((key, value))
    return rows or None


RENDERERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "labels": _labels,
    "boxes": _boxes,
    "media": _media,
    "transcript": _transcript,
    "scalars": _scalars,
}


def renderings(out: dict[str, Any]) -> dict[str, Any]:
    """Every renderer that recognises ``out``, by name."""
    drawn = {name: fn(out) for name, fn in RENDERERS.items()}
    return {name: value for name, value in drawn.items() if value}


# ---- the playgrounds ------------------------------------------------------------------------


def playgrounds() -> list[dict[str, Any]]:
    """One playground per EAS service that a job kind declares and the API serves."""
    out = []
    for kind in jobs.KINDS:
        for name in kind.services:
            if name in eas.SERVICES:
                media = sorted(kind.spec.media) or ["any"]
                pair = kind.spec.max_sources == 2 and media == ["image"]
                out.append(
                    {"name": name, "task_type": kind.task_type, "media": media, "pair": pair}
                )
    return out


def _playground(name: str) -> dict[str, Any]:
    found = next((p for p in playgrounds() if p["name"] == name), None)
    if found is None:
        raise ConsoleError(f"No EAS service {name[:64]}.", 404)
    return found


async def _stage(request: Request, upload: UploadFile) -> str:
    """Store an uploaded file in the owner's EAS bucket; its oss:// URI."""
    data = await upload.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise ConsoleError(f"Uploads are limited to {MAX_UPLOAD_BYTES >> 20} MiB here.", 413)
    if not data:
        raise ConsoleError("The uploaded file is empty.")
    svc = services(request)
    bucket = eas_bucket(svc.settings.eas_output_bucket, owner(request))
    suffix = PurePosixPath(upload.filename or "").suffix.lower()[:8]
    key = f"console/{uuid.uuid4().hex}{suffix}"
    await run_in_threadpool(svc.store_for(owner(request)).put_bytes, bucket, key, data)
    return f"oss://{bucket}/{key}"


async def _payload(request: Request, pg: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The Model Hub body from the form (uploaded files, or JSON typed in); the input's URI."""
    form = await request.form()
    typed = str(form.get("body", "")).strip()
    uploads = [f for f in (form.get("file"), form.get("file2")) if isinstance(f, UploadFile)]
    uploads = [f for f in uploads if f.filename]
    if pg["pair"] and len(uploads) == 2:
        first, second = [base64.b64encode(await f.read(MAX_UPLOAD_BYTES)).decode() for f in uploads]
        return {"imagea": first, "imageb": second}, ""
    if uploads:
        uri = await _stage(request, uploads[0])
        return {"input": {"url": uri}}, uri
    if not typed:
        raise ConsoleError("Choose a file, or type a JSON body.")
    try:
        body = loads(typed)
    except ValueError as exc:
        raise ConsoleError(f"The body is not JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise ConsoleError('The body must be a JSON object like {"input": {"url": "oss://…"}}.')
    url = (body.get("input") or {}).get("url", "") if isinstance(body.get("input"), dict) else ""
    return body, str(url)


@router.get("/media")
async def media_page(request: Request) -> Response:
    rows: list[dict[str, Any]] = []
    listing = await call(request, "ListProjects", MaxResults="200")
    for project in listing.get("Projects", []):
        name = project["ProjectName"]
        page, _ = await try_call(
            request,
            "ListTasks",
            ProjectName=name,
            TaskTypes=list(MEDIA_TASK_TYPES),
            Sort="StartTime",
            Order="desc",
            MaxResults="20",
        )
        rows += [{**t, "ProjectName": name} for t in page.get("Tasks", [])]
    rows.sort(key=lambda t: t.get("StartTime", ""), reverse=True)
    return render(request, "media.html", services=playgrounds(), tasks=rows[:30], nav="media")


@router.get("/media/playground/{name}")
async def playground_page(request: Request, name: str) -> Response:
    return render(request, "playground.html", pg=_playground(name), nav="media")


@router.post("/media/playground/{name}")
async def playground_run(
    request: Request, name: str, _session: auth.Session = Depends(auth.check_csrf)
) -> Response:
    pg = _playground(name)
    body, input_uri = await _payload(request, pg)
    caller = Caller(owner=owner(request), request_id=request.state.request_id)
    try:
        out = await run_in_threadpool(eas.run, services(request), caller, eas.SERVICES[name], body)
    except ImmError as exc:
        out = eas.failure(caller.request_id, exc.code, exc.message, exc.http_status)
    image = object_url(input_uri) if input_uri.lower().endswith(IMAGE_SUFFIXES) else ""
    return render(
        request,
        "playground.html",
        pg=pg,
        body=json.dumps(body)[:2000] if "imagea" not in body else "(two images)",
        out=out,
        drawn=renderings(out),
        input_image=image,
        nav="media",
    )


# ---- viewers of finished media tasks --------------------------------------------------------


def _highlight(task: dict[str, Any]) -> dict[str, Any]:
    chosen = task.get("Highlight") or {}
    segments = task.get("Segments") or []
    times = [float(s["StartTime"]) for s in segments]
    scores = [float(s["Score"]) for s in segments]
    start = float(chosen.get("StartTime", 0))
    window = (start, start + float(chosen.get("Duration", 0)))
    return {
        "source": object_url(chosen.get("SourceURI", "")) if chosen.get("SourceURI") else "",
        "output": object_url((task.get("Output") or {}).get("URI", "")),
        "plot": plots.score_plot(times, scores, [window]),
        "window": window,
    }


def _speech(task: dict[str, Any], request_def: dict[str, Any]) -> dict[str, Any]:
    lines = _transcript(task.get("Transcript") or {}) or []
    return {"source": object_url(request_def.get("SourceURI", "")), "lines": lines}


def _super_resolution(task: dict[str, Any], request_def: dict[str, Any]) -> dict[str, Any]:
    source = request_def.get("SourceURI", "")
    target = (task.get("Output") or {}).get("URI") or task.get("TargetURI", "")
    is_image = str(target).lower().endswith(IMAGE_SUFFIXES)
    return {"before": object_url(source), "after": object_url(target), "image": is_image}


@router.get("/media/view/{project}/{task_id}")
async def view_task(request: Request, project: str, task_id: str) -> Response:
    task = await tasks.get_task(request, project, task_id)
    request_def = json.loads(task.get("TaskRequestDefinition") or "{}")
    kind = task.get("TaskType", "")
    view: dict[str, Any] = {}
    if task.get("Status") == "Succeeded":
        if kind == "Highlight":
            view = _highlight(task)
        elif kind == "SpeechRecognition":
            view = _speech(task, request_def)
        elif kind == "VideoSuperResolution":
            view = _super_resolution(task, request_def)
    return render(
        request, "media_view.html", project=project, task=task, kind=kind, view=view, nav="media"
    )
