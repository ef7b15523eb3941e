"""The stand-in's state: KV store, sessions, lock-delay, agent services and checks, catalog indexes.

Everything lives behind ONE lock with ONE condition variable (:mod:`.state_core`). Writers bump the
Raft-like index and ``notify_all``; blocking queries and the reaper thread wait on the same
condition. Deadlines (session TTLs, TTL checks, lock-delays) use ``time.monotonic``.

Layout, one area a module, each built on the one before: :mod:`.state_core` (lock, index,
blocking), :mod:`.state_kv`, :mod:`.state_sessions`, :mod:`.state_agent`, :mod:`.state_catalog`;
this module adds the reaper, which applies every area's deadlines in one pass.

Semantics follow Consul's state store (see docs/consul-standin.md for every known deviation).
"""

from __future__ import annotations

from dbfence.lab.consul_standin.model import CRITICAL
from dbfence.lab.consul_standin.state_catalog import CatalogState


class StandinState(CatalogState):
    """Thread-safe in-memory model of one Consul agent that is also the only server of its datacenter."""

    # ------------------------------------------------------------------ reaper

    def reap(self) -> float:
        """Apply every expired deadline; return seconds until the next one (capped at 1 s)."""
        with self.cond:
            return self._reap_locked()

    def _reap_locked(self) -> float:
        now = self.clock()
        for session_id, deadline in list(self._session_deadline.items()):
            if deadline <= now and session_id in self._sessions:
                self._invalidate_session(session_id)
        for check_id, deadline in list(self._check_deadline.items()):
            check = self._checks.get(check_id)
            if check is None or deadline > now:
                continue
            del self._check_deadline[check_id]  # re-armed by the next pass/warn/fail/update
            if check.status != CRITICAL:
                last = f"; last output: {check.output}" if check.output else ""
                self._set_check_status(check, CRITICAL, f"TTL expired{last}", now)
                self._changed()
        for check_id, since in list(self._critical_since.items()):
            check = self._checks.get(check_id)
            if check is None or check.deregister_critical_after is None:
                continue
            if now - since >= check.deregister_critical_after and check.service_id in self._services:
                self._deregister_service_locked(check.service_id)
        for key, until in list(self._lock_delay_until.items()):
            if until <= now:
                del self._lock_delay_until[key]
        self._reap_tombstones_locked(self.config.tombstone_ttl)
        self._sync_due_checks(now)
        deadlines = [
            *(due for due, _ in self._unsynced.values()),
            *self._session_deadline.values(),
            *self._check_deadline.values(),
            *(
                since + check.deregister_critical_after
                for check_id, since in self._critical_since.items()
                if (check := self._checks.get(check_id)) is not None
                and check.deregister_critical_after is not None
            ),
        ]
        next_deadline = min(deadlines, default=now + 1.0)
        return max(0.0, min(next_deadline - now, 1.0))

    def run_reaper(self) -> None:
        """Reaper thread body: sleep on the condition until the next deadline or any change."""
        with self.cond:
            while not self._stopping:
                # Reaping and waiting under one hold of the lock: no change can slip in between.
                self.cond.wait(self._reap_locked() + 0.001)
