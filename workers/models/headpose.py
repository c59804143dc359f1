"""Head pose (pitch, roll, yaw in degrees) from dlib's 68 iBUG landmarks.

**Reference shape.** Twelve *rigid* landmarks — the four eye corners, five nose points, the
two mouth corners plus the top of the upper lip — placed at the vertices of MediaPipe's
canonical face model that annotate the same anatomical points. The jaw outline (iBUG 0-16),
the chin, the lower lip and the eyebrows are left out: they move with speech and expression
and the jaw line is where the outline self-occludes on a turned face.

Provenance: ``mediapipe/modules/face_geometry/data/canonical_face_model.obj`` of
google/mediapipe (Apache License 2.0, © Google LLC), a 468-vertex mean face in centimetres
(x: subject's left, y: up, z: towards the viewer). The vertex ↔ landmark correspondences
are MediaPipe's own face-mesh annotations (tfjs-models ``face-landmarks-detection``
``MESH_ANNOTATIONS``, Apache 2.0): ``rightEyeLower0`` starts at 33 (outer corner) and ends at
133 (inner), ``leftEyeLower0`` 263/362, ``lipsUpperOuter`` runs from the mouth corner 61 via
the upper-lip top 0 to the corner 291, ``midwayBetweenEyes`` 168, ``noseTip`` 1,
``noseBottom`` 2, ``noseRightCorner`` 98, ``noseLeftCorner`` 327. The coordinates below are
those vertices, copied, with y and z negated into the camera frame of a frontal face.

**Camera.** A pinhole with the focal length equal to the longest image side (a 53° field of
view across it, a phone's main camera; crops make it longer, which only weakens the
perspective) and the principal point at the image centre; no distortion.

**Solver.** ``cv2.SOLVEPNP_SQPNP`` (globally optimal for the algebraic error, never returns
the mirrored solution behind the camera) refined by Levenberg-Marquardt on the reprojection
error (``cv2.solvePnPRefineLM``). Angles are then measured against the ray from the camera to
the face, so a face looking into the lens is frontal wherever it sits in the frame.

**Convention** (AFLW2000-3D / 300W-LP, the one head-pose benchmarks use). In the camera frame
of a frontal face (x → image right, y → image down, z away from the camera) the rotation of
the head is ``R = Rx(-pitch) · Ry(yaw) · Rz(roll)``:

* ``yaw > 0``: the face turns towards the image's left (the subject's right);
* ``pitch > 0``: the head tilts up (chin raised);
* ``roll > 0``: the head rotates clockwise as seen in the image.

Mirroring the image flips the signs of yaw and roll and keeps pitch.
"""

from __future__ import annotations

import math

import cv2
import numpy

__all__ = ["LANDMARKS", "MODEL", "camera_matrix", "euler", "head_pose", "rotation", "toward_camera"]

# iBUG-68 index -> MediaPipe canonical vertex (index, x, y, z in cm, as in the .obj file).
_CANONICAL: tuple[tuple[int, int, float, float, float], ...] = (
    (27, 168, 0.000000, 3.271027, 5.236015),  # nose bridge between the eyes
    (30, 1, 0.000000, -1.126865, 7.475604),  # nose tip
    (31, 98, -1.405627, -1.714196, 5.241087),  # nostril wing, image left
    (33, 2, 0.000000, -2.089024, 6.058267),  # nose bottom (subnasale)
    (35, 327, 1.405627, -1.714196, 5.241087),  # nostril wing, image right
    (36, 33, -4.445859, 2.663991, 3.173422),  # image-left eye, outer corner
    (39, 133, -1.856432, 2.585245, 3.757904),  # image-left eye, inner corner
    (42, 362, 1.856432, 2.585245, 3.757904),  # image-right eye, inner corner
    (45, 263, 4.445859, 2.663991, 3.173422),  # image-right eye, outer corner
    (48, 61, -2.456206, -4.342621, 4.283884),  # mouth corner, image left
    (51, 0, 0.000000, -3.406404, 5.979507),  # top of the upper lip
    (54, 291, 2.456206, -4.342621, 4.283884),  # mouth corner, image right
)
LANDMARKS: tuple[int, ...] = tuple(row[0] for row in _CANONICAL)
# Camera frame of a frontal face: the model's y (up) and z (to the viewer) negated.
MODEL = numpy.array([(x, -y, -z) for _, _, x, y, z in _CANONICAL], dtype=numpy.float64)


def camera_matrix(width: int, height: int) -> numpy.ndarray:
    """Pinhole intrinsics: focal length = longest side, principal point at the centre."""
    focal = float(max(width, height))
    return numpy.array([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])


def head_pose(points: numpy.ndarray, width: int, height: int) -> tuple[float, float, float]:
    """(pitch, roll, yaw) in degrees from 68 landmarks (image pixels) of a ``width`` x
    ``height`` image; (0, 0, 0) if the solver fails."""
    image_points = numpy.ascontiguousarray(points[list(LANDMARKS)], dtype=numpy.float64)
    camera = camera_matrix(width, height)
    ok, rvec, tvec = cv2.solvePnP(MODEL, image_points, camera, None, flags=cv2.SOLVEPNP_SQPNP)
    if not ok:
        return 0.0, 0.0, 0.0
    rvec, tvec = cv2.solvePnPRefineLM(MODEL, image_points, camera, None, rvec, tvec)
    turned, _ = cv2.Rodrigues(rvec)
    return euler(toward_camera(tvec.ravel()).T @ turned)


def rotation(pitch: float, roll: float, yaw: float) -> numpy.ndarray:
    """The camera-frame head rotation for angles in degrees (inverse of :func:`euler`)."""
    a, b, c = (math.radians(v) for v in (-pitch, yaw, roll))
    rx = numpy.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = numpy.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = numpy.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return numpy.asarray(rx @ ry @ rz)


def euler(r: numpy.ndarray) -> tuple[float, float, float]:
    """(pitch, roll, yaw) in degrees of ``R = Rx(-pitch) · Ry(yaw) · Rz(roll)``."""
    yaw = math.asin(max(-1.0, min(1.0, float(r[0, 2]))))
    pitch = -math.atan2(-float(r[1, 2]), float(r[2, 2]))
    roll = math.atan2(-float(r[0, 1]), float(r[0, 0]))
    return math.degrees(pitch), math.degrees(roll), math.degrees(yaw)


def toward_camera(translation: numpy.ndarray) -> numpy.ndarray:
    """Rotation taking the optical axis onto the ray to the face. Angles are measured
    against that ray, so a face looking into the lens is frontal wherever it sits in the
    frame (a face near the top edge otherwise reads as looking down by its field angle)."""
    ray = translation / max(float(numpy.linalg.norm(translation)), 1e-9)
    axis = numpy.cross((0.0, 0.0, 1.0), ray)
    sin = float(numpy.linalg.norm(axis))
    if sin < 1e-9:
        return numpy.eye(3)
    angle = math.atan2(sin, float(ray[2]))
    turn, _ = cv2.Rodrigues(axis / sin * angle)
    return numpy.asarray(turn)
