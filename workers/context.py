"""What a processor sees of the outside world: its request, storage, progress and cancel."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from pipeline.settings import Settings
from pipeline.storage import MediaIO, ObjectStore

# Seconds between progress writes. Each write also tells the job whether it was cancelled,
# so this bounds cancel latency for processors that report progress.
PROGRESS_MIN_INTERVAL = 0.5


class Cancelled(Exception):
    """The task was cancelled (CancelTask) while the processor was running."""


@dataclass(frozen=True)
class Transactional:
    """A processor result that writes database state (file meta, figures, clusters).

    The runtime calls ``apply(session)`` in the same transaction that ends the task, after
    checking the task is still Running, so the state change, the task's terminal status and
    its outbox event commit together or not at all; ``apply`` returns the task result.
    """

    apply: Callable[[Session], dict[str, Any]]


@dataclass
class JobContext:
    """Per-job handle passed to processors. ``report`` stores progress and returns False when
    the task is no longer Running, which ``progress`` turns into :class:`Cancelled`."""

    task_id: str
    task_type: str
    request: dict[str, Any]
    settings: Settings
    store: ObjectStore
    media: MediaIO
    workroot: Path  # parent for this job's scratch directory, created on first use
    report: Callable[[int], bool]
    # Resolves the compute device on first use (``device``): picking it imports torch, which
    # a job that runs no torch model (highlights, archives) must not pay.
    device_of: Callable[[], str] = field(default=lambda: "cpu", repr=False)
    _last_report: float = field(default=0.0, repr=False)

    _workdir: Path | None = field(default=None, repr=False)

    @property
    def device(self) -> str:
        """``cpu`` or ``cuda:N`` for this job's models (``workers.device.pick_device``)."""
        return self.device_of()

    @property
    def workdir(self) -> Path:
        """Scratch directory for this job (removed when the job ends, whatever the outcome)."""
        if self._workdir is None:
            self._workdir = Path(
                tempfile.mkdtemp(prefix=f"openimm-{self.task_id[:40]}-", dir=self.workroot)
            )
        return self._workdir

    def cleanup(self) -> None:
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)

    def progress(self, percent: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_report < PROGRESS_MIN_INTERVAL:
            return
        self._last_report = now
        if not self.report(percent):
            raise Cancelled(self.task_id)


def limits(ctx: JobContext, path: Path, processed_seconds: float | None) -> dict[str, Any]:
    """The settings' size and duration limits for a media job's input; its probed fields
    (``workers.media.probe.ffprobe``, ``{}`` for an image)."""
    from workers.media.probe import check_media_limits

    return check_media_limits(
        path,
        max_bytes=ctx.settings.media_max_bytes,
        max_seconds=ctx.settings.media_max_seconds,
        processed_seconds=processed_seconds,
    )


def seconds(microseconds: int | None) -> float | None:
    return None if microseconds is None else microseconds / 1_000_000
