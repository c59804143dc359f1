"""Media probing for file meta: content type by sniffing, hashes, image size/orientation/EXIF
(Pillow), video and audio format and streams (ffprobe). Field names are IMM's ``File`` fields.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.errors import InvalidArgument
from workers.media import ffmpeg_io, imaging

# (offset, magic, content type); checked in order. Enough for the formats users index; the
# rest falls back to ffprobe (media) or application/octet-stream.
MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
    (0, b"BM", "image/bmp"),
    (0, b"II*\x00", "image/tiff"),
    (0, b"MM\x00*", "image/tiff"),
    (0, b"%PDF-", "application/pdf"),
    (0, b"PK\x03\x04", "application/zip"),
    (0, b"\x1f\x8b", "application/gzip"),
    (0, b"7z\xbc\xaf\x27\x1c", "application/x-7z-compressed"),
    (0, b"Rar!", "application/vnd.rar"),
    (0, b"\x1a\x45\xdf\xa3", "video/x-matroska"),
    (0, b"OggS", "audio/ogg"),
    (0, b"fLaC", "audio/flac"),
    (0, b"ID3", "audio/mpeg"),
    (0, b"FLV", "video/x-flv"),
    (0, b"\x00\x00\x01\xba", "video/mpeg"),
    (0, b"\x47", "video/mp2t"),
)
RIFF = {b"WEBP": "image/webp", b"WAVE": "audio/wav", b"AVI ": "video/x-msvideo"}
FTYP_IMAGE = {b"heic", b"heix", b"mif1", b"msf1", b"avif"}


def sniff(head: bytes) -> str:
    """Content type from the first bytes of a file."""
    if head[:4] == b"RIFF" and head[8:12] in RIFF:
        return RIFF[head[8:12]]
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in FTYP_IMAGE:
            return "image/avif" if brand == b"avif" else "image/heic"
        return "video/quicktime" if brand == b"qt  " else "video/mp4"
    if head[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return "audio/mpeg"
    for offset, magic, ctype in MAGIC:
        if head[offset : offset + len(magic)] == magic:
            if ctype == "video/mp2t" and len(head) > 188 and head[188:189] != b"\x47":
                continue  # one 0x47 byte is not a transport stream
            return ctype
    if _is_text(head):
        return "text/plain"
    return "application/octet-stream"


def _is_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def media_type(content_type: str) -> str:
    major = content_type.split("/", 1)[0]
    if major in ("image", "video", "audio"):
        return major
    if content_type in ("application/zip", "application/gzip", "application/vnd.rar"):
        return "archive"
    if content_type == "application/x-7z-compressed":
        return "archive"
    if content_type in ("application/pdf", "text/plain"):
        return "document"
    return "other"


def basics(path: Path, uri: str) -> dict[str, Any]:
    """Filename, size, hashes, sniffed content type, modification time."""
    md5 = hashlib.md5()
    size = 0
    with path.open("rb") as fh:
        head = fh.read(512)
        md5.update(head)
        size += len(head)
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            md5.update(chunk)
            size += len(chunk)
    ctype = sniff(head)
    digest = md5.digest()
    file_hash = digest.hex().upper()  # IMM: FileHash bare, only ETag carries the quotes
    mtime = datetime.fromtimestamp(path.stat().st_mtime, UTC)
    return {
        "Filename": uri.rstrip("/").rsplit("/", 1)[-1],
        "Size": size,
        "ContentType": ctype,
        "MediaType": media_type(ctype),
        "FileHash": file_hash,
        "ETag": f'"{file_hash}"',
        "ContentMd5": base64.b64encode(digest).decode(),
        "FileModifiedTime": mtime.isoformat(timespec="seconds").replace("+00:00", "Z"),
    }


def ffprobe(path: Path) -> dict[str, Any]:
    """Format and stream fields of a video/audio file; InvalidArgument if undecodable or not
    a single-file container (playlists are refused: see ``workers.media.ffmpeg_io``)."""
    return _media_fields(ffmpeg_io.probe(path))


def _num(value: Any, kind: type = float) -> Any:
    try:
        return kind(float(value)) if kind is int else kind(value)
    except (TypeError, ValueError):
        return None


def _rate(text: str) -> float | None:
    num, _, den = str(text).partition("/")
    try:
        return round(float(num) / float(den or 1), 3) if float(den or 1) else None
    except ValueError:
        return None


def _media_fields(data: dict[str, Any]) -> dict[str, Any]:
    fmt = data.get("format", {})
    streams = data.get("streams", [])
    video = [s for s in streams if s.get("codec_type") == "video" and not _is_cover(s)]
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    out: dict[str, Any] = {
        "Duration": _num(fmt.get("duration")),
        "Bitrate": _num(fmt.get("bit_rate"), int),
        "StartTime": _num(fmt.get("start_time")),
        "FormatName": fmt.get("format_name", ""),
        "FormatLongName": fmt.get("format_long_name", ""),
        "StreamCount": len(streams),
        "ProgramCount": _num(fmt.get("nb_programs"), int) or 0,
        "VideoStreams": [_video_stream(s) for s in video],
        "AudioStreams": [_audio_stream(s) for s in audio],
    }
    if video:
        out["VideoWidth"], out["VideoHeight"] = video[0].get("width"), video[0].get("height")
    created = (fmt.get("tags") or {}).get("creation_time")
    if created:
        out["ProduceTime"] = str(created)
    out["MediaType"] = "video" if video else "audio" if audio else "other"
    return {k: v for k, v in out.items() if v is not None}


def _is_cover(stream: dict[str, Any]) -> bool:
    return bool((stream.get("disposition") or {}).get("attached_pic"))


def _video_stream(s: dict[str, Any]) -> dict[str, Any]:
    return {
        "Index": s.get("index"),
        "CodecName": s.get("codec_name", ""),
        "CodecLongName": s.get("codec_long_name", ""),
        "Profile": s.get("profile", ""),
        "Width": s.get("width"),
        "Height": s.get("height"),
        "PixelFormat": s.get("pix_fmt", ""),
        "FrameRate": s.get("avg_frame_rate", ""),
        "AverageFrameRate": _rate(s.get("avg_frame_rate", "")),
        "Duration": _num(s.get("duration")),
        "Bitrate": _num(s.get("bit_rate"), int),
        "FrameCount": _num(s.get("nb_frames"), int),
        "Language": (s.get("tags") or {}).get("language", ""),
    }


def _audio_stream(s: dict[str, Any]) -> dict[str, Any]:
    return {
        "Index": s.get("index"),
        "CodecName": s.get("codec_name", ""),
        "CodecLongName": s.get("codec_long_name", ""),
        "SampleRate": _num(s.get("sample_rate"), int),
        "Channels": s.get("channels"),
        "ChannelLayout": s.get("channel_layout", ""),
        "Duration": _num(s.get("duration")),
        "Bitrate": _num(s.get("bit_rate"), int),
        "Language": (s.get("tags") or {}).get("language", ""),
    }


# ---- images ---------------------------------------------------------------------------------

EXIF_KEEP = (
    "Make",
    "Model",
    "Software",
    "DateTime",
    "DateTimeOriginal",
    "ExposureTime",
    "FNumber",
    "ISOSpeedRatings",
    "FocalLength",
    "Flash",
    "LensModel",
)


def image_fields(path: Path, max_pixels: int = imaging.DEFAULT_MAX_PIXELS) -> dict[str, Any]:
    """ImageWidth/Height (as displayed, EXIF rotation applied), Orientation, EXIF,
    ProduceTime (DateTimeOriginal) and LatLong (GPS); InvalidArgument if undecodable or
    larger than ``max_pixels``."""
    from PIL import ExifTags

    with imaging.open_image(path, max_pixels) as img:
        img.verify()  # a truncated or corrupt file fails here, not later in the worker
    with imaging.open_image(path, max_pixels) as img:
        width, height = img.size
        exif = img.getexif()
    orientation = int(exif.get(0x0112, 0) or 0)  # IMM reports 0 when the image has none
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    out: dict[str, Any] = {"ImageWidth": width, "ImageHeight": height, "Orientation": orientation}
    tags = {ExifTags.TAGS.get(k, str(k)): v for k, v in exif.items()}
    tags.update(
        {ExifTags.TAGS.get(k, str(k)): v for k, v in exif.get_ifd(ExifTags.IFD.Exif).items()}
    )
    kept = {k: _exif_value(tags[k]) for k in EXIF_KEEP if k in tags}
    if kept:
        out["EXIF"] = json.dumps(kept, ensure_ascii=False, sort_keys=True)
    produced = _exif_time(
        str(tags.get("DateTimeOriginal") or tags.get("DateTime") or ""),
        str(tags.get("OffsetTimeOriginal") or tags.get("OffsetTime") or ""),
    )
    if produced:
        out["ProduceTime"] = produced
    latlong = _gps(exif.get_ifd(ExifTags.IFD.GPSInfo))
    if latlong:
        out["LatLong"] = latlong
    return out


def _exif_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace").strip("\x00")
    if isinstance(value, int | str):
        return value
    try:
        return round(float(value), 6)
    except (TypeError, ValueError):
        return str(value)


def _exif_time(text: str, offset: str) -> str:
    """RFC3339 with the offset the source had (EXIF OffsetTime*, e.g. "+08:00"); EXIF times
    without one are the camera's wall clock, shown in the server's local offset as IMM does."""
    try:
        value = datetime.strptime(text.strip(), "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return ""
    try:
        zone = datetime.strptime(offset.strip(), "%z").tzinfo
    except ValueError:
        zone = None
    return (value.replace(tzinfo=zone) if zone else value.astimezone()).isoformat()


def _gps(gps: Any) -> str:
    """``"lat,lon"`` from EXIF GPS rationals, as IMM's LatLong."""
    try:
        lat = _dms(gps[2]) * (-1 if gps.get(1) == "S" else 1)
        lon = _dms(gps[4]) * (-1 if gps.get(3) == "W" else 1)
    except (KeyError, TypeError, ValueError, ZeroDivisionError, IndexError):
        return ""
    return f"{lat:.6f},{lon:.6f}"


