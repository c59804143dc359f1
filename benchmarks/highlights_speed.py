"""Highlights: processing time ÷ video duration (target ≤ 0.15) for the clips in
../shared/data/video and a generated 720p video of 75 s, against ffmpeg merely decoding the
same video in the same run (the floor any analysis pays); and whether the chosen window
overlaps the planted eventful segment of generated test videos.

    .venv/bin/python benchmarks/highlights_speed.py [--dir ../shared/data/video]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.settings import Settings  # noqa: E402
from tests.mediagen import ffmpeg, planted_video  # noqa: E402
from workers.processors import highlights  # noqa: E402

TARGET = 0.15


def decode_only(path: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def measure(path: Path, settings: Settings, tmp: Path) -> tuple[float, float, float]:
    """(duration, analysis+cut seconds, plain decode seconds)."""
    start = time.perf_counter()
    timeline = highlights.analyse(path, max_seconds=None, settings=settings)
    window = highlights.best_window(timeline, 5.0)
    whole = highlights.covers(window, timeline)
    highlights.cut(path, tmp / f"{path.stem}.highlight.mp4", window, "mp4", whole=whole)
    spent = time.perf_counter() - start
    return timeline.duration, spent, decode_only(path)


def long_720p(tmp: Path) -> Path:
    out = tmp / "long720p.mp4"
    ffmpeg(
        *("-f", "lavfi", "-i", "testsrc2=s=1280x720:d=75:r=30"),
        *("-f", "lavfi", "-i", "sine=f=440:d=75"),
        *("-c:v", "libx264", "-preset", "veryfast", "-c:a", "aac", "-shortest", str(out)),
    )
    return out


def planted_checks(settings: Settings, tmp: Path) -> list[bool]:
    results = []
    for n, event in enumerate([(10, 16), (3, 9), (22, 28)]):
        video = planted_video(tmp / f"planted{n}.mp4", seconds=30, event=event)
        timeline = highlights.analyse(video, max_seconds=None, settings=settings)
        window = highlights.best_window(timeline, 5.0)
        overlap = min(window.start + window.duration, event[1]) - max(window.start, event[0])
        span = f"{window.start:.2f}+{window.duration:.2f}s"
        print(f"planted {event}: window {span} overlap {overlap:.2f}s")
        results.append(overlap > 0)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, default=ROOT.parent / "shared" / "data" / "video")
    args = parser.parse_args()
    settings = Settings()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        # Warm up once: librosa's first call compiles, dlib loads (once per worker process).
        measure(planted_video(tmp / "warm.mp4", seconds=4, event=(1, 3)), settings, tmp)
        videos = sorted(p for p in args.dir.glob("*") if p.suffix in (".mp4", ".webm", ".mkv"))
        videos.append(long_720p(tmp))
        head = f"{'video':<28}{'dur s':>8}{'openimm s':>11}{'ratio':>8}"
        print(f"{head}{'decode s':>10}{'decode ratio':>14}")
        worst = 0.0
        for path in videos:
            duration, spent, decode = measure(path, settings, tmp)
            ratio = spent / duration
            worst = max(worst, ratio)
            print(
                f"{path.name:<28}{duration:>8.1f}{spent:>11.2f}{ratio:>8.3f}{decode:>10.2f}"
                f"{decode / duration:>14.3f}"
            )
        print(f"worst ratio over all videos: {worst:.3f} (target <= {TARGET}) "
              f"{'OK' if worst <= TARGET else 'MISSED'}")  # fmt: skip
        hits = planted_checks(settings, tmp)
        print(f"planted segment found: {sum(hits)}/{len(hits)}")


if __name__ == "__main__":
    main()
