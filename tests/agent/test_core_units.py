"""Smaller contracts of the core: config and observation validation, the transition table,
member-record publishing, wake-up times, the public race check."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dbfence.agent import core
from dbfence.agent.actions import ActionReason, PublishMember, ReleaseLock
from dbfence.agent.core_config import CoreConfig, CoreConfigError
from dbfence.agent.daemon import serves_again
from dbfence.agent.decide import RefusalReason, decide, race_refusals
from dbfence.agent.observation import (
    GateView,
    LeaseView,
    LockView,
    MemberInfo,
    MemberRecord,
    Observation,
    ObservationError,
    OperatorIntents,
)
from dbfence.agent.state import TRANSITIONS, IllegalTransitionError, Role, State, Trigger, transition
from tests.agent.core_builders import ARMED, CONFIG, DEADLINE, HELD, ME, NOW, TOKEN, db, member, observe


@pytest.mark.parametrize("changes", [
    {"node_name": ""}, {"node_name": " n1"}, {"ttl": float("nan")}, {"ttl": "10"}, {"cooldown": True},
    {"cooldown": -1.0}, {"safety_margin": 0.0}, {"safety_margin": 10.0}, {"renew_interval": 8.0},
    {"renew_interval": 0.0}, {"poll_interval": 0.0}, {"priority": -1}, {"priority": 1.5},
    {"priority": True},
])
def test_config_rejects_bad_values(changes: dict[str, object]) -> None:
    with pytest.raises(CoreConfigError):
        replace(CONFIG, **changes)  # type: ignore[arg-type]


def test_config_lease_span() -> None:
    assert CoreConfig(node_name="x").lease_span == 8.0


def test_observation_rejects_inconsistent_input() -> None:
    with pytest.raises(ObservationError):
        LeaseView(held=True)
    with pytest.raises(ObservationError):
        GateView(admitting=True)
    with pytest.raises(ObservationError):
        GateView(open_connections=-1)
    with pytest.raises(ObservationError):
        replace(observe(), now=float("inf"))
    with pytest.raises(ObservationError, match="duplicate"):
        observe(peers=(member("n2"), member("n2")))


def test_observation_helpers() -> None:
    obs = observe(gate=ARMED)
    assert obs.member("n2") is not None and obs.member("zz") is None
    assert not obs.fence_complete
    assert GateView(admitting=True, token=1, deadline=5.0).admits_at(4.9)
    assert not GateView(admitting=True, token=1, deadline=5.0).admits_at(5.0)
    assert HELD.valid_at(NOW) and not HELD.valid_at(DEADLINE)
    assert LockView(reachable=True).free and not LockView(reachable=False).free


def test_every_transition_in_the_table_is_legal_and_others_raise() -> None:
    for entry in TRANSITIONS:
        assert transition(entry.source, entry.trigger) is entry.target
    legal = {(entry.source, entry.trigger) for entry in TRANSITIONS}
    for role in Role:
        for trigger in Trigger:
            if (role, trigger) not in legal:
                with pytest.raises(IllegalTransitionError):
                    transition(role, trigger)
    with pytest.raises(IllegalTransitionError, match="no transition from primary on rejoined"):
        State(role=Role.PRIMARY).moved(Trigger.REJOINED, NOW)


def test_fenced_reason_survives_release() -> None:
    fencing = State(Role.PRIMARY).moved(Trigger.SWITCHOVER, 5.0, switchover_target="n2")
    assert (fencing.role, fencing.fenced_reason, fencing.switchover_target) == (
        Role.FENCING, Trigger.SWITCHOVER, "n2")
    fenced = fencing.moved(Trigger.RELEASED, 6.0)
    assert (fenced.role, fenced.fenced_reason, fenced.since) == (Role.FENCED, Trigger.SWITCHOVER, 6.0)
    assert fenced.moved(Trigger.REJOINED, 7.0) == State(Role.REPLICA, 7.0)
    assert State.initial(3.0) == State(Role.STARTING, 3.0)


def test_switchover_handover_makes_the_old_primary_a_replica() -> None:
    """The release is decided once the fenced primary saw the target hold all it holds: that
    round remembers it, and the old primary then follows as a replica, not FENCED (soak seed
    204: a target that failed while promoting left no node that may race)."""
    intents = OperatorIntents(switchover_target="n2")
    fencing = State(Role.PRIMARY).moved(Trigger.SWITCHOVER, NOW - 1, switchover_target="n2")
    caught_up = observe(Role.FENCING, lease=HELD, intents=intents, peers=(member("n2", position="0-1-100"),))
    releasing = decide(caught_up, fencing, CONFIG)
    assert ReleaseLock(TOKEN, ActionReason.SWITCHOVER) in releasing.actions
    assert releasing.state.role is Role.FENCING and releasing.state.handed_over
    # The lock is gone; the target's record already says CANDIDATE (no longer a suitable target).
    target = member("n2", Role.CANDIDATE, position="0-1-100")
    released = observe(Role.FENCING, intents=intents, peers=(target,))
    handed = decide(released, releasing.state, CONFIG).state
    assert handed == State(Role.REPLICA, NOW, members_seen=frozenset({"n2"}), first_read_at=NOW)
    # Without that sighting (the lease ran out while the target was behind) it stays FENCED.
    assert decide(released, fencing, CONFIG).state.role is Role.FENCED


def publishes(obs: Observation, state: State) -> list[PublishMember]:
    return [a for a in decide(obs, state, CONFIG).actions if isinstance(a, PublishMember)]


def test_member_record_published_on_change_and_as_heartbeat() -> None:
    replica = State(Role.REPLICA, NOW)
    quiet = observe(intents=OperatorIntents(paused=True))
    assert publishes(quiet, replica) == []
    missing = observe(intents=OperatorIntents(paused=True), own_record=None)
    [action] = publishes(missing, replica)
    assert action.reason is ActionReason.MEMBER_CHANGED
    assert action.info == MemberInfo(ME, Role.REPLICA, True, db().position, False, CONFIG.priority,
                                     server_id=db().server_id)
    old = observe(intents=OperatorIntents(paused=True), own_record=MemberRecord(action.info, NOW - 2.0))
    [beat] = publishes(old, replica)
    assert beat.reason is ActionReason.MEMBER_HEARTBEAT
    unreachable = observe(intents=OperatorIntents(paused=True), own_record=None,
                          lock=LockView(reachable=False))
    assert publishes(unreachable, replica) == []


def test_record_says_admitting_as_the_gate_will_after_the_actions() -> None:
    promoting = State(Role.PROMOTING, NOW)
    obs = observe(Role.PROMOTING, lease=HELD, database=db(read_only=False, source=None, token=TOKEN))
    [action] = publishes(obs, promoting)
    assert action.info.role is Role.PRIMARY and action.info.gate_admitting
    primary = State(Role.PRIMARY, NOW)
    fencing = observe(Role.PRIMARY, gate=ARMED, database=db(read_only=False, source=None))
    [action] = publishes(fencing, primary)
    assert action.info.role is Role.FENCING and not action.info.gate_admitting


def test_next_wakeup() -> None:
    steady = decide(observe(intents=OperatorIntents(paused=True)), State(Role.REPLICA, NOW), CONFIG)
    assert steady.next_wakeup == NOW + CONFIG.poll_interval  # poll comes before the heartbeat (NOW + 2)
    candidate = decide(observe(Role.CANDIDATE), State(Role.CANDIDATE, NOW), CONFIG)
    assert candidate.next_wakeup == NOW + CONFIG.settle_interval
    primary_obs = observe(Role.PRIMARY, lease=HELD, gate=ARMED,
                          database=db(read_only=False, source=None, token=TOKEN))
    primary = decide(primary_obs, State(Role.PRIMARY, NOW), CONFIG)
    assert primary.next_wakeup == NOW + 1.0  # renewal due at NOW + 1, before the poll
    cooling = decide(observe(last_failover_at=NOW - 299.5), State(Role.REPLICA, NOW), CONFIG)
    assert cooling.next_wakeup == NOW + 0.5


def test_race_refusals_helper_reports_everything_at_once() -> None:
    obs = observe(database=db(healthy=False, relay_applied=False, lag=None, position=None),
                  intents=OperatorIntents(paused=True))
    reasons = [refusal.reason for refusal in race_refusals(obs, CONFIG)]
    assert reasons == [RefusalReason.PAUSED, RefusalReason.DB_UNHEALTHY, RefusalReason.RELAY_LOG_NOT_APPLIED,
                       RefusalReason.LAG_TOO_HIGH, RefusalReason.POSITION_UNKNOWN]
    assert race_refusals(observe(), CONFIG) == ()


def test_core_facade_exports_the_loop_api() -> None:
    assert core.decide is decide
    for name in core.__all__:
        assert hasattr(core, name), name


def test_handover_spends_the_fence_evidence_as_a_rejoin_does() -> None:
    assert serves_again(Role.FENCING, Role.REPLICA)  # a switchover handed over
    assert serves_again(Role.FENCED, Role.REPLICA) and serves_again(Role.PROMOTING, Role.PRIMARY)
    assert not serves_again(Role.FENCING, Role.FENCED) and not serves_again(Role.CANDIDATE, Role.REPLICA)
