"""STARTING, FENCING and FENCED: close everything, release the lock, rejoin only when clean.

STARTING confirms the local fence; FENCING fences in order and releases the lock only once the
fence is complete (for a switchover: once the target caught up); FENCED (a former primary)
rejoins only through a clean errant-GTID check against the current primary, or is repaired per
``[rejoin]`` (:mod:`dbfence.agent.rejoin`); the current primary is the lock holder once its record
says PRIMARY, or while it still promotes when that is proven safe
(:mod:`dbfence.agent.decide_promoting_holder`).
"""

from __future__ import annotations

from dataclasses import replace

from dbfence.agent.actions import (
    AcquireLock,
    ActionReason,
    ClearSwitchover,
    RebuildNode,
    ReleaseLock,
    Repoint,
    SetReadOnly,
)
from dbfence.agent.decide_adoption import adopt_running_primary
from dbfence.agent.decide_lease import fence_actions, lease_trouble, release_unwanted_lease, renew_if_due
from dbfence.agent.decide_promoting_holder import promoting_holder
from dbfence.agent.decide_race import switchover_target_suitable
from dbfence.agent.decide_replica import acknowledges, detach_lost_source, ready_primary, unchecked_detail
from dbfence.agent.decide_round import FENCE_ACTION_REASON, RefusalReason, Round, fresh
from dbfence.agent.decide_takeover import repair_reference, takeover_refusals
from dbfence.agent.gtid import BinlogState
from dbfence.agent.observation import ErrantCheck
from dbfence.agent.rejoin import choose_donors, plan_repair
from dbfence.agent.state import Trigger


def handle_starting(r: Round) -> None:
    if adopt_running_primary(r):
        return
    fence_actions(r, ActionReason.STARTUP, insist=True)
    # As a replica would: what a source without the lock ships now was never acknowledged, and,
    # received while this agent starts, it would outrank a winner that raced meanwhile.
    detach_lost_source(r)
    release_unwanted_lease(r)
    if r.obs.fence_complete:
        r.move(Trigger.LOCAL_FENCE_CONFIRMED)
    else:
        r.refuse(RefusalReason.FENCE_INCOMPLETE)


def handle_fencing(r: Round) -> None:
    reason = r.state.fenced_reason
    assert reason is not None  # set by every transition into FENCING
    _fencing_steps(r, FENCE_ACTION_REASON[reason])
    if r.obs.db.read_only is None and not any(isinstance(a, SetReadOnly) for a in r.actions):
        # mysqld could not be asked: ask again, but last. A hung mysqld makes the attempt wait
        # for a connect timeout, and a release that is due must not wait behind it.
        r.emit(SetReadOnly(read_only=True, reason=FENCE_ACTION_REASON[reason]))


def _fencing_steps(r: Round, reason: ActionReason) -> None:
    obs = r.obs
    state = r.state
    fence_actions(r, reason, insist=False)
    renew_if_due(r)
    if obs.intents.paused:
        r.refuse(RefusalReason.PAUSED)
        return
    lease = obs.lease
    target = state.switchover_target
    overdue = r.now >= state.since + r.config.drain_timeout + r.config.ttl
    if state.fenced_reason is Trigger.SWITCHOVER and (
        obs.intents.switchover_target != target or not switchover_target_suitable(r, target) or overdue
    ):
        # Withdrawn, or the target can no longer take over (it vanished, or never catches up:
        # it may hold errant GTIDs that its position does not show): waiting for it would
        # leave the cluster without a primary, so take the role back if we still can.
        if lease_trouble(r) is None and obs.db.health.healthy:
            if obs.intents.switchover_target == target:
                r.emit(ClearSwitchover(ActionReason.SWITCHOVER_FAILED))  # or it starts again
            r.move(Trigger.SWITCHOVER_ABORTED)
            return
        # Cannot take the role back: finish as an ordinary fence.
        r.state = state = replace(state, switchover_target=None)
        target = None
    if not obs.fence_complete:
        r.refuse(RefusalReason.FENCE_INCOMPLETE)
        return
    lease_gone = not lease.held or (
        lease.deadline is not None and r.now >= lease.deadline + r.config.safety_margin
    )
    if lease_gone:
        # Handed over: the target held everything we hold once our fence was complete, so we
        # have nothing it lacks and follow it as a replica. FENCED would wait for it to become
        # PRIMARY, and a promotion that fails (its lease lost before a replica acknowledged its
        # token, every other node FENCED too) left no node that may race (soak seed 204).
        r.move(Trigger.HANDED_OVER if state.handed_over else Trigger.RELEASED)
        return
    assert lease.token is not None
    if target is not None:
        record = obs.member(target)
        position = obs.db.position
        caught_up = (
            record is not None and fresh(r, record) and record.info.healthy
            and record.info.position is not None and position is not None
            and record.info.position.covers(position)
        )
        if not caught_up:
            r.refuse(RefusalReason.SWITCHOVER_TARGET_BEHIND, target)
            r.wake_at(state.since + r.config.drain_timeout + r.config.ttl)
            return
        r.state = replace(state, handed_over=True)  # fenced: nothing we hold can grow any more
        r.emit(ReleaseLock(lease.token, ActionReason.SWITCHOVER))
    else:
        r.emit(ReleaseLock(lease.token, ActionReason.FENCE_COMPLETE))


