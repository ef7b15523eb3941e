"""Polling with a deadline: the one way the lab and the tests wait for a condition."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(TimeoutError):
    """A condition did not hold before its deadline; the message names what was awaited."""


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.02,
) -> T:
    """Call ``probe`` until it returns something truthy, and return that value.

    Exceptions from ``probe`` count as "not yet": servers refuse connections while they start.
    On timeout the last exception, if any, is chained so the cause is visible.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = probe()
            if value:
                return value
        except Exception as exc:  # a starting server fails in many ways; keep polling
            last_error = exc
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:.1f}s waiting for {what}") from last_error
        time.sleep(interval)
