"""systemd's notify protocol: READY, WATCHDOG pings and STATUS lines over $NOTIFY_SOCKET.

A few lines of our own rather than a dependency: one datagram per message, to a path or to an
abstract socket (a leading ``@``), as sd_notify(3) describes. Outside systemd (no NOTIFY_SOCKET)
every call is a no-op that returns False, so the agent runs the same way by hand.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    """Sends notifications to the service manager, if there is one."""

    def __init__(self, address: str | None = None) -> None:
        self._address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def watchdog_interval(self) -> float | None:
        """Half of $WATCHDOG_USEC in seconds (how often to ping), if this process is watched."""
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        if not usec.isdigit() or int(usec) == 0:
            return None
        if pid and pid != str(os.getpid()):
            return None  # the watchdog is meant for another process of the unit
        return int(usec) / 2_000_000

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; True if it was delivered."""
        if not self._address:
            return False
        address = self._address
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        payload = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(address)
                sock.sendall(payload)
        except OSError:
            # A watchdog ping that cannot be sent must not take the agent down; systemd will act
            # on the missing ping itself.
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")
