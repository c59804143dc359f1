"""The fixed cost a short job used to pay: models loaded by the job itself, the synchronous
wait's 0.25 s re-reads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pipeline.settings import Settings
from workers import models, runtime, warmup
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


# A fresh interpreter per check: this test process may have imported torch already.
FRESH_CHILD = """
import sys
from pipeline.settings import Settings
from workers import runtime
from workers import warmup
settings = Settings(data_dir=sys.argv[1], device="")
warmup.preload(settings, [sys.argv[2]])  # the pool parent, before the fork
state = runtime.init_process(settings)  # worker_process_init in the child
print("torch" in sys.modules)
"""


def _imports_torch_before_first_job(tmp_path: Path, queue: str) -> bool:
    done = subprocess.run(
        [sys.executable, "-c", FRESH_CHILD, str(tmp_path), queue],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1] == "True"


def test_a_highlight_pool_process_never_imports_torch(tmp_path: Path) -> None:
    # Given a pool for the highlight queue, whose jobs run no torch model
    # When its parent preloads and a child initialises (what precedes the first job)
    # Then torch was not imported: picking the device (8-11 s of torch import on 2 loaded
    # cores) waits until a job asks for it
    assert not _imports_torch_before_first_job(tmp_path, "highlight")


def test_queues_whose_jobs_pick_a_device_import_torch_before_the_fork(tmp_path: Path) -> None:
    assert _imports_torch_before_first_job(tmp_path, "sr")


def test_the_device_is_picked_when_a_job_first_asks(tmp_path: Path) -> None:
    state = runtime.init_process(Settings(data_dir=tmp_path, device="cuda:3"))
    assert "device" not in vars(state)  # not picked at process start
    assert state.device == "cuda:3"  # OPENIMM_DEVICE pins it
