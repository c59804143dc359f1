"""Face analysis on real pixels: the dlib models run on the astronaut portrait and variants
of it that Pillow builds at run time (rotated by EXIF, upscaled, blurred, mirrored)."""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from pipeline.errors import InvalidArgument
from workers.media.imaging import sample_video_frames
from workers.models.faces import (
    Face,
    FaceAnalyzer,
    face_quality,
    get_analyzer,
    load_image,
    sharpness,
)

ASTRONAUT = Path(__file__).resolve().parents[1] / "fixtures" / "astronaut.png"
# Where Eileen Collins' face is in the 512x512 photo (left, top, right, bottom), generously.
FACE_REGION = (150, 50, 290, 190)


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return get_analyzer()


@pytest.fixture(scope="module")
def portrait() -> Image.Image:
    return Image.open(ASTRONAUT).convert("RGB")


@pytest.fixture(scope="module")
def face(analyzer: FaceAnalyzer, portrait: Image.Image) -> Face:
    faces = analyzer.analyze(numpy.asarray(portrait))
    assert len(faces) == 1
    return faces[0]


@pytest.fixture
def save(tmp_path: Path) -> Callable[..., Path]:
    """Factory: write a Pillow image (with optional EXIF) and return its path."""

    def _save(img: Image.Image, name: str, **params: object) -> Path:
        path = tmp_path / name
        img.save(path, **params)
        return path

    return _save


def only_face(analyzer: FaceAnalyzer, pixels: numpy.ndarray) -> Face:
    faces = analyzer.analyze(pixels)
    assert len(faces) == 1, faces
    return faces[0]


def box(face: Face) -> tuple[int, int, int, int]:
    return face.left, face.top, face.width, face.height


def test_astronaut_has_one_face_in_the_expected_region(face: Face) -> None:
    left, top, right, bottom = FACE_REGION
    assert left <= face.left and face.left + face.width <= right
    assert top <= face.top and face.top + face.height <= bottom
    assert 70 <= face.width <= 130
    assert face.embedding.dtype == numpy.float32 and face.embedding.shape == (128,)
    assert 0.9 < face.confidence <= 1.0


def test_clear_frontal_face_passes_imm_clustering_quality(face: Face) -> None:
    assert face.quality > 0.8
    assert face.sharpness > 0.8


def test_frontal_pose_angles_are_small(face: Face) -> None:
    assert max(abs(face.pitch), abs(face.roll), abs(face.yaw)) < 20


