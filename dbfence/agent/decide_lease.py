"""Lease and fence upkeep shared by the roles: renew in time, fence in order, release safely.

What a lease holder may still do (``lease_trouble``), the ordered fence (discovery check failed,
gate blocked, read-only) and giving back a lease only behind a complete fence live together
because they are the "fence before release" invariant (docs/decision-core.md).
"""

from __future__ import annotations

from dbfence.agent import failsafe
from dbfence.agent.actions import (
    ActionReason,
    BlockGate,
    FailDiscoveryCheck,
    ReleaseLock,
    RenewLock,
    SetReadOnly,
)
from dbfence.agent.decide_round import FENCE_ACTION_REASON, Round
from dbfence.agent.state import Trigger


def fence_actions(r: Round, reason: ActionReason, *, insist: bool) -> None:
    """Ordered fence: discovery check failed, gate blocked with connections cut, read-only.

    Emits only what the observation shows undone. ``insist`` also retries read-only
    when mysqld could not be asked (fencing, starting); steady roles only correct an
    observed writable mysqld.
    """
    obs = r.obs
    if obs.discovery is not None:
        r.emit(FailDiscoveryCheck(reason))
    if obs.gate.admitting and reason is ActionReason.SWITCHOVER:
        # Planned: transactions in flight may finish (mysqld is still writable) before the cut.
        r.emit(BlockGate(cut_connections=True, reason=reason, drain=r.config.drain_timeout))
    elif obs.gate.admitting or obs.gate.open_connections > 0:
        r.emit(BlockGate(cut_connections=True, reason=reason))
    if obs.db.read_only is False or (insist and obs.db.read_only is None):
        r.emit(SetReadOnly(read_only=True, reason=reason))


def keep_gate_closed(r: Round) -> None:
    if r.obs.gate.admitting or r.obs.gate.open_connections > 0:
        r.emit(BlockGate(cut_connections=True, reason=ActionReason.NOT_PRIMARY))


def keep_replica_safe(r: Round) -> None:
    """Defensive: a replica never admits and never runs writable (discovery is separate)."""
    keep_gate_closed(r)
    if r.obs.db.read_only is False:
        r.emit(SetReadOnly(read_only=True, reason=ActionReason.NOT_PRIMARY))


def renew_if_due(r: Round) -> None:
    lease = r.obs.lease
    if not lease.held or lease.token is None or lease.deadline is None:
        return
    renewed_at = lease.deadline - r.config.lease_span
    due = renewed_at + r.config.renew_interval
    if r.now >= due:
        r.emit(RenewLock(lease.token, ActionReason.RENEWAL_DUE))
    else:
        r.wake_at(due)
    r.wake_at(lease.deadline)
    promised = failsafe.promise_deadline(r.obs.failsafe, lease, r.config)
    if promised is not None:
        r.wake_at(promised)


def release_unwanted_lease(r: Round) -> None:
    """A role that must not hold the lock gives it back, but only behind a complete fence, and
    only while giving it back can do something: not while the DCS is unreachable, nor once the
    lease has surely expired there (deadline + margin; the adapter may still report a lease it
    could not renew as held). Asked for regardless, a release that cannot happen repeats every
    round for as long as the DCS is gone."""
    lease = r.obs.lease
    if not lease.held or lease.token is None or not r.obs.fence_complete or not r.obs.lock.reachable:
        return
    if lease.deadline is not None and r.now >= lease.deadline + r.config.safety_margin:
        return
    r.emit(ReleaseLock(lease.token, ActionReason.UNWANTED_LEASE))


def lease_trouble(r: Round) -> Trigger | None:
    """LEASE_LOST / LEASE_EXPIRED when a lease holder may no longer act as one."""
    obs = r.obs
    lease = obs.lease
    if not lease.held or (obs.lock.reachable and obs.lock.holder != r.me):
        return Trigger.LEASE_LOST
    deadline = failsafe.effective_deadline(obs.failsafe, lease, r.config)
    if deadline is None or r.now >= deadline:
        return Trigger.LEASE_EXPIRED
    return None


def fence_now(r: Round, trigger: Trigger, *, switchover_target: str | None = None) -> None:
    r.move(trigger, switchover_target=switchover_target)
    fence_actions(r, FENCE_ACTION_REASON[trigger], insist=True)
    renew_if_due(r)
