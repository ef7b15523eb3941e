"""The lease keeper: renews this agent's lease on its own thread and carries the gate with it.

Renewal must never wait behind a slow probe or a slow MySQL action, so it does not run on the
decision loop; nor does the loop wait for a renewal: when the core asks for one (``RenewLock``)
the loop only wakes this thread (:meth:`LeaseKeeper.request_renewal`). While the DCS cannot be
asked, each attempt waits for the call timeout: on the loop that cost ~0.6 s per round. Each
successful renewal moves the lease deadline (send time + TTL - margin, taken by the lock
backend) and, if the gate is admitting under the same fencing token, moves the gate's deadline
too: one shared-memory store. A failed renewal moves nothing; the gate then closes by
itself at the old deadline.

Failures are classified for the failsafe (docs/failsafe.md): a DCS that cannot be asked
(unreachable, no quorum, timed out, access refused) starts ``unreachable_since``; a lock taken, a
key changed or a lease revoked ends the lease (``held`` False), which no promise can save.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass

from dbfence.agent.observation import LeaseView
from dbfence.breaker import Gate, IllegalTransition
from dbfence.locks.base import LeaseGrant, LeaseLock
from dbfence.locks.errors import (
    DcsAccessDenied,
    DcsUnreachable,
    LockConflict,
    LockError,
    LockLost,
    SessionExpired,
)
from dbfence.locks.model import HolderInfo

log = logging.getLogger("dbfence.agent")


@dataclass(frozen=True, slots=True)
class LeaseStatus:
    """What the keeper knows: our lease, whether it holds the lock, the last error."""

    session_id: str | None = None
    held: bool = False
    token: int | None = None
    deadline: float | None = None
    last_renew_ok: float | None = None
    last_renew_seconds: float | None = None
    # The longest time between two successful renewals' send times since start (a CPU storm or a
    # slow DCS shows here first), and the least lease that was left when one landed.
    worst_renew_gap: float = 0.0
    least_lease_left: float | None = None
    error: str = ""
    unreachable_since: float | None = None  # renewals fail because the DCS cannot be asked

    def view(self) -> LeaseView:
        if self.held and self.token is not None and self.deadline is not None:
            return LeaseView(held=True, token=self.token, deadline=self.deadline)
        return LeaseView()


class LeaseKeeper:
    def __init__(self, lock: LeaseLock, gate: Gate, wake: threading.Event, *, renew_interval: float) -> None:
        self._lock = lock
        self._gate = gate
        self._wake = wake
        self._renew_interval = renew_interval
        self._mutex = threading.Lock()  # one DCS lease call at a time
        self._stop = threading.Event()
        self._asked = threading.Event()  # the loop asks for a renewal now
        self.status = LeaseStatus()
        self.gate_token: int | None = None  # the token the gate is armed with (set by the executor)
        self._thread = threading.Thread(target=self._run, name="dbfence-lease-keeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._asked.set()
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------ operations
    def renew(self) -> None:
        """Renew now (or open a session if none is open); errors are kept in ``status``."""
        with self._mutex:
            self._renew_locked()

    def renew_if_due(self) -> None:
        last = self.status.last_renew_ok
        if last is None or time.monotonic() - last >= self._renew_interval / 2:
            self.renew()

    def request_renewal(self) -> None:
        """Renew soon, on the keeper's thread (the caller never waits for the DCS). While
        renewals fail the keeper's own retry schedule stands: the request adds no attempts."""
        if not self.status.error:
            self._asked.set()

    @property
    def dcs_unreachable(self) -> bool:
        """The last renewals failed because the DCS could not be asked."""
        return self.status.unreachable_since is not None

    def acquire(self, holder: HolderInfo) -> None:
        with self._mutex:
            try:
                grant = self._lock.try_acquire(holder)
            except LockConflict as exc:
                self._set(error=f"lock busy: {exc}")
                return
            except SessionExpired as exc:
                self._set(session_id=None, held=False, token=None, deadline=None, error=str(exc))
                return
            except LockError as exc:
                # Outcome unknown (a timed-out acquire may have succeeded): the next renewal reads
                # the key and reports whether it is ours.
                self._set(error=f"acquire failed: {exc}")
                return
            self._accept(grant)

    def release(self) -> None:
        with self._mutex:
            try:
                self._lock.release()
            except LockError as exc:
                self._set(error=f"release failed: {exc}")
                return
            self._set(held=False, token=None, error="")

    def close(self) -> None:
        """Close the session: the lock (if held) and our member record go with it. Raises
        LockError if the DCS could not be told; the session then expires by itself."""
        with self._mutex:
            try:
                self._lock.close_session()
            finally:
                self.status = LeaseStatus()

    def leave(self) -> None:
        """Release the lock and stop; the session and our member record expire by themselves
        (:meth:`LeaseLock.leave`). Raises LockError if the DCS could not be told."""
        with self._mutex:
            try:
                self._lock.leave()
            finally:
                self.status = LeaseStatus()

    # ------------------------------------------------------------------ internals
    def _set(self, **changes: object) -> None:
        current = self.status
        values = {name: getattr(current, name) for name in LeaseStatus.__dataclass_fields__}
        values.update(changes)
        self.status = LeaseStatus(**values)  # type: ignore[arg-type,unused-ignore]
        if self.status.view() != current.view():
            # Only what the core sees wakes the loop: a renewal failing every quarter interval
            # while the DCS is gone would otherwise run a decision round each time.
            self._wake.set()

    def _accept(self, grant: LeaseGrant) -> None:
        held = grant.token is not None
        before, now = self.status, time.monotonic()
        gap = 0.0 if before.last_renew_ok is None else grant.sent_at - before.last_renew_ok
        left = None if before.deadline is None else before.deadline - now
        least = before.least_lease_left if left is None or (
            before.least_lease_left is not None and before.least_lease_left <= left) else left
        self._set(session_id=grant.session_id, held=held, token=grant.token,
                  deadline=grant.deadline if held else None, last_renew_ok=grant.sent_at,
                  last_renew_seconds=now - grant.sent_at, worst_renew_gap=max(before.worst_renew_gap, gap),
                  least_lease_left=least, error="", unreachable_since=None)
        if gap > 2 * self._renew_interval and left is not None:
            # Late enough to eat into the lease (not only into the schedule): say so, with numbers.
            log.warning("lease renewal late: %.2f s since the previous one (every %.2f s planned), "
                        "%.2f s of lease were left when it landed (worst gap so far %.2f s)",
                        gap, self._renew_interval, left, max(before.worst_renew_gap, gap))
        if held and self.gate_token == grant.token:
            # Blocked meanwhile (fencing or expiry): a renewal never reopens the gate.
            with contextlib.suppress(IllegalTransition):
                self._gate.extend(grant.deadline)

    def _renew_locked(self) -> None:
        attempted_at = time.monotonic()
        try:
            grant = self._lock.open_session() if self._lock.session_id is None else self._lock.renew()
        except SessionExpired as exc:
            self._set(session_id=None, held=False, token=None, deadline=None, error=str(exc),
                      unreachable_since=None)
            return
        except LockLost as exc:
            self._set(held=False, token=None, deadline=None, error=str(exc), unreachable_since=None)
            return
        except (DcsUnreachable, DcsAccessDenied) as exc:
            # The DCS cannot be asked: nothing says the lease is gone (failsafe may keep writes).
            since = self.status.unreachable_since
            self._set(error=f"renew failed: {exc}",
                      unreachable_since=attempted_at if since is None else since)
            return
        except LockError as exc:
            self._set(error=f"renew failed: {exc}", unreachable_since=None)
            return
        self._accept(grant)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self.renew_if_due()
            except Exception:  # never let the keeper die; the deadline protects the gate
                log.exception("lease renewal crashed")
            status = self.status
            quick = self._renew_interval / 4
            valid = status.held and status.deadline is not None and time.monotonic() < status.deadline
            # Retry quickly while there is a valid lease to keep; without one (the DCS is gone),
            # back off to one attempt per renewal interval.
            failures = failures + 1 if status.error and not valid else 0
            self._asked.wait(min(self._renew_interval, quick * 2 ** failures))
            self._asked.clear()
