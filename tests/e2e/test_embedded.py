"""The README's first command: ``openimm demo`` on the embedded default (SQLite, filesystem
broker, local object store, real Celery worker processes), from an empty data dir."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.stack import free_port

pytestmark = pytest.mark.e2e


def test_demo_runs_a_job_to_succeeded_with_no_settings(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENIMM_")}
    env["OPENIMM_PORT"] = str(free_port())
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert ": Succeeded" in result.stdout
    assert "holds ['photos/note-0.txt', 'photos/note-1.txt', 'photos/note-2.txt']" in result.stdout
    data = tmp_path / "openimm-data"
    assert (data / "openimm.db").exists() and (data / "access_keys").stat().st_mode & 0o077 == 0
    assert list((data / "oss" / "demo-bucket" / "out").glob("demo-*.zip"))
    assert _processes_using(data) == []  # no worker pool left behind


def _processes_using(data_dir: Path) -> list[int]:
    marker = f"OPENIMM_DATA_DIR={data_dir}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found
