"""The plumbing under the stand-in's state: one lock, one condition, the Raft-like index, blocking queries.

Why: Consul's state store is one transactional store; the stand-in keeps that property by putting
every area (``state_kv``, ``state_sessions``, ``state_agent``, ``state_catalog``) behind this ONE
lock with ONE condition variable. Layout: each area is a class in that chain (core <- KV <-
sessions <- agent <- catalog <- :class:`~dbfence.lab.consul_standin.state.StandinState`), and may
call the areas below it; an area that needs one above declares it (``Provided by ...``).
Invariants: writers hold ``cond``, bump the index with ``_next_index`` and call ``_changed``
(``notify_all``); blocking queries and the reaper wait on the same condition; deadlines use the
injected monotonic ``clock``, never wall time.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

from dbfence.lab.consul_standin.model import StandinConfig

T = TypeVar("T")


class StateCore:
    """The lock, the index and blocking queries that every area of the state shares."""

    def __init__(self, config: StandinConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.node_id = str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{config.node}.{config.datacenter}.dbfence"))
        self._lock = threading.Lock()
        self.cond = threading.Condition(self._lock)
        self._stopping = False
        self._index = 0
        # Fault switches (PUT /v1/standin/control): answer 500 "No cluster leader" / 429 to every request.
        self.no_leader = False
        self.rate_limited = False
        self._blocked_queries = 0

    def _next_index(self) -> int:
        self._index += 1
        return self._index

    def _changed(self) -> None:
        self.cond.notify_all()

    def stop(self) -> None:
        """Wake every waiter so blocking queries return and the reaper exits."""
        with self.cond:
            self._stopping = True
            self.cond.notify_all()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def blocking(
        self, min_index: int, wait: float | None, view: Callable[[], tuple[int, T]]
    ) -> tuple[int, T]:
        """Run ``view`` like Consul's blockingQuery.

        With ``min_index`` 0 the view runs once. Otherwise it is re-run on every state change until the
        index it reports exceeds ``min_index`` or the wait (default 5 min, at most 10 min, plus up to
        1/16 jitter) runs out; then the current result is returned either way.
        """
        with self.cond:
            index, result = view()
            if min_index <= 0 or index > min_index:
                return index, result
            timeout = wait if wait is not None and wait > 0 else self.config.default_query_wait
            timeout = min(timeout, self.config.max_query_wait)
            if self.config.blocking_jitter:
                timeout += random.uniform(0, timeout / 16)
            deadline = self.clock() + timeout
            self._blocked_queries += 1
            try:
                while not self._stopping:
                    remaining = deadline - self.clock()
                    if remaining <= 0:
                        break
                    self.cond.wait(remaining)
                    index, result = view()
                    if index > min_index:
                        break
            finally:
                self._blocked_queries -= 1
            return index, result

    @property
    def blocked_queries(self) -> int:
        """How many blocking queries are parked right now (lets tests know a watcher is in place)."""
        with self.cond:
            return self._blocked_queries
