"""Video highlights: find the most eventful window of a video and cut it with ffmpeg.

Signals, on a timeline of ``STEP`` s bins (all from one cheap decode each):
- **shots**: hard cuts where the grey-histogram distance between consecutive frames (64x36
  at ``FRAME_RATE`` fps) jumps well above its local level;
- **motion**: mean absolute difference of consecutive frames, cut frames excluded (a cut is
  not motion);
- **audio**: librosa RMS energy and onset strength of the 16 kHz mono track (0 when silent or
  absent);
- **faces**: dlib HOG face count on frames sampled every ``FACE_EVERY`` s at 320 px.
The video is decoded once (320 px, 8 fps) and streamed: thumbnails and face counts come from
the same frames while the audio decodes in a parallel ffmpeg process.
Each signal is scaled to 0..1 by its robust range within the video (5th-95th percentile), so a
score is "eventful relative to the rest of this video". The bin score is
``0.4·motion + 0.35·audio + 0.25·faces``.

Window choice: every window of the requested length (default 5 s; ``Output.MaxDuration``)
starting on a bin (``Average`` mode) or on a shot start (``Scene`` mode) is scored by its mean
bin score; windows that contain a hard cut lose ``CUT_PENALTY`` per cut, so a window crosses a
cut only when every window of that length must (shots shorter than the window). The result
lists the window and the per-second segment scores so a user can see why.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import ffmpeg
import numpy as np

from pipeline.errors import InvalidArgument
from pipeline.storage import parse_oss_uri
from workers.context import JobContext, limits
from workers.media import ffmpeg_io

DEFAULT_SECONDS = 5.0  # highlight length when Output.MaxDuration is not set
STEP = 0.25  # seconds per timeline bin
FRAME_RATE = 8  # frames per second decoded for motion and shots
THUMB = (64, 36)
DECODE_WIDTH = 320  # frames are decoded once at this width: faces here, thumbnails from them
FACE_EVERY = 2.0
CUT_PENALTY = 0.5
WEIGHTS = {"motion": 0.4, "audio": 0.35, "faces": 0.25}
AUDIO_RATE = 16000
FFMPEG_TIMEOUT = 1800


@dataclass
class Timeline:
    duration: float
    motion: np.ndarray
    audio: np.ndarray
    faces: np.ndarray
    cuts: list[float]

    @property
    def score(self) -> np.ndarray:
        return (
            WEIGHTS["motion"] * self.motion
            + WEIGHTS["audio"] * self.audio
            + WEIGHTS["faces"] * self.faces
        )


@dataclass(frozen=True)
class Window:
    start: float
    duration: float
    score: float
    cuts: int


def _limit(max_seconds: float | None) -> dict[str, str]:
    return {"t": f"{max_seconds:.3f}"} if max_seconds else {}


def decoded_frames(path: Path, max_seconds: float | None) -> Iterator[np.ndarray]:
    """RGB frames at FRAME_RATE fps, at most DECODE_WIDTH px wide, streamed from ONE ffmpeg
    decode (PPM frames carry their own size, so no probe is needed). Memory stays one frame
    whatever the video's length."""
    stream = ffmpeg_io.media_input(path).output(
        "pipe:1",
        **_limit(max_seconds),
        an=None,
        vf=f"fps={FRAME_RATE},scale='min({DECODE_WIDTH},iw)':-2",
        f="image2pipe",
        vcodec="ppm",
    )
    proc = ffmpeg_io.popen(stream, stdout=True)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        while (frame := _read_ppm(proc.stdout)) is not None:
            yield frame
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode("utf-8", "replace").strip().splitlines()
        proc.stderr.close()
        code = proc.wait()
    if code != 0:
        raise InvalidArgument(f"Could not decode the video: {(err or [''])[-1]}")


