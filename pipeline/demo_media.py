"""The media ``openimm demo`` runs on: photos and images shipped in ``pipeline/demo_data``
(public domain / CC0, see its SOURCES) and media it generates: a video with a planted event
(ffmpeg test sources), speech (espeak-ng) and a small image to upscale.

Everything is written into a folder the demo then drops into the embedded object store."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageEnhance

DATA = Path(__file__).resolve().parent / "demo_data"
# The planted event of the highlight video: seconds [start, end) of motion and loud noise.
VIDEO_SECONDS, EVENT = 12, (7.0, 10.0)
SPOKEN = "Good morning. The people albums are ready, and the highlight is ready too."
SPOKEN_WORDS = ("morning", "people", "albums", "highlight")
# The super-resolution input: the astronaut's face, small.
SR_BOX, SR_SIDE = (145, 45, 295, 195), 96
TOOLS = ("ffmpeg", "espeak-ng")


@dataclass(frozen=True)
class Photo:
    name: str
    note: str  # where it comes from; "derived" ones are made here from one shipped photo


def check_tools() -> None:
    """Refuse early, with the fix, when a system tool the demo needs is missing."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise SystemExit(
            f"openimm demo needs {', '.join(missing)}: run `make system-deps` "
            "(or apt-get install ffmpeg espeak-ng)."
        )


def people_photos(folder: Path) -> list[Photo]:
    """The shipped portraits, plus two photos derived from the one photo of Eileen Collins
    (a mirror image; a brighter, 1.3x larger copy) so that she has an album too."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = []
    for path in sorted((DATA / "photos").glob("*.jpg")):
        shutil.copyfile(path, folder / path.name)
        photos.append(Photo(path.name, "shipped (public domain)"))
    base = Image.open(DATA / "photos" / "collins.jpg").convert("RGB")
    derived = {
        "collins-mirrored.jpg": base.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        "collins-bright.jpg": ImageEnhance.Brightness(
            base.resize((base.width * 13 // 10, base.height * 13 // 10))
        ).enhance(1.15),
    }
    for name, image in derived.items():
        image.save(folder / name, quality=90)
        photos.append(Photo(name, "derived from collins.jpg by the demo"))
    return photos


def classification_images(folder: Path) -> list[str]:
    """The shipped CC0 photos (a cup of coffee, a cat)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for path in sorted((DATA / "images").glob("*.jpg")):
        shutil.copyfile(path, folder / path.name)
        names.append(path.name)
    return names


def sr_image(out: Path) -> Path:
    """A 96x96 crop of the astronaut's face, for a x2 upscale."""
    out.parent.mkdir(parents=True, exist_ok=True)
    face = Image.open(DATA / "photos" / "collins.jpg").convert("RGB").crop(SR_BOX)
    face.resize((SR_SIDE, SR_SIDE), Image.Resampling.LANCZOS).save(out)
    return out


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


def planted_video(out: Path) -> Path:
    """A still grey frame with a faint tone, except during ``EVENT``, where a moving test
    pattern and loud noise play: the one eventful moment a highlight must find."""
    out.parent.mkdir(parents=True, exist_ok=True)
    (a, b), seconds = EVENT, VIDEO_SECONDS
    graph = (
        f"[0][1]overlay=x='mod(t*200,160)':y=60:enable='between(t,{a},{b})'[v];"
        f"[2]volume=0.02[q];[3]volume='if(between(t,{a},{b}),1,0)':eval=frame[n];"
        "[q][n]amix=inputs=2[a]"
    )
    _ffmpeg(
        *("-f", "lavfi", "-i", f"color=c=gray:s=320x240:d={seconds}:r=25"),
        *("-f", "lavfi", "-i", f"testsrc2=s=160x120:d={seconds}:r=25"),
        *("-f", "lavfi", "-i", f"sine=f=300:d={seconds}"),
        *("-f", "lavfi", "-i", f"anoisesrc=d={seconds}:a=0.8"),
        *("-filter_complex", graph, "-map", "[v]", "-map", "[a]"),
        *("-c:v", "libx264", "-preset", "veryfast", "-c:a", "aac", "-t", str(seconds), str(out)),
    )
    return out


def speech(out: Path, text: str = SPOKEN) -> Path:
    """English speech from espeak-ng as a 16 kHz mono WAV, after half a second of silence."""
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = out.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "-w", str(raw), text], check=True)
    _ffmpeg(
        *("-f", "lavfi", "-t", "0.5", "-i", "anullsrc=r=16000:cl=mono"),
        *("-i", str(raw), "-filter_complex", "[1]aresample=16000[s];[0][s]concat=n=2:v=0:a=1"),
        *("-ac", "1", "-ar", "16000", str(out)),
    )
    raw.unlink()
    return out
