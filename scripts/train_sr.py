"""Train the super-resolution weights in ``workers/models/weights/sr_x{2,3,4}.pt`` on a CPU.

    nice -n 19 .venv/bin/python scripts/train_sr.py [--data DIR] [--out DIR] [--scales 2,3,4]

Training data (all offline, none of it from the Set5/Set14 test sets):

* the photos in ``shared/data/images`` (Sun-Hays 80 scenes and scikit-image samples, see
  ``shared/data/MANIFEST.md``), less ``astronaut.png`` (the unit tests' fixture) and the
  ``*_gray.jpg`` near-duplicates;
* still frames that ffmpeg extracts from ``shared/data/video/testvideo.mp4`` (nature stills)
  and ``big_buck_bunny_0_30.webm`` (animation), halved to wash out codec artefacts.

Every source is also used at 3/4 and 1/2 size (scale augmentation). Low-resolution inputs are
made by ``workers.models.superres.bicubic_downscale``, the same degradation the benchmark uses.
Random patches with flips and 90-degree rotations, Adam with cosine decay, L1 loss on Y.
x2 trains from scratch; x3 and x4 start from the x2 head and body. Seeds are fixed: two runs
on the same machine gave bit-identical weights (oneDNN's summation order may differ on
another CPU). The committed weights took 9.5 min on 2 idle cores (AMD EPYC); the script
prints the elapsed time per scale and in total.
"""

from __future__ import annotations

import argparse
import io
import math
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workers.models import superres as sr_model

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
EXCLUDED = {"astronaut.png"}  # the unit tests measure on it
VIDEO_FRAMES = {  # file -> seconds at which a still is taken
    "testvideo.mp4": (0.5, 3.0, 5.0, 8.0, 11.0, 14.5, 17.0, 20.0, 23.0),
    "big_buck_bunny_0_30.webm": (4.0, 8.0, 12.0, 16.0, 20.0, 24.0),
}
SOURCE_SCALES = (1.0, 0.75, 0.5)
SEED = 20260523


@dataclass(frozen=True)
class Plan:
    """Network size and training length of one scale."""

    steps: int
    lr_patch: int
    learning_rate: float
    batch: int
    blocks: int  # 3x3 conv layers between the 5x5 head and the sub-pixel layer
    channels: int = 32


# x2 stays small: it is the video path (360p -> 720p in real time on 2 cores). x3 and x4 work
# on 1/9 and 1/16 of the output pixels, so they can afford more depth (receptive field).
PLANS = {
    2: Plan(steps=12000, lr_patch=40, learning_rate=1e-3, batch=32, blocks=2),
    3: Plan(steps=8000, lr_patch=32, learning_rate=5e-4, batch=16, blocks=4),
    4: Plan(steps=10000, lr_patch=32, learning_rate=5e-4, batch=16, blocks=5),
}


def load_sources(data: Path) -> list[numpy.ndarray]:
    """RGB uint8 training photos and video stills (see the module docstring)."""
    photos = [
        numpy.asarray(Image.open(path).convert("RGB"))
        for path in sorted((data / "images").iterdir())
        if path.suffix in (".jpg", ".png")
        and path.name not in EXCLUDED
        and not path.stem.endswith("_gray")
    ]
    stills = [
        _halve(_video_still(data / "video" / name, at))
        for name, times in VIDEO_FRAMES.items()
        for at in times
    ]
    return photos + stills


def _video_still(path: Path, at: float) -> numpy.ndarray:
    cmd = ["ffmpeg", "-v", "error", "-ss", str(at), "-i", str(path), "-frames:v", "1"]
    cmd += ["-f", "image2pipe", "-vcodec", "png", "-"]
    png = subprocess.run(cmd, capture_output=True, check=True, timeout=120).stdout
    return numpy.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _halve(rgb: numpy.ndarray) -> numpy.ndarray:
    return _resize(rgb, 0.5)


def _resize(rgb: numpy.ndarray, factor: float) -> numpy.ndarray:
    if factor == 1.0:
        return rgb
    height, width = rgb.shape[:2]
    size = (round(width * factor), round(height * factor))
    return numpy.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BICUBIC))


def make_pairs(sources: list[numpy.ndarray], scale: int) -> list[tuple[numpy.ndarray, ...]]:
    """(LR luma, HR luma) float32 pairs in 0..1 for every source at every source scale."""
    pairs = []
    for rgb in sources:
        for factor in SOURCE_SCALES:
            hr = _resize(rgb, factor)
            lr = sr_model.bicubic_downscale(hr, scale)
            hr = hr[: lr.shape[0] * scale, : lr.shape[1] * scale]
            pairs.append((_y(lr), _y(hr)))
    return pairs


