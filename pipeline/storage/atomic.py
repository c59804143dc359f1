"""Atomic file replacement: write a temp file beside the target, then ``os.replace`` it.

Readers of the target see the old file or the whole new one, never a prefix, and a failed
write leaves no temp file behind.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

# Listings skip names with this prefix: they are writes in progress (or a crash's leftovers).
TMP_PREFIX = ".openimm-tmp-"


def open_temp(directory: Path) -> tuple[Path, BinaryIO]:
    """Create a new, uniquely named temp file in ``directory`` and open it for writing."""
    path = directory / f"{TMP_PREFIX}{secrets.token_hex(8)}"
    # os.open with mode 0o666 instead of tempfile.mkstemp (0o600): the object then gets the
    # same umask-derived permissions as a file a user copied in with ``cp``.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    return path, os.fdopen(fd, "wb")


def write_atomically(target: Path, fill: Callable[[BinaryIO], int], *, durable: bool) -> int:
    """Write ``target`` through ``fill`` (which returns the byte count) and return that count.

    ``durable`` fsyncs before the rename, so after a crash the target holds the old or the
    new content, not an empty file; scratch downloads skip it.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp, handle = open_temp(target.parent)
    try:
        with handle:
            size = int(fill(handle))
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return size
