"""Table tests of adopting a running cluster (issue 17; rules in dbfence/agent/core_adoption.py):
(a) a replica does not race past, nor detach from, a source no agent manages yet; (b) the first
agent on a new cluster's running primary takes the lock without fencing it."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from dbfence.agent.actions import (
    AcquireLock,
    Action,
    ActionReason,
    AdmitGate,
    BlockGate,
    DetachSource,
    FailDiscoveryCheck,
    RecordFailover,
    RegisterDiscovery,
    SetReadOnly,
    WriteFencingToken,
)
from dbfence.agent.core_adoption import ADOPTION_WAIT_TTLS
from dbfence.agent.core_config import CoreConfig
from dbfence.agent.decide import RefusalReason, decide
from dbfence.agent.failsafe_view import FailsafeView, GivenPromise
from dbfence.agent.observation import DiscoveryTag, LocalDatabase, LockView, Observation, OperatorIntents
from dbfence.agent.state import Role, State, Trigger
from tests.agent.core_builders import CONFIG, DEADLINE, HELD, NOW, TOKEN, core_actions, db, member, observe

R = RefusalReason
A = ActionReason
STARTED = NOW - 1.0
GIVE_UP = STARTED + ADOPTION_WAIT_TTLS * CONFIG.ttl
RUNNING_PRIMARY = db(read_only=False, source=None)  # writable, no source: a primary before dbfence
OWN_WRITER = db(read_only=False, source=None, server_id=1)  # ... whose last transaction 0-1-100 is its own
AHEAD_BY_OWN_WRITES = (member("n2", position="0-1-105"),)  # its record was read after n1's own facts
AHEAD_BY_ANOTHER_SERVER = (member("n2", position="0-2-105"),)
FENCE = (SetReadOnly(True, A.STARTUP),)  # what an ordinary start does to that primary
ADOPT = (AcquireLock(A.ADOPT_RUNNING_PRIMARY),)
REPLICAS = (member("n2", position="0-1-90"), member("n3", position="0-1-80"))


def new(obs: Observation, new_cluster: bool | None = True) -> Observation:
    return replace(obs, new_cluster=new_cluster)


def replicating(source: str = "n9", *, connected: bool = True, receiving: bool = True) -> LocalDatabase:
    """A replica whose IO thread runs from ``source`` (n9: an address no member record names)."""
    base = db(source=source, receiving=receiving)
    return replace(base, replication=replace(base.replication, source_connected=connected and receiving))


@dataclass(frozen=True)
class Case:
    id: str
    state: State
    obs: Observation
    role: Role
    actions: tuple[Action, ...] = ()
    refusals: tuple[RefusalReason, ...] = ()
    config: CoreConfig = CONFIG
    detail: str = ""  # a substring of the first refusal's detail


def starting(**kwargs: object) -> Observation:
    kwargs.setdefault("database", RUNNING_PRIMARY)
    kwargs.setdefault("peers", REPLICAS)
    return new(observe(Role.STARTING, **kwargs))  # type: ignore[arg-type]


START = State(Role.STARTING, since=STARTED)
PROMOTING = State(Role.PROMOTING, since=NOW)
REPLICA = State(Role.REPLICA, since=NOW - 10)

CASES = [
    # ---------------------------------------------------------------- (b) adoption
    Case("adopt: new cluster's running primary takes the free lock, unfenced", START, starting(),
         Role.STARTING, ADOPT),
    Case("adopt: alone (no other agent yet)", START, starting(peers=()), Role.STARTING, ADOPT),
    Case("adopt: a peer with as much (an idle primary's replica) does not stop it", START,
         starting(peers=(member("n2", position="0-1-100"),)), Role.STARTING, ADOPT),
    Case("adopt: a peer still STARTING does not stop it", START,
         starting(peers=(member("n2", Role.STARTING, position="0-1-100"),)), Role.STARTING, ADOPT),
    Case("adopt: the discovery check goes first", START, starting(discovery=DiscoveryTag.PRIMARY),
         Role.STARTING, (FailDiscoveryCheck(A.STARTUP), *ADOPT)),
    Case("adopt: lease won -> PROMOTING, the token written while it stays writable", START,
         starting(lease=HELD), Role.PROMOTING, (WriteFencingToken(TOKEN, A.PROMOTION),)),
    Case("adopt: token in -> PRIMARY, first admission records the cluster's first primary",
         State(Role.PROMOTING, since=NOW - 1),
         new(observe(Role.PROMOTING, lease=HELD, database=db(read_only=False, source=None, token=TOKEN),
                     peers=REPLICAS)),
         Role.PRIMARY, (RecordFailover(A.FIRST_PRIMARY), AdmitGate(TOKEN, DEADLINE, A.PRIMARY_READY),
                        RegisterDiscovery(DiscoveryTag.PRIMARY, A.PRIMARY_READY))),
    Case("adopt: not on a cluster with a history (fenced as ever)", START,
         new(observe(Role.STARTING, database=RUNNING_PRIMARY), new_cluster=False), Role.STARTING, FENCE,
         (R.FENCE_INCOMPLETE,)),
    Case("adopt: not a writable node that replicates (fenced as ever)", START,
         starting(database=db(read_only=False)), Role.STARTING, FENCE, (R.FENCE_INCOMPLETE,)),
    Case("adopt: not while a peer is primary", START,
         starting(peers=(member("n2", Role.PRIMARY, position="0-1-90"),)), Role.STARTING, FENCE,
         (R.NOT_ADOPTED, R.FENCE_INCOMPLETE), detail="n2 is primary"),
    Case("adopt: not once a peer raced (candidate)", START,
         starting(peers=(member("n2", Role.CANDIDATE, position="0-1-90"),)), Role.STARTING, FENCE,
         (R.NOT_ADOPTED, R.FENCE_INCOMPLETE), detail="n2 is candidate"),
    Case("adopt: not next to a fenced former primary", START,
         starting(peers=(member("n2", Role.FENCED, position="0-1-90"),)), Role.STARTING, FENCE,
         (R.NOT_ADOPTED, R.FENCE_INCOMPLETE), detail="n2 is fenced"),
    Case("adopt: not when a peer holds more", START,
         starting(peers=(member("n2", position="0-1-101"),)), Role.STARTING, FENCE,
         (R.NOT_ADOPTED, R.FENCE_INCOMPLETE), detail="n2 holds 0-1-101, more than this node"),
    Case("adopt: a replica showing more of its own writes (read a moment later) does not stop it",
         START, starting(database=OWN_WRITER, peers=AHEAD_BY_OWN_WRITES), Role.STARTING, ADOPT),
    Case("adopted promotion: a replica ahead by its own writes is no reason to step down", PROMOTING,
         new(observe(Role.PROMOTING, lease=HELD, database=OWN_WRITER, peers=AHEAD_BY_OWN_WRITES)),
         Role.PROMOTING, (WriteFencingToken(TOKEN, A.PROMOTION),)),
    Case("adopted promotion: a peer holding another server's transaction it lacks: steps down", PROMOTING,
         new(observe(Role.PROMOTING, lease=HELD, database=OWN_WRITER, peers=AHEAD_BY_ANOTHER_SERVER)),
         Role.REPLICA, (), (R.PEER_MORE_ADVANCED,)),
    Case("adopt: not when another node holds the lock", START,
         starting(lock=LockView(True, "n2", 3)), Role.STARTING, FENCE, (R.NOT_ADOPTED, R.FENCE_INCOMPLETE),
         detail="n2 holds the lock"),
    Case("adopt: not when an older process of ours still holds it", START,
         starting(lock=LockView(True, "n1", 3)), Role.STARTING, FENCE, (R.NOT_ADOPTED, R.FENCE_INCOMPLETE),
         detail="n1 holds the lock"),
    Case("adopt: not while paused", START, starting(intents=OperatorIntents(paused=True)), Role.STARTING,
         FENCE, (R.NOT_ADOPTED, R.FENCE_INCOMPLETE), detail="paused"),
    Case("adopt: not with a switchover to another node", START,
         starting(intents=OperatorIntents(switchover_target="n2")), Role.STARTING, FENCE,
         (R.NOT_ADOPTED, R.FENCE_INCOMPLETE), detail="switchover to n2"),
    Case("adopt: not with priority 0", START, starting(), Role.STARTING, FENCE,
         (R.NOT_ADOPTED, R.FENCE_INCOMPLETE), config=replace(CONFIG, priority=0), detail="priority 0"),
    Case("adopt: waits, unfenced, for the agent's first DCS read", START, new(observe(
         Role.STARTING, database=RUNNING_PRIMARY, lock=LockView(reachable=False, read_yet=False), peers=())),
         Role.STARTING, (), (R.ADOPTION_PENDING,), detail="DCS not read yet"),
    Case("adopt: a failed DCS read before any history read fences at once (an outage: may be a managed "
         "primary's restarted agent)", START, new(observe(
         Role.STARTING, database=RUNNING_PRIMARY, lock=LockView(reachable=False), peers=()),
         new_cluster=None),
         Role.STARTING, FENCE, (R.NOT_ADOPTED, R.FENCE_INCOMPLETE), detail="DCS cannot be read"),
    Case("adopt: a DCS blip after the history showed a new cluster is waited for", START, new(observe(
         Role.STARTING, database=RUNNING_PRIMARY, lock=LockView(reachable=False), peers=())),
         Role.STARTING, (), (R.ADOPTION_PENDING,), detail="DCS cannot be read"),
    Case("adopt: waits for the cluster's history", START, new(starting(), new_cluster=None),
         Role.STARTING, (), (R.ADOPTION_PENDING,), detail="history"),
    Case("adopt: waits for its probes", START,
         starting(database=db(read_only=False, source=None, healthy=False, reasons=("not yet confirmed",))),
         Role.STARTING, (), (R.ADOPTION_PENDING,), detail="not yet confirmed"),
    Case("adopt: waits no longer than two TTLs, then starts as ever", START,
         starting(now=GIVE_UP, database=db(read_only=False, source=None, healthy=False,
                                           reasons=("not yet confirmed",))),
         Role.STARTING, FENCE, (R.NOT_ADOPTED, R.FENCE_INCOMPLETE), detail="after 20s"),
    Case("adopt: not while a failsafe promise binds it", START,
         replace(starting(), failsafe=FailsafeView(given=GivenPromise("n2", 3, NOW + 5))), Role.STARTING,
         FENCE, (R.NOT_ADOPTED, R.FENCE_INCOMPLETE), detail="promise_given: to n2"),
    Case("adopt: waits for its GTID position", START,
         starting(database=db(read_only=False, source=None, position=None)),
         Role.STARTING, (), (R.ADOPTION_PENDING,), detail="GTID position unknown"),
    Case("adopt: waits for mysqld's first read rather than set read-only on a guess", START,
         starting(database=db(read_only=None, source=None, position=None, server_id=None)),
         Role.STARTING, (), (R.ADOPTION_PENDING,), detail="mysqld not read yet"),
    Case("adopt: mysqld unread, lock held by another: starts as ever, nothing to adopt", START,
         starting(database=db(read_only=None, source=None, position=None), lock=LockView(True, "n2", 3)),
         Role.REPLICA, (SetReadOnly(True, A.STARTUP),)),
    Case("adopt: lease won, then a probe round timed out: promotes all the same", START,
         starting(lease=HELD, database=db(read_only=None, source=None, position=None, server_id=None)),
         Role.PROMOTING, (SetReadOnly(False, A.PROMOTION), WriteFencingToken(TOKEN, A.PROMOTION),
                          RecordFailover(A.FAILOVER_STARTED))),
    Case("adopt: a gate left open is closed meanwhile", START,
         new(observe(Role.STARTING, database=RUNNING_PRIMARY, lock=LockView(reachable=False), peers=(),
                     gate=replace(observe().gate, open_connections=1))),
         Role.STARTING, (BlockGate(True, A.NOT_PRIMARY),), (R.ADOPTION_PENDING,)),
    # ---------------------------------------------------------------- (a) unmanaged source
    Case("replica: an unmanaged live source keeps it, neither racing nor detaching", REPLICA,
         new(observe(database=replicating())), Role.REPLICA, (), (R.SOURCE_UNMANAGED,),
         detail="replicating from an unmanaged source n9; start its agent first"),
    Case("replica: a source whose agent is still STARTING is unmanaged yet", REPLICA,
         new(observe(database=replicating("n2"), peers=(member("n2", Role.STARTING, position="0-1-100"),))),
         Role.REPLICA, (), (R.SOURCE_UNMANAGED,)),
    Case("replica: an unmanaged source behind a broken link still keeps it", REPLICA,
         new(observe(database=replicating(connected=False))), Role.REPLICA, (), (R.SOURCE_UNMANAGED,),
         detail="IO thread not connected"),
    Case("replica: history unread counts as new", REPLICA, new(observe(database=replicating()), None),
         Role.REPLICA, (), (R.SOURCE_UNMANAGED,)),
    Case("replica: a cluster with a history detaches and races as ever", REPLICA,
         new(observe(database=replicating()), False), Role.CANDIDATE,
         (DetachSource(A.SOURCE_LOST_LOCK), AcquireLock(A.LOCK_FREE_AND_ELIGIBLE))),
    Case("replica: a source fenced by its agent is managed: detach and race", REPLICA,
         new(observe(database=replicating("n2"),
                     peers=(member("n2", position="0-1-90"), member("n3", position="0-1-80")))),
         Role.CANDIDATE, (DetachSource(A.SOURCE_LOST_LOCK), AcquireLock(A.LOCK_FREE_AND_ELIGIBLE))),
    Case("replica: replication stopped by an operator: races", REPLICA,
         new(observe(database=replicating(receiving=False))), Role.CANDIDATE,
         (AcquireLock(A.LOCK_FREE_AND_ELIGIBLE),)),
    Case("replica: another node holds the lock: it is followed, the old source left", REPLICA,
         new(observe(database=replicating(), lock=LockView(True, "n2", 3),
                     peers=(member("n2", Role.PRIMARY, position="0-1-100"),))),
         Role.REPLICA, (DetachSource(A.SOURCE_LOST_LOCK),), (R.ERRANT_UNCHECKED,)),
    Case("candidate: an unmanaged source makes it step back", State(Role.CANDIDATE, since=NOW - 1),
         new(observe(Role.CANDIDATE, database=replicating())), Role.REPLICA, (), (R.SOURCE_UNMANAGED,)),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_adoption_table(case: Case) -> None:
    decision = decide(case.obs, case.state, case.config)
    assert decision.state.role is case.role
    assert core_actions(decision) == case.actions
    assert tuple(refusal.reason for refusal in decision.refusals) == case.refusals
    if case.detail:
        assert case.detail in decision.refusals[0].detail, decision.refusals
    if case.role is Role.PROMOTING:
        # via Trigger.ADOPTED (the members it read are remembered: State.members_seen)
        assert decision.state == State(Role.PROMOTING, since=NOW, members_seen=decision.state.members_seen,
                                       first_read_at=decision.state.first_read_at)
        assert Trigger.ADOPTED.value == "adopted"
    assert decision.next_wakeup >= case.obs.now


def test_waiting_adoption_wakes_at_the_give_up_time() -> None:
    obs = new(observe(Role.STARTING, database=RUNNING_PRIMARY, lock=LockView(reachable=False), peers=()))
    decision = decide(replace(obs, now=GIVE_UP - 0.01), START, replace(CONFIG, poll_interval=100.0))
    assert decision.next_wakeup <= GIVE_UP
