"""Head-pose solver on synthetic projections of the 3D reference face: known yaw/pitch/roll
and camera in, the same angles out; sign conventions of AFLW2000-3D; jaw points ignored."""

from __future__ import annotations

import itertools

import numpy
import pytest

from workers.models import headpose

WIDTH, HEIGHT = 640, 480


def project(
    pitch: float, roll: float, yaw: float, centre: tuple[float, float] = (0, 0)
) -> numpy.ndarray:
    """68 image points (jaw, brows, etc. left at the image centre) of the reference face
    turned by the given angles relative to the ray to it, ~180 px wide, at ``centre``
    (centimetres off the optical axis, at 60 cm)."""
    camera = headpose.camera_matrix(WIDTH, HEIGHT)
    translation = numpy.array([centre[0], centre[1], 60.0])
    turn = headpose.toward_camera(translation) @ headpose.rotation(pitch, roll, yaw)
    in_camera = headpose.MODEL @ turn.T + translation
    pixels = in_camera @ camera.T
    points = numpy.full((68, 2), (WIDTH / 2, HEIGHT / 2))
    points[list(headpose.LANDMARKS)] = pixels[:, :2] / pixels[:, 2:]
    return points


@pytest.mark.parametrize(
    ("pitch", "roll", "yaw"),
    list(
        itertools.product((-25.0, 0.0, 20.0), (-20.0, 0.0, 15.0), (-40.0, -12.0, 0.0, 28.0, 45.0))
    ),
)
def test_known_rotation_is_recovered(pitch: float, roll: float, yaw: float) -> None:
    got = headpose.head_pose(project(pitch, roll, yaw), WIDTH, HEIGHT)
    assert numpy.allclose(got, (pitch, roll, yaw), atol=0.5), got


def test_recovery_holds_off_centre_and_with_landmark_noise() -> None:
    rng = numpy.random.default_rng(7)
    worst = 0.0
    for pitch, roll, yaw in [(10.0, -5.0, 25.0), (-15.0, 8.0, -20.0), (0.0, 0.0, 5.0)]:
        for centre in [(-15.0, -10.0), (18.0, 12.0)]:
            points = project(pitch, roll, yaw, centre)
            noisy = points + rng.normal(0.0, 0.7, points.shape)  # dlib-like sub-pixel jitter
            got = headpose.head_pose(noisy, WIDTH, HEIGHT)
            worst = max(worst, *(abs(g - t) for g, t in zip(got, (pitch, roll, yaw), strict=True)))
    assert worst < 2.0


def test_signs_follow_the_dataset_convention() -> None:
    # yaw > 0: the face turns towards the image's left, so the nose tip moves left.
    left_turn = project(0, 0, 20)
    frontal = project(0, 0, 0)
    assert left_turn[30, 0] < frontal[30, 0]
    assert headpose.head_pose(left_turn, WIDTH, HEIGHT)[2] == pytest.approx(20, abs=0.5)
    # pitch > 0: the head tilts up, so the nose tip rises towards the eyes.
    up = project(20, 0, 0)
    assert up[30, 1] - up[39, 1] < frontal[30, 1] - frontal[39, 1]
    assert headpose.head_pose(up, WIDTH, HEIGHT)[0] == pytest.approx(20, abs=0.5)
    # roll > 0: clockwise in the image, so the eye line slopes down to the right (y down).
    clockwise = project(0, 15, 0)
    assert clockwise[45, 1] > clockwise[36, 1]
    assert headpose.head_pose(clockwise, WIDTH, HEIGHT)[1] == pytest.approx(15, abs=0.5)


def test_mirrored_points_give_opposite_yaw_and_roll() -> None:
    points = project(12, 9, 27)
    mirrored = points.copy()
    mirrored[:, 0] = WIDTH - points[:, 0]
    # Mirroring swaps left and right landmarks: iBUG pairs (36, 45), (39, 42), (31, 35), (48, 54).
    for a, b in [(36, 45), (39, 42), (31, 35), (48, 54)]:
        mirrored[[a, b]] = mirrored[[b, a]]
    pitch, roll, yaw = headpose.head_pose(points, WIDTH, HEIGHT)
    m_pitch, m_roll, m_yaw = headpose.head_pose(mirrored, WIDTH, HEIGHT)
    assert (m_pitch, m_roll, m_yaw) == pytest.approx((pitch, -roll, -yaw), abs=0.2)


def test_jaw_outline_and_lower_lip_do_not_move_the_pose() -> None:
    # An open mouth or a beard moves the chin, jaw and lower lip: they are not rigid points.
    points = project(5, -3, 18)
    moved = points.copy()
    moved[[*range(17), 57]] += (0.0, 40.0)
    assert headpose.head_pose(moved, WIDTH, HEIGHT) == pytest.approx(
        headpose.head_pose(points, WIDTH, HEIGHT), abs=1e-6
    )


def test_euler_inverts_rotation() -> None:
    for angles in [(10.0, -20.0, 35.0), (-30.0, 5.0, -60.0)]:
        assert headpose.euler(headpose.rotation(*angles)) == pytest.approx(angles, abs=1e-9)
