"""People: a dataset's figure clusters as a grid of faces, a person's photos with the face
boxes drawn, and rename / merge / move-a-face forms — all through the IMM actions."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from pipeline.console import auth, thumbs
from pipeline.console.pages import ConsoleError, call, owner, redirect, render, services, try_call
from pipeline.files import INDEPENDENT

router = APIRouter()
FACE_TEMPLATE = "Official:FaceManagement"
GRID_SIZE = 100
PHOTOS_PER_PAGE = 100
Form_ = Annotated[str, Form()]


async def datasets(request: Request) -> list[dict[str, str]]:
    """Every dataset of the owner as ``{project, dataset, template}``, face datasets first."""
    found: list[dict[str, str]] = []
    listing = await call(request, "ListProjects", MaxResults="200")
    for project in listing.get("Projects", []):
        page = await call(request, "ListDatasets", ProjectName=project["ProjectName"])
        for d in page.get("Datasets", []):
            template = d.get("TemplateId", "")
            found.append(
                {"project": d["ProjectName"], "dataset": d["DatasetName"], "template": template}
            )
    return sorted(found, key=lambda d: (d["template"] != FACE_TEMPLATE, d["project"], d["dataset"]))


def face_url(uri: str, boundary: dict[str, Any] | None, edge: int = 160) -> str:
    query = {"uri": uri, "edge": str(edge)}
    if boundary:
        keys = ("Left", "Top", "Width", "Height")
        query["box"] = ",".join(str(int(boundary.get(k, 0))) for k in keys)
    return "/console/image?" + urlencode(query)


def _cover(cluster: dict[str, Any]) -> str:
    cover = cluster.get("Cover") or {}
    faces = [f for f in cover.get("Figures", []) if f.get("FigureClusterId") == cluster["ObjectId"]]
    if not cover.get("URI"):
        return ""
    return face_url(cover["URI"], faces[0].get("Boundary") if faces else None)


def _person(cluster: dict[str, Any]) -> dict[str, Any]:
    cover = cluster.get("Cover") or {}
    face: dict[str, Any] = next(
        (f for f in cover.get("Figures", []) if f.get("FigureClusterId") == cluster["ObjectId"]),
        {},
    )
    return {
        "id": cluster["ObjectId"],
        "name": cluster.get("Name") or "",
        "photos": cluster.get("ImageCount", 0) + cluster.get("VideoCount", 0),
        "faces": cluster.get("FaceCount", 0),
        "gender": face.get("Gender", ""),
        "age": face.get("Age", ""),
        "cover": _cover(cluster),
        "lock": cluster.get("MetaLockVersion", 0),
    }


def _choose(all_sets: list[dict[str, str]], project: str, dataset: str) -> dict[str, str] | None:
    for d in all_sets:
        if (d["project"], d["dataset"]) == (project, dataset):
            return d
    return all_sets[0] if all_sets and not (project or dataset) else None


@router.get("/people")
async def people_page(request: Request, project: str = "", dataset: str = "") -> Response:
    all_sets = await datasets(request)
    chosen = _choose(all_sets, project, dataset)
    if chosen is None and (project or dataset):
        raise ConsoleError(f"No dataset {project}/{dataset}.", 404)
    clusters: list[dict[str, Any]] = []
    if chosen is not None:
        page = await call(
            request,
            "QueryFigureClusters",
            ProjectName=chosen["project"],
            DatasetName=chosen["dataset"],
            Sort="ImageCount",
            Order="desc",
            MaxResults=str(GRID_SIZE),
        )
        clusters = page.get("FigureClusters", [])
    return render(
        request,
        "people.html",
        datasets=all_sets,
        chosen=chosen,
        people=[_person(c) for c in clusters],
        nav="people",
    )


def photo_view(doc: dict[str, Any], person_id: str) -> dict[str, Any]:
    faces = []
    for fig in doc.get("Figures", []):
        b = fig.get("Boundary") or {}
        faces.append(
            {
                "id": fig.get("FigureId", ""),
                "cluster": fig.get("FigureClusterId", ""),
                "mine": fig.get("FigureClusterId") == person_id,
                "x": b.get("Left", 0),
                "y": b.get("Top", 0),
                "w": b.get("Width", 0),
                "h": b.get("Height", 0),
                "thumb": face_url(doc["URI"], b, 96),
            }
        )
    return {
        "uri": doc["URI"],
        "src": face_url(doc["URI"], None, 640),
        "width": doc.get("ImageWidth") or 0,
        "height": doc.get("ImageHeight") or 0,
        "faces": faces,
        "file_url": "/console/files/view?"
        + urlencode(
            {"project": doc["ProjectName"], "dataset": doc["DatasetName"], "uri": doc["URI"]}
        ),
    }


@router.get("/people/{project}/{dataset}/{cluster_id}")
async def person_page(request: Request, project: str, dataset: str, cluster_id: str) -> Response:
    where = {"ProjectName": project, "DatasetName": dataset}
    cluster = (await call(request, "GetFigureCluster", **where, ObjectId=cluster_id))[
        "FigureCluster"
    ]
    node = {"Field": "Figures.FigureClusterId", "Operation": "eq", "Value": cluster_id}
    found = await call(request, "SimpleQuery", **where, Query=node, MaxResults=str(PHOTOS_PER_PAGE))
    others = await call(
        request, "QueryFigureClusters", **where, Sort="ImageCount", Order="desc", MaxResults="100"
    )
    choices = [_person(c) for c in others.get("FigureClusters", []) if c["ObjectId"] != cluster_id]
    return render(
        request,
        "person.html",
        project=project,
        dataset=dataset,
        person=_person(cluster),
        photos=[photo_view(d, cluster_id) for d in found.get("Files", [])],
        others=choices,
        independent=INDEPENDENT,
        nav="people",
    )


def _person_path(project: str, dataset: str, cluster_id: str) -> str:
    return "/people/" + "/".join(quote(x, safe="") for x in (project, dataset, cluster_id))


@router.post("/people/{project}/{dataset}/{cluster_id}/rename")
async def rename(
    request: Request,
    project: str,
    dataset: str,
    cluster_id: str,
    name: Form_ = "",
    lock: Form_ = "",
    _session: auth.Session = Depends(auth.check_csrf),
) -> Response:
    here = _person_path(project, dataset, cluster_id)
    name = name.strip()
    if not name or len(name) > 256:
        return redirect(here, error="A name needs 1 to 256 characters.")
    value = {"ObjectId": cluster_id, "Name": name, "MetaLockVersion": lock or None}
    value = {k: v for k, v in value.items() if v is not None}
    _, problem = await try_call(
        request,
        "UpdateFigureCluster",
        ProjectName=project,
        DatasetName=dataset,
        FigureCluster=value,
    )
    if problem:
        return redirect(here, error=problem)
    return redirect(here, notice=f"Renamed to {name}.")


@router.post("/people/{project}/{dataset}/{cluster_id}/merge")
async def merge(
    request: Request,
    project: str,
    dataset: str,
    cluster_id: str,
    other: Form_ = "",
    _session: auth.Session = Depends(auth.check_csrf),
) -> Response:
    here = _person_path(project, dataset, cluster_id)
    if not other or other == cluster_id:
        return redirect(here, error="Choose another person to merge into this one.")
    created, problem = await try_call(
        request,
        "CreateFigureClustersMergingTask",
        ProjectName=project,
        DatasetName=dataset,
        To=cluster_id,
        From=other,
    )
    if problem:
        return redirect(here, error=problem)
    task = created.get("TaskId", "")
    return redirect(here, notice=f"Merging: task {task} runs; reload in a moment.")


@router.post("/people/{project}/{dataset}/{cluster_id}/move")
async def move_face(
    request: Request,
    project: str,
    dataset: str,
    cluster_id: str,
    uri: Form_ = "",
    figure: Form_ = "",
    target: Form_ = "",
    _session: auth.Session = Depends(auth.check_csrf),
) -> Response:
    here = _person_path(project, dataset, cluster_id)
    if not (uri and figure and target):
        return redirect(here, error="Choose a face and where to move it.")
    value = {"URI": uri, "Figures": [{"FigureId": figure, "FigureClusterId": target}]}
    _, problem = await try_call(
        request, "UpdateFileMeta", ProjectName=project, DatasetName=dataset, File=value
    )
    if problem:
        return redirect(here, error=problem)
    _, gone = await try_call(
        request, "GetFigureCluster", ProjectName=project, DatasetName=dataset, ObjectId=cluster_id
    )
    if gone:  # its last face moved: the cluster no longer exists (as in IMM)
        grid = "/people?" + urlencode({"project": project, "dataset": dataset})
        return redirect(grid, notice="Face moved; that person had no other face.")
    return redirect(here, notice="Face moved.")


@router.get("/image")
async def image(request: Request, uri: str, box: str = "", edge: int = 160) -> Response:
    """A photo or a face crop (cached JPEG) of an object the owner may read."""
    path = await run_in_threadpool(
        thumbs.image, services(request), owner(request), uri, thumbs.parse_box(box), edge
    )
    return FileResponse(
        path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"}
    )


@router.get("/object")
async def object_(request: Request, uri: str) -> Response:
    """An object itself (audio, video, image) with Range support, for the players."""
    path, media_type = await run_in_threadpool(
        thumbs.original, services(request), owner(request), uri
    )
    headers = dict(thumbs.OBJECT_HEADERS)
    if media_type == thumbs.DOWNLOAD_TYPE:
        headers["Content-Disposition"] = "attachment"
    return FileResponse(path, media_type=media_type, headers=headers)
