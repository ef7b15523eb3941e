"""The new primary's fencing-token write, in its own session and thread, one at a time.

With lossless semi-sync on, the token write waits for a replica's acknowledgement like any
commit: AFTER_SYNC puts it in the binlog but not in the engine (invisible to other sessions)
until then. That is what makes it removable: if the node is fenced by a crash before any
replica received it, crash recovery (``--init-rpl-role=SLAVE``) truncates it with the other
unacknowledged commits. Written before semi-sync was on, it committed at once and survived
recovery although no replica held it, so the repair had to ask for a rebuild (soak seed 11).

The agent's loop must not wait with it (the replicas acknowledge only once they follow the
new holder, a second or two later): the write runs in a thread of its own, the core observes
the token once it is committed, and no second write starts while one is in flight (it would
only queue on the first one's row lock).

A wait that no replica answers within ``ack_wait_s`` is ended (KILL of the writer's session,
which commits it): a replica whose history forked from ours never follows us, and a promotion
must not wait for semi-sync's timeout (an hour). The token then commits unacknowledged, as it
always did before; it carries no client data (the gate has not admitted yet). A wait is ended
sooner, after ``alone_wait_s``, while no semi-sync replica is connected at all
(``Rpl_semi_sync_master_clients`` = 0): nobody can acknowledge it then, and the promotion would
only wait out the bound. That was the soak's slowest kill -9 (seed 442, 6.4 s): the third node
fenced with its mysqld stopped, and the killed former primary rejoins only once the winner is
primary. A token committed this way and then cut off by a crash is the winner's own write, which
the repair discards (:mod:`token_discard`), so ending early costs no rebuild.

The loop polls the writer every round while the core asks for the token, and backs off when
rounds repeat (:class:`~dbfence.agent.repeats.RepeatBackoff`). A wait in flight is not a failure
to back off from: :meth:`FencingTokenWriter.due_in` says when the loop must be back to end it,
``on_done`` tells the loop the write has ended, and :attr:`FencingTokenWriter.progress` counts
the calls that took effect (the token found in, a wait ended), so the round after them is not
held back either (soak seed 305: each cost a promotion up to 2 s of the back-off's limit).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from dbfence.mysql.actions import MysqlActions
from dbfence.mysql.connection import query_one
from dbfence.mysql.errors import MysqlAdapterError

#: Long enough for the replicas to see the new holder's record and repoint (about a second);
#: short enough that a promotion nobody can follow still finishes well within a lease TTL.
DEFAULT_ACK_WAIT_S = 6.0
#: With no semi-sync replica connected: the replicas that will follow connect within ~0.3 s of
#: the new holder's record (kill -9 failover p50 0.6 s, detection included), so after 1 s
#: nobody is coming soon.
DEFAULT_ALONE_WAIT_S = 1.0


class FencingTokenWriter:
    """Writes ``token`` into ``dbfence.fencing`` on ``mysql`` without blocking its caller."""

    def __init__(self, mysql: MysqlActions, holder: str, wait_s: float, *,
                 ack_wait_s: float = DEFAULT_ACK_WAIT_S,
                 alone_wait_s: float = DEFAULT_ALONE_WAIT_S,
                 clock: Callable[[], float] = time.monotonic,
                 on_done: Callable[[], None] = lambda: None) -> None:
        self.mysql = mysql
        self.holder = holder
        self.wait_s = wait_s  # the session's read timeout: semi-sync's timeout + margin
        self.ack_wait_s = ack_wait_s
        self.alone_wait_s = min(alone_wait_s, ack_wait_s)
        #: Why the last wait was ended: "alone" (no semi-sync replica connected) or "bound".
        self.ended_why: str | None = None
        self.clock = clock
        self.on_done = on_done  # called from the write's thread as it ends (committed or failed)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._token: int | None = None
        self._started = 0.0
        self._session_id: int | None = None
        self._released = False
        self._end_tried = False  # an end of this write was attempted (it may have failed)
        self._failure: Exception | None = None
        self._found_in = False  # ensure() already reported the token in since the last write began
        #: Calls of ensure() that took effect: the token found in (once per write), a wait ended.
        self.progress = 0

    def due_in(self) -> float | None:
        """Seconds until the write in flight waited ``ack_wait_s`` and a call must end it; None
        when no write waits for that (none in flight, still without its session, or its end
        was tried already: those are retried at the caller's own pace)."""
        with self._lock:
            thread = self._thread
            if (thread is None or not thread.is_alive() or self._session_id is None or self._released
                    or self._end_tried):
                return None
            now = self.clock()
            if now < self._started + self.alone_wait_s:
                return self._started + self.alone_wait_s - now  # back then to ask who is connected
            return max(0.0, self._started + self.ack_wait_s - now)

    def in_flight(self) -> int | None:
        """The token a running write is waiting to commit, if any."""
        with self._lock:
            thread = self._thread
            return self._token if thread is not None and thread.is_alive() else None

    def ensure(self, token: int, release: Callable[[Callable[[], None]], None] | None = None) -> bool:
        """True once ``token`` is committed here; else starts its write unless one is running.

        A write that waited ``ack_wait_s`` for an ack is ended through ``release`` (given the
        function that ends it; the repair keeper counts the ack wait it ends). A write that
        failed is reported (raised) once; the next call starts a new one.
        """
        with self._lock:
            running = self._thread is not None and self._thread.is_alive()
            if running:
                # The bound holds whatever token is asked for now: a write of an older token
                # still waiting would otherwise hold a newer one back for semi-sync's timeout.
                waited = self.clock() - self._started
                endable = not self._released and self._session_id is not None
                overdue = endable and waited >= self.ack_wait_s
                ask_alone = endable and not overdue and waited >= self.alone_wait_s
                session_id = self._session_id
            else:
                overdue = ask_alone = False
                session_id = None
            failure, self._failure = (None, self._failure) if running else (self._failure, None)
        if running:
            why = "bound" if overdue else "alone" if ask_alone and self._nobody_connected() else None
            with self._lock:
                if why is not None and not self._released:
                    self._released = self._end_tried = overdue = True
                    self.ended_why = why
            if overdue and session_id is not None:
                def end() -> None:
                    self.mysql.end_session(session_id)
                    self.wait(2.0)  # the killed write commits as its thread ends
                try:
                    (release or (lambda run: run()))(end)
                except BaseException:
                    # Not ended (the KILL's connection failed, say): the next call tries again,
                    # or the promotion would wait for the session's read timeout (semi-sync's
                    # timeout, an hour by default).
                    with self._lock:
                        self._released = False
                    raise
                with self._lock:
                    self.progress += 1  # ended: it commits as its thread ends
            return False  # waiting for its ack; the core asks again
        if failure is not None:
            raise failure
        stored = self.mysql.read_fencing_token()
        if stored is not None and stored.token == token:
            with self._lock:
                if not self._found_in:
                    self._found_in = True
                    self.progress += 1
            return True
        with self._lock:
            self._token = token
            self._started = self.clock()
            self._session_id = None
            self._released = self._end_tried = self._found_in = False
            self._thread = threading.Thread(target=self._write, args=(token,), daemon=True,
                                            name=f"fencing-token-{token}")
            self._thread.start()
        return False

    def ended_why_text(self) -> str:
        """The last ended wait's reason, for the log."""
        if self.ended_why == "alone":
            return f"none connected after {self.alone_wait_s:g} s"
        return f"none answered within {self.ack_wait_s:g} s"

    def _nobody_connected(self) -> bool:
        """True when mysqld says no semi-sync replica is connected; a failed read is no answer
        (the bound still ends the wait)."""
        try:
            return self.mysql.semi_sync_clients() == 0
        except (MysqlAdapterError, ValueError):
            return False

    def wait(self, timeout: float) -> bool:
        """Test and shutdown helper: True when no write is running (within ``timeout``)."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def _write(self, token: int) -> None:
        try:
            with self.mysql.session(read_timeout_s=self.wait_s) as conn:
                session_id = int(str(query_one(conn, "SELECT CONNECTION_ID() AS id")["id"]))
                with self._lock:
                    self._session_id = session_id
                self.mysql.write_fencing_token_in(conn, token, self.holder)
        except Exception as exc:  # reported by the next ensure(): the executor logs it
            with self._lock:
                if not self._released:  # ended on purpose: it committed, the next read shows it
                    self._failure = exc
        finally:
            self.on_done()
