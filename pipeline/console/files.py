"""Files: SimpleQuery search (free text over names, labels and OCR text, a label, a media
type, or a SimpleQuery of one's own) and a file's page with its faces, labels, EXIF, OCR text
and the tasks that named it."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from pipeline import jobs
from pipeline.console.pages import ConsoleError, call, render, try_call
from pipeline.console.people import datasets, photo_view
from pipeline.params import loads

router = APIRouter()
TEXT_FIELDS = ("Filename", "Labels.LabelName", "OCRContents.Contents", "URI")
MEDIA_TYPES = ("", "image", "video", "audio", "document", "other")
RESULTS = 60


def build_query(text: str, label: str, media: str, raw: str) -> dict[str, Any] | None:
    """The SimpleQuery node of the search form (None: every file)."""
    if raw.strip():
        try:
            node = loads(raw)
        except ValueError as exc:
            raise ConsoleError(f"The query is not JSON: {exc}.") from None
        if not isinstance(node, dict):
            raise ConsoleError('A SimpleQuery is a JSON object like {"Field": …}.')
        return node
    parts: list[dict[str, Any]] = []
    if text.strip():
        value = text.strip()
        parts.append(
            {
                "Operation": "or",
                "SubQueries": [
                    {"Field": f, "Operation": "match-phrase", "Value": value} for f in TEXT_FIELDS
                ],
            }
        )
    if label.strip():
        parts.append({"Field": "Labels.LabelName", "Operation": "eq", "Value": label.strip()})
    if media:
        if media not in MEDIA_TYPES:
            raise ConsoleError(f"Media type must be one of {', '.join(MEDIA_TYPES[1:])}.")
        parts.append({"Field": "MediaType", "Operation": "eq", "Value": media})
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else {"Operation": "and", "SubQueries": parts}


def _card(doc: dict[str, Any]) -> dict[str, Any]:
    photo = photo_view(doc, "") if doc.get("MediaType") == "image" else {}
    labels = [x.get("LabelName", "") for x in doc.get("Labels", [])[:4]]
    return {"doc": doc, "photo": photo, "labels": labels}


@router.get("/files")
async def files_page(
    request: Request,
    project: str = "",
    dataset: str = "",
    text: str = "",
    label: str = "",
    media: str = "",
    query: str = "",
) -> Response:
    all_sets = await datasets(request)
    chosen = next(
        (d for d in all_sets if (d["project"], d["dataset"]) == (project, dataset)),
        all_sets[0] if all_sets and not project else None,
    )
    results: list[dict[str, Any]] = []
    total, problem = 0, ""
    node = build_query(text, label, media, query)
    if chosen is not None:
        found, problem = await try_call(
            request,
            "SimpleQuery",
            ProjectName=chosen["project"],
            DatasetName=chosen["dataset"],
            Query=node,
            MaxResults=str(RESULTS),
        )
        results = [_card(d) for d in found.get("Files", [])]
        total = found.get("TotalHits", len(results))
    form = {"text": text, "label": label, "media": media, "query": query}
    return render(
        request,
        "files.html",
        datasets=all_sets,
        chosen=chosen,
        results=results,
        total=total,
        form=form,
        media_types=MEDIA_TYPES,
        error=problem or request.query_params.get("error", ""),
        nav="files",
    )


async def _jobs_on(request: Request, project: str, uri: str) -> list[dict[str, Any]]:
    """Recent tasks of the project whose request names ``uri``."""
    listed, _ = await try_call(
        request,
        "ListTasks",
        ProjectName=project,
        TaskTypes=[k.task_type for k in jobs.KINDS],  # the unlisted index tasks too
        Sort="StartTime",
        Order="desc",
        MaxResults="100",
        RequestDefinition="true",
    )
    return [t for t in listed.get("Tasks", []) if uri in t.get("TaskRequestDefinition", "")]


@router.get("/files/view")
async def file_page(request: Request, project: str, dataset: str, uri: str) -> Response:
    got = await call(request, "GetFileMeta", ProjectName=project, DatasetName=dataset, URI=uri)
    if not got.get("Files"):
        raise ConsoleError(f"No file {uri[:200]} in {project}/{dataset}.", 404)
    doc = got["Files"][0]
    exif: Any = doc.get("EXIF", "")
    if isinstance(exif, str) and exif:
        with contextlib.suppress(ValueError):
            exif = json.loads(exif)
    ids = sorted({f.get("FigureClusterId", "") for f in doc.get("Figures", [])} - {""})
    named, _ = await try_call(
        request, "BatchGetFigureCluster", ProjectName=project, DatasetName=dataset, ObjectIds=ids
    )
    names = {c["ObjectId"]: c.get("Name") or "Unnamed" for c in named.get("FigureClusters", [])}
    ocr = " ".join(str(o.get("Contents", "")) for o in doc.get("OCRContents", []) or [])
    return render(
        request,
        "file.html",
        project=project,
        dataset=dataset,
        doc=doc,
        photo=photo_view(doc, "") if doc.get("MediaType") == "image" else {},
        exif=exif,
        ocr=ocr,
        names=names,
        jobs=await _jobs_on(request, project, uri),
        nav="files",
    )