def handle_fenced(r: Round) -> None:
    obs = r.obs
    fence_actions(r, ActionReason.NOT_PRIMARY, insist=False)
    detach_lost_source(r)
    release_unwanted_lease(r)
    if obs.intents.paused:
        r.refuse(RefusalReason.PAUSED)
        return
    primary = ready_primary(r)
    promoting = False
    if primary is None:
        # A holder still promoting, when that is proven safe: our ack completes its promotion
        # within the token's ack wait (issue 16's kill -9 RTO; decide_promoting_holder.py).
        primary, why_not = promoting_holder(r)
        promoting = primary is not None
    if primary is None:
        if not obs.lock.reachable:
            r.refuse(RefusalReason.DCS_UNREACHABLE)
        elif obs.lock.holder == r.me:
            r.refuse(RefusalReason.NO_PRIMARY_TO_REJOIN, "the lock is still this node's (to release)")
        elif obs.lock.holder is not None:
            r.refuse(RefusalReason.NO_PRIMARY_TO_REJOIN, f"{obs.lock.holder} holds the lock, not primary yet"
                     + (f" (not followed while promoting: {why_not})" if why_not else ""))
        else:
            _take_over_or_say_why(r)
        return
    check = obs.db.replication.errant
    if not obs.db.health.healthy:
        r.refuse(RefusalReason.DB_UNHEALTHY, ", ".join(obs.db.health.reasons))
        if obs.repair.awaiting_restart:  # killed by the fence: what is errant shows after recovery
            _repair(r, ErrantCheck(primary), promoting=promoting)
    elif check is None or check.against != primary:
        r.refuse(RefusalReason.ERRANT_UNCHECKED, unchecked_detail(r, primary))
    elif not check.clean:
        r.refuse(RefusalReason.ERRANT_GTIDS, ",".join(check.gtids))
        r.state = replace(r.state, fenced_reason=Trigger.ERRANT_GTIDS)
        _repair(r, check, promoting=promoting)
    else:
        r.emit(Repoint(primary, acknowledges(r), ActionReason.REJOIN))
        r.move(Trigger.REJOINED)


def _take_over_or_say_why(r: Round) -> None:
    """No primary and the lock free: race if no other member may and this node holds all they
    hold but never-acknowledged writes (:mod:`dbfence.agent.decide_takeover`); else say why."""
    if r.obs.repair.awaiting_restart:
        _repair_to_take_over(r)
        return
    refusals = takeover_refusals(r)
    if not refusals:
        r.move(Trigger.TAKES_OVER)
        r.emit(AcquireLock(ActionReason.TAKEOVER_WITHOUT_PRIMARY))
        return
    if refusals[0].reason is not RefusalReason.NO_PRIMARY_TO_REJOIN:
        r.refuse(RefusalReason.NO_PRIMARY_TO_REJOIN, "and no takeover (below)")
    r.refusals.extend(refusals)


def _repair_to_take_over(r: Round) -> None:
    """Its mysqld, killed by the fence, awaits a repair that needs a primary: repaired without one
    when it holds what no live member holds (``decide_takeover.repair_reference``), else why not."""
    scratch = Round(r.obs, r.config, r.state)
    reference = repair_reference(scratch)
    r.wake_times.extend(scratch.wake_times)
    if reference is None:
        if not scratch.refusals or scratch.refusals[0].reason is not RefusalReason.NO_PRIMARY_TO_REJOIN:
            r.refuse(RefusalReason.NO_PRIMARY_TO_REJOIN,
                     "and no repair of its killed mysqld without one (below)")
        r.refusals.extend(scratch.refusals)
        return
    r.refuse(RefusalReason.NO_PRIMARY_TO_REJOIN, "its mysqld, killed by the fence, holds what no live member "
             "holds: repaired first, against the others' binlog states " + (str(reference) or "(empty)"))
    _repair(r, ErrantCheck(""), reference)


def _repair(r: Round, check: ErrantCheck, reference: BinlogState | None = None, *,
            promoting: bool = False) -> None:
    """``[rejoin]``: remove errant transactions that were provably never acknowledged (truncate
    or rebuild), or say why not (the rules are in :mod:`dbfence.agent.rejoin`). ``reference``:
    no primary, see ``_repair_to_take_over`` (a rebuild needs a primary: no donor then).
    ``promoting``: ``check.against`` is a holder still promoting (decide_promoting_holder.py): a
    truncation only; a rebuild (minutes, it could not beat the token's ack wait) waits for it."""
    donors = () if reference is not None else choose_donors(
        tuple(m.info for m in r.obs.members if fresh(r, m)), r.me, check.against,
        r.obs.intents.switchover_target, r.config.rejoin_donor_primary)
    plan = plan_repair(r.config.rejoin_mode, r.obs.repair, check, r.obs.db.server_id, donors, r.me,
                       reference=reference)
    if isinstance(plan, tuple):
        r.refuse(RefusalReason(plan[0].value), plan[1])
    elif isinstance(plan, RebuildNode) and promoting:
        r.refuse(RefusalReason.NO_PRIMARY_TO_REJOIN, f"a rebuild waits until {check.against} is primary")
    elif plan is not None:
        r.emit(plan)
