"""Safe member names for the zip archives openimm writes (FileCompression).

An archive is unpacked on someone else's machine, often on Windows, where ``\\`` is a path
separator and ``C:`` names a drive. So a member name is normalised the way an extractor would
read it (backslashes become ``/``, a leading drive letter and leading slashes are dropped)
and what is still unsafe after that is refused: ``..`` segments and control characters.
``:`` elsewhere stays: OSS keys such as ``10:00.jpg`` are common and harmless once relative.
The API checks Aliases with the same function before a task is queued; the worker applies it
to every name it writes.
"""

from __future__ import annotations

import posixpath
import re

from pipeline.errors import InvalidArgument

DRIVE_RE = re.compile(r"^[A-Za-z]:")
MAX_NAME_BYTES = 65535  # the zip format's 16-bit name length


def _is_control(char: str) -> bool:
    code = ord(char)
    return code < 0x20 or 0x7F <= code <= 0x9F


def member_name(name: str, what: str = "name") -> str:
    """``name`` as a relative, normalised archive path; ``InvalidArgument`` when unsafe.

    A trailing ``/`` (a directory, as an Alias may end) is kept.
    """
    text = name.replace("\\", "/")
    directory = text.endswith("/")
    text = text.lstrip("/")
    if DRIVE_RE.match(text):
        text = text[2:].lstrip("/")
    segments = [s for s in text.split("/") if s not in ("", ".")]
    if any(s == ".." for s in segments):
        raise InvalidArgument(f"The archive {what} {name!r} must not contain '..'.")
    if any(_is_control(c) for c in text):
        raise InvalidArgument(f"The archive {what} {name!r} must not contain control characters.")
    clean = posixpath.join(*segments) if segments else ""
    if len(clean.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise InvalidArgument(f"The archive {what} {name!r} is too long.")
    return clean + "/" if directory and clean else clean
