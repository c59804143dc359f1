"""The fixed cost a short job used to pay: models loaded by the job itself, the synchronous
wait's 0.25 s re-reads."""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.settings import Settings
from workers import models, warmup
from workers.models import faces
from workers.processors import highlights


def test_highlight_warmup_loads_what_a_highlight_job_needs(tmp_path: Path) -> None:
    # Given a process that serves the highlight queue
    settings = Settings(data_dir=tmp_path)
    models.clear()  # a fresh process: nothing loaded yet
    # When its pool preloads (as run_worker does before forking the children)
    warmup.preload(settings, ["highlight", "default"])
    # Then the face models a highlight job uses are loaded before any job arrives
    analyzer = faces.get_analyzer(settings.face_detector, highlights.DECODE_WIDTH)
    assert analyzer._models is not None
    # and the first job no longer pays the librosa and OpenCV imports
    assert {"librosa", "cv2"} <= set(sys.modules)


def test_queues_without_heavy_models_warm_nothing(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert warmup.warm(settings, ["archive", "default", "notify"]) < 0.5
    assert warmup.start(settings, ["highlight", "default"]) is None  # nothing per child
