"""Enqueue and queue depth against real Redis (and the same path on fakeredis in unit/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import queue
from pipeline.settings import Settings

pytestmark = pytest.mark.integration


def test_enqueue_routes_by_task_type_and_depth_counts(redis_url: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, broker_url=redis_url, queue_routes={"Diagnostic": "sr"})
    app = queue.make_celery(settings)
    queue.enqueue(app, "FileCompression-1", "FileCompression", "archive", settings)
    queue.enqueue(app, "FileCompression-2", "FileCompression", "archive", settings)
    queue.enqueue(
        app, "Diagnostic-1", "Diagnostic", queue.queue_for("Diagnostic", settings), settings
    )
    depths = queue.queue_depths(app, settings)
    assert depths["archive"] == 2 and depths["sr"] == 1 and depths["default"] == 0
    assert (
        app.conf.broker_transport_options["visibility_timeout"]
        == settings.visibility_timeout
        > max(settings.time_limit("FileCompression"), 3600)
    )
