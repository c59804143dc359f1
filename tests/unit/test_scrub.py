"""A failed task's Message keeps no worker paths (issue 9.11)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from pipeline.settings import Settings
from workers.scrub import private_roots, scrub_paths


def test_workdir_and_data_dir_paths_are_hidden(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    workdir = Path(tempfile.gettempdir()) / "openimm-FileCompression-1-abc123" / "fetch"
    message = (
        f"FileNotFoundError: [Errno 2] No such file or directory: '{workdir}/in0.mp4'; "
        f"spool {settings.resolved_data_dir}/spool/upload-x1 and {tempfile.gettempdir()}"
    )
    scrubbed = scrub_paths(message, private_roots(settings))
    assert scrubbed == (
        "FileNotFoundError: [Errno 2] No such file or directory: '<worker>/in0.mp4'; "
        "spool <worker>/upload-x1 and <worker>"
    )
    assert scrub_paths("oss://media/a.zip", private_roots(settings)) == "oss://media/a.zip"
