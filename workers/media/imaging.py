"""Decoding of photos and video frames into RGB arrays for the model workers.

Photos are decoded with Pillow and turned upright by their EXIF Orientation tag, so every
coordinate openimm reports is in the *displayed* image, as IMM's are. Videos are decoded by
the ``ffmpeg`` binary into a pipe of PPM frames (raw rgb24 pixels behind a tiny header that
carries each frame's size, so no second probe is needed to parse the stream); ffmpeg applies
the container's rotation itself.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.errors import InvalidArgument
from workers.media import ffmpeg_io

EXIF_ORIENTATION = 0x0112
PPM_HEADER = re.compile(rb"P6\s+(\d+)\s+(\d+)\s+(\d+)\s")
FFMPEG_TIMEOUT_S = 600  # a stuck decode must not hold a worker forever
MIN_STEP_S = 0.04  # one frame at 25 fps: a finer step would only return duplicates
# OPENIMM_IMAGE_MAX_PIXELS' default: 100 MP (a 12240x8160 frame, more than any phone or
# full-frame camera but the 200 MP modes) decodes to 300 MB of RGB.
DEFAULT_MAX_PIXELS = 100_000_000
UNDECODABLE = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    Image.DecompressionBombError,
)


@dataclass(frozen=True)
class ImageInfo:
    """Displayed size of a photo (after EXIF orientation) and the tag that produced it."""

    width: int
    height: int
    orientation: int


@contextmanager
def open_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[Image.Image]:
    """The one way workers open an image: Pillow reads the header only, and an image of
    more than ``max_pixels`` (``OPENIMM_IMAGE_MAX_PIXELS``) is refused before a single pixel
    is decoded, so a small file claiming 12000x12000 costs nothing. Every decoder error
    raised inside the block, Pillow's own decompression-bomb guard included, becomes
    ``InvalidArgument``.
    """
    try:
        with warnings.catch_warnings():
            # Pillow warns from 89 MP on; our own, configurable limit is the one that applies.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            _check_pixels(img, max_pixels)
            yield img
    except UNDECODABLE as exc:
        raise InvalidArgument(f"The file is not a decodable image: {_reason(exc)}") from None


def _check_pixels(img: Image.Image, max_pixels: int) -> None:
    width, height = img.size
    if width * height > max_pixels:
        raise InvalidArgument(
            f"The image is {width}x{height} pixels; at most {max_pixels} pixels are decoded "
            "(OPENIMM_IMAGE_MAX_PIXELS)."
        )


def _reason(exc: Exception) -> str:
    if isinstance(exc, Image.DecompressionBombError):
        return "it is a decompression bomb (too many pixels)"
    return str(exc) or type(exc).__name__


def load_image(
    path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, *, reduce_to: int = 0
) -> tuple[numpy.ndarray, ImageInfo]:
    """Decode a photo to an upright RGB uint8 array (H, W, 3) and its ``ImageInfo``.

    Raises ``InvalidArgument`` when the file is not a decodable image or has more than
    ``max_pixels`` pixels (checked from its header, before decoding). ``reduce_to``: the
    caller needs only this many pixels on the shorter side, so a JPEG is decoded at a reduced
    DCT scale (1/2, 1/4, 1/8) that still gives at least that (Pillow's ``draft``): a 48 MP
    photo for a 224 px model costs 1/64 of the memory and time.
    """
    upright, info = load_upright(path, max_pixels, reduce_to=reduce_to)
    return to_rgb(numpy.asarray(upright)), info


def load_upright(
    path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, *, reduce_to: int = 0
) -> tuple[Image.Image, ImageInfo]:
    """:func:`load_image`'s decoded, upright, flattened (RGB or L) Pillow image, for callers
    that go on in Pillow (a resize): no array round trip. For a 640 px photo the round trip
    (``tobytes`` out, ``fromarray`` back) cost a third of the decode, with the GIL held."""
    with open_image(path, max_pixels) as img:
        if reduce_to and img.format == "JPEG":
            img.draft("RGB", (reduce_to, reduce_to))
        img.load()
        orientation = _orientation(img)
        # A copy (exif_transpose copies an upright image too): closing ``img`` at the end of
        # the block frees its pixels.
        flat = _flatten(ImageOps.exif_transpose(img))
    return flat, ImageInfo(width=flat.width, height=flat.height, orientation=orientation)


def _orientation(img: Image.Image) -> int:
    value = img.getexif().get(EXIF_ORIENTATION, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _flatten(img: Image.Image) -> Image.Image:
    """RGB or L; transparency is composited on white, the way viewers show it."""
    if img.mode in ("RGB", "L"):
        return img
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        # 16-bit/float greys: Pillow's "L" conversion clips instead of scaling.
        grey = numpy.asarray(img, dtype=numpy.float64)
        peak = max(float(grey.max()), 1.0)
        return Image.fromarray((grey * (255.0 / peak)).astype(numpy.uint8))
    return img.convert("RGB")


def to_rgb(pixels: numpy.ndarray) -> numpy.ndarray:
    """Grey (H, W) / (H, W, 1), RGB or RGBA uint8 → C-contiguous RGB uint8 (H, W, 3)."""
    if pixels.dtype != numpy.uint8:
        raise ValueError(f"expected uint8 pixels, got {pixels.dtype}")
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected a grey, RGB or RGBA image, got shape {pixels.shape}")
    if pixels.shape[2] == 1:
        pixels = numpy.repeat(pixels, 3, axis=2)
    return numpy.ascontiguousarray(pixels[:, :, :3])


def sample_video_frames(
    path: str | Path, *, every_seconds: float = 1.0, max_frames: int = 60, max_side: int = 1280
) -> list[tuple[int, numpy.ndarray]]:
    """Decode frames every ``every_seconds`` (widened so ``max_frames`` cover the whole
    video), downscaled so the longest side is at most ``max_side``.

    Returns ``(time in ms, RGB uint8 frame)`` pairs. Raises ``InvalidArgument`` when ffmpeg
    cannot decode the file.
    """
    if every_seconds <= 0 or max_frames < 1 or max_side < 2:
        raise ValueError("every_seconds, max_frames and max_side must be positive")
    duration = ffmpeg_io.duration_s(path)
    step = max(every_seconds, MIN_STEP_S)
    if duration is not None and duration / step > max_frames:
        step = duration / max_frames
    raw = ffmpeg_io.run(
        _frames_stream(Path(path), step, max_frames, max_side),
        "The file is not a decodable video",
        timeout=FFMPEG_TIMEOUT_S,
    )
    frames = _parse_ppm_stream(raw)
    if not frames:
        raise InvalidArgument(f"The file is not a decodable video: {Path(path).name}")
    return [(round(i * step * 1000), frame) for i, frame in enumerate(frames)]


def _frames_stream(path: Path, step: float, max_frames: int, max_side: int) -> Any:
    # fps=1/step keeps the frame nearest to each multiple of step, the first at t=0.
    # Downscale only, keeping the aspect ratio; even sides are not needed for PPM.
    scale = (
        f"scale=w='if(gte(iw,ih),min(iw,{max_side}),-1)'"
        f":h='if(gte(iw,ih),-1,min(ih,{max_side}))':flags=area"
    )
    return ffmpeg_io.media_input(path).output(
        "pipe:1",
        an=None,
        sn=None,
        dn=None,
        vf=f"fps=1/{step!r},{scale}",
        f="image2pipe",
        pix_fmt="rgb24",
        **{"frames:v": str(max_frames), "c:v": "ppm"},
    )


def _parse_ppm_stream(raw: bytes) -> list[numpy.ndarray]:
    frames: list[numpy.ndarray] = []
    offset = 0
    while offset < len(raw):
        match = PPM_HEADER.match(raw, offset)
        if match is None:
            break
        width, height = int(match[1]), int(match[2])
        start, size = match.end(), width * height * 3
        if start + size > len(raw):
            break  # a truncated last frame
        pixels = numpy.frombuffer(raw, numpy.uint8, size, start).reshape(height, width, 3)
        frames.append(pixels.copy())
        offset = start + size
    return frames
