"""Media that tests generate themselves with ffmpeg (no committed binaries needed)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


def planted_video(out: Path, seconds: int = 20, event: tuple[int, int] = (10, 16)) -> Path:
    """A still grey frame with a faint tone, except during ``event`` where a moving test
    pattern and loud noise play: the one eventful segment a highlight must find."""
    a, b = event
    graph = (
        f"[0][1]overlay=x='mod(t*200,160)':y=60:enable='between(t,{a},{b})'[v];"
        f"[2]volume=0.02[q];[3]volume='if(between(t,{a},{b}),1,0)':eval=frame[n];"
        "[q][n]amix=inputs=2[a]"
    )
    ffmpeg(
        *("-f", "lavfi", "-i", f"color=c=gray:s=320x240:d={seconds}:r=25"),
        *("-f", "lavfi", "-i", f"testsrc2=s=160x120:d={seconds}:r=25"),
        *("-f", "lavfi", "-i", f"sine=f=300:d={seconds}"),
        *("-f", "lavfi", "-i", f"anoisesrc=d={seconds}:a=0.8"),
        *("-filter_complex", graph, "-map", "[v]", "-map", "[a]"),
        *("-c:v", "libx264", "-preset", "veryfast", "-c:a", "aac", "-t", str(seconds), str(out)),
    )
    return out


def speech_wav(out: Path, text: str, *, silence_before: float = 0.5) -> Path:
    """English speech from espeak-ng (16 kHz mono WAV), after ``silence_before`` seconds."""
    raw = out.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "-w", str(raw), text], check=True)
    ffmpeg(
        *("-f", "lavfi", "-t", f"{silence_before}", "-i", "anullsrc=r=16000:cl=mono"),
        *("-i", str(raw), "-filter_complex", "[1]aresample=16000[s];[0][s]concat=n=2:v=0:a=1"),
        *("-ac", "1", "-ar", "16000", str(out)),
    )
    raw.unlink()
    return out
