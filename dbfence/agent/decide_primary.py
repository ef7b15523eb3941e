"""PRIMARY: keep the gate armed with the lease deadline while everything holds; fence otherwise.

Also the failsafe upkeep of a serving primary (failsafe list, promises while the DCS cannot be
asked, docs/failsafe.md) and taking back a lease the DCS dropped while promises still bind.
"""

from __future__ import annotations

from dbfence.agent import failsafe
from dbfence.agent.actions import (
    AcquireLock,
    ActionReason,
    AdmitGate,
    AskPromises,
    ClearSwitchover,
    PublishFailsafeMembers,
    WriteFencingToken,
)
from dbfence.agent.decide_lease import fence_now, lease_trouble, renew_if_due
from dbfence.agent.decide_race import switchover_target_suitable
from dbfence.agent.decide_round import RefusalReason, Round, sync_discovery
from dbfence.agent.observation import DiscoveryTag
from dbfence.agent.state import Trigger


def handle_primary(r: Round) -> None:
    obs = r.obs
    trouble = lease_trouble(r)
    target = obs.intents.switchover_target
    if trouble is not None:
        if not _retake_lease(r, trouble):
            fence_now(r, trouble)
    elif obs.intents.paused:
        r.refuse(RefusalReason.PAUSED)
        renew_if_due(r)
        serve(r)
    elif not obs.db.health.healthy:
        fence_now(r, Trigger.DB_UNHEALTHY)
    elif target is not None and target != r.me:
        if switchover_target_suitable(r, target):
            fence_now(r, Trigger.SWITCHOVER, switchover_target=target)
        else:
            r.refuse(RefusalReason.SWITCHOVER_TARGET_UNSUITABLE, target)
            renew_if_due(r)
            serve(r)
    else:
        renew_if_due(r)
        serve(r)


def _retake_lease(r: Round, trouble: Trigger) -> bool:
    """Failsafe: the DCS came back without our lease (a Consul session invalidated during the
    outage). The promises for the token the gate runs on still bind every member: keep the gate
    on them and take the lock again while the DCS shows it free. The new token goes into mysqld
    before the gate admits under it (``serve``)."""
    obs = r.obs
    gate = obs.gate
    if trouble is not Trigger.LEASE_LOST or obs.lease.held or not gate.admitting or gate.token is None:
        return False
    until = failsafe.promised_until(obs.failsafe, gate.token, r.config)
    if until is None or r.now >= until or not obs.lock.free:
        return False  # no promises left, or another node holds the lock: fence
    if obs.intents.paused or not obs.db.health.healthy or obs.failsafe.promise_live(r.now):
        return False
    r.emit(AcquireLock(ActionReason.LEASE_RETAKEN))
    r.wake_at(until)
    return True


def serve(r: Round) -> None:
    """PRIMARY with a valid lease: keep the gate armed with the current deadline."""
    obs = r.obs
    lease = obs.lease
    deadline = failsafe.effective_deadline(obs.failsafe, lease, r.config)
    assert lease.token is not None and deadline is not None  # valid lease checked by callers
    gate = obs.gate
    if gate.admitting and lease.token not in (gate.token, obs.db.fencing_token):
        # A lease taken back after a DCS outage: its token goes into mysqld first; meanwhile the
        # gate keeps the deadline the promises gave the old token.
        r.emit(WriteFencingToken(lease.token, ActionReason.LEASE_RETAKEN))
    elif not gate.admitting or gate.token != lease.token or gate.deadline != deadline:
        reason = ActionReason.LEASE_EXTENDED if gate.admitting else ActionReason.PRIMARY_READY
        r.emit(AdmitGate(lease.token, deadline, reason))
    _failsafe_upkeep(r, lease.token)
    sync_discovery(r, DiscoveryTag.PRIMARY, ActionReason.PRIMARY_READY)
    if obs.intents.switchover_target == r.me:
        r.emit(ClearSwitchover(ActionReason.SWITCHOVER_DONE))


def _failsafe_upkeep(r: Round, token: int) -> None:
    """A serving primary keeps the failsafe list in the DCS current while it can write there,
    and asks its peers for promises while the DCS cannot be asked (docs/failsafe.md)."""
    obs = r.obs
    view = obs.failsafe
    if obs.lock.reachable and obs.lock.holder == r.me:
        live = frozenset(record.name for record in obs.members) | {r.me}
        listed = failsafe.list_to_publish(view, live, token, r.config)
        if listed is not None:
            r.emit(PublishFailsafeMembers(token, tuple(sorted(listed)),
                                          ActionReason.FAILSAFE_MEMBERS_CHANGED))
    due = failsafe.round_due(view, obs.lease, r.now, r.config)
    if due is None:
        return
    if r.now >= due:
        members = tuple(sorted(failsafe.required_members(view, r.me)))
        r.emit(AskPromises(token, members, r.config.ttl, ActionReason.DCS_UNREACHABLE))
    else:
        r.wake_at(due)
