"""Go-style duration strings ("10s", "1.5m", "100ms", "1h2m"), as Consul's HTTP API takes them."""

from __future__ import annotations

import re

_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,  # micro sign
    "\u03bcs": 1e-6,  # greek mu
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


class DurationError(ValueError):
    """A duration string that Go's time.ParseDuration would reject."""


def parse_duration(text: str) -> float:
    """Seconds in a Go duration string; raises DurationError on anything Go would refuse.

    Like Go, a bare "0" is accepted, a sign is allowed, and every other number needs a unit.
    """
    original = text
    if not text:
        raise DurationError(f"invalid duration {original!r}")
    sign = 1.0
    if text[0] in "+-":
        sign = -1.0 if text[0] == "-" else 1.0
        text = text[1:]
    if text == "0":
        return 0.0
    if not text:
        raise DurationError(f"invalid duration {original!r}")
    total = 0.0
    position = 0
    while position < len(text):
        match = _PART.match(text, position)
        if match is None:
            raise DurationError(f"invalid duration {original!r}")
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    return sign * total


def to_nanoseconds(seconds: float) -> int:
    """Go's time.Duration JSON form (integer nanoseconds)."""
    return round(seconds * 1e9)
