"""Hypothesis properties of ``decide`` over arbitrary (state, observation) inputs and sequences."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dbfence.agent.actions import AcquireLock, AdmitGate, ReleaseLock
from dbfence.agent.core_config import CoreConfig
from dbfence.agent.decide import Decision, decide
from dbfence.agent.gtid import GtidPosition, candidate_sort_key
from dbfence.agent.observation import (
    DiscoveryTag,
    ErrantCheck,
    GateView,
    HealthVerdict,
    LeaseView,
    LocalDatabase,
    LockView,
    MemberInfo,
    MemberRecord,
    Observation,
    OperatorIntents,
    ReplicationState,
)
from dbfence.agent.state import Role, State, Trigger
from tests.agent.core_builders import CONFIG, ME

NAMES = ["n1", "n2", "n3"]
FENCE_TRIGGERS = [Trigger.DB_UNHEALTHY, Trigger.LEASE_EXPIRED, Trigger.LEASE_LOST, Trigger.SWITCHOVER]
positions = st.sampled_from(["", "0-1-1", "0-2-2", "0-11-2", "0-3-3", "0-11-3", "0-1-3,1-2-1"]).map(
    GtidPosition.parse)
times = st.sampled_from([0.0, 1.0, 2.0, 5.0, 8.0, 9.5, 10.0, 12.0])
NOW0 = 100.0
configs = st.sampled_from([CONFIG, CoreConfig(node_name=ME, lossless=False, cooldown=0.0, priority=50)])


@st.composite
def members(draw: st.DrawFn, now: float) -> tuple[MemberRecord, ...]:
    records = []
    for name in draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=3)):
        info = MemberInfo(
            name, draw(st.sampled_from(list(Role))), draw(st.booleans()),
            draw(st.none() | positions), draw(st.booleans()), draw(st.sampled_from([0, 50, 100, 200])),
            draw(st.none() | positions),
        )
        records.append(MemberRecord(info, now - draw(st.sampled_from([0.0, 1.0, 5.0, 30.0]))))
    return tuple(records)


@st.composite
def observations(draw: st.DrawFn, now: float = NOW0) -> Observation:
    held = draw(st.booleans())
    token = draw(st.sampled_from([1, 2, 3]))
    lease = LeaseView(True, token, now - 3.0 + draw(times)) if held else LeaseView()
    lock = LockView(draw(st.booleans()), draw(st.none() | st.sampled_from(NAMES)),
                    draw(st.sampled_from([1, 2, 3])))
    admitting = draw(st.booleans())
    gate = (GateView(True, draw(st.sampled_from([1, 2, 3])), now - 3.0 + draw(times),
                     draw(st.sampled_from([0, 1])))
            if admitting else GateView(open_connections=draw(st.sampled_from([0, 0, 1]))))
    errant = draw(st.none() | st.builds(ErrantCheck, st.sampled_from(NAMES),
                                        st.sampled_from([(), (), ("0-11-9",)])))
    replication = ReplicationState(
        source=draw(st.none() | st.sampled_from(NAMES)), running=draw(st.booleans()),
        receiving=draw(st.booleans()),
        relay_log_applied=draw(st.booleans()), lag_seconds=draw(st.sampled_from([None, 0.0, 1.0, 60.0])),
        errant=errant,
    )
    database = LocalDatabase(
        health=HealthVerdict(draw(st.booleans())), read_only=draw(st.sampled_from([True, False, None])),
        position=draw(st.none() | positions), server_id=draw(st.sampled_from([11, 11, None])),
        fencing_token=draw(st.sampled_from([None, 1, 2, 3])), replication=replication,
        received=draw(st.none() | positions),
    )
    intents = OperatorIntents(
        paused=draw(st.sampled_from([False, False, True])),
        switchover_target=draw(st.sampled_from([None, None, *NAMES])), skip_cooldown=draw(st.booleans()),
    )
    return Observation(
        now=now, lease=lease, lock=lock, members=draw(members(now)), db=database, gate=gate,
        discovery=draw(st.none() | st.sampled_from(list(DiscoveryTag))), intents=intents,
        last_failover_at=draw(st.none() | st.sampled_from([now - 1.0, now - 1000.0])),
    )


@st.composite
def states(draw: st.DrawFn) -> State:
    role = draw(st.sampled_from(list(Role)))
    if role is Role.FENCING:
        reason = draw(st.sampled_from(FENCE_TRIGGERS))
        target = draw(st.sampled_from(NAMES)) if reason is Trigger.SWITCHOVER else None
        return State(role, NOW0 - 5.0, reason, target)
    if role is Role.FENCED:
        reasons = st.sampled_from([*FENCE_TRIGGERS, Trigger.ERRANT_GTIDS])
        return State(role, NOW0 - 5.0, draw(st.none() | reasons))
    return State(role, NOW0 - 5.0)


def check_acquisition(obs: Observation, config: CoreConfig) -> None:
    db = obs.db
    holds = db.holds
    assert db.health.healthy and db.position is not None and holds is not None and obs.lock.free
    assert not obs.intents.paused
    rivals = []
    for record in obs.members:
        info = record.info
        if (record.name == ME or info.holds is None or info.position is None or info.priority <= 0
                or info.role not in (Role.STARTING, Role.REPLICA, Role.CANDIDATE, Role.PROMOTING)):
            continue
        stale = obs.now - record.last_seen > config.member_stale_after
        if not config.lossless and (stale or not info.healthy):
            continue
        rivals.append(record)
    # lossless: nobody, whatever its health or record age, holds more than the racer
    for record in rivals:
        theirs = record.info.holds
        assert theirs is not None and theirs.rank_key() <= holds.rank_key()
    # a lagging racer is the only node that holds what it holds (lossless) or does not lag
    lagging = not db.replication.relay_log_applied or db.replication.lag_seconds is None \
        or db.replication.lag_seconds > config.max_lag_seconds
    if lagging:
        assert config.lossless
        assert all(record.info.holds.rank_key() < holds.rank_key() for record in rivals
                   if record.info.holds is not None)
    # ties in holdings go to the healthy peer with the better (applied, priority, name) key
    mine = candidate_sort_key(holds, db.position, config.priority, ME)
    for record in rivals:
        info = record.info
        assert info.holds is not None and info.position is not None
        if info.healthy and obs.intents.switchover_target != ME:
            assert candidate_sort_key(info.holds, info.position, info.priority, record.name) <= mine


def check_step(obs: Observation, before: State, decision: Decision, config: CoreConfig) -> None:
    actions = decision.actions
    after = decision.state
    admits = [a for a in actions if isinstance(a, AdmitGate)]
    releases = [a for a in actions if isinstance(a, ReleaseLock)]
    # never admit without a held lock and now < deadline; never past the lease's deadline
    for admit in admits:
        assert obs.lease.held and obs.lease.deadline is not None and obs.now < obs.lease.deadline
        assert admit.deadline <= obs.lease.deadline and admit.token == obs.lease.token
        assert after.role is Role.PRIMARY
        assert before.role in (Role.CANDIDATE, Role.PROMOTING, Role.PRIMARY)
        assert not obs.intents.paused or before.role is Role.PRIMARY
    # never release while admitting, and only behind a complete fence
    for _release in releases:
        assert not admits
        assert obs.fence_complete and not obs.gate.admits_at(obs.now)
        assert after.role is not Role.PRIMARY
    # never acquire while unhealthy, paused, with a busy lock, or behind a peer that holds more
    if any(isinstance(a, AcquireLock) for a in actions):
        check_acquisition(obs, config)
    # a former primary rejoins only through a clean errant check against the current holder
    if before.role is Role.FENCED and after.role is not Role.FENCED:
        check = obs.db.replication.errant
        assert after.role is Role.REPLICA
        assert check is not None and check.clean and check.against == obs.lock.holder
    # pause: no role change but the safety fence of a lease holder (and settling a fresh agent)
    if obs.intents.paused and after.role is not before.role:
        assert (before.role, after.role) in {(Role.PRIMARY, Role.FENCING), (Role.PROMOTING, Role.FENCING),
                                             (Role.STARTING, Role.REPLICA)}
        if after.role is Role.FENCING:
            assert after.fenced_reason in (Trigger.LEASE_LOST, Trigger.LEASE_EXPIRED)
    assert decision.next_wakeup >= obs.now
    if obs.lease.held and obs.lease.deadline is not None and obs.lease.deadline > obs.now:
        assert decision.next_wakeup <= obs.lease.deadline


@settings(max_examples=400, deadline=None)
@given(observations(), states(), configs)
def test_single_decision_invariants(obs: Observation, state: State, config: CoreConfig) -> None:
    check_step(obs, state, decide(obs, state, config), config)


@st.composite
def observation_sequences(draw: st.DrawFn) -> list[Observation]:
    count = draw(st.integers(1, 12))
    return [draw(observations(now=NOW0 + step)) for step in range(count)]


@settings(max_examples=100, deadline=None)
@given(observation_sequences(), configs)
def test_sequence_invariants(sequence: list[Observation], config: CoreConfig) -> None:
    """Threading the state: every step keeps the invariants, and a node fenced for errant
    GTIDs never admits again unless it rejoined through a clean check in between."""
    state = State.initial(sequence[0].now)
    errant_fenced = False
    for obs in sequence:
        decision = decide(obs, state, config)
        check_step(obs, state, decision, config)
        if decision.state.role is Role.FENCED and decision.state.fenced_reason is Trigger.ERRANT_GTIDS:
            errant_fenced = True
        if state.role is Role.FENCED and decision.state.role is Role.REPLICA:
            errant_fenced = False
        if errant_fenced:
            assert not any(isinstance(a, (AdmitGate, AcquireLock)) for a in decision.actions)
        state = decision.state


@st.composite
def race_ready_observations(draw: st.DrawFn) -> Observation:
    """Observations close to a race (lock free, caught up), so the ranking rule gets exercised."""
    now = NOW0
    database = LocalDatabase(
        health=HealthVerdict(draw(st.sampled_from([True, True, True, False]))), read_only=True,
        position=draw(positions), server_id=11,
        replication=ReplicationState(source="n2", running=False, relay_log_applied=True, lag_seconds=0.0),
    )
    return Observation(
        now=now, lease=LeaseView(), lock=LockView(True, None, None), members=draw(members(now)),
        db=database, gate=GateView(),
        intents=OperatorIntents(switchover_target=draw(st.sampled_from([None, None, None, ME, "n2"]))),
    )


@settings(max_examples=300, deadline=None)
@given(race_ready_observations(), st.sampled_from([Role.REPLICA, Role.CANDIDATE]), configs)
def test_never_race_behind_a_more_advanced_healthy_peer(
    obs: Observation, role: Role, config: CoreConfig
) -> None:
    state = State(role, NOW0 - 5.0)
    check_step(obs, state, decide(obs, state, config), config)
