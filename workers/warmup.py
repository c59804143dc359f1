"""Warm a worker process for the queues it serves, right after fork (``worker_process_init``).

Without this the first job of every pool process paid the imports and model loads itself:
about 2-3 s on 2 cores for a highlight job (librosa and its numba-compiled onset code, OpenCV,
dlib's detector and landmark/embedding models), which is most of an 8-10 s clip's service
time. Warming runs each queue's warmer once per process, in a background thread so the
process takes jobs at once (a job arriving mid-warm-up waits on the same imports and loads
no longer than it did before); a warmer that fails only logs (the job that needs the model
will report the real error with its Code).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

import numpy as np

from pipeline.settings import Settings

log = logging.getLogger("openimm.warmup")
Warmer = Callable[[Settings], None]


def _faces(settings: Settings) -> None:
    from workers import faces

    analyzer = faces.get_analyzer(settings.face_detector, settings.face_max_side)
    analyzer.analyze(np.zeros((96, 96, 3), dtype=np.uint8))  # loads the dlib models


def _highlights(settings: Settings) -> None:
    from workers import highlights

    highlights.audio_activity(np.zeros(highlights.AUDIO_RATE, dtype=np.float32))  # numba JIT
    import cv2  # noqa: F401

    from workers import faces

    faces.get_analyzer(settings.face_detector, highlights.DECODE_WIDTH).analyze(
        np.zeros((96, 96, 3), dtype=np.uint8)
    )


def _speech(settings: Settings) -> None:
    from pathlib import Path

    from workers import asr
    from workers.models_install import whisper_model_dir

    configured = Path(settings.whisper_model_dir) if settings.whisper_model_dir else None
    model_dir = whisper_model_dir(settings.resolved_data_dir, configured)  # assembles if new
    asr.pick_engine("en", None, model_dir)


# Queue → what its jobs load. Queues not named here (archive, default, …) need nothing heavy.
WARMERS: dict[str, tuple[Warmer, ...]] = {
    "highlight": (_highlights,),
    "index": (_faces,),
    "cluster": (_faces,),
    "asr": (_speech,),
}


def warm(settings: Settings, queues: Iterable[str]) -> float:
    """Run the warmers of ``queues`` (each once); returns the seconds spent."""
    started = time.perf_counter()
    done: set[Warmer] = set()
    for queue in queues:
        for warmer in WARMERS.get(queue, ()):
            if warmer in done:
                continue
            done.add(warmer)
            try:
                warmer(settings)
            except Exception:  # a broken model must not stop the pool from starting
                log.exception("warming %s for queue %s failed", warmer.__name__, queue)
    return time.perf_counter() - started


def start(settings: Settings, queues: list[str]) -> threading.Thread:
    """Warm this process for ``queues`` in a daemon thread; logs what it took."""

    def run() -> None:
        spent = warm(settings, queues)
        log.info("worker process warmed for %s in %.2f s", ",".join(queues), spent)

    thread = threading.Thread(target=run, name="warmup", daemon=True)
    thread.start()
    return thread
