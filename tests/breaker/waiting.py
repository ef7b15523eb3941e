"""Poll a condition with a deadline instead of sleeping a fixed time."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.005) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_past(monotonic_deadline: float, slack: float = 0.0) -> None:
    """Return once the monotonic clock is past ``monotonic_deadline + slack``."""
    wait_until(lambda: time.monotonic() > monotonic_deadline + slack, 60.0, "the deadline to pass")


def receive_exactly(sock: socket.socket, size: int, timeout: float = 5.0) -> bytes:
    """Read exactly ``size`` bytes, polling with a deadline (poll, not select: a test may hold
    more than 1,024 descriptors)."""
    data = b""
    deadline = time.monotonic() + timeout
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    while len(data) < size:
        if not poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
            raise AssertionError(f"got {len(data)} of {size} bytes")
        chunk = sock.recv(size - len(data))
        assert chunk, "connection closed"
        data += chunk
    return data
