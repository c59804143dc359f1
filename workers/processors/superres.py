"""CreateVideoSuperResolutionTask (openimm extension) and the ``video_super_resolution``
service: upscale a photo or a video x2, x3 or x4 with the project's own CNN
(``workers.models.superres``, weights in ``workers/models/weights``) and store the result at
TargetURI. The output is built in the job's work directory and stored with one atomic put."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline import jobs
from pipeline.errors import InvalidArgument
from pipeline.storage import parse_oss_uri
from workers.context import JobContext, limits, seconds
from workers.media import probe

# The request contract shared with the API (pipeline.jobs.SR_SPEC).
IMAGE_SUFFIXES = jobs.SR_SPEC.target_suffixes("image")
VIDEO_SUFFIXES = jobs.SR_SPEC.target_suffixes("video")


def process(ctx: JobContext) -> dict[str, Any]:
    from workers.processors import sr_video  # torch loads in the worker, on first use

    request = ctx.request
    scale = int(request["Scale"])
    src = ctx.media.fetch(request["SourceURI"], ctx.workdir / "in")
    limits(ctx, src, seconds(request.get("MaxMicroseconds")))
    kind = probe.media_type(probe.sniff(src.open("rb").read(512)))
    target = request["TargetURI"]
    if request.get("AutoSuffix"):  # EAS calls: the worker names the output after its kind
        target += ".png" if kind == "image" else ".mp4"
    suffix = Path(parse_oss_uri(target)[1]).suffix.lower()
    out = ctx.workdir / f"out{suffix}"
    if kind == "image":
        if suffix not in IMAGE_SUFFIXES:
            raise InvalidArgument(f"An image source needs a TargetURI ending in {IMAGE_SUFFIXES}.")
        info: dict[str, Any] = sr_video.upscale_image_file(
            src, out, scale, ctx.device, max_pixels=ctx.settings.image_max_pixels
        )
    else:
        if suffix not in VIDEO_SUFFIXES:
            raise InvalidArgument(f"A video source needs a TargetURI ending in {VIDEO_SUFFIXES}.")
        info = sr_video.upscale_video(
            src,
            out,
            scale,
            ctx.device,
            max_duration_us=request.get("MaxMicroseconds"),
            progress=lambda f: ctx.progress(int(90 * f)),
        )
    bucket, key = parse_oss_uri(target)
    ctx.store.put_file(bucket, key, out)
    return {
        "TargetURI": target,
        "Scale": scale,
        "Width": info["width"],
        "Height": info["height"],
        **({"Frames": info["frames"], "FrameRate": info["fps"]} if "frames" in info else {}),
    }
