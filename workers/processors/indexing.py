"""IndexFileMeta / BatchIndexFileMeta: probe each file, detect faces when the dataset's
template asks for them, then store every successful file in the transaction that ends the
job. Per-file failures do not fail the job: they are reported as IMM does, ``[Code] message``.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import figure_store, files, projects
from pipeline.errors import ImmError, InvalidArgument
from workers.context import JobContext, Transactional
from workers.media import probe

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

log = logging.getLogger("openimm.indexing")

# Templates (reference §3.2) whose operators include face detection.
FACE_TEMPLATES = frozenset(
    {
        "Official:FaceManagement",
        "Official:ImageManagement",
        "Official:CognitionImageManagement",
        "Official:AllFunction",
    }
)
# Templates whose operators include image labels (reference §3.2: ImageManagement = "size,
# location, faces, labels"; Cognition adds semantic understanding on top).
LABEL_TEMPLATES = frozenset(
    {"Official:ImageManagement", "Official:CognitionImageManagement", "Official:AllFunction"}
)
# IMM's group-formation rule for figure clustering (reference §3.6).
MIN_FACE_PX = 75
MAX_POSE_DEGREES = 30.0
MIN_QUALITY = 0.8
# Faces of one person across sampled video frames closer than this are one figure.
VIDEO_TRACK_DISTANCE = 0.45


@dataclass(frozen=True)
class Operators:
    """What the dataset's template runs at index time beyond the basic meta."""

    faces: bool = False
    labels: bool = False


@dataclass
class Outcome:
    uri: str
    user: dict[str, Any]
    indexed: files.Indexed | None = None
    error: str = ""


def process(ctx: JobContext) -> Transactional:
    request = ctx.request
    template = request.get("TemplateId", "")
    ops = Operators(faces=template in FACE_TEMPLATES, labels=template in LABEL_TEMPLATES)
    outcomes = []
    entries = request["Files"]
    for n, entry in enumerate(entries):
        outcomes.append(_index_one(ctx, entry, n, ops))
        ctx.progress(int(90 * (n + 1) / len(entries)))
    return Transactional(lambda session: _store(session, ctx.request, outcomes))


def _index_one(ctx: JobContext, entry: dict[str, Any], n: int, ops: Operators) -> Outcome:
    uri = entry["URI"]
    out = Outcome(uri=uri, user=entry)
    try:
        local = ctx.media.fetch(uri, ctx.workdir / f"in{n}")
        out.indexed = analyse(ctx, local, uri, ops)
        out.indexed.user = entry
    except ImmError as exc:
        out.error = _file_error(exc)
    except Exception as exc:  # one bad file must not lose the batch
        log.exception("indexing %s failed", uri)
        out.error = f"[InternalError] {type(exc).__name__}: {exc}"
    return out


def _file_error(exc: ImmError) -> str:
    """``[Code] message``; a missing input reads as IMM's own "[InvalidArgument] File does
    not exist." whatever store reported it."""
    if exc.code in ("ObjectNotFound", "ResourceNotFound"):
        return "[InvalidArgument] File does not exist."
    return f"[{exc.code}] {exc.message}"


def analyse(ctx: JobContext, path: Path, uri: str, ops: Operators) -> files.Indexed:
    doc = probe.basics(path, uri)
    kind = doc["MediaType"]
    if kind == "image":
        doc.update(probe.image_fields(path, ctx.settings.image_max_pixels))
    elif kind in ("video", "audio") or doc["ContentType"] == "application/octet-stream":
        if kind == "other":
            kind = _maybe_media(path, doc)
        else:
            doc.update(probe.ffprobe(path))
        kind = doc["MediaType"]
    if ops.faces and kind not in ("image", "video"):
        raise InvalidArgument(
            f"Unsupported file type {doc['ContentType']}: the dataset's template indexes "
            "images and videos."
        )
    faces = None
    if ops.faces:
        faces = _image_faces(ctx, path) if kind == "image" else _video_faces(ctx, path)
    if ops.labels and kind == "image":
        doc["Labels"] = _image_labels(ctx, path)
    return files.Indexed(uri=uri, media_type=kind, size=doc["Size"], doc=doc, faces=faces)


