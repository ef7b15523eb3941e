"""Accepting connections and balancing them between the gate workers: the part of
:class:`dbfence.breaker.worker.Worker` that decides *which* worker a new client lands on.

Why a module of its own: ``SO_REUSEPORT`` alone splits a handful of long-lived pooled connections
lopsidedly (figures at :meth:`Balancing.on_listener_readable`), so the workers even the split out
themselves. How they do (the placement rule, the batch sizes, the hand-off channel) changes for
reasons of its own, apart from admission, fencing and the control channel, which stay in
:mod:`dbfence.breaker.worker`.

Layout: :class:`Balancing` is a mixin of ``Worker`` (its methods run on the worker itself):

* :meth:`Balancing.on_listener_readable` accepts a batch from this worker's listener and
  :meth:`Balancing.route` places each socket on the worker with the lowest open count that all
  workers publish in the shared record, passing it there over the worker's peer socket
  (``SCM_RIGHTS``);
* :meth:`Balancing.on_handoff_readable` takes the sockets other workers passed here;
* each socket this worker keeps goes to ``Worker.adopt``, which makes it a
  :class:`dbfence.breaker.link.ClientSide` (whose ``connection_made`` goes to admission).

Invariants:

* Every accepted socket ends up in exactly one worker: passed on and closed here, or adopted here
  (also when the pass fails: that worker is gone or its inbox is full). Only a socket that is
  already reset before the event loop takes it is closed without a link.
* A socket is passed only to a *strictly* less loaded worker, and a socket that was passed is
  adopted by its receiver, never routed again: nothing bounces between workers.
* Balancing never admits anything: the fence and the backend slot are checked on adoption, in
  ``Worker.admit_or_refuse``, whichever worker adopts. A socket being adopted counts as open in the
  published count (``adopting``) as soon as a worker takes it, before its link exists.
* Nothing here blocks the event loop: batches of at most 64 accepts or hand-offs, sends with
  ``MSG_DONTWAIT``, and out of descriptors the listener pauses for 0.1 s instead of spinning.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

    from dbfence.breaker.shared import SharedRecord

__all__ = ["Balancing"]


class Balancing:
    """Accepting and placing client sockets; mixed into :class:`dbfence.breaker.worker.Worker`,
    which sets these attributes and makes the links (:meth:`adopt`)."""

    index: int
    worker_count: int
    shared: SharedRecord
    loop: asyncio.AbstractEventLoop
    stopping: asyncio.Event
    listener: socket.socket | None
    inbox: socket.socket | None
    peers: list[socket.socket]
    handed_off: int

    if TYPE_CHECKING:
        def adopt(self, sock: socket.socket) -> None: ...

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
