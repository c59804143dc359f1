"""Every ffmpeg and ffprobe run of the workers, built with ``ffmpeg-python``, in one place.

Media files are untrusted, so each input is opened the same way:
- by an explicit ``file:`` URL of its absolute path (a staged name such as ``concat:x`` or
  ``subfile,,…:`` can never select a protocol), with ``-protocol_whitelist file``;
- with ``-format_whitelist`` = ``INPUT_FORMATS``: single-file containers and streams only.
  Playlists and references (HLS ``.m3u8``, DASH, ``concat``, image sequences, ``tty``,
  ``lavfi``, SDP/RTP) are refused, because they make ffmpeg open other files or URLs (an
  uploaded playlist naming ``file:///etc/…`` was probed as that file).
Timeouts and the mapping of failures to ``InvalidArgument`` (undecodable input) or
``ImmError`` (ffmpeg missing on the worker) also live here.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import IO, Any

import ffmpeg

from pipeline.errors import ImmError, InvalidArgument

# Demuxer names as ffmpeg matches them ("mov" covers mov,mp4,m4a,3gp,3g2,mj2; "matroska"
# covers webm). Containers of one file each; nothing here follows references to others.
INPUT_FORMATS = (
    "mov", "matroska", "avi", "flv", "mpegts", "mpeg", "mpegvideo", "m4v", "asf", "mxf",
    "dv", "ivf", "nut", "gif", "h264", "hevc", "mjpeg", "mp3", "aac", "ac3", "eac3", "wav",
    "w64", "aiff", "caf", "flac", "ogg", "wv", "ape", "tta", "amr", "au", "mpc",
)  # fmt: skip
# Headerless PCM, allowed only when our own code names it (never by probing a file).
RAW_FORMATS = ("s16le", "s16be", "f32le", "u8")
FFMPEG = ("ffmpeg", "-nostdin", "-hide_banner", "-v", "error")
FFPROBE = ("ffprobe", "-v", "error")
PROBE_TIMEOUT_S = 60
RUN_TIMEOUT_S = 1800  # a stuck decode must not hold a worker forever
NOT_INSTALLED = "ffmpeg is not installed on this worker."


def _file_url(path: str | Path) -> str:
    return "file:" + str(Path(path).absolute())


def _whitelist(forced: str | None) -> dict[str, str]:
    if forced is not None and forced not in RAW_FORMATS:
        raise ValueError(f"unsupported forced input format {forced!r}")
    formats = (forced,) if forced else INPUT_FORMATS
    return {"protocol_whitelist": "file", "format_whitelist": ",".join(formats)}


def media_input(path: str | Path, **options: Any) -> Any:
    """An ffmpeg-python input node for the staged local file ``path``.

    ``options`` are input options (``ss``, ``t``, ``f`` for a raw PCM format, …).
    """
    return ffmpeg.input(_file_url(path), **_whitelist(options.get("f")), **options)


def pipe_input(**options: Any) -> Any:
    """An input node reading the process's stdin (frames we generate, not user files)."""
    return ffmpeg.input("pipe:0", protocol_whitelist="pipe", **options)


def command(stream: Any, *, overwrite: bool = False) -> list[str]:
    """The ffmpeg command line of an ffmpeg-python output node."""
    args: list[str] = ffmpeg.compile(stream, cmd=list(FFMPEG), overwrite_output=overwrite)
    return args


class DecodeFailed(InvalidArgument):
    """ffmpeg could not decode the input."""

    def __init__(self, message: str, stderr: str = "") -> None:
        super().__init__(message)
        self.stderr = stderr


def _last_line(stderr: bytes | str) -> str:
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


def run(
    stream: Any, what: str, *, timeout: float = RUN_TIMEOUT_S, overwrite: bool = False
) -> bytes:
    """Run ``stream`` to completion; its stdout. ``InvalidArgument(f"{what}: …")`` when
    ffmpeg fails or exceeds ``timeout`` seconds."""
    try:
        done = subprocess.run(
            command(stream, overwrite=overwrite), capture_output=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise ImmError(NOT_INSTALLED) from exc
    except subprocess.TimeoutExpired:
        raise InvalidArgument(f"{what}: ffmpeg took longer than {timeout:.0f} s.") from None
    if done.returncode != 0:
        stderr = done.stderr.decode("utf-8", "replace")
        raise DecodeFailed(f"{what}: {_last_line(stderr) or f'exit {done.returncode}'}", stderr)
    return done.stdout


def popen(
    stream: Any,
    *,
    stdin: bool = False,
    stdout: bool = False,
    stderr: IO[bytes] | int = subprocess.PIPE,
) -> subprocess.Popen[bytes]:
    """Start ``stream`` with pipes as asked (for streaming decoders and encoders)."""
    try:
        return subprocess.Popen(
            command(stream, overwrite=True),
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
            stderr=stderr,
        )
    except FileNotFoundError as exc:
        raise ImmError(NOT_INSTALLED) from exc


def probe(
    path: str | Path,
    *,
    timeout: float = PROBE_TIMEOUT_S,
    what: str = "The file is not a decodable media file",
) -> dict[str, Any]:
    """ffprobe's ``{"format": …, "streams": […]}`` for ``path`` (same whitelists as decoding).

    Raises ``InvalidArgument`` when the file has no stream ffprobe can read. (Not
    ``ffmpeg.probe``: ffmpeg-python 0.2 has no timeout there.)
    """
    args = [*FFPROBE, "-print_format", "json", "-show_format", "-show_streams"]
    args += [arg for k, v in _whitelist(None).items() for arg in (f"-{k}", v)]
    try:
        done = subprocess.run(
            [*args, _file_url(path)], capture_output=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise ImmError(NOT_INSTALLED) from exc
    except subprocess.TimeoutExpired:
        raise InvalidArgument("The media file could not be probed in time.") from None
    try:
        data = json.loads(done.stdout or b"{}")
    except ValueError:
        data = {}
    if done.returncode != 0 or not data.get("streams"):
        detail = _last_line(done.stderr) or "no streams"
        raise InvalidArgument(f"{what}: {detail}")
    return dict(data)


def duration_s(path: str | Path) -> float | None:
    """Container duration in seconds; None when it does not say (or cannot be probed: the
    decode that follows reports why)."""
    try:
        value = probe(path).get("format", {}).get("duration")
        return float(value) if value is not None else None
    except (InvalidArgument, ValueError):
        return None


def has_audio(path: str | Path) -> bool:
    """True when ``path`` has an audio stream ffprobe can read."""
    try:
        streams = probe(path)["streams"]
    except InvalidArgument:
        return False
    return any(s.get("codec_type") == "audio" for s in streams)
