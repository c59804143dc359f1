"""Super-resolution of video and image files with the network in ``workers.models.superres``.

A video streams through three processes at once: an ffmpeg decoder writes raw rgb24 frames
to a pipe, this process upscales them in batches, and an ffmpeg encoder (libx264, yuv420p,
the source frame rate) reads them from its stdin and muxes the source's first audio stream
in, copied when the target container can hold it. Nothing is held in memory beyond a batch.
Outputs are written to a temporary file beside ``dst`` and renamed into place, so a reader
never sees half a file and a failure leaves none.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import ffmpeg
import numpy
from PIL import Image

from pipeline.errors import InvalidArgument
from workers.media import ffmpeg_io
from workers.media.imaging import DEFAULT_MAX_PIXELS, load_image
from workers.models import superres as sr_model

FINISH_TIMEOUT_S = 600  # the encoder flushing its lookahead after the last frame
X264 = {"c:v": "libx264", "preset": "veryfast", "crf": "18", "pix_fmt": "yuv420p"}
# Audio codecs each container takes as a stream copy; anything else is re-encoded to AAC.
COPYABLE_AUDIO = {
    ".mp4": {"aac", "mp3", "ac3", "eac3", "alac", "opus", "flac"},
    ".m4v": {"aac", "mp3", "ac3", "eac3", "alac"},
    ".mov": {"aac", "mp3", "ac3", "eac3", "alac", "pcm_s16le", "pcm_s24le"},
    ".mkv": None,  # Matroska holds every codec
}
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
MAX_OUTPUT_PIXELS = 36_000_000  # one 8K frame; beyond that the activations outgrow RAM


@dataclass(frozen=True)
class VideoInfo:
    """What the decoder will produce: upright frame size, frame rate, audio codec."""

    width: int
    height: int
    rate: str  # ffmpeg rational, e.g. "30000/1001"
    fps: float
    duration_s: float | None
    audio_codec: str | None


def upscale_video(
    src: Path,
    dst: Path,
    scale: int,
    device: str = "cpu",
    *,
    max_duration_us: int | None = None,
    progress: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """Upscale ``src`` by ``scale`` into ``dst`` (.mp4/.m4v/.mov/.mkv) with its audio.

    Returns ``{width, height, frames, fps}`` of the output. Raises ``InvalidArgument`` when
    ``src`` is not a decodable video or ``dst`` has an unsupported extension.
    """
    suffix = dst.suffix.lower()
    if suffix not in COPYABLE_AUDIO:
        raise InvalidArgument(f"Upscaled videos are written as {sorted(COPYABLE_AUDIO)}.")
    info = probe_video(src)
    width, height = _even(info.width * scale), _even(info.height * scale)
    _check_size(width, height)
    seconds = None if max_duration_us is None else max_duration_us / 1e6
    expected = _expected_frames(info, seconds)
    with _atomic_output(dst) as tmp:
        frames = _transcode(src, tmp, info, scale, device, seconds, expected, progress)
    return {"width": width, "height": height, "frames": frames, "fps": info.fps}


def upscale_image_file(
    src: Path, dst: Path, scale: int, device: str = "cpu", *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> dict[str, int]:
    """Upscale a photo (EXIF-upright) into ``dst`` (.png/.jpg/.webp); returns its size."""
    fmt = IMAGE_FORMATS.get(dst.suffix.lower())
    if fmt is None:
        raise InvalidArgument(f"Upscaled images are written as {sorted(IMAGE_FORMATS)}.")
    rgb, info = load_image(src, max_pixels)
    _check_size(info.width * scale, info.height * scale)
    out = sr_model.upscale_image(rgb, scale, device)
    with _atomic_output(dst) as tmp:
        Image.fromarray(out).save(tmp, format=fmt, **({"quality": 95} if fmt != "PNG" else {}))
    return {"width": out.shape[1], "height": out.shape[0]}


def probe_video(src: Path) -> VideoInfo:
    """Size (after the container's rotation), frame rate and audio codec of ``src``."""
    streams = _ffprobe_streams(src)
    video = next((s for s in streams if s.get("codec_type") == "video" and not _cover(s)), None)
    if video is None or not video.get("width"):
        raise InvalidArgument(f"The file has no decodable video stream: {src.name}")
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    width, height = int(video["width"]), int(video["height"])
    if _rotation(video) % 180 == 90:
        width, height = height, width  # ffmpeg's autorotate turns the frames upright
    rate = _frame_rate(video)
    num, den = (int(part) for part in rate.split("/"))
    duration = video.get("duration") or video.get("_format_duration")
    return VideoInfo(
        width=width,
        height=height,
        rate=rate,
        fps=round(num / den, 3),
        duration_s=float(duration) if duration else None,
        audio_codec=audio.get("codec_name") if audio else None,
    )


def _ffprobe_streams(src: Path) -> list[dict[str, Any]]:
    data = ffmpeg_io.probe(src, what="The file is not a decodable video")
    streams: list[dict[str, Any]] = data["streams"]
    container_duration = (data.get("format") or {}).get("duration")
    for stream in streams:
        stream.setdefault("_format_duration", container_duration)
    return streams


def _cover(stream: dict[str, Any]) -> bool:
    """An album-art picture in an audio file is a "video" stream of one frame."""
    return bool((stream.get("disposition") or {}).get("attached_pic"))


def _rotation(video: dict[str, Any]) -> int:
    for side in video.get("side_data_list") or []:
        if "rotation" in side:
            return int(float(side["rotation"]))
    return int(float((video.get("tags") or {}).get("rotate", 0)))


def _frame_rate(video: dict[str, Any]) -> str:
    """avg_frame_rate (right for VFR phone clips), else r_frame_rate, else 25."""
    for key in ("avg_frame_rate", "r_frame_rate"):
        num, _, den = str(video.get(key, "0/0")).partition("/")
        if num.isdigit() and den.isdigit() and int(num) and int(den):
            return f"{num}/{den}"
    return "25/1"


def _even(pixels: int) -> int:
    return pixels - pixels % 2  # yuv420p needs even sides


def _check_size(width: int, height: int) -> None:
    if width * height > MAX_OUTPUT_PIXELS:
        raise InvalidArgument(f"The upscaled size {width}x{height} exceeds 8K (36 MP).")


def _expected_frames(info: VideoInfo, seconds: float | None) -> int | None:
    duration = info.duration_s if seconds is None else min(seconds, info.duration_s or seconds)
    return round(duration * info.fps) if duration else None


@contextmanager
def _atomic_output(dst: Path) -> Iterator[Path]:
    """A temporary path beside ``dst``, renamed onto it only if the block succeeds."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{dst.stem}.", suffix=dst.suffix, dir=dst.parent)
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def _transcode(
    src: Path,
    tmp: Path,
    info: VideoInfo,
    scale: int,
    device: str,
    seconds: float | None,
    expected: int | None,
    progress: Callable[[float], None] | None,
) -> int:
    """Decode -> upscale -> encode; returns the number of frames written."""
    with tempfile.TemporaryFile() as dec_log, tempfile.TemporaryFile() as enc_log:
        decoder = ffmpeg_io.popen(_decoder(src, info, seconds), stdout=True, stderr=dec_log)
        encoder = ffmpeg_io.popen(
            _encoder(src, tmp, info, scale, seconds), stdin=True, stderr=enc_log
        )
        try:
            frames = _pump(decoder, encoder, info, scale, device, expected, progress)
        except BrokenPipeError:
            _stop(decoder, encoder, finished=False)  # the encoder died: say why
            _check_exit(encoder, enc_log, "The upscaled video could not be encoded", True)
            raise
        except BaseException:
            _stop(decoder, encoder, finished=False)
            raise
        _stop(decoder, encoder, finished=True)
        _check_exit(decoder, dec_log, "The file is not a decodable video", frames == 0)
        _check_exit(encoder, enc_log, "The upscaled video could not be encoded", False)
    return frames


def _decoder(src: Path, info: VideoInfo, seconds: float | None) -> Any:
    limit = {"t": f"{seconds:.6f}"} if seconds is not None else {}
    return ffmpeg_io.media_input(src)["v:0"].output(
        "pipe:1",
        **limit,
        an=None,
        sn=None,
        dn=None,
        fps_mode="cfr",  # constant rate, as the encoder is told
        r=info.rate,
        f="rawvideo",
        pix_fmt="rgb24",
    )


def _encoder(src: Path, tmp: Path, info: VideoInfo, scale: int, seconds: float | None) -> Any:
    size = f"{info.width * scale}x{info.height * scale}"
    frames = ffmpeg_io.pipe_input(f="rawvideo", pix_fmt="rgb24", s=size, framerate=info.rate)
    streams = [frames["v:0"]]
    # Crop (at most one pixel) to even sides, which yuv420p needs.
    options: dict[str, str] = {"vf": "crop=trunc(iw/2)*2:trunc(ih/2)*2", **X264}
    if info.audio_codec is not None:
        limit = {"t": f"{seconds:.6f}"} if seconds is not None else {}
        streams.append(ffmpeg_io.media_input(src, **limit)["a:0"])
        options["c:a"] = _audio_codec(info.audio_codec, tmp.suffix.lower())
    if tmp.suffix.lower() in (".mp4", ".m4v", ".mov"):
        options["movflags"] = "+faststart"
    return ffmpeg.output(*streams, str(tmp), **options)


def _audio_codec(codec: str, suffix: str) -> str:
    copyable = COPYABLE_AUDIO[suffix]
    return "copy" if copyable is None or codec in copyable else "aac"


def _pump(
    decoder: subprocess.Popen[bytes],
    encoder: subprocess.Popen[bytes],
    info: VideoInfo,
    scale: int,
    device: str,
    expected: int | None,
    progress: Callable[[float], None] | None,
) -> int:
    """Move frames from decoder to encoder through the network, a batch at a time."""
    assert decoder.stdout is not None and encoder.stdin is not None
    batch = sr_model.CUDA_FRAMES_PER_BATCH if device.startswith("cuda") else 8
    frame_bytes = info.width * info.height * 3
    done = 0
    while True:
        raw = decoder.stdout.read(frame_bytes * batch)
        count = len(raw) // frame_bytes
        if count == 0:
            break
        frames = numpy.frombuffer(raw, numpy.uint8, count * frame_bytes)
        frames = frames.reshape(count, info.height, info.width, 3)
        encoder.stdin.write(sr_model.upscale_frames(frames, scale, device).tobytes())
        done += count
        if progress is not None and expected:
            progress(min(done / expected, 1.0))
    encoder.stdin.close()
    return done


def _stop(
    decoder: subprocess.Popen[bytes], encoder: subprocess.Popen[bytes], *, finished: bool
) -> None:
    """Wait for both processes after the last frame; kill them when the run failed."""
    for proc in (decoder, encoder):
        if not finished:
            proc.kill()  # the output is abandoned
        try:
            proc.wait(timeout=FINISH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None and not stream.closed:
                with suppress(OSError):  # unflushed bytes to a dead encoder
                    stream.close()


def _check_exit(proc: subprocess.Popen[bytes], log: IO[bytes], what: str, failed: bool) -> None:
    if proc.returncode == 0 and not failed:
        return
    log.seek(0)
    lines = log.read().decode("utf-8", "replace").strip().splitlines()
    if proc.returncode == 0 and failed:
        raise InvalidArgument(f"{what}: no video frames could be decoded.")
    raise InvalidArgument(f"{what}: {lines[-1] if lines else f'ffmpeg exit {proc.returncode}'}")
