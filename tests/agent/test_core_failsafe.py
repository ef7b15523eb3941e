"""Table tests of the failsafe rules (docs/failsafe.md): promises asked, counted and given."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dbfence.agent.actions import (
    AcquireLock,
    ActionReason,
    AdmitGate,
    AskPromises,
    BlockGate,
    DetachSource,
    PublishFailsafeMembers,
    WriteFencingToken,
)
from dbfence.agent.core_config import CoreConfig
from dbfence.agent.decide import RefusalReason, decide
from dbfence.agent.failsafe import (
    PromiseDecision,
    PromiseRefusal,
    PromiseRequest,
    PromiserView,
    answer_promise,
    promise_deadline,
)
from dbfence.agent.failsafe_view import FailsafeView, GivenPromise, PromiseAnswer, PromiseRound
from dbfence.agent.observation import GateView, LeaseView, LockView, Observation, OperatorIntents
from dbfence.agent.state import Role, State, Trigger
from tests.agent.core_builders import ARMED, CONFIG, DEADLINE, HELD, ME, NOW, TOKEN, core_actions, db, observe

ON = replace(CONFIG, failsafe=True)
UNREACHABLE = LockView(reachable=False)
LISTED = frozenset({"n1", "n2", "n3"})
OUTAGE = FailsafeView(dcs_unreachable_since=NOW - 1.0, listed=LISTED, listed_token=TOKEN,
                      membership=LISTED)
PRIMARY = State(Role.PRIMARY, since=NOW - 100)
REPLICA = State(Role.REPLICA, since=NOW - 100)


def answered(*names: str, sent_at: float = NOW - 0.5, token: int = TOKEN, granted: float = 10.0,
             asked: frozenset[str] = frozenset({"n2", "n3"})) -> PromiseRound:
    return PromiseRound(token, sent_at, asked, tuple(PromiseAnswer(name, granted) for name in names))


def primary_obs(view: FailsafeView, *, now: float = NOW, lease: LeaseView = HELD,
                gate: GateView = ARMED, lock: LockView = UNREACHABLE) -> Observation:
    return replace(observe(Role.PRIMARY, now=now, lease=lease, gate=gate, lock=lock,
                           database=db(read_only=False, source=None, token=TOKEN)), failsafe=view)


# ------------------------------------------------------------------ the primary asks


@pytest.mark.parametrize(("case", "config", "view", "asks"), [
    ("renewals fail as unreachable, list is ours: ask every member", ON, OUTAGE, True),
    ("failsafe off: never ask", CONFIG, OUTAGE, False),
    ("the DCS answers renewals: no need", ON, replace(OUTAGE, dcs_unreachable_since=None), False),
    ("no list of ours in the DCS: a node never asked could race", ON,
     replace(OUTAGE, listed_token=TOKEN - 1), False),
    ("a round is in flight", ON, replace(OUTAGE, asking=True), False),
    ("the last round is older than the outage: ask again now", ON,
     replace(OUTAGE, last_round=answered("n2", "n3", sent_at=NOW - 5)), True),
    ("the last round is recent: wait for the renewal interval", ON,
     replace(OUTAGE, last_round=answered("n2", "n3", sent_at=NOW - 0.5)), False),
    ("the last round was for another token", ON,
     replace(OUTAGE, last_round=answered("n2", "n3", token=TOKEN - 1)), True),
])
def test_when_a_primary_asks_for_promises(case: str, config: CoreConfig, view: FailsafeView,
                                          asks: bool) -> None:
    decision = decide(primary_obs(view), PRIMARY, config)
    asked = [a for a in decision.actions if isinstance(a, AskPromises)]
    assert decision.state.role is Role.PRIMARY, case
    if asks:
        assert asked == [AskPromises(TOKEN, ("n2", "n3"), config.ttl, asked[0].reason)], case
    else:
        assert asked == [], case


def test_the_next_round_is_due_one_renewal_interval_after_the_last() -> None:
    view = replace(OUTAGE, last_round=answered("n2", "n3", sent_at=NOW - 0.5))
    decision = decide(primary_obs(view), PRIMARY, ON)
    assert decision.next_wakeup <= NOW - 0.5 + ON.renew_interval
    later = decide(primary_obs(view, now=NOW - 0.5 + ON.renew_interval), PRIMARY, ON)
    assert any(isinstance(a, AskPromises) for a in later.actions)


def test_members_seen_but_not_listed_are_asked_too() -> None:
    view = replace(OUTAGE, membership=LISTED | {"n4"})
    asked = [a for a in decide(primary_obs(view), PRIMARY, ON).actions if isinstance(a, AskPromises)]
    assert asked[0].members == ("n2", "n3", "n4")


# ------------------------------------------------------------------ promises extend the deadline

AFTER_LEASE = DEADLINE + 1.0  # the lease deadline has passed


@pytest.mark.parametrize(("case", "view", "extended_to"), [
    ("every member promised: send time + shortest promise - margin",
     replace(OUTAGE, last_round=PromiseRound(TOKEN, NOW + 7.5, frozenset({"n2", "n3"}),
                                             (PromiseAnswer("n2", 10.0), PromiseAnswer("n3", 8.0)))),
     NOW + 7.5 + 8.0 - CONFIG.safety_margin),
    ("one member refused", replace(OUTAGE, last_round=PromiseRound(
        TOKEN, NOW + 7.5, frozenset({"n2", "n3"}), (PromiseAnswer("n2", 10.0), PromiseAnswer("n3", None)))),
     None),
    ("one member did not answer (down, paused, cut off)",
     replace(OUTAGE, last_round=answered("n2", sent_at=NOW + 7.5)), None),
    ("a round for another token", replace(OUTAGE, last_round=answered("n2", "n3", sent_at=NOW + 7.5,
                                                                       token=TOKEN + 1)), None),
    ("a member seen after the round was asked",
     replace(OUTAGE, membership=LISTED | {"n4"}, last_round=answered("n2", "n3", sent_at=NOW + 7.5)), None),
    ("the list in the DCS is not ours",
     replace(OUTAGE, listed_token=TOKEN - 1, last_round=answered("n2", "n3", sent_at=NOW + 7.5)), None),
    ("a promise of zero seconds is no promise",
     replace(OUTAGE, last_round=answered("n2", "n3", sent_at=NOW + 7.5, granted=0.0)), None),
])
def test_promises_keep_the_gate_armed_after_the_lease_deadline(
        case: str, view: FailsafeView, extended_to: float | None) -> None:
    gate = GateView(admitting=True, token=TOKEN, deadline=DEADLINE)
    decision = decide(primary_obs(view, now=AFTER_LEASE, gate=gate), PRIMARY, ON)
    if extended_to is None:
        assert decision.state.role is Role.FENCING, case
        assert decision.state.fenced_reason is Trigger.LEASE_EXPIRED, case
        assert not any(isinstance(a, AdmitGate) for a in decision.actions), case
    else:
        assert decision.state.role is Role.PRIMARY, case
        admits = [a for a in decision.actions if isinstance(a, AdmitGate)]
        assert [(a.token, a.deadline) for a in admits] == [(TOKEN, extended_to)], case
        assert decision.next_wakeup <= extended_to


def test_the_primary_fences_at_the_promises_deadline() -> None:
    view = replace(OUTAGE, last_round=answered("n2", "n3", sent_at=NOW + 7.5))
    deadline = promise_deadline(view, HELD, ON)
    assert deadline == NOW + 7.5 + 10.0 - ON.safety_margin
    gate = GateView(admitting=True, token=TOKEN, deadline=deadline)
    decision = decide(primary_obs(view, now=deadline, gate=gate), PRIMARY, ON)
    assert decision.state.role is Role.FENCING
    assert decision.state.fenced_reason is Trigger.LEASE_EXPIRED


def test_promises_count_only_with_failsafe_on() -> None:
    view = replace(OUTAGE, last_round=answered("n2", "n3", sent_at=NOW + 7.5))
    gate = GateView(admitting=True, token=TOKEN, deadline=DEADLINE)
    assert decide(primary_obs(view, now=AFTER_LEASE, gate=gate), PRIMARY, CONFIG).state.role is Role.FENCING


def test_a_lost_lease_is_not_saved_by_promises() -> None:
    """Revoked or taken (not unreachable): the keeper reports no lease, promises do not count."""
    view = replace(OUTAGE, last_round=answered("n2", "n3", sent_at=NOW - 0.5))
    decision = decide(primary_obs(view, lease=LeaseView()), PRIMARY, ON)
    assert decision.state.fenced_reason is Trigger.LEASE_LOST
    assert promise_deadline(view, LeaseView(), ON) is None


def test_the_lock_seen_free_in_a_dcs_that_answers_fences_the_primary() -> None:
    view = replace(OUTAGE, last_round=answered("n2", "n3", sent_at=NOW + 7.5))
    decision = decide(primary_obs(view, now=AFTER_LEASE, lock=LockView(True, None, None)), PRIMARY, ON)
    assert decision.state.fenced_reason is Trigger.LEASE_LOST


# ------------------------------------------------------------------ the list in the DCS


def test_the_primary_keeps_the_failsafe_list_current() -> None:
    lock = LockView(True, ME, TOKEN)
    stale = replace(OUTAGE, dcs_unreachable_since=None, listed=frozenset({"n1", "n2"}))
    published = [a for a in decide(primary_obs(stale, lock=lock), PRIMARY, ON).actions
                 if isinstance(a, PublishFailsafeMembers)]
    assert [(a.token, a.members) for a in published] == [(TOKEN, ("n1", "n2", "n3"))]
    other_token = replace(stale, listed=LISTED, listed_token=TOKEN - 1)
    assert any(isinstance(a, PublishFailsafeMembers)
               for a in decide(primary_obs(other_token, lock=lock), PRIMARY, ON).actions)
    current = replace(stale, listed=LISTED)
    assert not any(isinstance(a, PublishFailsafeMembers)
                   for a in decide(primary_obs(current, lock=lock), PRIMARY, ON).actions)
    assert not any(isinstance(a, PublishFailsafeMembers)
                   for a in decide(primary_obs(stale, lock=lock), PRIMARY, CONFIG).actions)
    # Unreachable DCS: nothing to write to.
    assert not any(isinstance(a, PublishFailsafeMembers)
                   for a in decide(primary_obs(stale), PRIMARY, ON).actions)


def test_the_failsafe_list_only_grows() -> None:
    """A listed member whose record is missing (after an outage, a paused agent) stays listed:
    a list shrunk to nodes that cannot take the lock would keep every other node from racing
    for good (the liveness check from failsafe states found it: the primary wrote itself alone
    right after the DCS came back, then stepped down for a switchover)."""
    lock = LockView(True, ME, TOKEN)
    with_gone = replace(OUTAGE, dcs_unreachable_since=None, listed=LISTED | {"n4"})
    assert not any(isinstance(a, PublishFailsafeMembers)
                   for a in decide(primary_obs(with_gone, lock=lock), PRIMARY, ON).actions)
    earlier = replace(with_gone, listed=frozenset({"n1", "n4"}), listed_token=TOKEN - 1)
    published = [a for a in decide(primary_obs(earlier, lock=lock), PRIMARY, ON).actions
                 if isinstance(a, PublishFailsafeMembers)]
    assert [(a.token, a.members) for a in published] == [(TOKEN, ("n1", "n2", "n3", "n4"))]


# ------------------------------------------------------------------ members that promised

FREE = LockView(True, None, None)


def replica_obs(view: FailsafeView, *, now: float = NOW, lock: LockView = FREE, receiving: bool = False
                ) -> Observation:
    return replace(observe(Role.REPLICA, now=now, lock=lock, database=db(receiving=receiving)), failsafe=view)


def test_a_member_races_only_after_its_promise_ended() -> None:
    promised = FailsafeView(given=GivenPromise("n2", 3, NOW + 4.0))
    decision = decide(replica_obs(promised), REPLICA, ON)
    assert not any(isinstance(a, AcquireLock) for a in decision.actions)
    assert [r.reason for r in decision.refusals] == [RefusalReason.PROMISE_GIVEN]
    assert decision.next_wakeup <= NOW + 4.0
    # Also with failsafe turned off meanwhile: a promise given is kept.
    assert not any(isinstance(a, AcquireLock) for a in decide(replica_obs(promised), REPLICA, CONFIG).actions)
    after = decide(replica_obs(promised, now=NOW + 4.0), REPLICA, ON)
    assert any(isinstance(a, AcquireLock) for a in after.actions)


def test_a_member_outside_the_failsafe_list_does_not_race() -> None:
    listed = FailsafeView(listed=frozenset({"n2", "n3"}), listed_token=3)
    decision = decide(replica_obs(listed), REPLICA, ON)
    assert [r.reason for r in decision.refusals] == [RefusalReason.NOT_IN_FAILSAFE_LIST]
    assert not any(isinstance(a, AcquireLock) for a in decision.actions)
    # With failsafe off here too: another node's configuration may have it on.
    assert not any(isinstance(a, AcquireLock) for a in decide(replica_obs(listed), REPLICA, CONFIG).actions)
    mine = FailsafeView(listed=frozenset({ME, "n2"}), listed_token=3)
    assert any(isinstance(a, AcquireLock) for a in decide(replica_obs(mine), REPLICA, ON).actions)


def test_a_member_keeps_replicating_from_the_primary_it_promised() -> None:
    promised = FailsafeView(given=GivenPromise("n2", 3, NOW + 4.0))
    kept = core_actions(decide(replica_obs(promised, receiving=True), REPLICA, ON))
    assert not any(isinstance(a, DetachSource) for a in kept)
    to_other = FailsafeView(given=GivenPromise("n3", 3, NOW + 4.0))
    assert any(isinstance(a, DetachSource)
               for a in core_actions(decide(replica_obs(to_other, receiving=True), REPLICA, ON)))
    ended = decide(replica_obs(promised, now=NOW + 4.0, receiving=True), REPLICA, ON)
    assert any(isinstance(a, DetachSource) for a in core_actions(ended))


# ------------------------------------------------------------------ answering a request

REQUEST = PromiseRequest("n2", 3, 10.0)
N2 = LockView(True, "n2", 3)


@pytest.mark.parametrize(("case", "config", "view", "expected"), [
    ("DCS answers and names the requester with its token", ON,
     PromiserView(Role.REPLICA, LeaseView(), N2, "n2", 3), PromiseDecision(10.0)),
    ("DCS unreachable, the last holder seen is the requester", ON,
     PromiserView(Role.REPLICA, LeaseView(), UNREACHABLE, "n2", 3), PromiseDecision(10.0)),
    ("a fenced former primary may promise", ON,
     PromiserView(Role.FENCED, LeaseView(), UNREACHABLE, "n2", 3), PromiseDecision(10.0)),
    ("failsafe off here", CONFIG,
     PromiserView(Role.REPLICA, LeaseView(), N2, "n2", 3),
     PromiseDecision(None, PromiseRefusal.FAILSAFE_OFF)),
    ("racing", ON, PromiserView(Role.CANDIDATE, LeaseView(), N2, "n2", 3),
     PromiseDecision(None, PromiseRefusal.USES_LOCK, "candidate")),
    ("holding a lease", ON, PromiserView(Role.REPLICA, HELD, N2, "n2", 3),
     PromiseDecision(None, PromiseRefusal.USES_LOCK, "replica")),
    ("the DCS answers and the lock is free: the lease expired", ON,
     PromiserView(Role.REPLICA, LeaseView(), FREE, "n2", 3),
     PromiseDecision(None, PromiseRefusal.LEASE_EXPIRED, "lock free")),
    ("the DCS names another holder", ON,
     PromiserView(Role.REPLICA, LeaseView(), LockView(True, "n3", 4), "n2", 3),
     PromiseDecision(None, PromiseRefusal.NOT_THE_HOLDER, "n3 token 4")),
    ("the DCS names the requester with another token", ON,
     PromiserView(Role.REPLICA, LeaseView(), LockView(True, "n2", 2), "n2", 3),
     PromiseDecision(None, PromiseRefusal.NOT_THE_HOLDER, "n2 token 2")),
    ("unreachable, last seen another holder", ON,
     PromiserView(Role.REPLICA, LeaseView(), UNREACHABLE, "n3", 3),
     PromiseDecision(None, PromiseRefusal.NOT_THE_HOLDER, "last seen n3 token 3")),
])
def test_answering_a_promise_request(case: str, config: CoreConfig, view: PromiserView,
                                     expected: PromiseDecision) -> None:
    assert answer_promise(REQUEST, view, config) == expected, case


def test_a_promise_never_exceeds_the_ttl_and_never_answers_oneself() -> None:
    view = PromiserView(Role.REPLICA, LeaseView(), N2, "n2", 3)
    assert answer_promise(PromiseRequest("n2", 3, 600.0), view, ON).granted == ON.ttl
    assert answer_promise(PromiseRequest(ME, 3, 5.0), view, ON).refusal is PromiseRefusal.SELF


# ------------------------------------------------------------------ the DCS returns without our lease

NEW_TOKEN = TOKEN + 5
ON_PROMISES = replace(OUTAGE, dcs_unreachable_since=None,
                      last_round=answered("n2", "n3", sent_at=NOW - 0.5))  # until NOW + 8.5
ARMED_ON_PROMISES = GateView(admitting=True, token=TOKEN, deadline=NOW - 0.5 + 10.0 - 2.0)


@pytest.mark.parametrize(("case", "view", "lock", "gate", "paused", "healthy", "retakes"), [
    ("lock free, promises live: take it again", ON_PROMISES, FREE, ARMED_ON_PROMISES, False, True, True),
    ("another node holds the lock", ON_PROMISES, LockView(True, "n2", NEW_TOKEN), ARMED_ON_PROMISES,
     False, True, False),
    ("the DCS still does not answer", ON_PROMISES, UNREACHABLE, ARMED_ON_PROMISES, False, True, False),
    ("no promises for the gate's token", replace(ON_PROMISES, last_round=None), FREE, ARMED_ON_PROMISES,
     False, True, False),
    ("the gate no longer admits", ON_PROMISES, FREE, GateView(), False, True, False),
    ("paused: only the safety fence", ON_PROMISES, FREE, ARMED_ON_PROMISES, True, True, False),
    ("database unhealthy", ON_PROMISES, FREE, ARMED_ON_PROMISES, False, False, False),
    ("bound by a promise of its own", replace(ON_PROMISES, given=GivenPromise("n3", 2, NOW + 1)), FREE,
     ARMED_ON_PROMISES, False, True, False),
])
def test_a_primary_takes_its_lease_back_while_promises_bind_the_members(
        case: str, view: FailsafeView, lock: LockView, gate: GateView, paused: bool, healthy: bool,
        retakes: bool) -> None:
    obs = replace(observe(Role.PRIMARY, lease=LeaseView(), gate=gate, lock=lock,
                          database=db(read_only=False, source=None, token=TOKEN, healthy=healthy,
                                      reasons=("probe failed",)),
                          intents=OperatorIntents(paused=paused)), failsafe=view)
    decision = decide(obs, PRIMARY, ON)
    if retakes:
        assert decision.state.role is Role.PRIMARY, case
        assert [a for a in decision.actions if isinstance(a, AcquireLock)], case
        assert not any(isinstance(a, BlockGate) for a in decision.actions), case
        assert decision.next_wakeup <= NOW + 8.5
    else:
        assert decision.state.role is Role.FENCING, case
        assert not any(isinstance(a, AcquireLock) for a in decision.actions), case
    assert decide(obs, PRIMARY, CONFIG).state.role is not Role.PRIMARY  # failsafe off: fence


def test_the_new_token_is_written_before_the_gate_admits_under_it() -> None:
    lease = LeaseView(True, NEW_TOKEN, NOW + 7.0)
    obs = replace(observe(Role.PRIMARY, lease=lease, gate=ARMED_ON_PROMISES,
                          lock=LockView(True, ME, NEW_TOKEN),
                          database=db(read_only=False, source=None, token=TOKEN)), failsafe=ON_PROMISES)
    first = decide(obs, PRIMARY, ON)
    assert first.state.role is Role.PRIMARY
    assert [a for a in first.actions if isinstance(a, WriteFencingToken)] == [
        WriteFencingToken(NEW_TOKEN, ActionReason.LEASE_RETAKEN)]
    assert not any(isinstance(a, AdmitGate) for a in first.actions)
    written = replace(obs, db=db(read_only=False, source=None, token=NEW_TOKEN))
    second = decide(written, PRIMARY, ON)
    admitted = [(a.token, a.deadline) for a in second.actions if isinstance(a, AdmitGate)]
    assert admitted == [(NEW_TOKEN, NOW + 7.0)]
    assert not any(isinstance(a, WriteFencingToken) for a in second.actions)
