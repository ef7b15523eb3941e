"""A tiny echo server on its own event-loop thread: a stand-in mysqld for byte-level gate tests.

With ``login_ok`` it answers each connection's first chunk with what ends a MySQL login (an OK
packet), so a gate that forwards in the kernel hands the link over, then echoes like the default.
"""

from __future__ import annotations

import asyncio
import threading
from typing import cast

# A login's final OK as the gate sees it: sequence 2, status "autocommit".
LOGIN_OK = b"\x07\x00\x00\x02\x00\x00\x00\x02\x00\x00\x00"


class _Echo(asyncio.Protocol):
    def __init__(self, login_ok: bool) -> None:
        self.logging_in = login_ok

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(LOGIN_OK if self.logging_in else data)
        self.logging_in = False


class EchoBackend:
    def __init__(self, login_ok: bool = False) -> None:
        self.login_ok = login_ok
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            self.loop.create_server(lambda: _Echo(self.login_ok), "127.0.0.1", 0, backlog=4096)
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()
        server.close()
        self.loop.run_until_complete(server.wait_closed())
        self.loop.close()

    def __enter__(self) -> EchoBackend:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
