"""Media probing: sniffed content types, hashes, EXIF time/GPS/orientation, ffprobe fields."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from pipeline.errors import InvalidArgument
from tests.mediagen import ffmpeg
from workers.media import probe


@pytest.mark.parametrize(
    ("head", "ctype"),
    [
        (b"\xff\xd8\xff\xe0rest", "image/jpeg"),
        (b"\x89PNG\r\n\x1a\nrest", "image/png"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", "audio/wav"),
        (b"\x00\x00\x00\x18ftypisom", "video/mp4"),
        (b"\x00\x00\x00\x18ftypheic", "image/heic"),
        (b"\x1a\x45\xdf\xa3", "video/x-matroska"),
        (b"%PDF-1.7", "application/pdf"),
        (b"PK\x03\x04", "application/zip"),
        (b"plain words", "text/plain"),
        (b"\x00\x01\x02\x03", "application/octet-stream"),
    ],
)
def test_sniffing_reads_bytes_not_names(head: bytes, ctype: str) -> None:
    assert probe.sniff(head) == ctype


def test_exif_time_gps_and_orientation(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° CW to display: displayed size is 20x40
    exif[0x010F] = "Acme"
    exif.get_ifd(0x8769)[0x9003] = "2023:07:14 09:30:00"  # DateTimeOriginal
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (31.0, 14.0, 24.0)
    gps[3], gps[4] = "E", (121.0, 28.0, 12.0)
    path = tmp_path / "photo.jpg"
    img.save(path, exif=exif)
    fields = probe.image_fields(path)
    assert (fields["ImageWidth"], fields["ImageHeight"], fields["Orientation"]) == (20, 40, 6)
    assert fields["ProduceTime"].startswith("2023-07-14T09:30:00")
    assert fields["LatLong"] == "31.240000,121.470000"
    assert '"Make": "Acme"' in fields["EXIF"]
    basics = probe.basics(path, "oss://b/dir/photo.jpg")
    assert basics["Filename"] == "photo.jpg" and basics["ContentType"] == "image/jpeg"
    assert basics["Size"] == path.stat().st_size and basics["ETag"] == f'"{basics["FileHash"]}"'


def test_corrupt_image_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 100)
    with pytest.raises(InvalidArgument, match="not a decodable image"):
        probe.image_fields(path)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")
def test_ffprobe_fields(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    ffmpeg(
        *("-f", "lavfi", "-i", "testsrc2=s=320x240:d=2:r=10"),
        *("-f", "lavfi", "-i", "sine=f=440:d=2:sample_rate=22050"),
        *("-c:v", "libx264", "-c:a", "aac", "-shortest", str(path)),
    )
    fields = probe.ffprobe(path)
    assert fields["MediaType"] == "video" and abs(fields["Duration"] - 2) < 0.2
    assert (fields["VideoWidth"], fields["VideoHeight"]) == (320, 240)
    assert fields["VideoStreams"][0]["CodecName"] == "h264"
    assert fields["AudioStreams"][0]["SampleRate"] == 22050
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01" * 300)
    with pytest.raises(InvalidArgument, match="not a decodable media file"):
        probe.ffprobe(junk)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")
def test_media_limits(tmp_path: Path) -> None:
    path = tmp_path / "long.wav"
    ffmpeg("-f", "lavfi", "-i", "sine=d=6", str(path))
    probe.check_media_limits(path, max_bytes=10**9, max_seconds=10, processed_seconds=None)
    with pytest.raises(InvalidArgument, match="OPENIMM_MEDIA_MAX_SECONDS"):
        probe.check_media_limits(path, max_bytes=10**9, max_seconds=5, processed_seconds=None)
    # a play_duration shorter than the limit makes a long input acceptable
    probe.check_media_limits(path, max_bytes=10**9, max_seconds=5, processed_seconds=3)
    with pytest.raises(InvalidArgument, match="OPENIMM_MEDIA_MAX_BYTES"):
        probe.check_media_limits(path, max_bytes=100, max_seconds=60, processed_seconds=None)