def _dms(value: Any) -> float:
    d, m, s = (float(x) for x in value)
    return d + m / 60 + s / 3600


# ---- limits for the media models --------------------------------------------------------------


def check_media_limits(
    path: Path, *, max_bytes: int, max_seconds: float, processed_seconds: float | None
) -> dict[str, Any]:
    """Refuse inputs too large or too long for a media job before any heavy work starts;
    the :func:`ffprobe` fields of the file (``{}`` for an image), so the job need not probe
    it again (each ffprobe run is a process start: 0.1 s of CPU, 0.5 s on a loaded machine).

    The duration limit applies to what will be processed: a long file with a short
    ``play_duration`` is fine. Images have no duration and pass that check.
    """
    size = path.stat().st_size
    if size > max_bytes:
        raise InvalidArgument(
            f"The input is {size} bytes; the limit is {max_bytes} (OPENIMM_MEDIA_MAX_BYTES)."
        )
    if media_type(sniff(path.open("rb").read(512))) == "image":
        return {}
    fields = ffprobe(path)
    duration = fields.get("Duration") or 0.0
    processed = min(duration, processed_seconds) if processed_seconds else duration
    if processed > max_seconds:
        raise InvalidArgument(
            f"The input is {duration:.0f} s long; at most {max_seconds:.0f} s can be processed "
            "(OPENIMM_MEDIA_MAX_SECONDS; or set play_duration)."
        )
    return fields