def _read_ppm(stream: IO[bytes]) -> np.ndarray | None:
    """One binary PPM (P6) frame from ``stream``; None at the end."""
    fields: list[bytes] = []
    while len(fields) < 4:
        line = stream.readline()
        if not line:
            return None
        fields += line.split()
    if fields[0] != b"P6":
        raise InvalidArgument("Unexpected frame data from ffmpeg.")
    width, height = int(fields[1]), int(fields[2])
    data = stream.read(width * height * 3)
    if len(data) < width * height * 3:
        return None  # a truncated last frame
    return np.frombuffer(data, np.uint8).reshape(height, width, 3)


def audio_track(path: Path, max_seconds: float | None, has_audio: bool | None = None) -> np.ndarray:
    """16 kHz mono float32; empty when the file has no audio stream (``has_audio``: known
    from an earlier probe; None → probed here)."""
    if not (ffmpeg_io.has_audio(path) if has_audio is None else has_audio):
        return np.zeros(0, np.float32)
    stream = ffmpeg_io.media_input(path).output(
        "pipe:1", **_limit(max_seconds), vn=None, ac=1, ar=AUDIO_RATE, f="f32le"
    )
    raw = ffmpeg_io.run(stream, "Could not decode the audio", timeout=FFMPEG_TIMEOUT)
    return np.frombuffer(raw, np.float32)


def _robust(values: np.ndarray) -> np.ndarray:
    if values.size == 0:
        return values
    lo, hi = np.percentile(values, 5), np.percentile(values, 95)
    if hi - lo < 1e-9:
        return np.zeros_like(values, dtype=np.float64)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0)


def _bins(series: np.ndarray, rate: float, nbins: int) -> np.ndarray:
    """Average a per-sample series (``rate`` samples/s) into STEP-second bins."""
    out = np.zeros(nbins)
    if series.size == 0:
        return out
    per = max(1, round(rate * STEP))
    usable = series[: min(series.size, nbins * per)]
    padded = np.pad(usable, (0, nbins * per - usable.size), mode="edge")
    out[:] = padded.reshape(nbins, per).mean(axis=1)
    return out


