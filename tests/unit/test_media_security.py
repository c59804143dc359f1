"""Attacks through media files (issue 9): pixel bombs, decompression bombs, playlists that
make ffprobe read local files. Every input here is small; what it claims is not."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from pipeline.errors import InvalidArgument
from workers.media import imaging, probe

BOMB_SIDE = 12000
TONE = "sine=frequency=440:sample_rate=16000"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def pixel_bomb(path: Path, width: int = BOMB_SIDE, height: int = BOMB_SIDE) -> Path:
    """A real, fully decodable 1-bit PNG of ``width`` x ``height`` black pixels: tens of
    kilobytes on disk, ``width * height * 3`` bytes as RGB."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    deflate = zlib.compressobj(9)
    idat = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat)
    path.write_bytes(png + _chunk(b"IEND", b""))
    return path


PEAK_SNIPPET = """
import json, resource, sys
from workers.media import imaging
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    imaging.load_image(sys.argv[1])
    outcome = "decoded"
except Exception as exc:
    outcome = f"{type(exc).__name__}: {exc}"
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"outcome": outcome, "peak_kib": after - before}))
"""


def test_pixel_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    """Attack (item 8): a ~50 KB PNG of 12000x12000 pixels made a worker allocate ~1 GB.
    Measured in a fresh process so the peak RSS belongs to this load alone."""
    bomb = pixel_bomb(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 200_000
    done = subprocess.run(
        [sys.executable, "-c", PEAK_SNIPPET, str(bomb)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(done.stdout)
    assert (
        result["outcome"].startswith("InvalidArgument")
        and "OPENIMM_IMAGE_MAX_PIXELS" in (result["outcome"])
    )
    assert result["peak_kib"] < 64 * 1024  # 144 MP as RGB would be 432 MB


def test_pixel_limit_is_a_setting_and_applies_to_every_loader(tmp_path: Path) -> None:
    small = pixel_bomb(tmp_path / "small.png", 300, 200)
    rgb, info = imaging.load_image(small, max_pixels=60_000)
    assert rgb.shape == (200, 300, 3) and (info.width, info.height) == (300, 200)
    for load in (
        lambda: imaging.load_image(small, max_pixels=59_999),
        lambda: probe.image_fields(small, max_pixels=59_999),
    ):
        with pytest.raises(InvalidArgument, match="OPENIMM_IMAGE_MAX_PIXELS"):
            load()


def test_decompression_bomb_is_an_invalid_argument(tmp_path: Path) -> None:
    """Attack (item 10): beyond Pillow's own guard (2 x 89 MP) the file meta probe reported
    ``[InternalError] DecompressionBombError``: Pillow's guard fires at open, before our
    own limit is looked at, and must still end as a clear InvalidArgument."""
    bomb = pixel_bomb(tmp_path / "huge.png", 20000, 20000)
    for load in (lambda: probe.image_fields(bomb), lambda: imaging.load_image(bomb)):
        with pytest.raises(InvalidArgument, match="decompression bomb"):
            load()


# ---- playlists: ffmpeg must not open other files ----------------------------------------------


@pytest.fixture
def playlist(tmp_path: Path) -> Path:
    """An uploaded HLS playlist whose one segment is a video outside every root. The
    comment line with a non-UTF-8 byte makes it sniff as octet-stream, so indexing probes it."""
    outside = tmp_path / "outside" / "secret.mp4"
    outside.parent.mkdir()
    sources = ("-f", "lavfi", "-i", "testsrc=size=96x64:rate=10", "-f", "lavfi", "-i", TONE)
    encode = ("-t", "2", "-pix_fmt", "yuv420p", "-shortest", str(outside))
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", *sources, *encode],
        check=True,
        timeout=120,
    )
    staged = tmp_path / "staged" / "list.m3u8"
    staged.parent.mkdir()
    staged.write_bytes(
        b"#EXTM3U\n#\xff\xfe\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n"
        + f"file://{outside}\n#EXT-X-ENDLIST\n".encode()
    )
    return staged


def test_playlists_are_refused_by_every_probe_and_decoder(playlist: Path) -> None:
    """Attack (item 7): an uploaded .m3u8 naming file:///… outside the roots was indexed with
    that file's metadata. Every ffmpeg/ffprobe entry point must refuse to follow it."""
    from workers.models import asr
    from workers.processors import highlights, sr_video

    attempts = {
        "probe": lambda: probe.ffprobe(playlist),
        "limits": lambda: probe.check_media_limits(
            playlist, max_bytes=1 << 30, max_seconds=3600, processed_seconds=None
        ),
        "frames": lambda: imaging.sample_video_frames(playlist),
        "sr": lambda: sr_video.probe_video(playlist),
        "asr": lambda: asr.load_audio(playlist),
        "highlights": lambda: list(highlights.decoded_frames(playlist, None)),
        "audio": lambda: highlights.audio_track(playlist, None).size or None,
    }
    leaked = {}
    for name, attempt in attempts.items():
        try:
            leaked[name] = attempt()
        except InvalidArgument:
            continue
    assert leaked in ({}, {"audio": None}), f"read through the playlist: {sorted(leaked)}"


def test_indexing_a_playlist_reads_no_metadata(playlist: Path) -> None:
    from types import SimpleNamespace

    from pipeline.settings import Settings
    from workers.processors import indexing

    ctx = SimpleNamespace(settings=Settings())
    indexed = indexing.analyse(ctx, playlist, "oss://b/list.m3u8", indexing.Operators())  # type: ignore[arg-type]
    assert indexed.media_type == "other"
    assert "Duration" not in indexed.doc and "VideoStreams" not in indexed.doc


def test_a_big_jpeg_is_decoded_at_reduced_size_when_the_caller_needs_less(tmp_path: Path) -> None:
    """Image models need ~256 px: a 6000x4000 JPEG is decoded at a DCT scale that keeps the
    shorter side >= the request (here 1/4: 1500x1000), never the full 24 MP."""
    from PIL import Image

    from workers.media import imaging

    path = tmp_path / "big.jpg"
    Image.new("RGB", (6000, 4000), "red").save(path, quality=80)
    full, _ = imaging.load_image(path)
    reduced, info = imaging.load_image(path, reduce_to=512)
    assert full.shape == (4000, 6000, 3)
    assert reduced.shape == (1000, 1500, 3) and (info.width, info.height) == (1500, 1000)


@pytest.mark.parametrize("kind", ["rotated-jpeg", "grey-png", "rgba-png", "cmyk-jpeg"])
def test_load_upright_is_the_upright_flattened_photo(tmp_path: Path, kind: str) -> None:
    """The Pillow path of the classifiers (no array round trip): upright (EXIF orientation
    applied), transparency composited on white, RGB or L; and the classifier's crop of it is
    the crop of ``load_image``'s array."""
    import numpy
    from PIL import Image, ImageOps

    from workers.models.imagenet import crop

    gradient = numpy.linspace(0, 255, 120 * 80 * 3).astype(numpy.uint8).reshape(80, 120, 3)
    image = Image.fromarray(gradient)
    path = tmp_path / f"{kind}.{'jpg' if kind.endswith('jpeg') else 'png'}"
    alpha = gradient[:, :, 0].astype(numpy.float64) / 255
    if kind == "rotated-jpeg":
        exif = Image.Exif()
        exif[0x0112] = 6  # viewers rotate it 90° clockwise
        image.save(path, exif=exif.tobytes())
    elif kind == "grey-png":
        image.convert("L").save(path)
    elif kind == "rgba-png":
        image.putalpha(Image.fromarray(gradient[:, :, 0]))
        image.save(path)
    else:
        image.convert("CMYK").save(path)
    upright, info = imaging.load_upright(path)
    with Image.open(path) as decoded:
        if kind == "rgba-png":  # on white: rgb * a + 255 * (1 - a)
            rgba = numpy.asarray(decoded).astype(numpy.float64)
            expected = rgba[:, :, :3] * alpha[..., None] + 255 * (1 - alpha[..., None])
        elif kind == "grey-png":
            expected = numpy.asarray(decoded)
        else:
            expected = numpy.asarray(ImageOps.exif_transpose(decoded).convert("RGB"))
    assert upright.mode == ("L" if kind == "grey-png" else "RGB")
    assert numpy.abs(numpy.asarray(upright).astype(numpy.float64) - expected).max() <= 1
    width, height = (80, 120) if kind == "rotated-jpeg" else (120, 80)
    assert (info.width, info.height, info.orientation) == (
        width,
        height,
        6 if kind == "rotated-jpeg" else 1,
    )
    pixels, _ = imaging.load_image(path)
    assert numpy.array_equal(crop(upright), crop(Image.fromarray(pixels)))
