"""Images for console pages: face crops and downsized photos, cached on disk, and objects
served to the player — always read through the owner's scoped store, so a page can only show
what that owner may read."""

from __future__ import annotations

import hashlib
import io
import mimetypes
import secrets
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.api.services import Services
from pipeline.console.pages import ConsoleError
from pipeline.errors import ImmError
from pipeline.storage import parse_oss_uri

CACHE_DIR = "console-cache"
FACE_MARGIN = 0.35  # context around the face box, as a fraction of its size
MAX_EDGE = 1600
MAX_SOURCE_PIXELS = 50_000_000
DOWNLOAD_TYPE = "application/octet-stream"
# Objects are the owner's data, not pages: nothing in them may run or load anything.
OBJECT_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "private, max-age=600",
}


def cache_dir(svc: Services) -> Path:
    path = svc.settings.resolved_data_dir / CACHE_DIR
    path.mkdir(parents=True, exist_ok=True)
    return path


def _cached(svc: Services, owner: str, uri: str, variant: str, suffix: str) -> tuple[Path, str]:
    """The cache path for one rendering of ``uri``: keyed by owner, object version, variant."""
    bucket, key = parse_oss_uri(uri)
    info = svc.store_for(owner).stat(bucket, key)
    digest = hashlib.sha256(f"{owner}\0{uri}\0{info.mtime}\0{info.size}\0{variant}".encode())
    return cache_dir(svc) / f"{digest.hexdigest()}{suffix}", key


def _open(svc: Services, owner: str, uri: str) -> Image.Image:
    bucket, key = parse_oss_uri(uri)
    data = svc.store_for(owner).get_bytes(bucket, key)
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_SOURCE_PIXELS:
            raise ConsoleError("The image is too large to preview.", 413)
        return ImageOps.exif_transpose(image).convert("RGB")
    except (UnidentifiedImageError, OSError):
        raise ConsoleError("The object is not an image openimm can read.", 415) from None


def image(
    svc: Services, owner: str, uri: str, box: tuple[int, int, int, int] | None, edge: int
) -> Path:
    """A JPEG of ``uri`` (or of the face ``box`` in it, with some margin) at most ``edge``
    pixels on its long side, cached."""
    edge = max(32, min(edge, MAX_EDGE))
    try:
        path, _ = _cached(svc, owner, uri, f"{box}:{edge}", ".jpg")
        if path.exists():
            return path
        picture = _open(svc, owner, uri)
    except ImmError as exc:
        raise ConsoleError(exc.message, exc.http_status) from None
    if box is not None:
        picture = picture.crop(_with_margin(box, picture.size))
    picture.thumbnail((edge, edge))
    tmp = path.with_suffix(f".{secrets.token_hex(4)}.tmp")  # concurrent renderings never clash
    picture.save(tmp, "JPEG", quality=85)
    tmp.replace(path)
    return path


def _with_margin(
    box: tuple[int, int, int, int], size: tuple[int, int]
) -> tuple[int, int, int, int]:
    left, top, width, height = box
    pad = int(max(width, height) * FACE_MARGIN)
    side = max(width, height) + 2 * pad  # square crops make a tidy grid
    cx, cy = left + width // 2, top + height // 2
    x0, y0 = max(0, cx - side // 2), max(0, cy - side // 2)
    return x0, y0, min(size[0], x0 + side), min(size[1], y0 + side)


def parse_box(raw: str) -> tuple[int, int, int, int] | None:
    """``left,top,width,height`` (non-negative integers) or None for the whole image."""
    if not raw:
        return None
    parts = raw.split(",")
    if len(parts) != 4 or not all(p.isdigit() and len(p) <= 6 for p in parts):
        raise ConsoleError("box must be left,top,width,height in pixels.")
    left, top, width, height = (int(p) for p in parts)
    if width == 0 or height == 0:
        raise ConsoleError("box must have a width and a height.")
    return left, top, width, height


def original(svc: Services, owner: str, uri: str) -> tuple[Path, str]:
    """The object itself (copied to the cache once, so it can be served with Range requests
    for seeking) and its media type."""
    try:
        path, key = _cached(svc, owner, uri, "original", Path(uri).suffix[:8])
        if not path.exists():
            bucket, _ = parse_oss_uri(uri)
            tmp = path.with_suffix(f".{secrets.token_hex(4)}.tmp")
            svc.store_for(owner).get_to_file(bucket, key, tmp)
            tmp.replace(path)
    except ImmError as exc:
        raise ConsoleError(exc.message, exc.http_status) from None
    return path, playable_type(key)


def playable_type(key: str) -> str:
    """The media type the players may receive; anything else (HTML, SVG, scripts: content
    another owner sharing the bucket could have written) is served as a download."""
    guessed = mimetypes.guess_type(key)[0] or ""
    if guessed.startswith(("audio/", "video/")) or (
        guessed.startswith("image/") and guessed != "image/svg+xml"
    ):
        return guessed
    return DOWNLOAD_TYPE
