"""Typed access to IMM RPC parameters (query string + form body, one flat string map).

Structured parameters arrive JSON-encoded in one string (the SDK's "shrink" requests); every
getter raises the IMM error a user would expect (``Missing<Name>``, ``Invalid<Name>``,
``InvalidJSON``) so handlers stay short.
"""

from __future__ import annotations

import builtins
import json
import re
from collections.abc import Mapping
from typing import Any

from pipeline.errors import InvalidArgument, InvalidJSON, InvalidParameter, MissingParameter

# Parameters any action may carry: the RPC envelope (old-style signatures, curl users) and the
# openimm idempotency extension.
COMMON_PARAMS = frozenset(
    {
        "Action",
        "Version",
        "RegionId",
        "Format",
        "AccessKeyId",
        "SignatureMethod",
        "Timestamp",
        "SignatureVersion",
        "SignatureNonce",
        "Signature",
        "ClientToken",
        "SecurityToken",
    }
)
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,127}$")
MAX_PARAM_BYTES = 1 << 20
# Every integer a client sends must fit the database's BIGINT (and SQLite's INTEGER).
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
INT_RE = re.compile(r"[+-]?[0-9]{1,19}")
# Deeper JSON than any IMM structure needs is refused before it reaches code that recurses
# (SimpleQuery compiles 5 levels; file metadata nests a few more).
MAX_JSON_DEPTH = 32


def parse_int(text: str, low: int = INT64_MIN, high: int = INT64_MAX) -> int:
    """A decimal integer within ``[low, high]`` (never beyond 64 bits); ValueError otherwise."""
    raw = text.strip()
    if not INT_RE.fullmatch(raw):
        raise ValueError(f"{text[:40]!r} is not an integer")
    value = int(raw)
    if not max(low, INT64_MIN) <= value <= min(high, INT64_MAX):
        raise ValueError(f"{value} is not between {low} and {high}")
    return value


def bounded_int(value: object, low: int = INT64_MIN, high: int = INT64_MAX) -> int | None:
    """A decoded JSON value if it is an integer (not a bool) within range, else None."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if max(low, INT64_MIN) <= value <= min(high, INT64_MAX) else None


def loads(raw: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` for client input: ValueError for bad JSON, for nesting deeper than
    ``max_depth`` (no RecursionError later in code that walks the value), for NaN/Infinity
    and for NUL characters, which no IMM structure carries and PostgreSQL cannot store."""
    try:
        value = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError(f"nested deeper than {max_depth} levels") from None
    depth, has_nul = _shape(value)
    if depth > max_depth:
        raise ValueError(f"nested deeper than {max_depth} levels")
    if has_nul:
        raise ValueError("a string contains a NUL character")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _shape(value: Any) -> tuple[int, bool]:
    """Nesting depth of a decoded JSON value and whether a string in it holds NUL, without
    recursion."""
    deepest, has_nul, stack = 0, False, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            has_nul = has_nul or "\x00" in node
        elif isinstance(node, dict):
            has_nul = has_nul or any("\x00" in key for key in node)
            node = list(node.values())
        if isinstance(node, list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in node)
    return deepest, has_nul


class Params:
    """Read-only view over the request's parameters for one action."""

    def __init__(self, values: Mapping[builtins.str, str]) -> None:
        self._values = dict(values)

    def __contains__(self, name: builtins.str) -> builtins.bool:
        return name in self._values and self._values[name] != ""

    def names(self) -> set[builtins.str]:
        return set(self._values)

    def check_known(self, action: builtins.str, allowed: frozenset[builtins.str]) -> None:
        """Refuse parameters the action does not define (typos would otherwise be ignored)."""
        unknown = sorted(self.names() - allowed - COMMON_PARAMS)
        if unknown:
            raise InvalidArgument(
                f"The parameter(s) {', '.join(unknown)} are not valid for action {action}."
            )

    def str(
        self,
        name: builtins.str,
        *,
        required: builtins.bool = False,
        default: builtins.str = "",
        max_bytes: builtins.int | None = None,
    ) -> builtins.str:
        value = self._values.get(name, "")
        if value == "":
            if required:
                raise MissingParameter(name)
            return default
        if "\x00" in value:  # PostgreSQL text cannot hold NUL; no IMM value has one
            raise InvalidParameter(name, "It must not contain NUL characters.")
        if max_bytes is not None and len(value.encode()) > max_bytes:
            raise InvalidParameter(name, f"It must be at most {max_bytes} bytes.")
        return value

    def name(self, name: builtins.str, *, required: builtins.bool = True) -> builtins.str:
        """A project or dataset name: 1-128 of [A-Za-z0-9_-], starting with a letter or _."""
        value = self.str(name, required=required)
        if value and not NAME_RE.match(value):
            raise InvalidParameter(
                name,
                "It must be 1-128 characters of letters, digits, '_' or '-', "
                "starting with a letter or '_'.",
            )
        return value

    def int(
        self,
        name: builtins.str,
        *,
        default: builtins.int | None = None,
        minimum: builtins.int | None = None,
        maximum: builtins.int | None = None,
    ) -> builtins.int | None:
        """An integer parameter, always within 64 bits (``minimum``/``maximum`` narrow it)."""
        raw = self._values.get(name, "")
        if raw == "":
            return default
        low = INT64_MIN if minimum is None else minimum
        high = INT64_MAX if maximum is None else maximum
        if not INT_RE.fullmatch(raw.strip()):
            raise InvalidParameter(name, f"{raw[:40]!r} is not an integer.")
        try:
            return parse_int(raw, low, high)
        except ValueError:
            raise InvalidParameter(name, f"It must be between {low} and {high}.") from None

    def bool(self, name: builtins.str, *, default: builtins.bool = False) -> builtins.bool:
        raw = self._values.get(name, "").lower()
        if raw == "":
            return default
        if raw in ("true", "1"):
            return True
        if raw in ("false", "0"):
            return False
        raise InvalidParameter(name, "It must be true or false.")

    def choice(
        self, name: builtins.str, options: tuple[builtins.str, ...], *, default: builtins.str = ""
    ) -> builtins.str:
        value = self.str(name, default=default)
        if value and value not in options:
            raise InvalidParameter(name, f"It must be one of {', '.join(options)}.")
        return value

    def json(self, name: builtins.str, kind: type, *, required: builtins.bool = False) -> Any:
        """Decode a JSON-encoded structured parameter and check its top-level type."""
        raw = self._values.get(name, "")
        if raw == "":
            if required:
                raise MissingParameter(name)
            return None
        if len(raw) > MAX_PARAM_BYTES:
            raise InvalidParameter(name, "The value is too large.")
        try:
            value = loads(raw)
        except ValueError as exc:
            raise InvalidJSON(name, str(exc)) from None
        if not isinstance(value, kind):
            raise InvalidJSON(name, f"Expected a JSON {kind.__name__}.")
        return value
