"""One gate worker process: accepts on the shared port (SO_REUSEPORT) and moves bytes.

Started by :class:`dbfence.breaker.gate.Gate` (a fresh interpreter that calls :func:`main`). It reads the
fence word from shared memory before forwarding every chunk, in both directions; when the word says
blocked, expired, or a new epoch, it forwards nothing and cuts its connections. Where the gate has
kernel forwarding (:mod:`dbfence.breaker.kernel`) and the client runs on this host, a link's bytes
pass through here only until its login ends; then the kernel joins the client's socket to mysqld's,
behind the same fence, and the worker keeps the link's bookkeeping (status, idle timeout, drain,
cuts) and forwards only what the kernel sends its way (a direction over its budget). It never writes the
fence: only the agent does. A control socket from the agent wakes it up for blocks, drains, status
requests and shutdown; if the agent dies the kernel kills this process (PR_SET_PDEATHSIG), and the
tick also checks ``getppid``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import math
import os
import resource
import signal
import socket
import time
from collections.abc import Awaitable
from typing import Any, Final, cast

import uvloop

from dbfence.breaker.config import GateConfig
from dbfence.breaker.kernel import Joined, KernelForwarder, LinkCounters, socket_cookie
from dbfence.breaker.packets import (
    COM_QUIT_PACKET,
    CR_CONN_HOST_ERROR,
    ER_CON_COUNT_ERROR,
    ER_OPTION_PREVENTS_STATEMENT,
    CommandCounter,
    ends_login,
    handshake_error_packet,
    not_primary_message,
    reply_end,
    reply_end_of_tail,
)
from dbfence.breaker.shared import (
    EPOCH_BITS,
    EPOCH_MASK,
    STATE_DRAINING,
    SharedRecord,
    WorkerSlot,
)
from dbfence.breaker.state import LEASE_EXPIRED

PR_SET_PDEATHSIG: Final = 1
_LIBC = ctypes.CDLL(None, use_errno=True)
_shutdown = _LIBC.shutdown  # socket.shutdown needs a socket object; we only hold uvloop's fd
_PENDING_LIMIT: Final = 1 << 20  # bytes a client may send before mysqld's connection is up
_monotonic = time.monotonic

# Control messages from the agent (one byte each).
CTL_BLOCK: Final = b"B"
CTL_DRAIN: Final = b"D"
CTL_STATS: Final = b"S"
CTL_QUIT: Final = b"Q"
CTL_READY: Final = b"R\n"


def fence_allows(word: int, epoch: int, now: float) -> bool:
    """The data-path predicate: same epoch, and ``now`` strictly before the deadline."""
    return (word & EPOCH_MASK) == epoch and now < deadline_seconds(word)


def deadline_seconds(word: int) -> float:
    """The fence word's deadline as a monotonic float, never later than the word's microsecond.

    Rounded towards zero by one ulp (< 1 ns at any uptime) so that ``now < deadline_seconds(word)``
    can only be stricter than the exact ``now_us < deadline_us``. Comparing two floats is several
    times cheaper in CPython than comparing a float with a 50-bit int (measured), and the data
    path does it twice per query.
    """
    deadline_us = word >> EPOCH_BITS
    return math.nextafter(deadline_us / 1_000_000, 0.0) if deadline_us else 0.0


class ClientSide(asyncio.Protocol):
    """The client's connection; owns the link's counters and its backend half."""

    __slots__ = (
        "announced",
        "backend",
        "backend_fd",
        "backend_transport",
        "bytes_in",
        "bytes_out",
        "client_turn",
        "closed",
        "counter",
        "deadline",
        "epoch",
        "fd",
        "joined",
        "last_active",
        "last_reply",
        "last_reply_at",
        "last_request_at",
        "logging_in",
        "opened",
        "overflow_in",
        "overflow_out",
        "peer",
        "pending",
        "pending_size",
        "transport",
        "valid_word",
        "words",
        "worker",
    )

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.words = worker.shared.words
        self.transport: asyncio.Transport | None = None
        self.backend_transport: asyncio.Transport | None = None
        self.backend: BackendSide | None = None
        self.epoch = -1
        # The last fence word found to carry this link's epoch, and its deadline: the data path
        # re-checks the epoch only when the word changes (each renewal, each block).
        self.valid_word = -1
        self.deadline = 0.0
        self.fd = -1
        self.backend_fd = -1
        self.bytes_in = 0
        self.bytes_out = 0
        self.counter = CommandCounter()
        self.client_turn = False
        self.last_reply = b""
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.closed = False
        self.opened = self.last_active = _monotonic()
        self.peer = ""
        self.last_request_at = self.last_reply_at = 0.0
        # Watching mysqld's login replies for the moment to join the link in the kernel (if the
        # worker can); the backend socket's announced address until then; the joined link after.
        self.logging_in = worker.kernel is not None
        self.announced: bytes | None = None
        self.joined: Joined | None = None
        # A joined link's direction that went over its budget is forwarded here from then on.
        self.overflow_in = self.overflow_out = False

    # --- lifecycle ----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.fd = transport.get_extra_info("socket").fileno()
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.worker.admit_or_refuse(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.worker.forget(self)
        backend = self.backend_transport
        if backend is not None:
            backend.close()

    def eof_received(self) -> bool | None:
        return None  # half-close from the client: close the link

    # --- data path ----------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.joined is not None and not self.overflow_in:
            if not self.worker.overflowed(self, self.joined.cookies[0]):
                return
            self.overflow_in = True
        word = self.words[0]
        if word != self.valid_word and not self.adopt_word(word):
            return
        now = _monotonic()
        if now >= self.deadline:
            self.worker.enforce(now)
            return
        self.last_active = self.last_request_at = now
        self.bytes_in += len(data)
        self.counter.feed(data)
        self.client_turn = True
        backend = self.backend_transport
        if backend is not None:
            backend.write(data)
        else:
            self.pending_size += len(data)
            if self.pending_size > _PENDING_LIMIT:
                self.cut()
                return
            self.pending.append(data)

    def adopt_word(self, word: int) -> bool:
        """Take a new fence word for this link if it carries the link's epoch; else enforce."""
        if (word & EPOCH_MASK) != self.epoch:
            self.worker.enforce(_monotonic())
            return False
        self.deadline = deadline_seconds(word)
        self.valid_word = word
        return True

    def pause_writing(self) -> None:
        if self.backend_transport is not None:
            self.backend_transport.pause_reading()

    def resume_writing(self) -> None:
        if self.backend_transport is not None and not self.closed:
            self.backend_transport.resume_reading()

    # --- backend ------------------------------------------------------------------------------
    def backend_up(self, transport: asyncio.Transport) -> None:
        if self.closed:
            transport.abort()
            self.worker.forget(self)  # whatever was set up for it while connecting
            return
        self.backend_transport = transport
        self.backend_fd = transport.get_extra_info("socket").fileno()
        if self.pending:
            word = self.words[0]
            if not fence_allows(word, self.epoch, _monotonic()):
                self.worker.enforce(_monotonic())
                return
            transport.write(b"".join(self.pending))
            self.pending = []
            self.pending_size = 0

    # --- ending -------------------------------------------------------------------------------
    def cut(self) -> None:
        """Drop both directions now, discarding anything buffered (nothing more reaches mysqld)."""
        self.closed = True
        if self.backend_transport is not None:
            self.backend_transport.abort()
        if self.transport is not None:
            self.transport.abort()

    def close_gracefully(self) -> None:
        """Say goodbye to mysqld (COM_QUIT) if still allowed, then close both sides."""
        self.closed = True
        backend = self.backend_transport
        if backend is not None:
            if fence_allows(self.words[0], self.epoch, _monotonic()):
                backend.write(COM_QUIT_PACKET)
            backend.close()
        if self.transport is not None:
            self.transport.close()

    def refuse(self, code: int, message: str) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.write(handshake_error_packet(code, message))
            self.transport.close()

    def kernel_counters(self) -> tuple[LinkCounters, LinkCounters] | None:
        """What the kernel counted for the two directions (commands, replies) since the join."""
        kernel = self.worker.kernel
        if self.joined is None or kernel is None:
            return None
        cookies = self.joined.cookies
        client, backend = kernel.counters(cookies[0]), kernel.counters(cookies[1])
        return None if client is None or backend is None else (client, backend)

    def activity(self) -> float:
        """Monotonic time of the last chunk in either direction, in this worker or in the kernel."""
        counted = self.kernel_counters()
        if counted is None:
            return self.last_active
        return max(self.last_active, counted[0].last_active, counted[1].last_active)

    def at_transaction_boundary(self, now: float, quiet: float) -> bool:
        """True when the link is idle between transactions, so a drain may close it politely."""
        if self.backend_transport is None:
            return False
        client_turn, last_active, end = self.client_turn, self.last_active, None
        counted = self.kernel_counters()
        if counted is not None:
            # Joined: each direction's last message went through the kernel or through here.
            client, backend = counted
            last_request = max(self.last_request_at, client.last_active)
            last_reply = max(self.last_reply_at, backend.last_active)
            last_active = max(last_active, last_request, last_reply)
            client_turn = last_request > last_reply
            if self.last_reply_at >= backend.last_active:
                end = reply_end(self.last_reply)  # the login OK, or a reply that overflowed
            else:
                end = reply_end_of_tail(backend.tail, backend.tail_complete)
        elif self.counter.commands > 0:  # logged in
            end = reply_end(self.last_reply)
        if client_turn or now - last_active < quiet:
            return False
        if self.counter.opaque:
            return True  # TLS: the best we know is that the server spoke last and all is quiet
        return end is not None and end.terminal and end.in_transaction is False

    @property
    def forwarding(self) -> str:
        """Who moves this link's bytes: "kernel", "worker", or "kernel+worker" (joined, with a
        direction over its budget)."""
        if self.joined is None:
            return "worker"
        return "kernel+worker" if self.overflow_in or self.overflow_out else "kernel"

    def describe(self, now: float) -> dict[str, Any]:
        bytes_in, bytes_out, queries = self.bytes_in, self.bytes_out, self.counter.commands
        last_active = self.last_active
        counted = self.kernel_counters()
        if counted is not None:
            # In the kernel a "query" is a chunk the client sent: the same for drivers that write
            # each command at once, more for a command larger than one segment.
            client, backend = counted
            bytes_in += client.received
            bytes_out += backend.received
            queries += client.chunks
            last_active = max(last_active, client.last_active, backend.last_active)
        return {
            "client": self.peer,
            "age": round(now - self.opened, 3),
            "idle": round(now - last_active, 3),
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "queries": queries,
            "epoch": self.epoch,
            "forwarding": self.forwarding,
        }


