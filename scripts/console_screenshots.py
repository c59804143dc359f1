#!/usr/bin/env python3
"""Regenerate docs/screenshots/*.png: run the console's browser tests (tests/e2e/
test_console_browser.py: a real API, worker pool, PostgreSQL, Redis and headless Chromium)
with their screenshots written to docs/screenshots instead of the artefacts folder.

    PYTHONPATH=$PWD .venv/bin/python scripts/console_screenshots.py [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST = "tests/e2e/test_console_browser.py"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CONSOLE_SCREENSHOTS_DIR": str(args.out.resolve())}
    env.setdefault("PYTHONPATH", str(ROOT))
    command = [sys.executable, "-m", "pytest", TEST, "-q", "-p", "no:cacheprovider"]
    done = subprocess.run(command, cwd=ROOT, env=env, check=False)
    if done.returncode == 0:
        for path in sorted(args.out.glob("*.png")):
            print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    return done.returncode


if __name__ == "__main__":
    raise SystemExit(main())
