"""One link of the gate: the client's connection and mysqld's, and the data path between them.

Every chunk, in either direction, is forwarded only after the fence word in shared memory allows
it (:func:`fence_allows`): same epoch as the link's, and now before the word's deadline. A link
that the kernel has joined (:mod:`dbfence.breaker.kernel`) keeps its two gate sockets and its
bookkeeping here; only what the kernel sends its way passes through. The worker that owns the
links (:mod:`dbfence.breaker.worker`) admits, refuses, times out and cuts them.
"""

from __future__ import annotations

import asyncio
import ctypes
import socket
import time
from typing import TYPE_CHECKING, Any, Final, cast

from dbfence.breaker.kernel import Joined, LinkCounters
from dbfence.breaker.packets import (
    COM_QUIT_PACKET,
    CommandCounter,
    ends_login,
    handshake_error_packet,
    reply_end,
    reply_end_of_tail,
)
from dbfence.breaker.proxy_header import PROXY_HEADER_STARTS
from dbfence.breaker.shared import EPOCH_MASK, fence_deadline

if TYPE_CHECKING:
    from dbfence.breaker.worker import Worker

_LIBC = ctypes.CDLL(None, use_errno=True)
_shutdown = _LIBC.shutdown  # socket.shutdown needs a socket object; we only hold uvloop's fd
_PENDING_LIMIT: Final = 1 << 20  # bytes a client may send before mysqld's connection is up
_monotonic = time.monotonic


def fence_allows(word: int, epoch: int, now: float) -> bool:
    """The data-path predicate: same epoch, and ``now`` strictly before the deadline."""
    return (word & EPOCH_MASK) == epoch and now < fence_deadline(word)


class EndedBytes:
    """A worker's bytes of links that ended (client to mysqld, mysqld to client), each link added
    once as it leaves the worker's open links, with the kernel's share: counters never step back."""

    __slots__ = ("bytes_in", "bytes_out")

    def __init__(self) -> None:
        self.bytes_in = self.bytes_out = 0

    def add(self, link: ClientSide) -> None:
        if not link.bytes_retired:
            link.bytes_retired = True
            bytes_in, bytes_out = link.byte_totals()
            self.bytes_in += bytes_in
            self.bytes_out += bytes_out


def peer_text(peer: object) -> str:
    """A client's address for the status: ``1.2.3.4:5``, ``[::1]:5``; an IPv4 client of a
    dual-stack listener as plain IPv4."""
    if not isinstance(peer, tuple):
        return str(peer)
    host, port = str(peer[0]), peer[1]
    if host.startswith("::ffff:") and "." in host:
        return f"{host[7:]}:{port}"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ClientSide(asyncio.Protocol):
    """The client's connection; owns the link's counters and its backend half."""

    __slots__ = (
        "announced",
        "backend",
        "backend_fd",
        "backend_slot",
        "backend_transport",
        "bytes_in",
        "bytes_out",
        "bytes_retired",
        "client_turn",
        "closed",
        "connecting",
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
        "login_head",
        "login_timer",
        "opened",
        "overflow_in",
        "overflow_out",
        "peer",
        "pending",
        "pending_size",
        "proxy_header",
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
        self.bytes_retired = False  # added to its worker's totals of ended links (once)
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
        # Holds one of the workers' shared backend slots (given back once, when forgotten).
        self.backend_slot = False
        self.connecting = False  # a backend connection is being opened for it
        # Sent to mysqld ahead of everything else when gate.proxy_protocol is on (b"" when off).
        self.proxy_header = b""
        # The client's first bytes until there are 4 of them (None once they passed): a client
        # may not start with a PROXY header of its own (see first_bytes_allowed).
        self.login_head: bytes | None = b""
        # Drops the link unless its login ends in time (cancelled when it does).
        self.login_timer: asyncio.TimerHandle | None = None

    # --- lifecycle ----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.fd = transport.get_extra_info("socket").fileno()
        peer = transport.get_extra_info("peername")
        self.peer = peer_text(peer)
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
        if self.login_head is not None and not self.first_bytes_allowed(data):
            return
        self.last_active = self.last_request_at = now
        self.bytes_in += len(data)
        self.counter.feed(data)
        if self.login_timer is not None and self.counter.opaque:
            self.login_ended()  # TLS from here on: mysqld's connect_timeout bounds the rest
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

    def first_bytes_allowed(self, data: bytes) -> bool:
        """Cut a client whose first bytes are a PROXY protocol header: mysqld would take the address
        in it (measured: MariaDB honours a second header after the gate's, and a first one if the
        gate's backend address is listed in proxy_protocol_networks), so any client could claim any
        address. A MySQL client starts with its handshake response, never with these bytes."""
        head = self.login_head + data[:4] if self.login_head is not None else data[:4]
        if len(head) < 4:
            self.login_head = head  # forwarding 1-3 bytes is harmless: mysqld needs all 4 to decide
            return True
        self.login_head = None
        if head[:4] in PROXY_HEADER_STARTS:
            self.worker.spoofed_headers += 1
            self.cut()
            return False
        return True

    def adopt_word(self, word: int) -> bool:
        """Take a new fence word for this link if it carries the link's epoch; else enforce."""
        if (word & EPOCH_MASK) != self.epoch:
            self.worker.enforce(_monotonic())
            return False
        self.deadline = fence_deadline(word)
        self.valid_word = word
        return True

    def login_ended(self) -> None:
        timer = self.login_timer
        if timer is not None:
            timer.cancel()
            self.login_timer = None

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
        if self.proxy_header:
            transport.write(self.proxy_header)  # not the client's bytes: before any fence check
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

    def byte_totals(self) -> tuple[int, int]:
        """Bytes the client sent and bytes it was sent, through this worker and the kernel."""
        bytes_in, bytes_out = self.bytes_in, self.bytes_out
        counted = self.kernel_counters()
        if counted is not None:
            bytes_in += counted[0].received
            bytes_out += counted[1].received
        return bytes_in, bytes_out

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
        if client.login_timer is not None and ends_login(data):
            client.login_ended()
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