def test_pose_signs_follow_mirroring_and_in_plane_rotation(
    analyzer: FaceAnalyzer, portrait: Image.Image, face: Face
) -> None:
    mirrored = only_face(
        analyzer, numpy.asarray(portrait.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    )
    # Pillow's positive angle is counter-clockwise; our roll is positive clockwise.
    clockwise = only_face(analyzer, numpy.asarray(portrait.rotate(-15, Image.Resampling.BICUBIC)))
    assert abs(mirrored.roll + face.roll) < 4
    # Same |yaw| with the opposite sign (the pre-issue-11 estimator was 2.4 degrees off).
    assert abs(mirrored.yaw + face.yaw) <= 2
    assert 10 < clockwise.roll - face.roll < 20


def test_exif_rotated_copy_reports_displayed_coordinates(
    analyzer: FaceAnalyzer, portrait: Image.Image, save: Callable[..., Path]
) -> None:
    # Given a non-square upright photo and a copy stored sideways with Orientation=6
    upright = portrait.crop((0, 0, 512, 400))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    sideways = upright.transpose(Image.Transpose.ROTATE_90)
    plain_path = save(upright, "upright.png")
    rotated_path = save(sideways, "rotated.png", exif=exif)
    # When both are loaded and analysed
    plain, plain_info = load_image(plain_path)
    rotated, rotated_info = load_image(rotated_path)
    # Then the displayed image, its size and the face box agree
    assert sideways.size == (400, 512)
    assert (rotated_info.width, rotated_info.height, rotated_info.orientation) == (512, 400, 6)
    assert (plain_info.width, plain_info.height, plain_info.orientation) == (512, 400, 1)
    assert numpy.array_equal(plain, rotated)
    assert box(only_face(analyzer, rotated)) == box(only_face(analyzer, plain))


def test_large_photo_is_detected_bounded_and_mapped_back(
    analyzer: FaceAnalyzer, portrait: Image.Image, face: Face
) -> None:
    big = numpy.asarray(portrait.resize((2048, 2048), Image.Resampling.BICUBIC))
    # Bounded to 512 px, the detector sees (almost) the original pixels: boxes are 4x exactly.
    same_pixels = only_face(FaceAnalyzer(max_side=512), big)
    for got, small in zip(box(same_pixels), box(face), strict=True):
        assert abs(got - 4 * small) <= 4
    # With the default bound (1600 < 2048) HOG's pyramid quantises boxes to ~10 % of their size.
    assert analyzer.max_side < 2048
    default = only_face(analyzer, big)
    for got, small in zip(box(default), box(face), strict=True):
        assert abs(got - 4 * small) <= 0.12 * 4 * face.width
    assert default.quality > 0.8


def lfw_like(portrait: Image.Image, face: Face, *, soft: bool = False) -> Image.Image:
    """The portrait framed as LFW frames its faces (250x250, face ~110 px, JPEG 75). ``soft``:
    as if captured with a ~75 px face and enlarged, at 60 % contrast (a soft news photo)."""
    side = 2.2 * max(face.width, face.height)
    cx, cy = face.left + face.width / 2, face.top + face.height / 2
    region = tuple(round(v) for v in (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))
    framed = portrait.crop(region).resize((250, 250), Image.Resampling.LANCZOS)
    if soft:
        small = portrait.crop(region).resize((170, 170), Image.Resampling.LANCZOS)
        framed = ImageEnhance.Contrast(small.resize((250, 250), Image.Resampling.BICUBIC))
        framed = framed.enhance(0.6)
    buffer = io.BytesIO()
    framed.save(buffer, "JPEG", quality=75)
    return Image.open(buffer).convert("RGB")


def test_sharpness_ignores_contrast_and_exposure(portrait: Image.Image) -> None:
    crop = numpy.asarray(portrait.crop(FACE_REGION))
    dim = (crop.astype(numpy.float64) * 0.5 + 40).round().astype(numpy.uint8)
    # The raw Laplacian variance fell with the square of the contrast (1.00 -> 0.78 here).
    assert abs(sharpness(dim) - sharpness(crop)) < 0.02
    assert sharpness(numpy.full((100, 100, 3), 128, numpy.uint8)) == 0.0


def test_soft_low_contrast_upright_face_qualifies_and_its_blurs_do_not(
    analyzer: FaceAnalyzer, portrait: Image.Image, face: Face
) -> None:
    # Given the portrait as a soft, low-contrast LFW crop: still clearly recognisable
    soft = lfw_like(portrait, face, soft=True)
    upright = only_face(analyzer, numpy.asarray(soft))
    assert float(numpy.linalg.norm(upright.embedding - face.embedding)) < 0.25
    # Then it qualifies for founding a cluster (it scored 0.75 on the raw Laplacian variance)
    assert upright.quality > 0.8
    # While real blur on top of it does not
    for sigma in (2, 3):
        blurred = only_face(analyzer, numpy.asarray(soft.filter(ImageFilter.GaussianBlur(sigma))))
        assert blurred.quality < 0.8, sigma


def test_quality_falls_monotonically_with_blur_and_downscale(
    analyzer: FaceAnalyzer, portrait: Image.Image, face: Face
) -> None:
    sharp = lfw_like(portrait, face)
    qualities = [only_face(analyzer, numpy.asarray(sharp)).quality]
    for sigma in (1, 2, 3):
        blurred = sharp.filter(ImageFilter.GaussianBlur(sigma))
        qualities.append(only_face(analyzer, numpy.asarray(blurred)).quality)
    assert qualities[0] > 0.8 > qualities[2]
    assert qualities == sorted(qualities, reverse=True) and len(set(qualities)) == 4
    half = sharp.resize((125, 125), Image.Resampling.LANCZOS)
    assert only_face(analyzer, numpy.asarray(half)).quality < qualities[0]


def test_blurred_face_is_less_sharp_and_lower_quality(
    analyzer: FaceAnalyzer, portrait: Image.Image, face: Face
) -> None:
    blurred = only_face(analyzer, numpy.asarray(portrait.filter(ImageFilter.GaussianBlur(2))))
    assert blurred.sharpness < 0.5 * face.sharpness
    assert blurred.quality < 0.6


def test_quality_falls_for_tiny_and_turned_faces() -> None:
    good = face_quality(side=100, turn_deg=5, sharp=0.95, confidence=0.99)
    assert good > 0.9
    assert face_quality(side=36, turn_deg=5, sharp=0.95, confidence=0.99) < 0.1
    assert face_quality(side=100, turn_deg=75, sharp=0.95, confidence=0.99) < 0.3
    assert face_quality(side=100, turn_deg=5, sharp=0.1, confidence=0.99) < 0.4


def test_quality_does_not_punish_pose_inside_the_founding_window() -> None:
    # IMM's founding rule already requires |angles| < 30: a face at 29 degrees must not
    # lose FaceQuality for its pose as well (it did: 0.90 instead of 0.99).
    frontal = face_quality(side=100, turn_deg=0, sharp=0.95, confidence=0.99)
    assert face_quality(side=100, turn_deg=29.9, sharp=0.95, confidence=0.99) == frontal
    assert face_quality(side=100, turn_deg=45, sharp=0.95, confidence=0.99) < frontal


def test_embedding_is_stable_under_mirroring_and_rescaling(
    analyzer: FaceAnalyzer, portrait: Image.Image, face: Face
) -> None:
    mirrored = only_face(
        analyzer, numpy.asarray(portrait.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    )
    smaller = only_face(
        analyzer, numpy.asarray(portrait.resize((384, 384), Image.Resampling.LANCZOS))
    )
    for other in (mirrored, smaller):
        assert float(numpy.linalg.norm(other.embedding - face.embedding)) < 0.45


def test_image_without_a_face_gives_no_face(analyzer: FaceAnalyzer, portrait: Image.Image) -> None:
    rocket_and_flag = numpy.asarray(portrait)[0:300, 330:512]
    noise = numpy.random.default_rng(7).integers(0, 256, (300, 400, 3), dtype=numpy.uint8)
    assert analyzer.analyze(rocket_and_flag) == []
    assert analyzer.analyze(noise) == []


def test_grey_and_rgba_input_are_accepted(
    analyzer: FaceAnalyzer, portrait: Image.Image, face: Face
) -> None:
    grey = only_face(analyzer, numpy.asarray(portrait.convert("L")))
    rgba = only_face(analyzer, numpy.asarray(portrait.convert("RGBA")))
    assert box(rgba) == box(face)
    assert all(abs(a - b) <= 6 for a, b in zip(box(grey), box(face), strict=True))


def test_rgba_file_decodes_to_rgb(portrait: Image.Image, save: Callable[..., Path]) -> None:
    rgb, info = load_image(save(portrait.convert("RGBA"), "rgba.png"))
    assert rgb.shape == (512, 512, 3) and rgb.dtype == numpy.uint8
    assert (info.width, info.height, info.orientation) == (512, 512, 1)


@pytest.mark.parametrize("payload", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_undecodable_bytes_raise_invalid_argument(tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / "broken.jpg"
    path.write_bytes(payload)
    with pytest.raises(InvalidArgument, match="not a decodable image"):
        load_image(path)


def test_truncated_jpeg_raises_invalid_argument(portrait: Image.Image, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    portrait.save(buffer, "JPEG")
    path = tmp_path / "truncated.jpg"
    path.write_bytes(buffer.getvalue()[:2000])
    with pytest.raises(InvalidArgument):
        load_image(path)


def test_analyzer_is_cached_and_loads_models_lazily() -> None:
    assert get_analyzer() is get_analyzer()
    fresh = FaceAnalyzer()
    assert fresh._models is None  # nothing loaded until first use
    with pytest.raises(ValueError):
        FaceAnalyzer(detector="retina")


needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None, reason="ffmpeg binary not installed (apt-get install ffmpeg)"
)


@needs_ffmpeg
def test_video_frames_are_sampled_and_contain_the_face(
    analyzer: FaceAnalyzer, tmp_path: Path
) -> None:
    # Given a 2 s video looping the portrait
    video = tmp_path / "loop.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-loop", "1", "-i", str(ASTRONAUT), "-t", "2", "-r", "10",
         "-pix_fmt", "yuv420p", "-vf", "scale=320:320", str(video)],
        check=True,
    )  # fmt: skip
    # When frames are sampled every half second, bounded to 256 px
    frames = sample_video_frames(video, every_seconds=0.5, max_side=256)
    # Then they are timed, bounded, and the face is found in them
    assert [ms for ms, _ in frames] == [0, 500, 1000, 1500]
    assert all(frame.shape == (256, 256, 3) for _, frame in frames)
    assert len(analyzer.analyze(frames[0][1])) == 1


@needs_ffmpeg
def test_video_sampling_caps_frames_over_the_whole_duration(tmp_path: Path) -> None:
    video = tmp_path / "loop.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-loop", "1", "-i", str(ASTRONAUT), "-t", "4", "-r", "5",
         "-vf", "scale=64:64", str(video)],
        check=True,
    )  # fmt: skip
    frames = sample_video_frames(video, every_seconds=0.5, max_frames=2)
    assert [ms for ms, _ in frames] == [0, 2000]


@needs_ffmpeg
def test_undecodable_video_raises_invalid_argument(tmp_path: Path) -> None:
    path = tmp_path / "broken.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    with pytest.raises(InvalidArgument, match="not a decodable video"):
        sample_video_frames(path)