def _image_labels(ctx: JobContext, path: Path) -> list[dict[str, Any]]:
    """IMM ``Labels`` (levels 1-3) from the ImageNet classifier (workers.models.imagenet)."""
    from workers import models
    from workers.media import imaging
    from workers.models.imagenet import DECODE_AT_LEAST, ImageNetModel, imm_labels

    image, _ = imaging.load_upright(path, ctx.settings.image_max_pixels, reduce_to=DECODE_AT_LEAST)
    (result,) = models.get(ImageNetModel, ctx.device).classify([image])
    return imm_labels(result.probs)


def _maybe_media(path: Path, doc: dict[str, Any]) -> str:
    """Unknown magic: let ffprobe decide (many containers have no fixed signature)."""
    try:
        doc.update(probe.ffprobe(path))
    except InvalidArgument:
        return "other"
    return str(doc["MediaType"])


# ---- faces ----------------------------------------------------------------------------------


def _analyzer(ctx: JobContext) -> Any:
    from workers import models
    from workers.models.faces import FaceAnalyzer  # dlib loads on first use in this process

    settings = ctx.settings
    return models.get(
        FaceAnalyzer, detector=settings.face_detector, max_side=settings.face_max_side
    )


def _image_faces(ctx: JobContext, path: Path) -> list[files.NewFace]:
    from workers.models import faces

    rgb, _info = faces.load_image(path, ctx.settings.image_max_pixels)
    return [_new_face(face) for face in _analyzer(ctx).analyze(rgb)]


def _video_faces(ctx: JobContext, path: Path) -> list[files.NewFace]:
    """Faces from sampled frames; one figure per person (the best-quality sighting)."""
    from workers.models import faces

    frames = faces.sample_video_frames(
        path,
        every_seconds=ctx.settings.video_face_interval_seconds,
        max_frames=ctx.settings.video_face_max_frames,
    )
    analyzer = _analyzer(ctx)
    tracks: list[list[Any]] = []
    for _ms, rgb in frames:
        for face in analyzer.analyze(rgb):
            _add_to_track(tracks, face)
    return [_new_face(max(track, key=lambda f: f.quality)) for track in tracks]


def _add_to_track(tracks: list[list[Any]], face: Any) -> None:
    for track in tracks:
        if float(np.linalg.norm(track[0].embedding - face.embedding)) < VIDEO_TRACK_DISTANCE:
            track.append(face)
            return
    tracks.append([face])


def qualifies(face: Any) -> bool:
    """IMM's rule for faces that may found a cluster (reference §3.6)."""
    return (
        face.width > MIN_FACE_PX
        and face.height > MIN_FACE_PX
        and max(abs(face.pitch), abs(face.roll), abs(face.yaw)) < MAX_POSE_DEGREES
        and face.quality > MIN_QUALITY
    )


def _new_face(face: Any) -> files.NewFace:
    attrs = {
        "FigureConfidence": round(float(face.confidence), 4),
        "Boundary": {
            "Left": int(face.left),
            "Top": int(face.top),
            "Width": int(face.width),
            "Height": int(face.height),
        },
        "HeadPose": {
            "Pitch": round(float(face.pitch), 2),
            "Roll": round(float(face.roll), 2),
            "Yaw": round(float(face.yaw), 2),
        },
        "FaceQuality": round(float(face.quality), 4),
        "Sharpness": round(float(face.sharpness), 4),
    }
    return files.NewFace(
        figure_id=str(uuid.uuid4()),
        attrs=attrs,
        embedding=np.asarray(face.embedding, dtype=np.float32).tobytes(),
        qualified=qualifies(face),
        quality=float(face.quality),
    )


# ---- the commit -----------------------------------------------------------------------------


def _store(session: Session, request: dict[str, Any], outcomes: list[Outcome]) -> dict[str, Any]:
    dataset = projects.job_dataset(session, request, lock=True)  # counters take turns
    errors = figure_store.store_indexed_files(session, dataset, [o.indexed for o in outcomes])
    for out, error in zip(outcomes, errors, strict=True):
        out.error = out.error or error
    failed = [o for o in outcomes if o.error]
    return {
        "Success": True,
        "Message": f"{len(failed)} of {len(outcomes)} files failed." if failed else "",
        "Files": [_file_result(o) for o in outcomes],
    }


def _file_result(out: Outcome) -> dict[str, Any]:
    return {
        "URI": out.uri,
        "CustomId": out.user.get("CustomId", ""),
        "CustomLabels": out.user.get("CustomLabels", {}),
        "Error": out.error,
    }