class BackendSide(asyncio.Protocol):
    """mysqld's side of a link; forwards replies to the client after the same fence check."""

    __slots__ = ("client", "words", "worker")

    def __init__(self, client: ClientSide) -> None:
        self.client = client
        self.words = client.words
        self.worker = client.worker

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client.backend_up(cast(asyncio.Transport, transport))

    def connection_lost(self, exc: Exception | None) -> None:
        client = self.client
        if client.transport is not None and not client.closed:
            client.transport.close()  # flush what mysqld said last (an ERR, say), then close

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client.joined is not None and not client.overflow_out:
            if not self.worker.overflowed(client, client.joined.cookies[1]):
                return
            client.overflow_out = True
        word = self.words[0]
        if word != client.valid_word and not client.adopt_word(word):
            return
        now = _monotonic()
        if now >= client.deadline:
            self.worker.enforce(now)
            return
        client.last_active = client.last_reply_at = now
        client.bytes_out += len(data)
        client.last_reply = data
        client.client_turn = False
        if client.logging_in:
            self.worker.watch_login(client, data)
        transport = client.transport
        if transport is not None:
            transport.write(data)

    def pause_writing(self) -> None:
        if self.client.transport is not None:
            self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.client.transport is not None and not self.client.closed:
            self.client.transport.resume_reading()


