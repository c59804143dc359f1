"""Float vectors inside JSON task results: base64 of little-endian float32.

A classification result carries all 1000 class probabilities for the EAS service. As a JSON
object of name → number it was ~36 KB that the worker serialised, PostgreSQL validated and
compressed, and the API parsed back, per call; as float32 bytes it is 5.3 KB and no parsing.
The values are the model's own float32 outputs, so nothing is lost: ``float()`` of a decoded
element is the number the old object held. The reader that knows the labels (the EAS adapter)
names them.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence

import numpy

DTYPE = numpy.dtype("<f4")


def encode(values: numpy.ndarray) -> str:
    """``values`` (any float array) as base64 of little-endian float32."""
    return base64.b64encode(numpy.ascontiguousarray(values, dtype=DTYPE).tobytes()).decode()


def decode(text: str) -> numpy.ndarray:
    """The float32 vector :func:`encode` wrote (read-only view of the decoded bytes)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not a base64 float32 vector: {exc}") from None
    if len(raw) % DTYPE.itemsize:
        raise ValueError(f"{len(raw)} bytes is not a whole number of float32 values")
    return numpy.frombuffer(raw, dtype=DTYPE)


def named(names: Sequence[str], text: str) -> dict[str, float]:
    """``{name: value}`` of an encoded vector with one value per name."""
    values = decode(text)
    if len(values) != len(names):
        raise ValueError(f"{len(values)} values for {len(names)} names")
    return dict(zip(names, values.tolist(), strict=True))
