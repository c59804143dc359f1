"""Super-resolution quality and video throughput, model versus bicubic in the same run.

    nice -n 19 .venv/bin/python -m benchmarks.sr_quality [--data shared/data/sr] [--device cpu]

Quality: every HR image of Set5 and Set14 (``shared/data/sr/hr_images.csv``) is cropped to a
multiple of the scale, downscaled with Pillow's bicubic (the degradation the weights were
trained for, ``workers.models.superres.bicubic_downscale``) and brought back by Pillow's bicubic
and by the network. PSNR is measured on BT.601 Y with ``scale`` border pixels shaved, as the SR
literature does. Targets (SRCNN level): Set5 x2 >= 36.0 dB, Set5 x4 >= 30.0 dB.

Throughput: a 5 s 640x360 clip (ffmpeg testsrc2 with a sine track) is upscaled x2 to
1280x720 by ``upscale_video``, against ffmpeg's own bicubic scale with the same encoder.
Target: >= 10 fps on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy
from PIL import Image

from workers import models
from workers.models import superres as sr_model
from workers.processors import sr_video

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sr"
SETS = ("Set5", "Set14")
TARGETS = {("Set5", 2): 36.0, ("Set5", 4): 30.0}
FPS_TARGET = 10.0
CLIP_SECONDS = 5
CLIP_SIZE = "640x360"


def psnr_y(reference: numpy.ndarray, estimate: numpy.ndarray, shave: int) -> float:
    """PSNR in dB on BT.601 Y, ignoring ``shave`` pixels at each border."""
    ref = sr_model.luma(reference)[shave:-shave, shave:-shave]
    est = sr_model.luma(estimate)[shave:-shave, shave:-shave]
    mse = float(numpy.mean((ref - est) ** 2))
    return 10 * math.log10(255.0**2 / mse) if mse else math.inf


def bicubic_upscale(rgb: numpy.ndarray, scale: int) -> numpy.ndarray:
    height, width = rgb.shape[:2]
    size = (width * scale, height * scale)
    return numpy.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BICUBIC))


def image_scores(hr: numpy.ndarray, scale: int, device: str) -> tuple[float, float]:
    """(bicubic, model) PSNR of one HR image at one scale."""
    lr = sr_model.bicubic_downscale(hr, scale)
    hr = hr[: lr.shape[0] * scale, : lr.shape[1] * scale]
    model = sr_model.upscale_image(lr, scale, device)
    return psnr_y(hr, bicubic_upscale(lr, scale), scale), psnr_y(hr, model, scale)


def load_sets(data: Path) -> dict[str, list[numpy.ndarray]]:
    """HR images per set, greyscale ones (Set14 bridge) as three equal channels."""
    sets: dict[str, list[numpy.ndarray]] = {name: [] for name in SETS}
    with (data / "hr_images.csv").open() as fh:
        for row in csv.DictReader(fh):
            rgb = numpy.asarray(Image.open(data / row["file"]).convert("RGB"))
            sets[row["set"]].append(rgb)
    return sets


def quality(data: Path, device: str) -> bool:
    """Print the PSNR table; True when every target is met."""
    sets = load_sets(data)
    print(f"{'set':6} {'scale':>5} {'bicubic':>8} {'model':>8} {'delta':>7}  target")
    met = True
    for name, images in sets.items():
        for scale in sr_model.SCALES:
            scores = numpy.array([image_scores(hr, scale, device) for hr in images])
            bicubic, model = scores.mean(axis=0)
            target = TARGETS.get((name, scale))
            verdict = "" if target is None else f">= {target:.1f} " + _ok(model >= target)
            met = met and (target is None or model >= target)
            print(f"{name:6} {'x' + str(scale):>5} {bicubic:8.2f} {model:8.2f} "
                  f"{model - bicubic:+7.2f}  {verdict}")  # fmt: skip
    return met


def _ok(passed: bool) -> str:
    return "met" if passed else "NOT met"


def make_clip(path: Path) -> None:
    """A 5 s 360p test clip with a 440 Hz sine track."""
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i"]
    cmd += [f"testsrc2=size={CLIP_SIZE}:rate=25:duration={CLIP_SECONDS}"]
    cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={CLIP_SECONDS}"]
    cmd += ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(path)]
    subprocess.run(cmd, check=True, timeout=120)


def ffmpeg_bicubic_fps(src: Path, dst: Path, frames: int) -> float:
    """fps of ffmpeg's own x2 bicubic scale with the encoder settings upscale_video uses."""
    cmd = ["ffmpeg", "-v", "error", "-y", "-i", str(src), "-vf", "scale=iw*2:ih*2:flags=bicubic"]
    cmd += [*sr_video.X264, "-c:a", "copy", str(dst)]
    began = time.perf_counter()
    subprocess.run(cmd, check=True, timeout=600)
    return frames / (time.perf_counter() - began)


def throughput(device: str) -> bool:
    """Print fps of the model and of ffmpeg bicubic on the 360p -> 720p clip."""
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip360.mp4"
        make_clip(clip)
        models.get(sr_model.SRModel, device, scale=2).ensure_loaded()  # once per process
        began = time.perf_counter()
        result = sr_video.upscale_video(clip, Path(tmp) / "sr720.mp4", 2, device)
        fps = result["frames"] / (time.perf_counter() - began)
        bicubic_fps = ffmpeg_bicubic_fps(clip, Path(tmp) / "bicubic720.mp4", result["frames"])
    size = f"{result['width']}x{result['height']}"
    print(f"video x2 {CLIP_SIZE} -> {size}, {result['frames']} frames: model {fps:.1f} fps, "
          f"ffmpeg bicubic {bicubic_fps:.1f} fps; "
          f"target >= {FPS_TARGET:.0f} fps {_ok(fps >= FPS_TARGET)} "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")  # fmt: skip
    return fps >= FPS_TARGET


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of hr_images.csv")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-video", action="store_true")
    args = parser.parse_args(argv)
    met = quality(args.data, args.device)
    if not args.skip_video:
        met = throughput(args.device) and met
    print("all targets met" if met else "some targets NOT met")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