def _y(rgb: numpy.ndarray) -> numpy.ndarray:
    return (sr_model.luma(rgb) / 255.0).astype(numpy.float32)


def sample_batch(
    pairs: list[tuple[numpy.ndarray, ...]], plan: Plan, scale: int, rng: numpy.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random aligned patches, weighted by image area, with flips and rot90."""
    areas = numpy.array([lr.size for lr, _ in pairs], dtype=numpy.float64)
    picks = rng.choice(len(pairs), size=plan.batch, p=areas / areas.sum())
    lrs, hrs = [], []
    for index in picks:
        lr, hr = pairs[index]
        top = int(rng.integers(0, lr.shape[0] - plan.lr_patch + 1))
        left = int(rng.integers(0, lr.shape[1] - plan.lr_patch + 1))
        lr_patch = lr[top : top + plan.lr_patch, left : left + plan.lr_patch]
        hr_size = plan.lr_patch * scale
        hr_patch = hr[top * scale : top * scale + hr_size, left * scale : left * scale + hr_size]
        turns, flip = int(rng.integers(0, 4)), bool(rng.integers(0, 2))
        lrs.append(_augment(lr_patch, turns, flip))
        hrs.append(_augment(hr_patch, turns, flip))
    return _tensor(lrs), _tensor(hrs)


def _augment(patch: numpy.ndarray, turns: int, flip: bool) -> numpy.ndarray:
    patch = numpy.rot90(patch, turns)
    return numpy.ascontiguousarray(patch[:, ::-1] if flip else patch)


def _tensor(patches: list[numpy.ndarray]) -> torch.Tensor:
    batch = torch.from_numpy(numpy.stack(patches)[:, numpy.newaxis])
    return batch.contiguous(memory_format=torch.channels_last)


def train_scale(
    scale: int, pairs: list[tuple[numpy.ndarray, ...]], start: torch.nn.Module | None
) -> torch.nn.Module:
    """Train one scale; ``start`` (the x2 net) seeds the shared head and body layers."""
    torch.manual_seed(SEED + scale)
    rng = numpy.random.default_rng(SEED + scale)
    plan = PLANS[scale]
    model = sr_model.build_network(scale, plan.channels, plan.blocks)
    if start is not None:
        _transfer(start, model)
    model = model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=plan.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * step / plan.steps))
    )
    began, running = time.monotonic(), 0.0
    for step in range(1, plan.steps + 1):
        lr, hr = sample_batch(pairs, plan, scale, rng)
        loss = torch.nn.functional.l1_loss(model(lr), hr)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        running += float(loss.detach())
        if step % 250 == 0:
            elapsed = time.monotonic() - began
            print(
                f"x{scale} step {step}/{plan.steps} L1 {running / 250 * 255:.3f} ({elapsed:.0f} s)",
                flush=True,
            )
            running = 0.0
    return model.eval()


def _transfer(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """Copy every tensor whose name and shape agree (all but the sub-pixel output layer)."""
    theirs = source.state_dict()
    mine = target.state_dict()
    mine.update({k: v for k, v in theirs.items() if k in mine and v.shape == mine[k].shape})
    target.load_state_dict(mine)


def _saved_x2(out: Path) -> torch.nn.Module | None:
    """The x2 net of an earlier run, so ``--scales 3,4`` can fine-tune from it."""
    path = out / "sr_x2.pt"
    if not path.is_file():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = sr_model.build_network(**saved["config"])
    model.load_state_dict(saved["state_dict"])
    return model


def save(model: torch.nn.Module, out: Path, scale: int) -> Path:
    """Write ``sr_x{scale}.pt``: the config and the float32 state dict."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"sr_x{scale}.pt"
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    torch.save({"config": model.config, "state_dict": state}, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", type=Path, default=SHARED, help="shared/data folder")
    parser.add_argument("--out", type=Path, default=sr_model.WEIGHTS_DIR)
    parser.add_argument("--scales", default="2,3,4", help="comma-separated, x2 first")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    began = time.monotonic()
    sources = load_sources(args.data)
    print(f"{len(sources)} training images ({time.monotonic() - began:.0f} s)")
    base = _saved_x2(args.out)
    for scale in (int(s) for s in args.scales.split(",")):
        model = train_scale(scale, make_pairs(sources, scale), base)
        base = model if scale == 2 else base
        path = save(model, args.out, scale)
        size_kb = path.stat().st_size / 1024
        print(f"saved {path} ({size_kb:.0f} KB); total {time.monotonic() - began:.0f} s")
    print(f"training done in {(time.monotonic() - began) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