def shots_and_motion(frames: np.ndarray) -> tuple[list[float], np.ndarray]:
    """Hard-cut times (s) and per-frame motion (first frame 0)."""
    f = frames.astype(np.float32)
    diff = np.abs(np.diff(f, axis=0)).mean(axis=(1, 2)) if len(f) > 1 else np.zeros(0)
    hists = np.stack([np.bincount(fr.ravel() // 8, minlength=32) for fr in frames]).astype(float)
    hists /= hists.sum(axis=1, keepdims=True)
    hdist = 0.5 * np.abs(np.diff(hists, axis=0)).sum(axis=1) if len(f) > 1 else np.zeros(0)
    cut_mask = _cut_mask(hdist, diff)
    motion = np.concatenate([[0.0], np.where(cut_mask, 0.0, diff)])
    cuts = [float((i + 1) / FRAME_RATE) for i in np.flatnonzero(cut_mask)]
    return cuts, motion


def _cut_mask(hdist: np.ndarray, diff: np.ndarray) -> np.ndarray:
    """A cut: the histogram jumps (> 0.35 of its mass moves) far above its neighbourhood, as
    an isolated peak, and the pixels change a lot; fades spread over many frames fail."""
    if hdist.size == 0:
        return np.zeros(0, bool)
    k = 2 * FRAME_RATE
    padded = np.pad(hdist, k, mode="edge")
    local = np.array([np.median(padded[i : i + 2 * k + 1]) for i in range(hdist.size)])
    # An isolated peak: the frame pairs either side of a cut lie within one shot.
    prev = np.concatenate([[0.0], hdist[:-1]])
    nxt = np.concatenate([hdist[1:], [0.0]])
    peak = hdist > 2 * np.maximum(prev, nxt)
    return (hdist > 0.35) & (hdist > 3 * local + 0.05) & (diff > 12) & peak


def audio_activity(samples: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-hop loudness with onsets (0..1: 2/3 RMS, 1/3 onset strength), hops per second."""
    import librosa  # heavy: imported in the worker only

    hop = AUDIO_RATE // 20
    if samples.size < hop * 2:
        return np.zeros(0), 20.0
    rms = librosa.feature.rms(y=samples, frame_length=hop * 2, hop_length=hop)[0]
    onset = librosa.onset.onset_strength(y=samples, sr=AUDIO_RATE, hop_length=hop)
    n = min(rms.size, onset.size)
    return (_robust(rms[:n]) + 0.5 * _robust(onset[:n])) / 1.5, 20.0


def analyse(
    path: Path, *, max_seconds: float | None, settings: Any, has_audio: bool | None = None
) -> Timeline:
    """One pass over the decoded frames (thumbnails for shots/motion, a face count every
    FACE_EVERY s) while the audio decodes in parallel in its own ffmpeg process.
    ``has_audio``: whether the file has an audio stream, when a probe already said so."""
    import cv2

    with ThreadPoolExecutor(1) as pool:
        audio = pool.submit(audio_track, path, max_seconds, has_audio)
        analyzer = _face_analyzer(settings)
        every = int(FACE_EVERY * FRAME_RATE)
        thumbs, face_counts = [], []
        for n, rgb in enumerate(decoded_frames(path, max_seconds)):
            grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
            thumbs.append(cv2.resize(grey, THUMB, interpolation=cv2.INTER_AREA))
            if n % every == 0:
                face_counts.append(len(analyzer.analyze(np.ascontiguousarray(rgb))))
        samples = audio.result()
    if not thumbs:
        raise InvalidArgument("The file has no decodable video frames.")
    duration = len(thumbs) / FRAME_RATE
    nbins = max(1, int(np.ceil(duration / STEP)))
    cuts, motion = shots_and_motion(np.stack(thumbs))
    loud, rate = audio_activity(samples)
    faces = np.repeat(np.minimum(face_counts, 3) / 3, int(FACE_EVERY / STEP))[:nbins]
    return Timeline(
        duration=duration,
        motion=_bins(_robust(motion), FRAME_RATE, nbins),
        audio=_bins(loud, rate, nbins) if loud.size else np.zeros(nbins),
        faces=np.pad(faces, (0, nbins - faces.size)),
        cuts=cuts,
    )


def _face_analyzer(settings: Any) -> Any:
    from workers import models
    from workers.models.faces import FaceAnalyzer  # dlib loads once per worker process

    detector = getattr(settings, "face_detector", "hog")
    return models.get(FaceAnalyzer, detector=detector, max_side=DECODE_WIDTH)


def best_window(timeline: Timeline, length: float, mode: str = "Average") -> Window:
    """The highest-scoring window; crossing a hard cut costs CUT_PENALTY per cut."""
    score = timeline.score
    nbins = score.size
    width = max(1, min(nbins, round(length / STEP)))
    sums = np.concatenate([[0.0], np.cumsum(score)])
    cut_bins = np.array([c / STEP for c in timeline.cuts])
    if mode == "Scene" and timeline.cuts:
        starts = sorted({0, *(min(nbins - width, round(c / STEP)) for c in timeline.cuts)})
    else:
        starts = list(range(0, nbins - width + 1))
    best: Window | None = None
    for s in starts:
        s = max(0, s)
        mean = (sums[s + width] - sums[s]) / width
        inside = int(((cut_bins > s + 0.5) & (cut_bins < s + width - 0.5)).sum())
        value = mean - CUT_PENALTY * inside
        if best is None or value > best.score + 1e-12:
            best = Window(start=s * STEP, duration=width * STEP, score=float(value), cuts=inside)
    assert best is not None
    duration = min(best.duration, timeline.duration - best.start)
    return Window(best.start, duration, best.score, best.cuts)


def segments(timeline: Timeline) -> list[dict[str, float]]:
    """Per-second scores (what the window was chosen from), rounded for reading."""
    per = int(1 / STEP)
    out = []
    for i in range(0, timeline.motion.size, per):
        sl = slice(i, i + per)
        out.append(
            {
                "StartTime": round(i * STEP, 3),
                "EndTime": round(min((i + per) * STEP, timeline.duration), 3),
                "Score": round(float(timeline.score[sl].mean()), 4),
                "Motion": round(float(timeline.motion[sl].mean()), 4),
                "Audio": round(float(timeline.audio[sl].mean()), 4),
                "Faces": round(float(timeline.faces[sl].mean()), 4),
            }
        )
    return out


def cut(src: Path, dst: Path, window: Window, container: str, *, whole: bool = False) -> None:
    """Frame-accurate cut: re-encoded, since a stream copy can only start on a keyframe. When
    the window is the whole video (``whole``), the streams are copied instead when the
    container can hold them: nothing to cut, nothing to lose."""
    fmt = {"mp4": "mp4", "mov": "mov", "mkv": "matroska", "ts": "mpegts", "flv": "flv"}[container]
    if whole:
        source = ffmpeg_io.media_input(src)
        copy = ffmpeg.output(source["v:0"], source["a:0?"], str(dst), c="copy", f=fmt)
        try:
            ffmpeg_io.run(copy, "Could not copy the video", timeout=FFMPEG_TIMEOUT, overwrite=True)
            return
        except InvalidArgument:
            pass  # e.g. VP8 cannot go into MP4: encode below
    source = ffmpeg_io.media_input(src, ss=f"{window.start:.3f}")
    encode = ffmpeg.output(
        source["v:0"],
        source["a:0?"],
        str(dst),
        t=f"{window.duration:.3f}",
        preset="veryfast",
        crf="20",
        pix_fmt="yuv420p",
        f=fmt,
        **{"c:v": "libx264", "c:a": "aac", "b:a": "128k"},
    )
    ffmpeg_io.run(encode, "Could not cut the highlight", timeout=FFMPEG_TIMEOUT, overwrite=True)


def covers(window: Window, timeline: Timeline) -> bool:
    return window.start == 0 and window.duration >= timeline.duration - 1 / FRAME_RATE


# ---- the task -------------------------------------------------------------------------------

CONTAINERS = ("mp4", "mov", "mkv", "ts", "flv")


def process(ctx: JobContext) -> dict[str, Any]:
    """CreateHighlightTask (Type Retrieval): the best window over all sources, cut and stored
    at Output.URI with one atomic put (a failed job leaves no partial output)."""
    request = ctx.request
    output = request["Output"]
    length = float(output.get("MaxDuration") or DEFAULT_SECONDS)
    max_seconds = request.get("MaxSeconds")
    best: tuple[str, Path, Timeline, Window] | None = None
    sources = request["Sources"]
    for n, src in enumerate(sources):
        local = ctx.media.fetch(src["URI"], ctx.workdir / f"src{n}")
        fields = limits(ctx, local, max_seconds)  # the one probe of this source
        timeline = analyse(
            local,
            max_seconds=max_seconds,
            settings=ctx.settings,
            has_audio=bool(fields.get("AudioStreams")),
        )
        window = best_window(timeline, length, request.get("Mode") or "Average")
        if best is None or window.score > best[3].score:
            best = (src["URI"], local, timeline, window)
        ctx.progress(int(80 * (n + 1) / len(sources)))
    assert best is not None
    uri, local, timeline, window = best
    container = output.get("Container") or "mp4"
    clip = ctx.workdir / f"highlight.{container}"
    cut(local, clip, window, container, whole=covers(window, timeline) and not max_seconds)
    ctx.progress(95, force=True)
    bucket, key = parse_oss_uri(output["URI"])
    ctx.store.put_file(bucket, key, clip)
    return {
        "Output": {"URI": output["URI"], "Container": container},
        "Highlight": {
            "SourceURI": uri,
            "StartTime": round(window.start, 3),
            "Duration": round(window.duration, 3),
            "Score": round(window.score, 4),
            "CrossesCuts": window.cuts,
        },
        "Shots": [round(c, 3) for c in timeline.cuts],
        "Segments": segments(timeline),
    }
