"""Super-resolution with the committed weights on real pixels: the astronaut portrait and
tiny clips that ffmpeg generates at run time (testsrc2, with and without a sine track)."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy
import pytest
from PIL import Image

from pipeline import errors
from pipeline.errors import InvalidArgument

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("torch") is None,
        reason="super-resolution needs PyTorch: pip install torch==2.13.0",
    ),
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg"),
]

from workers import models  # noqa: E402
from workers.models import superres as sr_model  # noqa: E402
from workers.processors import sr_video  # noqa: E402

ASTRONAUT = Path(__file__).resolve().parents[1] / "fixtures" / "astronaut.png"
MakeClip = Callable[..., Path]


def psnr_y(reference: numpy.ndarray, estimate: numpy.ndarray, shave: int) -> float:
    ref = sr_model.luma(reference)[shave:-shave, shave:-shave]
    est = sr_model.luma(estimate)[shave:-shave, shave:-shave]
    return 10 * math.log10(255.0**2 / float(numpy.mean((ref - est) ** 2)))


def streams(path: Path) -> list[dict[str, str]]:
    cmd = ["ffprobe", "-v", "error", "-count_frames", "-print_format", "json", "-show_streams"]
    out = subprocess.run([*cmd, str(path)], capture_output=True, check=True, timeout=60)
    found: list[dict[str, str]] = json.loads(out.stdout)["streams"]
    return found


@pytest.fixture
def make_clip(tmp_path: Path) -> MakeClip:
    """Factory: a testsrc2 clip of ``frames`` frames at 10 fps, optionally with a sine track."""

    def make(name: str, *, size: str = "64x48", frames: int = 10, audio: bool = True) -> Path:
        path = tmp_path / name
        seconds = frames / 10
        cmd = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi"]
        cmd += ["-i", f"testsrc2=size={size}:rate=10:duration={seconds}"]
        if audio:
            cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}", "-c:a", "aac"]
        cmd += ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-shortest", str(path)]
        subprocess.run(cmd, check=True, timeout=60)
        return path

    return make


@pytest.mark.parametrize("scale", sr_model.SCALES)
def test_each_scale_multiplies_both_sides(scale: int) -> None:
    # Given an odd-sized RGB image
    rgb = numpy.random.default_rng(scale).integers(0, 256, (17, 23, 3), dtype=numpy.uint8)
    # When it is upscaled
    out = sr_model.upscale_image(rgb, scale)
    # Then both sides grow by the scale and the pixels stay uint8 RGB
    assert out.shape == (17 * scale, 23 * scale, 3)
    assert out.dtype == numpy.uint8


@pytest.mark.parametrize("scale", [2, 4])
def test_model_beats_bicubic_on_a_real_photo(scale: int) -> None:
    # Given a 192x192 crop of the astronaut photo (not in the training data), bicubic-downscaled
    photo = numpy.asarray(Image.open(ASTRONAUT).convert("RGB"))[40:232, 120:312]
    lr = sr_model.bicubic_downscale(photo, scale)
    # When it is brought back by bicubic and by the network
    size = (lr.shape[1] * scale, lr.shape[0] * scale)
    bicubic = numpy.asarray(Image.fromarray(lr).resize(size, Image.Resampling.BICUBIC))
    model = sr_model.upscale_image(lr, scale)
    # Then the network's luma is clearly closer to the original
    assert psnr_y(photo, model, scale) > psnr_y(photo, bicubic, scale) + 0.5


def test_batched_frames_equal_single_images() -> None:
    frames = numpy.random.default_rng(7).integers(0, 256, (5, 12, 16, 3), dtype=numpy.uint8)
    batched = sr_model.upscale_frames(frames, 2)
    assert numpy.array_equal(batched[3], sr_model.upscale_image(frames[3], 2))


def test_video_round_trip_keeps_audio_and_frames(tmp_path: Path, make_clip: MakeClip) -> None:
    # Given a 64x48 clip of 10 frames with a sine track
    src = make_clip("in.mp4", frames=10, audio=True)
    dst = tmp_path / "out" / "up.mp4"
    seen: list[float] = []
    # When it is upscaled x2
    result = sr_video.upscale_video(src, dst, 2, "cpu", progress=seen.append)
    # Then the output is twice the size, has every frame and still has its audio
    found = streams(dst)
    video = next(s for s in found if s["codec_type"] == "video")
    assert (video["width"], video["height"]) == (128, 96)
    assert int(video["nb_read_frames"]) == 10 == result["frames"]
    assert any(s["codec_type"] == "audio" for s in found)
    assert result == {"width": 128, "height": 96, "frames": 10, "fps": 10.0}
    assert seen and seen[-1] == pytest.approx(1.0)
    assert [p.name for p in dst.parent.iterdir()] == ["up.mp4"]  # no temp file left


def test_video_without_audio_and_with_a_duration_limit(tmp_path: Path, make_clip: MakeClip) -> None:
    src = make_clip("silent.mp4", size="40x30", frames=20, audio=False)
    dst = tmp_path / "up.mkv"
    result = sr_video.upscale_video(src, dst, 3, "cpu", max_duration_us=1_000_000)
    found = streams(dst)
    assert [s["codec_type"] for s in found] == ["video"]
    assert (found[0]["width"], found[0]["height"]) == (120, 90)
    assert result["frames"] == int(found[0]["nb_read_frames"]) == 10


def test_garbage_input_raises_and_leaves_no_output(tmp_path: Path) -> None:
    src = tmp_path / "garbage.mp4"
    src.write_bytes(b"this is not a video" * 100)
    dst = tmp_path / "out" / "up.mp4"
    with pytest.raises(InvalidArgument, match="not a decodable video"):
        sr_video.upscale_video(src, dst, 2, "cpu")
    assert not dst.exists()
    assert not dst.parent.exists() or not any(dst.parent.iterdir())


def test_image_file_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "small.png"
    Image.open(ASTRONAUT).convert("RGB").crop((0, 0, 50, 40)).save(src)
    dst = tmp_path / "big.jpg"
    assert sr_video.upscale_image_file(src, dst, 4, "cpu") == {"width": 200, "height": 160}
    assert Image.open(dst).size == (200, 160)


def test_unknown_scale_is_an_invalid_argument() -> None:
    with pytest.raises(InvalidArgument):
        models.get(sr_model.SRModel, "cpu", scale=5)


def test_missing_torch_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a process where torch cannot be imported (None in sys.modules blocks the import)
    monkeypatch.setitem(sys.modules, "torch", None)
    frames = numpy.zeros((1, 4, 4, 3), numpy.uint8)
    # Then upscaling names the exact install command, as an IMM ModelNotInstalled error
    with pytest.raises(sr_model.ModelNotInstalled, match=r"pip install torch==2\.13\.0") as err:
        sr_model.upscale_frames(frames, 2)
    assert isinstance(err.value, RuntimeError)
    assert isinstance(err.value, errors.ModelNotInstalled)
    assert err.value.code == "ModelNotInstalled"
