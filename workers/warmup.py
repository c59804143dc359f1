"""Warm a worker pool for the queues it serves before its first job.

Without this the first job of every pool process paid the imports and model loads itself:
about 2-3 s on 2 cores for a highlight job (librosa and its numba-compiled onset code, OpenCV,
dlib's detector and landmark/embedding models), which is most of an 8-10 s clip's service
time.

Two phases. :func:`preload` runs in the pool's parent before it forks (``run_worker``), for
what is fork-safe — pure imports, numba JIT, dlib's CPU models, assembling model files — so
every child, including those forked later to grow the pool or replace a lost one, starts warm
and shares those pages. :func:`start` runs in each child (``worker_process_init``) for what
must not cross a fork (CTranslate2's thread pools: the Whisper engine), in a background
thread so the child takes jobs at once. A warmer that fails only logs: the job that needs the
model reports the real error with its Code.

torch is imported before the fork only for queues whose jobs pick a compute device; a child
picks its device when a job first asks (``workers.runtime.WorkerState.device``), so a
highlight pool's processes never import it (that import, 8-11 s on a loaded 2-core machine,
was what the first highlight call of each process still paid after the models were warmed).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable

import numpy as np

from pipeline.settings import Settings

log = logging.getLogger("openimm.warmup")
Warmer = Callable[[Settings], None]


def _faces(settings: Settings) -> None:
    from workers import models
    from workers.models.faces import FaceAnalyzer

    # Checks the files against the card, then loads the dlib models.
    models.get(
        FaceAnalyzer, detector=settings.face_detector, max_side=settings.face_max_side
    ).analyze(np.zeros((96, 96, 3), dtype=np.uint8))


def _highlights(settings: Settings) -> None:
    from workers.processors import highlights

    highlights.audio_activity(np.zeros(highlights.AUDIO_RATE, dtype=np.float32))  # numba JIT
    import cv2  # noqa: F401

    from workers import models
    from workers.models.faces import FaceAnalyzer

    models.get(
        FaceAnalyzer, detector=settings.face_detector, max_side=highlights.DECODE_WIDTH
    ).analyze(np.zeros((96, 96, 3), dtype=np.uint8))


def _torch(_settings: Settings) -> None:
    """torch's import only (fork-safe: CUDA is touched in the child, when a job first asks
    for its device). Only the queues whose jobs pick a device pay it."""
    import torch  # noqa: F401


def _speech(settings: Settings) -> None:
    from pathlib import Path

    from workers.models import asr
    from workers.models.whisper_base import whisper_model_dir

    configured = Path(settings.whisper_model_dir) if settings.whisper_model_dir else None
    model_dir = whisper_model_dir(settings.resolved_data_dir, configured)  # assembles if new
    asr.pick_engine("en", None, model_dir)


def _speech_files(settings: Settings) -> None:
    from pathlib import Path

    from workers.models.whisper_base import whisper_model_dir

    configured = Path(settings.whisper_model_dir) if settings.whisper_model_dir else None
    whisper_model_dir(settings.resolved_data_dir, configured)  # assembles + verifies if new


# Queue → what its jobs load, before the fork (PARENT) and in each child (CHILD). Queues not
# named here (archive, default, …) need nothing heavy.
PARENT: dict[str, tuple[Warmer, ...]] = {
    "highlight": (_highlights,),
    "index": (_faces, _torch),
    "cluster": (_faces,),
    "asr": (_speech_files, _torch),
    "sr": (_torch,),
    "image": (_torch,),
}
CHILD: dict[str, tuple[Warmer, ...]] = {"asr": (_speech,)}


def warm(
    settings: Settings, queues: Iterable[str], table: dict[str, tuple[Warmer, ...]] = PARENT
) -> float:
    """Run the warmers ``table`` names for ``queues`` (each once); returns the seconds spent."""
    started = time.perf_counter()
    done: set[Warmer] = set()
    for queue in queues:
        for warmer in table.get(queue, ()):
            if warmer in done:
                continue
            done.add(warmer)
            try:
                warmer(settings)
            except Exception:  # a broken model must not stop the pool from starting
                log.exception("warming %s for queue %s failed", warmer.__name__, queue)
    return time.perf_counter() - started


def preload(settings: Settings, queues: list[str]) -> None:
    """The fork-safe warm-up, in the pool's parent process before it forks its children."""
    spent = warm(settings, queues, PARENT)
    # Celery has not set up logging yet in this process: write the line to stderr directly.
    print(f"openimm.warmup: worker pool preloaded for {','.join(queues)} in {spent:.2f} s",
          file=sys.stderr, flush=True)  # fmt: skip


def start(settings: Settings, queues: list[str]) -> threading.Thread | None:
    """The per-child warm-up in a daemon thread (None when the queues need none)."""
    if not any(queue in CHILD for queue in queues):
        return None

    def run() -> None:
        spent = warm(settings, queues, CHILD)
        log.info("worker process warmed for %s in %.2f s", ",".join(queues), spent)

    thread = threading.Thread(target=run, name="warmup", daemon=True)
    thread.start()
    return thread
