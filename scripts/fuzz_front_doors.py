"""Run the front-door fuzz (tests/fuzzing.py) longer than CI does, with fresh randomness.

    PYTHONPATH=. python scripts/fuzz_front_doors.py --examples 2000 [--door rpc|mns|eas]

It runs the same properties as tests/unit/test_fuzz_front_doors.py; a failure prints the
shrunk reproducer (hypothesis's "Falsifying example") and exits non-zero.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOORS = {"rpc": "test_rpc_front_door", "mns": "test_mns_front_door", "eas": "test_eas_front_door"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=1000, help="examples per front door")
    parser.add_argument("--door", choices=sorted(DOORS), action="append", help="default: all")
    args = parser.parse_args()
    selected = " or ".join(DOORS[d] for d in (args.door or sorted(DOORS)))
    env = {
        **os.environ,
        "OPENIMM_FUZZ_EXAMPLES": str(args.examples),
        "OPENIMM_FUZZ_RANDOM": "1",
        "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT)),
    }
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(ROOT / "tests/unit/test_fuzz_front_doors.py"),
        "-k",
        selected,
        "-q",
        "-p",
        "no:cacheprovider",
        "--timeout",
        "0",
    ]
    return subprocess.call(command, env=env, cwd=ROOT)


if __name__ == "__main__":
    raise SystemExit(main())
