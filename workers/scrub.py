"""Keep worker-private paths out of what users see: a failed task's Message is returned by
GetTask/ListTasks and sent in notifications, and must not reveal the worker's temp layout
(``/tmp/openimm-<task>-abc123/fetch/in0``) or its data directory."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

from pipeline.settings import Settings

HIDDEN = "<worker>"
_PATH_TAIL = r"[^\s'\"<>,;:()\[\]]*"


def private_roots(settings: Settings) -> list[str]:
    """The directories whose paths are private: the temp root (job workdirs) and the data dir
    (upload spool, embedded object store), as given and as resolved."""
    roots = {tempfile.gettempdir(), str(Path(tempfile.gettempdir()).resolve())}
    roots |= {str(settings.data_dir), str(settings.resolved_data_dir)}
    return sorted((r.rstrip("/") for r in roots if r not in ("", ".", "/")), key=len, reverse=True)


def scrub_paths(message: str, roots: Iterable[str]) -> str:
    """``message`` with every path under one of ``roots`` replaced by ``<worker>/<file name>``
    (the file name helps a user; the directories are nobody's business)."""
    for root in roots:
        pattern = re.compile(re.escape(root) + r"(/" + _PATH_TAIL + r")?(?![\w.-])")
        message = pattern.sub(_hide, message)
    return message


def _hide(match: re.Match[str]) -> str:
    name = (match.group(1) or "").rstrip("/").rsplit("/", 1)[-1]
    return f"{HIDDEN}/{name}" if name else HIDDEN
