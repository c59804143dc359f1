"""Model Hub image models (seed 000 "General image classification", "Image similarity
comparison"): the EAS services ``image_classification`` and ``image_similarity``, and the
openimm task ``CreateImageClassificationTask`` for a batch of images by URI.

EAS inputs are Model Hub's: ``{"image": "<base64>"}`` (or ``{"input": {"url": …}}`` for an
``oss://``, ``file://`` or ``http(s)://`` image) and ``{"imagea": b64, "imageb": b64}``.
Inline images are checked here (valid base64, a decodable image header, at most the kind's
``max_pixels`` and ``OPENIMM_IMAGE_MAX_PIXELS``) and staged in the caller's EAS bucket under
``inputs/``, so the task row stays small; the staged copies are deleted when the call returns.
"""

from __future__ import annotations

import base64
import binascii
import io
import uuid
from typing import Any

from PIL import Image, UnidentifiedImageError

from pipeline import jobs, vectors
from pipeline.api import eas
from pipeline.api.rpc import action
from pipeline.api.services import Caller, Services
from pipeline.api.submission import COMMON_TASK_PARAMS, check_uri, common_params, submit
from pipeline.buckets import eas_bucket
from pipeline.errors import InvalidArgument, InvalidParameter
from pipeline.models import Task
from pipeline.params import Params

IMAGE_FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif"}
MAX_TOP_K = 20


def check_image_bytes(data: bytes, field: str, max_pixels: int) -> str:
    """The file suffix of an inline image, after checking its header (no pixels decoded)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, (width, height) = img.format or "", img.size
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InvalidArgument(f"{field} is not a decodable image: {exc}") from None
    if fmt not in IMAGE_FORMATS:
        raise InvalidArgument(f"{field}: {fmt or 'this'} images are not supported.")
    if width * height > max_pixels:
        raise InvalidArgument(
            f"{field} is {width}x{height} = {width * height} pixels; the limit is {max_pixels}."
        )
    return IMAGE_FORMATS[fmt]


def _decode(value: Any, field: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{field} must be a non-empty base64 string.")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"{field} is not valid base64.") from None


def _stage(svc: Services, caller: Caller, inline: dict[str, Any]) -> list[str]:
    """Check every inline image first, then store them: a bad one leaves nothing behind."""
    limit = min(jobs.IMAGE_SERVICE_MAX_PIXELS, svc.settings.image_max_pixels)
    checked = []
    for field, value in inline.items():
        data = _decode(value, field)
        checked.append((data, check_image_bytes(data, field, limit)))
    bucket, uris = eas_bucket(svc.settings.eas_output_bucket, caller.owner), []
    store = svc.store_for(caller.owner)
    for data, suffix in checked:
        key = f"inputs/{uuid.uuid4().hex}{suffix}"
        store.put_bytes(bucket, key, data, durable=False)  # deleted when the call returns
        uris.append(f"oss://{bucket}/{key}")
    return uris


def _image_uri(body: dict[str, Any], svc: Services, caller: Caller, staged: list[str]) -> str:
    if "image" in body:
        unknown = set(body) - {"image"}
        if unknown:
            raise InvalidArgument(f"Unknown field(s): {', '.join(sorted(unknown))}.")
        staged.extend(_stage(svc, caller, {"image": body["image"]}))
        return staged[-1]
    data = body.get("input")
    if not isinstance(data, dict) or not isinstance(data.get("url"), str) or not data["url"]:
        raise InvalidArgument('Expected {"image": "<base64>"} or {"input": {"url": "…"}}.')
    if set(data) - {"url"}:
        raise InvalidArgument(f"Unknown input field(s): {', '.join(sorted(set(data) - {'url'}))}.")
    check_uri(svc, caller, data["url"], "url")
    return str(data["url"])


def _classification_request(body: dict[str, Any], svc: Services, caller: Caller) -> dict[str, Any]:
    staged: list[str] = []
    uri = _image_uri(body, svc, caller, staged)
    return {"Sources": [{"URI": uri}], "AllProbs": True, "Staged": staged}


def _classification_output(task: Task) -> dict[str, Any]:
    from workers.models.imagenet import class_names  # the labels the worker used (cached)

    image = task.result["Images"][0]
    if "ClassProbs" in image:  # written by a worker of 2026-12-02 or older (rolling upgrade)
        probs = image["ClassProbs"]
    else:
        probs = vectors.named(class_names(), image["ClassProbsFloat32"])
    return {"class": image["Class"], "class_name": image["ClassName"], "class_probs": probs}


def _similarity_request(body: dict[str, Any], svc: Services, caller: Caller) -> dict[str, Any]:
    for field in ("imagea", "imageb"):
        if field not in body:
            raise InvalidArgument(f'{field} is required: {{"imagea": b64, "imageb": b64}}.')
    unknown = set(body) - {"imagea", "imageb"}
    if unknown:
        raise InvalidArgument(f"Unknown field(s): {', '.join(sorted(unknown))}.")
    staged = _stage(svc, caller, {"imagea": body["imagea"], "imageb": body["imageb"]})
    return {"ImageA": staged[0], "ImageB": staged[1], "Staged": staged}


def _similarity_output(task: Task) -> dict[str, Any]:
    # Model Hub's sample answer gives both values as one-element lists.
    return {"similarity": [task.result["Similarity"]], "l2_distance": [task.result["L2Distance"]]}


eas.register(
    "image_classification",
    eas.Service("ImageClassification", _classification_request, _classification_output),
)
eas.register(
    "image_similarity", eas.Service("ImageSimilarity", _similarity_request, _similarity_output)
)


def _sources(svc: Services, caller: Caller, p: Params) -> list[dict[str, str]]:
    sources = p.json("Sources", list, required=True)
    limit = jobs.IMAGE_SPEC.max_sources
    if not sources or len(sources) > limit:
        raise InvalidParameter("Sources", f"Expected 1 to {limit} images.")
    for src in sources:
        if not isinstance(src, dict) or not isinstance(src.get("URI"), str) or set(src) - {"URI"}:
            raise InvalidParameter("Sources", 'Every source is {"URI": "…"}.')
        check_uri(svc, caller, src["URI"], "Sources")
    return [{"URI": s["URI"]} for s in sources]


@action("CreateImageClassificationTask", COMMON_TASK_PARAMS + " Sources TopK")
def create_image_classification_task(svc: Services, caller: Caller, p: Params) -> dict[str, Any]:
    """openimm extension: ImageNet-1k labels of up to 100 images; the result (GetTask, the
    notification) lists each image's class and its top-``TopK`` labels."""
    project_name = p.name("ProjectName")
    top_k = p.int("TopK", default=5, minimum=1, maximum=MAX_TOP_K)
    request = {"Sources": _sources(svc, caller, p), "TopK": top_k}
    return submit(svc, caller, project_name, "ImageClassification", request, common_params(p))
