"""Webhook retry policies: MNS's two presets plus custom ones, with full jitter."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

from pipeline.errors import InvalidParameter


@dataclass(frozen=True)
class RetryPolicy:
    """Retry ``max_retries`` times; the n-th wait is ``min(base * factor**n, max_interval)``
    scaled by a jitter in [1 - jitter, 1]; give up (dead-letter) past ``horizon`` seconds
    after the first attempt."""

    base: float
    factor: float
    max_interval: float
    max_retries: int
    horizon: float
    jitter: float = 0.5

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        try:
            raw = min(self.base * self.factor**retry, self.max_interval)
        except OverflowError:  # factor**retry beyond floats: long past max_interval
            raw = self.max_interval
        return raw * (1 - self.jitter * (rng or random).random())

    def exhausted(self, retries_done: int, elapsed: float) -> bool:
        return retries_done >= self.max_retries or elapsed >= self.horizon

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Bounds of a custom policy's fields (seconds, counts), so every delay stays computable.
LIMITS = {
    "base": (0, 86400),
    "factor": (1, 10),
    "max_interval": (0, 86400),
    "max_retries": (0, 10_000),
    "horizon": (0, 7 * 86400),
    "jitter": (0, 1),
}
POSITIVE = frozenset({"base", "max_interval", "horizon"})

PRESETS = {
    # MNS BACKOFF_RETRY: 3 retries, 10-20 s apart.
    "BACKOFF_RETRY": RetryPolicy(
        base=20, factor=1, max_interval=20, max_retries=3, horizon=120, jitter=0.5
    ),
    # MNS EXPONENTIAL_DECAY_RETRY: 176 retries over one day, intervals 2^0 … 512 s.
    "EXPONENTIAL_DECAY_RETRY": RetryPolicy(
        base=1, factor=2, max_interval=512, max_retries=176, horizon=86400, jitter=0.5
    ),
}


def parse(value: str | dict[str, Any] | None) -> RetryPolicy:
    """A preset name, or a dict of RetryPolicy fields (custom horizons, fast test policies)."""
    if value is None or value == "":
        return PRESETS["EXPONENTIAL_DECAY_RETRY"]
    if isinstance(value, str):
        if value not in PRESETS:
            raise InvalidParameter("NotifyStrategy", f"Use {' or '.join(PRESETS)}.")
        return PRESETS[value]
    try:
        policy = RetryPolicy(**value)
    except TypeError as exc:
        raise InvalidParameter("NotifyStrategy", str(exc)) from None
    for name, (low, high) in LIMITS.items():
        number = getattr(policy, name)
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise InvalidParameter("NotifyStrategy", f"{name} must be a number.")
        if not low <= number <= high or (name in POSITIVE and number <= 0):
            raise InvalidParameter("NotifyStrategy", f"{name} must be in ({low}, {high}].")
    if not isinstance(policy.max_retries, int):
        raise InvalidParameter("NotifyStrategy", "max_retries must be an integer.")
    return policy
