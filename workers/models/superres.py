"""The project's own super-resolution network and its inference on RGB pixels.

The network works on luma only, as SRCNN/ESPCN/FSRCNN do: the eye sees detail in Y, and one
channel costs a third of three. It runs at low resolution and ends in a PixelShuffle, with an
"anchor" skip that adds the input pixel to each of its ``scale**2`` sub-pixels, so the
convolutions only learn the residual over nearest-neighbour upscaling (converges in minutes
on a CPU). Chroma is upscaled bicubically: the network's luma replaces the bicubic frame's
luma by adding the same offset to R, G and B, which leaves Cb and Cr unchanged.

torch is imported inside functions only: the API process imports ``workers`` modules without
PyTorch installed. Weights are trained by ``scripts/train_sr.py`` and live in ``weights/``;
``workers.models.get(SRModel, device, scale=s)`` is this process's network for a scale, loaded
(after its file passed the card's checksum) on first use.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import cv2
import numpy
from PIL import Image

from pipeline import errors
from workers import models
from workers.models.base import InferenceModel, ModelCard, ModelFile

WEIGHTS_DIR = Path(__file__).parent / "weights"
SCALES = (2, 3, 4)
# BT.601 studio-swing luma of 0..255 RGB: Y = 16 + (R, G, B) . LUMA / 255, in 16..235.
LUMA = (65.481, 128.553, 24.966)
LUMA_OFFSET = 16.0
# Adding d to R, G and B moves Y by d * sum(LUMA) / 255, and moves Cb/Cr not at all.
LUMA_GAIN = sum(LUMA) / 255.0
# cv2.transform matrix: float32 luma of a uint8 RGB frame (the 4th column is the offset).
_LUMA_CV = numpy.array([[*(w / 255.0 for w in LUMA), LUMA_OFFSET]], numpy.float32)
FRAMES_PER_BATCH = 4  # 720p activations of 4 frames stay well under 1 GB
CUDA_FRAMES_PER_BATCH = 16
# The committed weights (the model store, ``openimm models list``, reads this card).
CARD = ModelCard(
    name="openimm-sr",
    task="super-resolution x2/x3/x4 (the project's own CNN; scripts/train_sr.py)",
    package="openimm",
    version="(this checkout)",
    module="workers.models",
    files=(
        ModelFile(
            "weights/sr_x2.pt", "f483cb253703d011fc05b3f624bc5c516bb90cb8287e8457b33da38147b3c1b0"
        ),
        ModelFile(
            "weights/sr_x3.pt", "8e1bb40dccefec27a94a1d455d9984c0934c98bd44292e5bdff6f3335ee461a6"
        ),
        ModelFile(
            "weights/sr_x4.pt", "f52be0ae1d49f966ea5d0222f982c816af6aaa31080a470342fdd74b23be8755"
        ),
    ),
    licence="Apache-2.0 (trained by openimm on offline images; see scripts/train_sr.py)",
    provenance="trained by scripts/train_sr.py, in workers/models/weights/",
    install="pip install torch==2.13.0",
    extra_modules=("torch",),
    registry="",
)


class ModelNotInstalled(errors.ModelNotInstalled, RuntimeError):
    """Super-resolution needs PyTorch: pip install torch==2.13.0"""


def luma(rgb: numpy.ndarray) -> numpy.ndarray:
    """BT.601 studio-swing Y (H, W) float64 of an RGB uint8 image, as SR papers measure PSNR."""
    return rgb.astype(numpy.float64) @ (numpy.array(LUMA) / 255.0) + LUMA_OFFSET


def bicubic_downscale(rgb: numpy.ndarray, scale: int) -> numpy.ndarray:
    """The degradation the weights are trained for: Pillow's antialiased bicubic, /scale.

    The image is first cropped to a multiple of ``scale`` (the SR benchmarks' "modcrop").
    """
    height, width = (rgb.shape[0] // scale) * scale, (rgb.shape[1] // scale) * scale
    hr = Image.fromarray(rgb[:height, :width])
    return numpy.asarray(hr.resize((width // scale, height // scale), Image.Resampling.BICUBIC))


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise ModelNotInstalled() from exc
    return torch


def weights_path(scale: int) -> Path:
    """Where the committed weights for ``scale`` live."""
    return WEIGHTS_DIR / f"sr_x{scale}.pt"


@functools.cache
def network_class() -> Any:
    """The ``nn.Module`` class, defined on first use so importing this module needs no torch."""
    torch = _torch()
    nn = torch.nn

    class SRNet(nn.Module):  # type: ignore[name-defined]
        """conv5x5 -> ``blocks`` x conv3x3 -> conv3x3 to scale**2 sub-pixels, + anchor."""

        def __init__(self, scale: int, channels: int = 32, blocks: int = 2) -> None:
            super().__init__()
            self.config = {"scale": scale, "channels": channels, "blocks": blocks}
            layers = [nn.Conv2d(1, channels, 5, padding=2), nn.ReLU(inplace=True)]
            for _ in range(blocks):
                layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
            layers.append(nn.Conv2d(channels, scale * scale, 3, padding=1))
            self.body = nn.Sequential(*layers)
            self.shuffle = nn.PixelShuffle(scale)
            self.sub_pixels = scale * scale

        def forward(self, y: Any) -> Any:
            """Low-resolution luma (N, 1, H, W) in 0..1 -> (N, 1, H*scale, W*scale)."""
            anchor = y.repeat(1, self.sub_pixels, 1, 1)
            return self.shuffle(self.body(y) + anchor)

    return SRNet


def build_network(scale: int, channels: int = 32, blocks: int = 2) -> Any:
    """A fresh, untrained network (the training script's entry point)."""
    return network_class()(scale, channels, blocks)


class SRModel(InferenceModel):
    """The trained network of one ``scale``; :attr:`network` is the ``nn.Module`` on the
    device (loaded on first access)."""

    card = CARD

    def __init__(self, device: str = "cpu", *, scale: int) -> None:
        if scale not in SCALES:
            raise errors.InvalidArgument(f"Super-resolution scale must be one of {SCALES}.")
        super().__init__(device)
        self.scale = scale

    @property
    def network(self) -> Any:
        self.ensure_loaded()
        return self._network

    def _files(self) -> tuple[ModelFile, ...]:
        return tuple(f for f in CARD.files if f.path == f"weights/sr_x{self.scale}.pt")

    def _verify(self) -> None:
        _torch()  # no PyTorch: this module's ModelNotInstalled, naming the pip command
        super()._verify()

    def _load(self) -> None:
        torch = _torch()
        saved = torch.load(weights_path(self.scale), map_location="cpu", weights_only=True)
        model = build_network(**saved["config"])
        model.load_state_dict(saved["state_dict"])
        model.eval().requires_grad_(False)
        if self.device == "cpu":
            # channels_last is what oneDNN's fast convolutions want; ~2-3x on CPU.
            model = model.to(memory_format=torch.channels_last)
            torch.set_num_threads(min(torch.get_num_threads(), os.cpu_count() or 1))
        self._network = model.to(self.device)


def upscale_image(rgb: numpy.ndarray, scale: int, device: str = "cpu") -> numpy.ndarray:
    """Upscale one RGB uint8 image (H, W, 3) to (H*scale, W*scale, 3)."""
    return upscale_frames(rgb[numpy.newaxis], scale, device)[0]


def upscale_frames(frames: numpy.ndarray, scale: int, device: str = "cpu") -> numpy.ndarray:
    """Upscale RGB uint8 frames (N, H, W, 3) to (N, H*scale, W*scale, 3), in batches."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != numpy.uint8:
        raise ValueError(f"expected uint8 frames (N, H, W, 3), got {frames.dtype} {frames.shape}")
    torch = _torch()
    model = models.get(SRModel, device, scale=scale).network
    on_cpu = device == "cpu"
    step = FRAMES_PER_BATCH if on_cpu else CUDA_FRAMES_PER_BATCH
    batches = []
    with torch.inference_mode():
        for start in range(0, len(frames), step):
            chunk = frames[start : start + step]
            if on_cpu:
                batches.append(_upscale_cpu(torch, model, chunk, scale))
            else:
                batches.append(_upscale_torch(torch, model, chunk, scale, device))
    return numpy.concatenate(batches) if batches else frames.copy()


def _upscale_cpu(torch: Any, model: Any, rgb: numpy.ndarray, scale: int) -> numpy.ndarray:
    """Colour work in OpenCV (SIMD, ~20x faster than torch's CPU bicubic), luma in torch.

    Luma is linear, so the bicubic frame's Y equals the bicubic upscale of the input's Y
    (up to uint8 rounding); the network's correction is their difference, added to R, G, B.
    """
    lumas = numpy.stack([cv2.transform(frame.astype(numpy.float32), _LUMA_CV) for frame in rgb])
    luma_sr = model(torch.from_numpy(lumas)[:, numpy.newaxis] / 255.0).squeeze(1) * 255.0
    luma_sr = luma_sr.numpy()
    out = numpy.empty((len(rgb), *luma_sr.shape[1:], 3), numpy.uint8)
    for index, (frame, lr_luma) in enumerate(zip(rgb, lumas, strict=True)):
        up = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        luma_up = cv2.resize(lr_luma, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        delta = (luma_sr[index] - luma_up) / LUMA_GAIN
        cv2.add(up, cv2.merge((delta, delta, delta)), dst=out[index], dtype=cv2.CV_8U)
    return out


def _upscale_torch(
    torch: Any, model: Any, rgb: numpy.ndarray, scale: int, device: str
) -> numpy.ndarray:
    """The same computation on an accelerator, all in torch (float32)."""
    nchw = (
        torch.from_numpy(numpy.require(rgb, requirements="W"))
        .to(device)
        .permute(0, 3, 1, 2)
        .float()
    )
    luma_sr = model(_luma(torch, nchw) / 255.0) * 255.0
    up = torch.nn.functional.interpolate(
        nchw, scale_factor=scale, mode="bicubic", align_corners=False
    )
    out = up + (luma_sr - _luma(torch, up)) / LUMA_GAIN
    out = out.clamp_(0, 255).round_().to(torch.uint8).permute(0, 2, 3, 1)
    return out.cpu().numpy()


def _luma(torch: Any, nchw: Any) -> Any:
    """BT.601 studio-swing Y (N, 1, H, W) of float RGB in 0..255."""
    weights = torch.tensor(LUMA, dtype=nchw.dtype, device=nchw.device).view(1, 3, 1, 1) / 255.0
    return (nchw * weights).sum(dim=1, keepdim=True) + LUMA_OFFSET
