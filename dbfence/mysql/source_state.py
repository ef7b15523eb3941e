"""Reading a new replication source's GTID state for a repoint, without holding up the agent.

A repoint checks this node's history against the new source's ``gtid_binlog_state`` before
CHANGE MASTER (never follow a source whose history diverges). That read is the one step of the
repoint that talks to *another* host, and that host may have just been partitioned: a TCP
connection the kernel accepted but no server greeting behind it waited out the whole read timeout
(10.1 s in soak seed 3), and the agent could neither race nor act meanwhile.

So the read runs in its own thread and the caller waits at most ``budget_s`` for it. A read that
is not done by then is reported as :class:`SourceNotAnsweringError`; it goes on in the
background, bounded by its own short socket timeouts, and the next repoint round waits on that
same read rather than starting another, then uses its answer if it is recent. A read's answer is
used once: each repoint checks against a state read for it (or just before it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

from dbfence.mysql.actions import MysqlActions
from dbfence.mysql.connection import Endpoint, Timeouts
from dbfence.mysql.credentials import Credentials
from dbfence.mysql.errors import MysqlUnavailableError
from dbfence.mysql.gtid import GtidState
from dbfence.mysql.verdict import Reason

# A peer's socket timeouts: each step of the read (TCP connect, greeting, login, two queries)
# answers in milliseconds on a LAN; these only bound how long a background read can last.
PEER_TIMEOUTS = Timeouts(connect_s=1.0, read_s=2.0, write_s=2.0)


class SourceNotAnsweringError(MysqlUnavailableError):
    """The new source did not answer within the budget; its read goes on, asked again next round."""


@dataclass
class _Read:
    future: Future[GtidState]
    finished_at: list[float] = field(default_factory=list)  # set once, by the reading thread


class SourceStateReader:
    """``gtid_binlog_state`` of peers' mysqld, each read in a thread and waited for ``budget_s``."""

    def __init__(self, credentials: Credentials, *, budget_s: float, max_age_s: float = 5.0,
                 timeouts: Timeouts = PEER_TIMEOUTS, clock: Callable[[], float] = time.monotonic) -> None:
        self.credentials = credentials
        self.budget_s = budget_s
        self.max_age_s = max_age_s
        self.timeouts = timeouts
        self.clock = clock
        self._reads: dict[Endpoint, _Read] = {}
        self._mutex = threading.Lock()

    def binlog_state(self, endpoint: Endpoint, name: str) -> GtidState:
        """The source's state, or SourceNotAnsweringError after ``budget_s``; a failed read's
        own error (unreachable, refused, bad GTID) is raised as it is, and the next call reads again."""
        read = self._current_read(endpoint, name)
        try:
            state = read.future.result(timeout=self.budget_s)
        except FutureTimeout:
            raise SourceNotAnsweringError(
                Reason.QUERY_TIMEOUT,
                f"{name} ({endpoint}) did not answer the GTID state read within {self.budget_s:g} s; "
                "the read goes on and the next round asks again") from None
        finally:
            with self._mutex:
                if read.future.done() and self._reads.get(endpoint) is read:
                    del self._reads[endpoint]  # answered or failed: used once
        return state

    def reads_in_flight(self) -> int:
        with self._mutex:
            return sum(1 for read in self._reads.values() if not read.future.done())

    def _current_read(self, endpoint: Endpoint, name: str) -> _Read:
        with self._mutex:
            read = self._reads.get(endpoint)
            if read is not None and read.finished_at and self.clock() - read.finished_at[0] > self.max_age_s:
                read = None  # answered long ago: the source has written since
            if read is None:
                read = self._start(endpoint, name)
                self._reads[endpoint] = read
            return read

    def _start(self, endpoint: Endpoint, name: str) -> _Read:
        read = _Read(Future())
        source = MysqlActions(endpoint, self.credentials, self.timeouts, name=name)

        def run() -> None:
            try:
                state = source.gtid_positions().binlog_state
            except BaseException as exc:  # handed to the caller through the future
                read.finished_at.append(self.clock())
                read.future.set_exception(exc)
            else:
                read.finished_at.append(self.clock())
                read.future.set_result(state)

        read.future.set_running_or_notify_cancel()
        threading.Thread(target=run, name=f"dbfence-source-state-{name}", daemon=True).start()
        return read
