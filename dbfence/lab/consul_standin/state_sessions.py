"""The stand-in's sessions: create, renew, destroy, list, and invalidation.

Why apart: invalidation is where Consul's lock safety lives. Invariants: a TTL session is
invalidated TTL x ``session_ttl_multiplier`` (2, as in Consul) after its last renewal; invalidation
(TTL, destroy, a bound check going critical, its node deregistered) arms the lock-delay (at most
60 s) on every key the session held, then releases or deletes them per its behavior.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable

from dbfence.lab.consul_standin.durations import DurationError, parse_duration
from dbfence.lab.consul_standin.model import (
    BEHAVIOR_DELETE,
    BEHAVIOR_RELEASE,
    CRITICAL,
    MAX_LOCK_DELAY,
    CatalogNode,
    Check,
    Session,
    SessionRequest,
    StandinConfig,
    StandinError,
)
from dbfence.lab.consul_standin.state_kv import KVState


class SessionState(KVState):
    """Sessions: create, renew, destroy, and invalidation (TTL, destroy, a failed bound check)."""

    def __init__(self, config: StandinConfig, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(config, clock)
        self._sessions: dict[str, Session] = {}
        self._session_deadline: dict[str, float] = {}
        self._sessions_index = 0

    # Provided by CatalogState (state_catalog.py): a session lives on a node and binds to its checks.
    _nodes: dict[str, CatalogNode]

    def _check_by_id(self, node: str, check_id: str) -> Check | None:
        raise NotImplementedError  # CatalogState's

    def session_create(self, request: SessionRequest) -> str:
        with self.cond:
            behavior = request.behavior or BEHAVIOR_RELEASE
            if behavior not in (BEHAVIOR_RELEASE, BEHAVIOR_DELETE):
                raise StandinError(500, f"Invalid Behavior setting '{behavior}'")
            ttl = 0.0
            if request.ttl_text:
                try:
                    ttl = parse_duration(request.ttl_text)
                except DurationError as error:
                    raise StandinError(500, f"Session TTL '{request.ttl_text}' invalid: {error}") from None
                if ttl != 0 and not (self.config.session_ttl_min <= ttl <= self.config.session_ttl_max):
                    raise StandinError(
                        500,
                        f"Invalid Session TTL '{request.ttl_text}', must be between "
                        f"[{self.config.session_ttl_min:g}s={self.config.session_ttl_max:g}s]",
                    )
            node = request.node or self.config.node
            if node not in self._nodes:
                raise StandinError(500, "Missing node registration")
            for check_id in (*request.node_checks, *request.service_checks):
                check = self._check_by_id(node, check_id)
                if check is None:
                    raise StandinError(500, f"Missing check '{check_id}' registration")
                if check.status == CRITICAL:
                    raise StandinError(500, f"Check '{check_id}' is in critical state")
            session_id = str(uuid.uuid4())
            index = self._next_index()
            self._sessions[session_id] = Session(
                id=session_id,
                name=request.name,
                node=node,
                lock_delay=request.lock_delay,
                behavior=behavior,
                ttl_text=request.ttl_text,
                ttl=ttl,
                node_checks=tuple(dict.fromkeys(request.node_checks)),
                service_checks=tuple(dict.fromkeys(request.service_checks)),
                create_index=index,
                modify_index=index,
            )
            self._sessions_index = index
            if ttl > 0:
                self._session_deadline[session_id] = self.clock() + ttl * self.config.session_ttl_multiplier
            self._changed()
            return session_id

    def session_renew(self, session_id: str) -> Session | None:
        with self.cond:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if session.ttl > 0:
                self._session_deadline[session_id] = (
                    self.clock() + session.ttl * self.config.session_ttl_multiplier
                )
                self._changed()
            return session

    def session_destroy(self, session_id: str) -> None:
        with self.cond:
            if session_id in self._sessions:
                self._invalidate_session(session_id)

    def session_get(self, session_id: str) -> tuple[int, Session | None]:
        return max(self._sessions_index, 1), self._sessions.get(session_id)

    def session_list(self, node: str | None = None) -> tuple[int, list[Session]]:
        sessions = [s for s in self._sessions.values() if node is None or s.node == node]
        return max(self._sessions_index, 1), sorted(sessions, key=lambda s: s.create_index)

    def session_ttl_remaining(self, session_id: str) -> float | None:
        """Seconds until the stand-in will invalidate the session (None: no TTL or unknown). For tests."""
        with self.cond:
            deadline = self._session_deadline.get(session_id)
            return None if deadline is None else deadline - self.clock()

    def _invalidate_session(self, session_id: str) -> None:
        """Destroy a session (TTL expiry, destroy call, failed check): lock-delay, then release or delete."""
        session = self._sessions.pop(session_id)
        self._session_deadline.pop(session_id, None)
        index = self._next_index()
        self._sessions_index = index
        now = self.clock()
        delay = min(session.lock_delay, MAX_LOCK_DELAY)
        for key, entry in list(self._kv.items()):
            if entry.session != session_id:
                continue
            if delay > 0:
                self._lock_delay_until[key] = now + delay
            if session.behavior == BEHAVIOR_DELETE:
                self._kv_remove(key, index)
            else:
                self._kv_write(dataclasses.replace(entry, session="", modify_index=index), index)
        self._changed()

    def _invalidate_sessions_using(self, node: str, check_id: str) -> None:
        for session_id, session in list(self._sessions.items()):
            if session.node == node and check_id in session.check_ids:
                self._invalidate_session(session_id)
