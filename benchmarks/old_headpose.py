"""The head-pose estimator and FaceQuality of openimm before issue 11 (commit bc3e439), kept
only as the baseline the pose and clustering benchmarks print beside the current code.

Six landmarks (nose tip, chin, outer eye corners, mouth corners) against a generic 3D face
whose nose protrudes too little, solved with SQPNP; FaceQuality = size x pose x
sqrt(sharpness) x confidence with pose = exp(-(t / 50)^4), and sharpness the raw variance
of the Laplacian, ``1 - exp(-v / 150)`` (``old_sharpness``; it fell with the square of the
face's contrast). Angles are returned in the
current convention (yaw > 0 towards the image's left): the old code reported yaw with the
opposite sign, which is flipped here so the figures compare like with like.
"""

from __future__ import annotations

import math

import cv2
import numpy

from workers.models import faces
from workers.models.headpose import toward_camera

LANDMARKS = (30, 8, 36, 45, 48, 54)
MODEL = numpy.array(
    [
        (0.0, 0.0, 0.0),
        (0.0, 330.0, 65.0),
        (-225.0, -170.0, 135.0),
        (225.0, -170.0, 135.0),
        (-150.0, 150.0, 125.0),
        (150.0, 150.0, 125.0),
    ],
    dtype=numpy.float64,
)


def head_pose(points: numpy.ndarray, width: int, height: int) -> tuple[float, float, float]:
    """(pitch, roll, yaw) in degrees as the old code computed them (yaw sign flipped)."""
    focal = float(max(width, height))
    camera = numpy.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]])
    image_points = points[list(LANDMARKS)].reshape(-1, 1, 2)
    ok, rvec, tvec = cv2.solvePnP(MODEL, image_points, camera, None, flags=cv2.SOLVEPNP_SQPNP)
    if not ok:
        return 0.0, 0.0, 0.0
    rotation, _ = cv2.Rodrigues(rvec)
    r = toward_camera(tvec.ravel()).T @ rotation
    a = math.atan2(r[2, 1], r[2, 2])
    b = math.asin(max(-1.0, min(1.0, -r[2, 0])))
    roll = math.atan2(r[1, 0], r[0, 0])
    return _deg(-a), _deg(roll), -_deg(-b)


def old_sharpness(crop: numpy.ndarray) -> float:
    """The pre-issue-11 Sharpness: ``1 - exp(-var(Laplacian) / 150)`` on the 96 px grid."""
    grey = cv2.cvtColor(numpy.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY)
    side = faces.SHARPNESS_SIDE
    method = cv2.INTER_AREA if min(grey.shape[:2]) >= side else cv2.INTER_LINEAR
    fixed = cv2.resize(grey, (side, side), interpolation=method)
    return 1.0 - math.exp(-float(cv2.Laplacian(fixed, cv2.CV_64F).var()) / 150.0)


def face_quality(side: float, turn_deg: float, sharp: float, confidence: float) -> float:
    """The old FaceQuality: the current one times the old pose factor exp(-(t / 50)^4)."""
    without_pose = faces.face_quality(side, 0.0, sharp, confidence)
    return without_pose * math.exp(-((turn_deg / 50.0) ** 4))


def _deg(radians: float) -> float:
    degrees = math.degrees(radians)
    return degrees - 360.0 if degrees > 180.0 else degrees
