"""Where the Sharpness scale of ``workers.models.faces`` comes from: the labelled portrait set (the
tuning set) framed like LFW and degraded synthetically. No validation folder is read.

    .venv/bin/python benchmarks/sharpness_calibration.py [--dir /work/shared/data/faces]

For the labelled (largest) face of every photo, and for the astronaut fixture, the face is
framed as LFW frames its faces (a square of 2.2x the box side around it, resized to 250x250,
JPEG 75: the face box is ~108 px) and then degraded: Gaussian blur sigma = 0.5..3 px, JPEG 50,
60 % contrast, and a "soft" copy captured at 170x170 and enlarged to 250 (optionally also at
60 % contrast). Each variant is analysed again; printed per variant: the median, 10th
percentile and range of the relative Laplacian energy ``r`` that ``workers.models.faces.sharpness``
maps to ``1 - exp(-r / SHARPNESS_SCALE)``, the median and 90th percentile of how far the dlib
embedding moved from the sharp framing's, and how many faces pass FaceQuality's 0.8 on
sharpness alone (``sqrt(sharpness) > 0.8``) with the current and with the pre-issue-11
sharpness (raw Laplacian variance, ``1 - exp(-v / 150)``). The scale is chosen so that the bar
sits at the median ``r`` of the sigma = 1.25 px blur; the script prints the scale that rule
gives on the data.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy
from PIL import Image, ImageEnhance, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import old_headpose  # noqa: E402
from workers.models import faces  # noqa: E402

DEFAULT_DIR = Path("/work/shared/data/faces")
ASTRONAUT = ROOT / "tests" / "fixtures" / "astronaut.png"
BAR_SIGMA = 1.25  # the blur whose median face should sit at FaceQuality's bar
BAR_SHARPNESS = 0.64  # sqrt(0.64) = 0.8: FaceQuality's bar for a large, confident face
SIGMAS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 3.0)

Variant = Callable[[Image.Image, Image.Image], Image.Image]


def _jpeg(img: Image.Image, quality: int = 75) -> Image.Image:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=quality)
    return Image.open(buffer).convert("RGB")


def _framed(img: Image.Image, face: faces.Face, side_px: int) -> Image.Image:
    side = 2.2 * max(face.width, face.height)
    cx, cy = face.left + face.width / 2, face.top + face.height / 2
    region = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    return img.crop(region).resize((side_px, side_px), Image.Resampling.LANCZOS)


def _blur(sigma: float) -> Variant:
    return lambda sharp, _: sharp.filter(ImageFilter.GaussianBlur(sigma))


def _soft(small: Image.Image) -> Image.Image:
    return small.resize((250, 250), Image.Resampling.BICUBIC)


def variants() -> dict[str, Variant]:
    """name -> f(sharp 250 framing, 170 framing): the degraded image (before JPEG 75)."""
    out: dict[str, Variant] = {"sharp": lambda sharp, _: sharp}
    for sigma in SIGMAS:
        out[f"blur {sigma}"] = _blur(sigma)
    out["contrast 60%"] = lambda sharp, _: ImageEnhance.Contrast(sharp).enhance(0.6)
    out["soft (170 -> 250)"] = lambda _, small: _soft(small)
    out["soft, contrast 60%"] = lambda _, small: ImageEnhance.Contrast(_soft(small)).enhance(0.6)
    return out


def measure(folder: Path) -> dict[str, list[tuple[float, float, float]]]:
    """variant -> [(r, old sharpness, embedding drift from the sharp framing)] per face."""
    analyzer = faces.get_analyzer()
    with open(folder / "labels.csv", newline="") as fh:
        paths = [folder / row["file"] for row in csv.DictReader(fh)] + [ASTRONAUT]
    out: dict[str, list[tuple[float, float, float]]] = {name: [] for name in variants()}
    for path in paths:
        rgb, _ = faces.load_image(path)
        found = analyzer.analyze(rgb)
        if not found:
            continue
        img = Image.fromarray(rgb)
        sharp, small = _framed(img, found[0], 250), _framed(img, found[0], 170)
        reference: numpy.ndarray | None = None
        for name, make in variants().items():
            pixels = numpy.asarray(_jpeg(make(sharp, small)))
            seen = analyzer.analyze(pixels)
            if not seen:
                continue
            face = seen[0]
            if reference is None:
                reference = face.embedding
            crop = pixels[face.top : face.top + face.height, face.left : face.left + face.width]
            drift = float(numpy.linalg.norm(face.embedding - reference))
            out[name].append((faces.relative_detail(crop), old_headpose.old_sharpness(crop), drift))
    return out


def report(measured: dict[str, list[tuple[float, float, float]]]) -> None:
    """Print the table and the scale the calibration rule gives."""
    print(
        f"{'variant':<20} {'n':>3} {'r med':>7} {'r p10':>7} {'r min':>7} {'r max':>7} "
        f"{'drift med':>9} {'drift p90':>9} {'pass now':>8} {'pass old':>8}"
    )
    for name, rows in measured.items():
        r, old_sharp, drift = (numpy.array(col) for col in zip(*rows, strict=True))
        now = [math.sqrt(1 - math.exp(-x / faces.SHARPNESS_SCALE)) > 0.8 for x in r]
        old = [math.sqrt(x) > 0.8 for x in old_sharp]
        print(
            f"{name:<20} {len(r):>3} {numpy.median(r):7.4f} {numpy.percentile(r, 10):7.4f} "
            f"{r.min():7.4f} {r.max():7.4f} {numpy.median(drift):9.3f} "
            f"{numpy.percentile(drift, 90):9.3f} {sum(now):>8} {sum(old):>8}"
        )
    bar = float(numpy.median([row[0] for row in measured[f"blur {BAR_SIGMA}"]]))
    scale = bar / -math.log(1 - BAR_SHARPNESS)
    print(
        f"median r at sigma = {BAR_SIGMA} px: {bar:.4f} -> scale {scale:.4f} "
        f"(workers.models.faces.SHARPNESS_SCALE = {faces.SHARPNESS_SCALE})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="labelled tuning folder")
    args = parser.parse_args(argv)
    report(measure(args.dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