def cut_links(links: list[ClientSide]) -> None:
    """Cut many links in one go: every mysqld side first, then every client side.

    Nothing runs between the two passes (one event-loop callback), so no byte can be forwarded in
    between; doing all the backends first means the fence is complete before the (slower to
    notice) clients are told.
    """
    for link in links:
        link.closed = True
        if link.backend_transport is not None:
            link.backend_transport.abort()
    for link in links:
        if link.transport is not None:
            # abort() closes the socket only in a later callback, one link at a time; a direct
            # shutdown tells every client now.
            _shutdown(link.fd, socket.SHUT_RDWR)
            link.transport.abort()


class Worker:
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
        self.listener: socket.socket | None = None
        self.inbox: socket.socket | None = None
        self.peers: list[socket.socket] = []
        self.worker_count = config.worker_count
        self.stopping = asyncio.Event()
        self._last_sweep = _monotonic()

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
        # The total includes this link (counted as adopting until now).
        if self.shared.open_total(self.worker_count) > self.config.max_connections:
            self._refuse(
                link,
                ER_CON_COUNT_ERROR,
                f"dbfence: too many connections (max_connections={self.config.max_connections})",
            )
            return
        link.epoch = epoch
        self.links.add(link)
        self._publish_open()
        self.loop.create_task(self._connect_backend(link))

    def _refuse(self, link: ClientSide, code: int, message: str) -> None:
        self.refused += 1
        link.refuse(code, message)

    def block_reason(self, word: int) -> str:
        if word >> EPOCH_BITS == 0:
            return self.shared.read_status().reason or "blocked"
        return LEASE_EXPIRED

    async def _connect_backend(self, link: ClientSide) -> None:
        config = self.config
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
                    lambda: BackendSide(link), config.backend_host, config.backend_port
                )
            await asyncio.wait_for(connecting, config.connect_timeout)
        except (OSError, asyncio.TimeoutError) as error:
            if not link.closed:
                self.links.discard(link)
                self._publish_open()
                link.refuse(CR_CONN_HOST_ERROR, f"dbfence: cannot reach the local mysqld ({error})")

    async def _connect_announced(self, link: ClientSide, kernel: KernelForwarder) -> None:
        """Connect to mysqld from a socket whose address the kernel knows beforehand, so that
        mysqld's end of this connection (and no other) can be joined to a local client later."""
        config = self.config
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.bind((config.backend_host, 0))
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
        if link in self.links:
            self.links.discard(link)
            self._publish_open()
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

    # --- accepting and balancing ----------------------------------------------------------------
    def on_listener_readable(self) -> None:
        """Accept a batch; give each connection to the least-loaded worker.

        SO_REUSEPORT spreads connections by a hash of the address pair, which for a handful of
        long-lived pooled connections is often lopsided (7:1 for 8 sysbench threads, measured), and a
        lopsided split halves throughput. So the accepting worker compares the open counts all
        workers publish and passes the socket (SCM_RIGHTS) to a strictly less loaded one.
        """
        listener = self.listener
        assert listener is not None
        # One snapshot per batch, updated locally as we place connections, so a burst of accepts
        # does not all go to the worker whose published count has not caught up yet.
        counts = self.shared.open_counts(self.worker_count)
        for _ in range(64):
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # Out of descriptors, say: stop accepting for a moment instead of spinning.
                self.loop.remove_reader(listener.fileno())
                self.loop.call_later(0.1, self._resume_accepting)
                return
            self.route(sock, counts)

    def _resume_accepting(self) -> None:
        if self.listener is not None and not self.stopping.is_set():
            self.loop.add_reader(self.listener.fileno(), self.on_listener_readable)

    def route(self, sock: socket.socket, counts: list[int]) -> None:
        peers = self.peers
        if len(peers) > 1:
            target = min(range(len(counts)), key=counts.__getitem__)
            if counts[target] < counts[self.index] and target != self.index:
                try:
                    socket.send_fds(peers[target], [b"C"], [sock.fileno()], socket.MSG_DONTWAIT)
                    sock.close()
                    self.handed_off += 1
                    counts[target] += 1
                    return
                except OSError:
                    pass  # that worker is gone or full: keep the connection here
        counts[self.index] += 1
        self.adopt(sock)

    def on_handoff_readable(self) -> None:
        inbox = self.inbox
        assert inbox is not None
        for _ in range(64):
            try:
                _, fds, _, _ = socket.recv_fds(inbox, 16, 8)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            for fd in fds:
                self.adopt(socket.socket(fileno=fd))

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
        valid = now < deadline_seconds(word)
        if valid and epoch == self.enforced_epoch:
            return  # every link was admitted in this epoch and the lease holds: nothing to scan
        doomed = [link for link in self.links if not fence_allows(word, link.epoch, now)]
        if valid:
            self.enforced_epoch = epoch
        if doomed:
            self._cut(doomed)

    def _cut(self, doomed: list[ClientSide]) -> None:
        """Cut links at once and stop counting them as open."""
        cut_links(doomed)
        self.cut_count += len(doomed)
        self.links.difference_update(doomed)
        self._publish_open()

    def tick(self) -> None:
        now = _monotonic()
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
        self.loop.call_later(self.config.tick, self.tick)

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
        report = {
            "request": self.stats_requests,
            "index": self.index,
            "pid": os.getpid(),
            "open": len(self.links),
            "accepted": self.accepted,
            "refused": self.refused,
            "cut": self.cut_count,
            "handed_off": self.handed_off,
            "kernel": {"handed": self.handed_to_kernel, "kept": self.kernel_refusals,
                       "error": self.kernel_error} if self.kernel is not None else None,
            "draining": self.draining,
            "connections": [link.describe(now) for link in self.links],
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


def _die_with_parent(parent_pid: int) -> None:
    if _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:  # the agent died before prctl took effect
        os._exit(1)


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


async def _serve(config: GateConfig, index: int, shared: SharedRecord, control: socket.socket,
                 parent_pid: int, inbox: socket.socket, peers: list[socket.socket],
                 kernel: KernelForwarder | None) -> None:
    loop = asyncio.get_running_loop()
    worker = Worker(config, index, shared, control, parent_pid, loop, kernel)
    shared.write_slot(index, WorkerSlot(os.getpid(), 0, 0, 0, 0))
    sock = listening_socket(config.listen_host, config.listen_port)
    sock.listen(4096)
    sock.setblocking(False)
    worker.listener = sock
    worker.inbox = inbox
    worker.peers = peers
    inbox.setblocking(False)
    loop.add_reader(sock.fileno(), worker.on_listener_readable)
    loop.add_reader(inbox.fileno(), worker.on_handoff_readable)
    control.setblocking(False)
    loop.add_reader(control.fileno(), worker.on_control)
    loop.call_later(config.tick, worker.tick)
    control.setblocking(True)
    control.sendall(CTL_READY)
    control.setblocking(False)
    await worker.stopping.wait()
    loop.remove_reader(control.fileno())
    loop.remove_reader(inbox.fileno())


def main(argv: list[str]) -> int:
    config_json, index_text, shared_fd, control_fd, parent_pid, inbox_fd, peer_fds, kernel_fds = argv
    _die_with_parent(int(parent_pid))
    _raise_fd_limit()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the agent, which stops us
    config = GateConfig.from_json(config_json)
    shared = SharedRecord(int(shared_fd))
    control = socket.socket(fileno=int(control_fd))
    inbox = socket.socket(fileno=int(inbox_fd))
    peers = [socket.socket(fileno=int(fd)) for fd in peer_fds.split(",")]
    kernel = None
    if kernel_fds:
        fence_fd, links_fd, sockets_fd, routes_fd, announced_fd = (int(fd) for fd in kernel_fds.split(","))
        kernel = KernelForwarder(fence_fd, links_fd, sockets_fd, routes_fd, announced_fd)
    uvloop.run(_serve(config, int(index_text), shared, control, int(parent_pid), inbox, peers, kernel))
    return 0
