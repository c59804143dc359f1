"""A plain evaluation of the MobileNetV2 weights, to check openimm's classifier against.

    .venv/bin/python -m benchmarks.imagenet_reference [--data /work/shared/data]

Nothing of openimm's inference path is used: the network runs eagerly (no TorchScript, no
batch norms folded into the convolutions, NCHW, one image per call) and the preprocessing
is torchvision's ImageNet eval transform written out here, with torchvision's own rounding
(``Resize(256)``: the longer side is ``int(256 * long / short)``; ``CenterCrop(224)``: the
offsets are ``round((size - 224) / 2)``), the whole JPEG decoded (openimm decodes a big one
reduced, ``imaging.load_upright``). Only the network's definition (which the strict
state-dict load pins to torchvision's) and the installed weights are shared.
``benchmarks/image_classification.py`` compares the service's answers with these.
"""

from __future__ import annotations

import argparse
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# torchvision.transforms.Normalize's ImageNet statistics, as its model docs give them.
TV_MEAN = (0.485, 0.456, 0.406)
TV_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Reference:
    index: int  # top-1 class id
    prob: float  # its softmax probability
    margin: float  # top-1 minus top-2 probability: how near a tie the answer is


def tv_eval_transform(image: Image.Image) -> numpy.ndarray:
    """torchvision's ``Resize(256), CenterCrop(224), ToTensor(), Normalize(...)`` on a PIL
    image (bilinear, which Pillow antialiases): CHW float32."""
    rgb = image.convert("RGB")
    width, height = rgb.size
    short, long = min(width, height), max(width, height)
    new_short, new_long = 256, int(256 * long / short)
    size = (new_short, new_long) if width <= height else (new_long, new_short)
    rgb = rgb.resize(size, Image.Resampling.BILINEAR)
    top = round((rgb.height - 224) / 2.0)
    left = round((rgb.width - 224) / 2.0)
    rgb = rgb.crop((left, top, left + 224, top + 224))
    pixels = numpy.asarray(rgb, numpy.float32) / 255.0
    mean, std = numpy.array(TV_MEAN, numpy.float32), numpy.array(TV_STD, numpy.float32)
    return ((pixels - mean) / std).transpose(2, 0, 1).copy()


def classify_all(images: list[tuple[str, bytes]]) -> dict[str, Reference]:
    """Top-1 of every image (name → :class:`Reference`), one eager forward pass each."""
    import torch

    from workers.models.imagenet import CARD, network_class

    net = network_class()()
    weights = CARD.path(CARD.files[0].path)
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    net.eval()
    out: dict[str, Reference] = {}
    with torch.no_grad():
        for name, data in images:
            batch = torch.from_numpy(tv_eval_transform(Image.open(io.BytesIO(data))))[None]
            _, logits = net(batch)
            probs = torch.softmax(logits[0].double(), dim=0).numpy()
            first, second = numpy.argsort(probs)[::-1][:2]
            margin = float(probs[first] - probs[second])
            out[name] = Reference(int(first), float(probs[first]), margin)
    return out


def main() -> None:
    from benchmarks.image_classification import SHARED, load_images
    from workers.models.imagenet import class_names

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED)
    args = parser.parse_args()
    images = load_images(10_000, args.data)
    names = class_names()
    for name, ref in classify_all(images).items():
        print(f"{name}\t{names[ref.index]}\t{ref.prob:.4f}\t(margin {ref.margin:.4f})")


if __name__ == "__main__":
    main()
