"""One gate worker's state: admits or refuses clients, opens their backend connections, joins
logged-in links in the kernel, balances accepted sockets between workers, enforces the fence and
answers the agent's control messages.

Runs inside a worker process (:mod:`dbfence.breaker.worker_main`), one per ``SO_REUSEPORT``
listener. It never writes the fence: only the agent does. Admission takes one of the backend slots
that all workers share (:meth:`dbfence.breaker.shared.SharedRecord.take_backend_slot`) *before*
any backend connection is opened, so the workers together never hold more connections to mysqld
than the agent's cap, on the worker path or the kernel's (a joined link keeps its backend socket,
and its slot, until it ends). A client that has not finished its login within ``login_timeout`` is
dropped. Accepting sockets and placing them on the least-loaded worker is the :class:`Balancing`
mixin (:mod:`dbfence.breaker.worker_balance`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import socket
import time
from collections.abc import Awaitable
from typing import Final

from dbfence.breaker.config import GateConfig
from dbfence.breaker.kernel import KernelForwarder, socket_cookie
from dbfence.breaker.link import (
    BackendSide,
    ClientSide,
    EndedBytes,
    cut_links,
    fence_allows,
)
from dbfence.breaker.packets import (
    CR_CONN_HOST_ERROR,
    ER_CON_COUNT_ERROR,
    ER_OPTION_PREVENTS_STATEMENT,
    ends_login,
    not_primary_message,
)
from dbfence.breaker.proxy_header import proxy_header
from dbfence.breaker.shared import EPOCH_BITS, EPOCH_MASK, STATE_DRAINING, SharedRecord, fence_deadline
from dbfence.breaker.state import LEASE_EXPIRED
from dbfence.breaker.worker_balance import Balancing

__all__ = ["CTL_BLOCK", "CTL_DRAIN", "CTL_QUIT", "CTL_READY", "CTL_STATS", "ClientSide", "Worker",
           "fence_allows"]

_LIBC = ctypes.CDLL(None, use_errno=True)
_monotonic = time.monotonic

# Control messages from the agent (one byte each).
CTL_BLOCK: Final = b"B"
CTL_DRAIN: Final = b"D"
CTL_STATS: Final = b"S"
CTL_QUIT: Final = b"Q"
CTL_READY: Final = b"R\n"


class Worker(Balancing):
    """The state of one worker process: its links, counters, and control channel."""

    def __init__(
        self,
        config: GateConfig,
        index: int,
        shared: SharedRecord,
        control: socket.socket,
        parent_pid: int,
        loop: asyncio.AbstractEventLoop,
        kernel: KernelForwarder | None = None,
    ) -> None:
        self.config = config
        self.kernel = kernel
        self.handed_to_kernel = 0
        self.kernel_refusals = 0
        self.kernel_error = ""
        self.index = index
        self.shared = shared
        self.control = control
        self.parent_pid = parent_pid
        self.loop = loop
        self.links: set[ClientSide] = set()
        self.accepted = 0
        self.refused = 0
        self.cut_count = 0
        self.draining = False
        self.enforced_epoch = -1
        self.stats_requests = 0
        self._control_out = bytearray()
        self._control_writer = False
        self.adopting = 0
        self.handed_off = 0
        self.refused_full = 0  # refused at the backend cap (ERR 1040)
        self.login_timeouts = 0  # dropped for not logging in within login_timeout
        self.spoofed_headers = 0  # cut for starting with a PROXY protocol header of their own
        # Bytes of links that ended; the open links' own counts are added when the stats are asked
        # for, so nothing is counted per byte.
        self.ended = EndedBytes()
        self.listener: socket.socket | None = None
        self.inbox: socket.socket | None = None
        self.peers: list[socket.socket] = []
        self.worker_count = config.worker_count
        self.stopping = asyncio.Event()
        self._last_sweep = _monotonic()
        self._tick_timer: asyncio.TimerHandle | None = None
        self._ticking_slowly = False

    # --- admission ----------------------------------------------------------------------------
    def admit_or_refuse(self, link: ClientSide) -> None:
        self.accepted += 1
        word = self.shared.fence()
        now = _monotonic()
        epoch = word & EPOCH_MASK
        if not fence_allows(word, epoch, now):
            self._refuse(link, ER_OPTION_PREVENTS_STATEMENT, not_primary_message(self.block_reason(word)))
            self.enforce(now)
            return
        if self.draining or self.shared.state_word() == STATE_DRAINING:
            self._refuse(link, ER_OPTION_PREVENTS_STATEMENT, not_primary_message("draining for switchover"))
            return
        # The slot comes first: no backend connection is ever opened beyond the cap.
        if not self.shared.take_backend_slot():
            self.refused_full += 1
            cap = self.shared.backend_cap()
            self._refuse(link, ER_CON_COUNT_ERROR,
                         f"dbfence: too many connections (the gate admits {cap} at once)")
            return
        link.backend_slot = True
        link.epoch = epoch
        link.login_timer = self.loop.call_later(self.config.login_timeout, self._login_expired, link)
        self.links.add(link)
        self._tick_soon()
        self._publish_open()
        self.loop.create_task(self._connect_backend(link))

    def _login_expired(self, link: ClientSide) -> None:
        """A client that has not logged in by now is dropped, with its backend connection (a
        client that connects and says nothing must not hold one of mysqld's slots)."""
        link.login_timer = None
        if link.closed:
            return
        self.login_timeouts += 1  # counted apart from the cuts (those are fencing and drains)
        self.ended.add(link)
        cut_links([link])
        self.links.discard(link)
        self._publish_open()

    def _refuse(self, link: ClientSide, code: int, message: str) -> None:
        self.refused += 1
        link.refuse(code, message)

    def block_reason(self, word: int) -> str:
        if word >> EPOCH_BITS == 0:
            return self.shared.read_status().reason or "blocked"
        return LEASE_EXPIRED

    async def _connect_backend(self, link: ClientSide) -> None:
        config = self.config
        link.connecting = True
        if config.proxy_protocol and link.transport is not None:
            # Written first on the backend connection (ClientSide.backend_up): mysqld reads it
            # ahead of the client's login, whichever path the link takes after the login.
            transport = link.transport
            link.proxy_header = proxy_header(transport.get_extra_info("peername"),
                                             transport.get_extra_info("sockname"))
        source = None if config.backend_source is None else (config.backend_source, 0)
        try:
            connecting: Awaitable[object]
            if config.backend_socket is not None:
                connecting = self.loop.create_unix_connection(
                    lambda: BackendSide(link), config.backend_socket
                )
            elif self.kernel is not None:
                connecting = self._connect_announced(link, self.kernel)
            else:
                connecting = self.loop.create_connection(
                    lambda: BackendSide(link), config.backend_host, config.backend_port, local_addr=source
                )
            await asyncio.wait_for(connecting, config.connect_timeout)
        except (OSError, asyncio.TimeoutError) as error:
            if not link.closed:
                self.ended.add(link)
                self.links.discard(link)
                self._publish_open()
                link.refuse(CR_CONN_HOST_ERROR, f"dbfence: cannot reach the local mysqld ({error})")
        finally:
            link.connecting = False
            if link.closed:
                self.forget(link)  # its slot, now that no backend connection can come of it

    async def _connect_announced(self, link: ClientSide, kernel: KernelForwarder) -> None:
        """Connect to mysqld from a socket whose address the kernel knows beforehand, so that
        mysqld's end of this connection (and no other) can be joined to a local client later."""
        config = self.config
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.bind((config.backend_source or config.backend_host, 0))
            try:
                link.announced = kernel.announce(sock.getsockname())
            except OSError:  # the map is full, say: this link just takes the longer way
                link.announced = None
            await self.loop.sock_connect(sock, (config.backend_host, config.backend_port))
            await self.loop.create_connection(lambda: BackendSide(link), sock=sock)
        except BaseException:
            sock.close()  # a no-op if create_connection failed: uvloop has detached it then
            self._withdraw(link, kernel)
            raise
        # The transport owns the descriptor now and closes it itself; it may already have (a link
        # whose client left while connecting is aborted in connection_made, before uvloop takes
        # the socket object). The object must never close that number again: by the time it is
        # collected, the number may belong to another link's socket (seen under a connect flood).
        sock.detach()

    def forget(self, link: ClientSide) -> None:
        """A link ended (both its connections are closed or closing): drop what it held."""
        self.ended.add(link)  # before the kernel forgets its counters
        if link in self.links:
            self.links.discard(link)
            self._publish_open()
        link.login_ended()
        # A connect still under way keeps the slot until it ends (then forget runs again): a
        # client that connects and leaves at once must not free a slot for a connection to
        # mysqld that is still being opened.
        if link.backend_slot and not link.connecting:
            link.backend_slot = False
            self.shared.release_backend_slot()
        kernel = self.kernel
        if kernel is None:
            return
        self._withdraw(link, kernel)
        if link.joined is not None:
            kernel.forget(link.joined)
            link.joined = None

    @staticmethod
    def _withdraw(link: ClientSide, kernel: KernelForwarder) -> None:
        if link.announced is not None:
            kernel.withdraw(link.announced)
            link.announced = None

    def overflowed(self, link: ClientSide, cookie: int) -> bool:
        """Bytes of a joined link reached the worker over TCP. True if the kernel sent them because
        their direction went over its budget (the worker forwards that direction from now on);
        otherwise the kernel refused them (fence) or the link's entry is gone: never forward
        those, even if the word has been renewed meanwhile, and cut the link."""
        assert self.kernel is not None
        counted = self.kernel.counters(cookie)
        if counted is not None and counted.overflowed and not counted.refused:
            return True
        self.enforce(_monotonic())
        if not link.closed:
            self._cut([link])
        return False

    def watch_login(self, link: ClientSide, chunk: bytes) -> None:
        """Join a link in the kernel at the end of its login: before its OK reaches the client.

        Then the client is still waiting and mysqld has said all it will, so neither socket holds
        a byte the kernel could overtake. TLS links stay here (the login's end is not visible),
        and so does a link with bytes already queued (a client that did not wait for the OK), and
        one whose client is on another host.
        """
        kernel = self.kernel
        if kernel is None or link.counter.opaque:
            link.logging_in = False
            return
        if not ends_login(chunk):
            return
        link.logging_in = False
        self._withdraw(link, kernel)  # mysqld's end is established: it has sent its greeting
        client, backend = link.transport, link.backend_transport
        if client is None or backend is None or _queued(link.fd) or _queued(link.backend_fd):
            self.kernel_refusals += 1
            return
        ends = [(t.get_extra_info("sockname"), t.get_extra_info("peername")) for t in (client, backend)]
        try:
            cookies = (socket_cookie(link.fd), socket_cookie(link.backend_fd))
            link.joined = kernel.join(ends[0], ends[1], cookies, link.epoch)
        except OSError as error:  # the maps are full, say: this link stays in the worker
            self.kernel_refusals += 1
            self.kernel_error = str(error)
            return
        if link.joined is not None:
            self.handed_to_kernel += 1

    def _publish_open(self) -> None:
        self.shared.set_open_count(self.index, len(self.links) + self.adopting)

    # --- adopting accepted sockets (placed by Balancing) ---------------------------------------
    def adopt(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        with contextlib.suppress(OSError):  # not TCP (or already reset): nothing to tune
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.adopting += 1
        self._publish_open()
        self.loop.create_task(self._adopt(sock))

    async def _adopt(self, sock: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(lambda: ClientSide(self), sock)
        except OSError:
            sock.close()
        finally:
            self.adopting -= 1
            self._publish_open()

    # --- fencing ------------------------------------------------------------------------------
    def enforce(self, now: float) -> None:
        """Cut every link the fence no longer allows (all of them once blocked or expired)."""
        word = self.shared.fence()
        epoch = word & EPOCH_MASK
        valid = now < fence_deadline(word)
        if valid and epoch == self.enforced_epoch:
            return  # every link was admitted in this epoch and the lease holds: nothing to scan
        doomed = [link for link in self.links if not fence_allows(word, link.epoch, now)]
        if valid:
            self.enforced_epoch = epoch
        if doomed:
            self._cut(doomed)

    def _cut(self, doomed: list[ClientSide]) -> None:
        """Cut links at once and stop counting them as open."""
        for link in doomed:
            self.ended.add(link)
        cut_links(doomed)
        self.cut_count += len(doomed)
        self.links.difference_update(doomed)
        self._publish_open()

    def start_ticking(self) -> None:
        self._schedule_tick()

    def _schedule_tick(self) -> None:
        """The next tick: soon while the worker holds a link (an idle link must be cut at the
        deadline without waiting for its next chunk), slowly while it holds none (nothing to cut:
        a new connection is checked against the fence word when it is accepted, and its admission
        brings the fast tick back, :meth:`_tick_soon`)."""
        self._ticking_slowly = not self.links
        delay = max(self.config.tick, self.config.idle_tick) if self._ticking_slowly else self.config.tick
        self._tick_timer = self.loop.call_later(delay, self.tick)

    def _tick_soon(self) -> None:
        """A link was admitted: replace a slow pending tick with a fast one."""
        if self._ticking_slowly and self._tick_timer is not None:
            self._tick_timer.cancel()
            self._ticking_slowly = False
            self._tick_timer = self.loop.call_later(self.config.tick, self.tick)

    def tick(self) -> None:
        now = _monotonic()
        self._tick_timer = None
        if os.getppid() != self.parent_pid:
            self.shutdown()
            return
        self.enforce(now)
        if self.draining:
            self._drain_step(now)
        timeout = self.config.idle_timeout
        if timeout is not None and now - self._last_sweep >= min(1.0, timeout / 4):
            self._last_sweep = now
            idle = [link for link in self.links if now - link.activity() > timeout]
            for link in idle:
                link.close_gracefully()
        if not self.stopping.is_set():
            self._schedule_tick()

    def _drain_step(self, now: float) -> None:
        quiet = self.config.drain_quiet
        done = [link for link in self.links if link.at_transaction_boundary(now, quiet)]
        for link in done:
            link.close_gracefully()

    # --- control channel ----------------------------------------------------------------------
    def on_control(self) -> None:
        try:
            data = self.control.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.shutdown()  # the agent is gone
            return
        for command in data:
            byte = bytes((command,))
            if byte == CTL_BLOCK:
                self.draining = False
                self.enforce(_monotonic())
            elif byte == CTL_DRAIN:
                self.draining = True
                self._drain_step(_monotonic())
            elif byte == CTL_STATS:
                self._send_stats()
            elif byte == CTL_QUIT:
                self.shutdown()

    def _send_stats(self) -> None:
        now = _monotonic()
        self.stats_requests += 1
        connections = [link.describe(now) for link in self.links]
        report = {
            "request": self.stats_requests,
            "index": self.index,
            "pid": os.getpid(),
            "open": len(self.links),
            "accepted": self.accepted,
            "refused": self.refused,
            "cut": self.cut_count,
            "handed_off": self.handed_off,
            "refused_full": self.refused_full,
            "login_timeouts": self.login_timeouts,
            "spoofed_headers": self.spoofed_headers,
            "kernel": {"handed": self.handed_to_kernel, "kept": self.kernel_refusals,
                       "error": self.kernel_error} if self.kernel is not None else None,
            "draining": self.draining,
            "bytes_in": self.ended.bytes_in + sum(int(row["bytes_in"]) for row in connections),
            "bytes_out": self.ended.bytes_out + sum(int(row["bytes_out"]) for row in connections),
            "connections": connections,
        }
        self._control_out += (json.dumps(report) + "\n").encode()
        self._flush_control()

    def _flush_control(self) -> None:
        """Send queued replies without ever blocking the data path on a slow reader."""
        fd = self.control.fileno()
        try:
            sent = self.control.send(self._control_out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.shutdown()  # the agent is gone
            return
        del self._control_out[:sent]
        if self._control_out and not self._control_writer:
            self.loop.add_writer(fd, self._flush_control)
            self._control_writer = True
        elif not self._control_out and self._control_writer:
            self.loop.remove_writer(fd)
            self._control_writer = False

    def shutdown(self) -> None:
        cut_links(list(self.links))
        self.links.clear()
        self._publish_open()
        if self.listener is not None and not self.stopping.is_set():
            self.loop.remove_reader(self.listener.fileno())
            self.listener.close()
        self.stopping.set()


_FIONREAD: Final = 0x541B


def _queued(fd: int) -> bool:
    """Whether a socket has received bytes nobody has read yet."""
    count = ctypes.c_int(0)
    if _LIBC.ioctl(fd, _FIONREAD, ctypes.byref(count)) != 0:
        return True  # cannot tell: assume the worst
    return count.value > 0
