"""Table tests of the takeover without a primary (dbfence/agent/decide_takeover.py, issue 16).

The state every case starts from is the end of the scripted model run in
test_core_model_check_takeover.py, one domain, server id = node number:

* n1 was primary, wrote 0-1-2 and 0-1-3 that no replica received, and was fenced for them
  (errant) once n2 took over;
* n2 (old primary, token 0-2-2) lost its mysqld: FENCED after a plain failover;
* n3 won the lock, wrote its token 0-3-3, which waited for a semi-sync ack nobody could give
  (n1 fenced, n2 down), and lost its lease before it was acknowledged: FENCED.

Without the rule every node refused ``no_primary_to_rejoin`` for ever. With it n3, which holds
everything the others hold but n1's own writes that nobody received, takes over; n2 defers to it
and n1 cannot prove it (n2's writes, which n3 received too, may have been acknowledged).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest

from dbfence.agent.actions import AcquireLock, Action, ActionReason, PublishMember, TruncateErrant
from dbfence.agent.core_config import CoreConfig
from dbfence.agent.decide import RefusalReason, decide, race_refusals
from dbfence.agent.gtid import BinlogState
from dbfence.agent.observation import (
    LeaseView,
    LocalDatabase,
    LockView,
    MemberInfo,
    MemberRecord,
    Observation,
    RepairView,
)
from dbfence.agent.state import Role, State, Trigger
from tests.agent.core_builders import CLOSED, CONFIG, NOW, core_actions, db, member

R = RefusalReason
A = ActionReason
FREE = LockView(True, None)
NO_REPAIR = RepairView()
TAKE = (AcquireLock(A.TAKEOVER_WITHOUT_PRIMARY),)
RACE = (AcquireLock(A.LOCK_FREE_AND_ELIGIBLE),)

#: name -> (position, binlog state) at the end of the scripted run.
STUCK = {
    "n1": ("0-1-3", "0-1-3"),
    "n2": ("0-2-2", "0-1-1,0-2-2"),
    "n3": ("0-3-3", "0-1-1,0-2-2,0-3-3"),
}


def peer(name: str, role: Role = Role.FENCED, *, binlog_state: str | None = "", healthy: bool = True,
         last_seen: float = NOW) -> MemberRecord:
    position, state = STUCK[name]
    return member(name, role, position=position, server_id=int(name[1:]), healthy=healthy,
                  last_seen=last_seen, binlog_state=state if binlog_state == "" else binlog_state)


def local(name: str, *, binlog_state: str | None = "", healthy: bool = True) -> LocalDatabase:
    position, state = STUCK[name]
    return db(position=position, server_id=int(name[1:]), source=None, healthy=healthy,
              binlog_state=state if binlog_state == "" else binlog_state)


def view(me: str, role: Role = Role.FENCED, *, peers: tuple[MemberRecord, ...] | None = None,
         database: LocalDatabase | None = None, lock: LockView = FREE,
         repair: RepairView = NO_REPAIR, last_failover_at: float | None = None) -> Observation:
    """What ``me`` observes; its own record matches its role (no publish noise)."""
    database = local(me) if database is None else database
    if peers is None:
        peers = tuple(peer(name) for name in sorted(STUCK) if name != me)
    own = MemberRecord(MemberInfo(me, role, database.health.healthy, database.position, False,
                                  CONFIG.priority, database.received, server_id=database.server_id,
                                  binlog_state=database.binlog_state), NOW)
    return Observation(now=NOW, lease=LeaseView(), lock=lock, members=(own, *peers), db=database,
                       gate=CLOSED, repair=repair, last_failover_at=last_failover_at)


SEEN_ALL = frozenset(STUCK)
READ_AT = NOW - 60  # this agent has read the DCS for a minute


def running(role: Role, me: str, *, since: float) -> State:
    """A node in ``role`` whose agent has read the DCS for a while and seen every member."""
    return State(role, since, members_seen=SEEN_ALL - {me}, first_read_at=READ_AT)


def fenced(me: str, **fields: object) -> State:
    return replace(State(Role.FENCED, NOW - 10, fenced_reason=Trigger.LEASE_EXPIRED,
                         members_seen=SEEN_ALL - {me}, first_read_at=READ_AT), **fields)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Case:
    id: str
    me: str
    state: State
    obs: Observation
    role: Role
    actions: tuple[Action, ...] = ()
    refusals: tuple[RefusalReason, ...] = ()
    detail: str = ""  # in the last refusal's detail
    config_changes: dict[str, object] = field(default_factory=dict)


CASES = [
    # The three views of the stuck state.
    Case("n3 holds all but n1's unreceived own writes -> takes over", "n3", fenced("n3"), view("n3"),
         Role.CANDIDATE, TAKE),
    Case("n2 could too (n3's token: its own, unreceived) but n3 ranks higher -> defers", "n2",
         fenced("n2"), view("n2"), Role.FENCED, (), (R.NO_PRIMARY_TO_REJOIN, R.PEER_MORE_ADVANCED),
         "n3 may take over too"),
    Case("n1 lacks n2's writes that n3 received too (maybe acknowledged)", "n1", fenced("n1"), view("n1"),
         # The race's rule says so too: n3 received n2's writes (decide_ack_holders).
         Role.FENCED, (),
         (R.NO_PRIMARY_TO_REJOIN, R.PEER_MORE_ADVANCED, R.TAKEOVER_UNPROVEN, R.TAKEOVER_UNPROVEN),
         "n3 holds 0-2-2 this node lacks"),
    # Waiting for others, or for what the proof needs.
    Case("another member is a replica that may race", "n3", fenced("n3"),
         view("n3", peers=(peer("n1"), peer("n2", Role.REPLICA))), Role.FENCED, (),
         (R.NO_PRIMARY_TO_REJOIN,), "waiting for n2"),
    Case("the lock is held by a node not primary yet", "n2", fenced("n2"),
         view("n2", lock=LockView(True, "n3", 9)), Role.FENCED, (), (R.NO_PRIMARY_TO_REJOIN,),
         "n3 holds the lock"),
    Case("the lock is still its own (a lease from before the fence)", "n3", fenced("n3"),
         view("n3", lock=LockView(True, "n3", 9)), Role.FENCED, (), (R.NO_PRIMARY_TO_REJOIN,),
         "still this node's"),
    Case("just restarted: the records of live members may not all be back yet", "n3",
         fenced("n3", first_read_at=NOW - 1), view("n3"), Role.FENCED, (),
         (R.NO_PRIMARY_TO_REJOIN, R.TAKEOVER_UNPROVEN), "has not read the members' records"),
    Case("never read the DCS yet (a restarted agent remembers no member)", "n3",
         fenced("n3", first_read_at=None), replace(view("n3"), lock=LockView(True, None, read_yet=False)),
         Role.FENCED, (), (R.NO_PRIMARY_TO_REJOIN, R.TAKEOVER_UNPROVEN), "has not read"),
    Case("a member seen before has no record now (it may hold acknowledged writes)", "n3", fenced("n3"),
         view("n3", peers=(peer("n2"),)), Role.FENCED, (), (R.NO_PRIMARY_TO_REJOIN, R.TAKEOVER_UNPROVEN),
         "no fresh record of n1"),
    Case("a member's record is stale", "n3", fenced("n3"),
         view("n3", peers=(peer("n1", last_seen=NOW - 60), peer("n2"))), Role.FENCED, (),
         (R.NO_PRIMARY_TO_REJOIN, R.TAKEOVER_UNPROVEN), "no fresh record of n1"),
    Case("no record of any other member", "n3", fenced("n3", members_seen=frozenset()), view("n3", peers=()),
         Role.FENCED, (), (R.NO_PRIMARY_TO_REJOIN, R.TAKEOVER_UNPROVEN), "no record of another member"),
    Case("a member's binlog state is unknown (an older agent)", "n3", fenced("n3"),
         view("n3", peers=(peer("n1", binlog_state=None), peer("n2"))), Role.FENCED, (),
         (R.NO_PRIMARY_TO_REJOIN, R.TAKEOVER_UNPROVEN), "binlog state of n1 unknown"),
    Case("its own binlog state is unknown", "n3", fenced("n3"),
         view("n3", database=local("n3", binlog_state=None)), Role.FENCED, (),
         (R.NO_PRIMARY_TO_REJOIN, R.TAKEOVER_UNPROVEN), "n3 (this node)"),
    Case("a member holds another server's writes it lacks (received: maybe acknowledged)", "n3",
         fenced("n3"), view("n3", peers=(peer("n1", binlog_state="0-1-3,0-2-5"), peer("n2"))),
         Role.FENCED, (), (R.NO_PRIMARY_TO_REJOIN, R.PEER_MORE_ADVANCED, R.TAKEOVER_UNPROVEN),
         "n1 holds 0-2-5"),
    # The race's own guards hold for a takeover too.
    Case("repair running", "n3", fenced("n3"), view("n3", repair=RepairView(running=True)), Role.FENCED, (),
         (R.NO_PRIMARY_TO_REJOIN, R.REPAIR_RUNNING), "repaired"),
    Case("cooldown", "n3", fenced("n3"), view("n3", last_failover_at=NOW - 1), Role.FENCED, (),
         (R.NO_PRIMARY_TO_REJOIN, R.COOLDOWN)),
    Case("database unhealthy", "n3", fenced("n3"), view("n3", database=local("n3", healthy=False)),
         Role.FENCED, (), (R.NO_PRIMARY_TO_REJOIN, R.DB_UNHEALTHY)),
    # Who defers to whom.
    Case("the higher-ranking peer is unhealthy: it does not race, n2 takes over", "n2", fenced("n2"),
         view("n2", peers=(peer("n1"), peer("n3", healthy=False))), Role.CANDIDATE, TAKE),
    Case("the higher-ranking peer cannot prove it (lacks a write n2 received) -> n2 takes over", "n2",
         fenced("n2"), view("n2", database=local("n2", binlog_state="0-1-1,0-2-2,0-5-1")),
         Role.CANDIDATE, TAKE),
    # Other roles: a replica refused for its own writes, a candidate that took that path.
    Case("replica refused for its own unreplicated writes, every other member fenced -> races", "n3",
         running(Role.REPLICA, "n3", since=NOW - 10), view("n3", Role.REPLICA),
         Role.CANDIDATE, RACE),
    Case("replica: the takeover cannot be proven either -> the race's refusals stay", "n1",
         running(Role.REPLICA, "n1", since=NOW - 10), view("n1", Role.REPLICA),
         Role.REPLICA, (), (R.PEER_MORE_ADVANCED, R.PEER_MORE_ADVANCED, R.PEER_MORE_ADVANCED,
                            R.UNREPLICATED_OWN_WRITES), "domains 0"),
    Case("agents of n1 and n3 restarted (replicas), n2 fenced: n1 stays out for its own writes -> n3 races",
         "n3", State(Role.REPLICA, NOW - 10, members_seen=SEEN_ALL - {"n3"}, first_read_at=READ_AT),
         view("n3", Role.REPLICA, peers=(peer("n1", Role.REPLICA), peer("n2"))), Role.CANDIDATE, RACE),
    Case("... and n2, fenced, waits for n3 (it ranks higher)", "n2", fenced("n2"),
         view("n2", peers=(peer("n1", Role.REPLICA), peer("n3", Role.REPLICA))), Role.FENCED, (),
         (R.NO_PRIMARY_TO_REJOIN, R.PEER_MORE_ADVANCED), "n3 may take over too"),
    Case("candidate on the takeover path keeps asking for the lock", "n3",
         running(Role.CANDIDATE, "n3", since=NOW - 1), view("n3", Role.CANDIDATE),
         Role.CANDIDATE, RACE),
    Case("candidate whose takeover no longer holds steps back", "n3",
         running(Role.CANDIDATE, "n3", since=NOW - 1),
         view("n3", Role.CANDIDATE, peers=(peer("n1"), peer("n2", Role.REPLICA))), Role.REPLICA, (),
         (R.UNREPLICATED_OWN_WRITES,)),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_takeover_table(case: Case) -> None:
    config: CoreConfig = replace(CONFIG, node_name=case.me, **case.config_changes)  # type: ignore[arg-type]
    decision = decide(case.obs, case.state, config)
    assert decision.state.role is case.role, decision.refusals
    assert core_actions(decision) == case.actions
    assert tuple(refusal.reason for refusal in decision.refusals) == case.refusals, decision.refusals
    if case.detail:
        assert case.detail in decision.refusals[-1].detail, decision.refusals
    if case.role is Role.CANDIDATE and case.state.role is Role.FENCED:
        assert decision.state.since == NOW and decision.state.fenced_reason is None


def test_without_binlog_states_every_node_of_the_stuck_state_waits_for_ever() -> None:
    """The final state of the plain-failover run as agents without the rule's facts see it: each
    one refuses ``no_primary_to_rejoin``, and nothing they could observe later changes that."""
    for me in sorted(STUCK):
        peers = tuple(peer(name, binlog_state=None) for name in sorted(STUCK) if name != me)
        obs = view(me, peers=peers, database=local(me, binlog_state=None))
        decision = decide(obs, fenced(me), replace(CONFIG, node_name=me))
        assert decision.state.role is Role.FENCED
        assert decision.refusals[0].reason is R.NO_PRIMARY_TO_REJOIN
        assert core_actions(decision) == ()


def test_members_seen_are_remembered_through_role_changes() -> None:
    obs = view("n3")
    decision = decide(obs, State(Role.FENCED, NOW - 10, fenced_reason=Trigger.LEASE_EXPIRED), replace(
        CONFIG, node_name="n3"))
    assert decision.state.members_seen == frozenset({"n1", "n2"}) and decision.state.first_read_at == NOW
    assert decision.refusals[-1].reason is R.TAKEOVER_UNPROVEN  # it waits for records to come back
    assert decision.next_wakeup <= NOW + CONFIG.member_stale_after
    moved = decision.state.moved(Trigger.TAKES_OVER, NOW + 5)
    assert moved.members_seen == frozenset({"n1", "n2"}) and moved.first_read_at == NOW
    config = replace(CONFIG, node_name="n3")
    later = decide(replace(obs, now=NOW + CONFIG.member_stale_after), decision.state, config)
    assert later.state.role is Role.CANDIDATE and later.state.first_read_at == NOW


def test_a_sequence_number_clash_is_no_fork_when_a_peer_holds_our_write() -> None:
    """Item of issue 16 (decide_race._forked_own_domains): the handed-over old primary n2's last
    write is 0-2-2, the target n3 received it and fenced with its token 0-3-3, and the errant n1
    holds 0-1-2 at the same sequence number. By positions alone that clash looked like a fork of
    n2's own history; n3's binlog state shows it holds 0-2-2, so n2 may race as before."""
    config = replace(CONFIG, node_name="n2")
    clash = {"n1": ("0-1-2", "0-1-2"), "n3": ("0-3-3", "0-1-1,0-2-2,0-3-3")}

    def obs(binlog_states: bool) -> Observation:
        peers = tuple(member(name, Role.FENCED, position=position, server_id=int(name[1:]),
                             binlog_state=state if binlog_states else None)
                      for name, (position, state) in clash.items())
        database = db(position="0-2-2", server_id=2, source=None,
                      binlog_state="0-1-1,0-2-2" if binlog_states else None)
        return view("n2", Role.REPLICA, peers=peers, database=database)

    assert [refusal.reason for refusal in race_refusals(obs(False), config)] == [R.UNREPLICATED_OWN_WRITES]
    assert race_refusals(obs(True), config) == ()



# ---------------------------------------------------------------------------- killed by the fence
# The soak's stuck state (seed 301): n2 (primary, writes up to 0-2-4, each acknowledged by a
# replica) was killed -9 and restarted: FENCED. n3 won, promoted, and its token 0-3-5 waited for an
# ack nobody gave: its fence SIGKILLed its mysqld (fence by crash). n1 then won and the same
# happened to its token 0-1-5. Both killed mysqlds stay down until a repair that needs a primary.
#: name -> binlog state at the kill (n1, n3) or live (n2).
SOAK = {"n1": "0-2-4,0-1-5", "n2": "0-2-4", "n3": "0-2-4,0-3-5"}


def killed_peer(name: str, at_kill: str | None, *, healthy: bool = False) -> MemberRecord:
    """A FENCED member whose mysqld the fence killed: no live position or state, the kill's."""
    info = MemberInfo(name, Role.FENCED, healthy, None, False, CONFIG.priority, server_id=int(name[1:]),
                      binlog_state_at_kill=None if at_kill is None else BinlogState.parse(at_kill))
    return MemberRecord(info, NOW)


def soak_view(me: str = "n2", **at_kill: str | None) -> Observation:
    """n2's view: its live mysqld, n1's and n3's states at their kills (``at_kill`` overrides)."""
    peers = tuple(killed_peer(name, at_kill.get(name, SOAK[name])) for name in ("n1", "n3"))
    database = db(position="0-2-4", server_id=2, source=None, binlog_state=SOAK["n2"])
    return view(me, peers=peers, database=database)


KILLED_CASES = [
    Case("soak: n2 holds all but the killed nodes' own in-doubt tokens -> takes over", "n2",
         fenced("n2"), soak_view(), Role.CANDIDATE, TAKE),
    Case("a killed node whose state at the kill is unknown (older agent) proves nothing", "n2",
         fenced("n2"), soak_view(n3=None), Role.FENCED, (),
         # n3 may hold n1's token (the race's rule for a peer of unknown position says it too).
         (R.NO_PRIMARY_TO_REJOIN, R.PEER_POSITION_UNKNOWN, R.TAKEOVER_UNPROVEN),
         "binlog state of n3 unknown"),
    Case("n3 had received n1's token before its kill (maybe acknowledged): n2 lacks it", "n2",
         fenced("n2"), soak_view(n3="0-2-4,0-1-5,0-3-6"), Role.FENCED, (),
         (R.NO_PRIMARY_TO_REJOIN, R.PEER_POSITION_UNKNOWN, R.TAKEOVER_UNPROVEN, R.TAKEOVER_UNPROVEN),
         "n3 holds 0-1-5 this node lacks"),
    Case("a killed node held another server's write n2 lacks", "n2", fenced("n2"),
         soak_view(n1="0-2-6,0-1-5"), Role.FENCED, (), (R.NO_PRIMARY_TO_REJOIN, R.TAKEOVER_UNPROVEN),
         "n1 holds 0-2-6 this node lacks"),
]


@pytest.mark.parametrize("case", KILLED_CASES, ids=[case.id for case in KILLED_CASES])
def test_takeover_with_killed_members(case: Case) -> None:
    test_takeover_table(case)


def test_a_killed_node_never_takes_over_while_its_mysqld_is_down() -> None:
    """n3's own view: its mysqld is down (killed, awaiting the repair); it publishes its state at
    the kill, but that says what it held, not what it will hold after recovery: no takeover."""
    at_kill = BinlogState.parse(SOAK["n3"])
    repair = RepairView(evidence_problem=None, awaiting_restart=True, binlog_state_at_kill=at_kill,
                        server_id_at_kill=3)
    down = db(healthy=False, reasons=("mysqld down",), read_only=None, position=None, server_id=None,
              source=None)
    peers = (killed_peer("n1", SOAK["n1"]),
             member("n2", Role.FENCED, position="0-2-4", server_id=2, binlog_state=SOAK["n2"]))
    config = replace(CONFIG, node_name="n3")
    decision = decide(view("n3", peers=peers, database=down, repair=repair), fenced("n3"), config)
    assert decision.state.role is Role.FENCED and core_actions(decision) == ()
    # n2, alive, holds everything: n3's mysqld is repaired against it once it is primary.
    assert [refusal.reason for refusal in decision.refusals] == [R.NO_PRIMARY_TO_REJOIN], decision.refusals
    assert "n2 may take over" in decision.refusals[-1].detail
    # Its record carries the state at the kill and its server id, said to be as of the kill.
    published = [action.info for action in decision.actions if isinstance(action, PublishMember)]
    assert published and published[0].binlog_state_at_kill == at_kill and published[0].server_id == 3
    assert published[0].binlog_state is None and published[0].history is None
    # Once repaired (mysqld up, no longer awaiting the restart) the live state alone goes out.
    repaired = db(position="0-2-4", server_id=3, source=None, binlog_state="0-2-4")
    obs = view("n3", peers=peers, database=repaired, repair=RepairView(evidence_problem=None))
    obs = replace(obs, members=(MemberRecord(published[0], NOW), *peers))  # as published while down
    after = decide(obs, fenced("n3"), config)
    published = [action.info for action in after.actions if isinstance(action, PublishMember)]
    assert published and published[0].binlog_state_at_kill is None and published[0].server_id == 3


def test_a_healthy_peer_known_only_by_its_state_at_a_kill_is_not_deferred_to() -> None:
    """A killed peer whose mysqld the repair has started (its record healthy again) but whose live
    state is not published yet ranks nowhere: it cannot take over without its history."""
    peers = (killed_peer("n1", SOAK["n1"]), killed_peer("n3", "0-2-4,0-3-5", healthy=True))
    obs = view("n2", peers=peers, database=db(position="0-2-4", server_id=2, source=None,
                                              binlog_state=SOAK["n2"]))
    decision = decide(obs, fenced("n2"), replace(CONFIG, node_name="n2"))
    assert decision.state.role is Role.CANDIDATE and core_actions(decision) == TAKE, decision.refusals


# ---------------------------------------------------------------------------- seed 403
# The soak's stuck state (seed 403), n1..n3 in db1..db3's places: n1 (primary, writes up to 0-1-2)
# was killed -9 and restarted: FENCED, alive. n2 won, wrote its token 0-2-3 and w1 0-2-4, which
# n3 received (acknowledged), and w2 0-2-5, which waited for an ack when n2 was cut off: its fence
# SIGKILLed mysqld. n3 won, its token 0-3-5 waited for an ack (n1 fenced, n2 down), and n3 was cut
# off too: killed. n1 lacks w1, so it cannot take over; both killed mysqlds waited for a primary.
SEED_403 = {"n1": "0-1-2", "n2": "0-1-2,0-2-5", "n3": "0-1-2,0-2-4,0-3-5"}
EVIDENCE_OK = RepairView(evidence_problem=None)


def killed_view(me: str, *, n1: MemberRecord | None = None, repair: RepairView | None = None,
                states: dict[str, str] | None = None) -> Observation:
    """A killed node's view of the seed-403 state (``states`` overrides the binlog states)."""
    states = {**SEED_403, **(states or {})}
    own = BinlogState.parse(states[me])
    repair = repair or replace(EVIDENCE_OK, awaiting_restart=True, binlog_state_at_kill=own,
                               server_id_at_kill=int(me[1:]))
    live_n1 = n1 or member("n1", Role.FENCED, position="0-1-2", server_id=1, binlog_state=states["n1"])
    peers = (live_n1, *(killed_peer(name, states[name]) for name in ("n2", "n3") if name != me))
    down = db(healthy=False, reasons=("mysqld down",), read_only=None, position=None, server_id=None,
              source=None)
    return view(me, peers=peers, database=down, repair=repair)


def repair_alone(reference: str) -> tuple[Action, ...]:
    return (TruncateErrant("", (), A.REPAIR_WITHOUT_PRIMARY, BinlogState.parse(reference)),)


SEED_403_CASES = [
    Case("n3 holds all but n1's never-acknowledged state, no live node can take over -> repaired now",
         "n3", fenced("n3"), killed_view("n3"), Role.FENCED, repair_alone("0-1-2,0-2-5"),
         (R.NO_PRIMARY_TO_REJOIN,), "repaired first"),
    Case("n2 (its w2 in doubt, n3's token its own) may be repaired too: recovery cuts only w2", "n2",
         fenced("n2"), killed_view("n2"), Role.FENCED, repair_alone("0-1-2,0-2-4,0-3-5"),
         (R.NO_PRIMARY_TO_REJOIN,), "repaired first"),
    Case("n1 restarted as a replica lacking w1: it never races, so it is no reason to wait", "n3",
         fenced("n3"), killed_view("n3", n1=member("n1", Role.REPLICA, position="0-1-2", server_id=1,
                                                  binlog_state="0-1-2")),
         Role.FENCED, repair_alone("0-1-2,0-2-5"), (R.NO_PRIMARY_TO_REJOIN,)),
    Case("a live member can take over (it holds w1): repaired once it is primary", "n3", fenced("n3"),
         killed_view("n3", states={"n1": "0-1-2,0-2-4"}), Role.FENCED, (), (R.NO_PRIMARY_TO_REJOIN,),
         "n1 may take over"),
    Case("a member holds another server's write n3 lacks: no repair, no takeover", "n3", fenced("n3"),
         killed_view("n3", states={"n1": "0-1-2,0-4-1"}), Role.FENCED, (),
         (R.NO_PRIMARY_TO_REJOIN, R.TAKEOVER_UNPROVEN), "n1 holds 0-4-1 this node lacks"),
    Case("a member's state is unknown", "n3", fenced("n3"),
         killed_view("n3", n1=member("n1", Role.FENCED, position="0-1-2", server_id=1)), Role.FENCED, (),
         (R.NO_PRIMARY_TO_REJOIN, R.TAKEOVER_UNPROVEN), "binlog state of n1 unknown"),
    Case("its own state at the kill is unknown (an older agent's evidence)", "n3", fenced("n3"),
         killed_view("n3", repair=replace(EVIDENCE_OK, awaiting_restart=True)), Role.FENCED, (),
         (R.NO_PRIMARY_TO_REJOIN, R.TAKEOVER_UNPROVEN), "n3 (this node, at the kill)"),
    Case("just restarted: the records may not all be back", "n3", fenced("n3", first_read_at=NOW - 1),
         killed_view("n3"), Role.FENCED, (), (R.NO_PRIMARY_TO_REJOIN, R.TAKEOVER_UNPROVEN), "has not read"),
    Case("the repair is running already", "n3", fenced("n3"),
         killed_view("n3", repair=replace(EVIDENCE_OK, awaiting_restart=True, running=True,
                                          binlog_state_at_kill=BinlogState.parse(SEED_403["n3"]),
                                          server_id_at_kill=3)),
         Role.FENCED, (), (R.NO_PRIMARY_TO_REJOIN, R.REPAIR_RUNNING)),
    Case("evidence not lossless: the repair may not remove anything", "n3", fenced("n3"),
         killed_view("n3", repair=RepairView(
             evidence_problem="asynchronous replication", awaiting_restart=True,
             binlog_state_at_kill=BinlogState.parse(SEED_403["n3"]), server_id_at_kill=3)),
         Role.FENCED, (), (R.NO_PRIMARY_TO_REJOIN, R.REPAIR_UNSAFE), "asynchronous"),
    # The race: repaired, n2 and n3 are FENCED and alive; n1's agent restarted (REPLICA). Its own
    # writes are reached (their positions are past 0-1-2), and rivals never included FENCED nodes.
    Case("a replica lacking a fenced member's maybe-acknowledged writes does not race", "n1",
         running(Role.REPLICA, "n1", since=NOW - 10),
         view("n1", Role.REPLICA, peers=(
             member("n2", Role.FENCED, position="0-2-4", server_id=2, binlog_state="0-1-2,0-2-4"),
             member("n3", Role.FENCED, position="0-2-4", server_id=3, binlog_state="0-1-2,0-2-4"))),
         Role.REPLICA, (), (R.PEER_MORE_ADVANCED,) * 3, "holds 0-2-4"),
    Case("... not in asynchronous mode (acknowledged writes may be lost there anyway)", "n1",
         running(Role.REPLICA, "n1", since=NOW - 10),
         view("n1", Role.REPLICA, peers=(
             member("n2", Role.FENCED, position="0-2-4", server_id=2, binlog_state="0-1-2,0-2-4"),
             member("n3", Role.FENCED, position="0-2-4", server_id=3, binlog_state="0-1-2,0-2-4"))),
         Role.CANDIDATE, RACE, config_changes={"lossless": False}),
    Case("a fenced former primary's own writes nobody received do not stop a race", "n1",
         running(Role.REPLICA, "n1", since=NOW - 10),
         view("n1", Role.REPLICA, database=db(position="0-2-4", server_id=1, source=None,
                                              binlog_state="0-1-2,0-2-4"), peers=(
             member("n2", Role.FENCED, position="0-2-6", server_id=2, binlog_state="0-1-2,0-2-6"),
             member("n3", Role.REPLICA, position="0-2-4", server_id=3, binlog_state="0-1-2,0-2-4"))),
         Role.CANDIDATE, RACE),
]


@pytest.mark.parametrize("case", SEED_403_CASES, ids=[case.id for case in SEED_403_CASES])
def test_seed_403_repair_without_a_primary(case: Case) -> None:
    test_takeover_table(replace(case, config_changes={"rejoin_mode": "truncate", **case.config_changes}))


# ---------------------------------------------------------------------------- down after a crash
# Soak seed 443: n1's mysqld crashed and its crash recovery fails for good; its agent publishes
# the binlog state its files hold (RepairView.binlog_state_on_disk), in the same record field.


def down_peer(name: str, role: Role, on_disk: str | None) -> MemberRecord:
    """A member whose mysqld is down after a crash of its own (not the fence's), not run since."""
    info = MemberInfo(name, role, False, None, False, CONFIG.priority, server_id=int(name[1:]),
                      binlog_state_at_kill=None if on_disk is None else BinlogState.parse(on_disk))
    return MemberRecord(info, NOW)


def seed_443_view(n1: MemberRecord) -> Observation:
    peers = (n1, killed_peer("n3", SOAK["n3"]))
    return view("n2", peers=peers, database=db(position="0-2-4", server_id=2, source=None,
                                               binlog_state=SOAK["n2"]))


CRASHED_CASES = [
    Case("n1 down for good, its state read from its binlog files -> n2 takes over", "n2", fenced("n2"),
         seed_443_view(down_peer("n1", Role.FENCED, SOAK["n1"])), Role.CANDIDATE, TAKE),
    Case("... its agent restarted (REPLICA, mysqld down): it cannot race while down -> n2 takes over",
         "n2", fenced("n2"), seed_443_view(down_peer("n1", Role.REPLICA, SOAK["n1"])), Role.CANDIDATE, TAKE),
    Case("a REPLICA down without a state from its files (an older agent) may race once back: waits",
         "n2", fenced("n2"), seed_443_view(down_peer("n1", Role.REPLICA, None)), Role.FENCED, (),
         (R.NO_PRIMARY_TO_REJOIN,), "waiting for n1 (may race)"),
    Case("a FENCED member down without it: unknown, as before (seed 443 without the feature)", "n2",
         fenced("n2"), seed_443_view(down_peer("n1", Role.FENCED, None)), Role.FENCED, (),
         (R.NO_PRIMARY_TO_REJOIN, R.PEER_POSITION_UNKNOWN, R.TAKEOVER_UNPROVEN),
         "binlog state of n1 unknown"),
    Case("its files hold another server's write n2 lacks (received: maybe acknowledged)", "n2",
         fenced("n2"), seed_443_view(down_peer("n1", Role.FENCED, "0-2-6,0-1-5")), Role.FENCED, (),
         (R.NO_PRIMARY_TO_REJOIN, R.TAKEOVER_UNPROVEN), "n1 holds 0-2-6 this node lacks"),
]


#: Soak seed 443's states as logged (db1..db3 as n1..n3): n1's read from its binlog files (its last
#: file's Gtid list and GTIDs), n2's at its fence's kill, n3's live (its token committed unacked).
SEED_443 = {"n1": "0-1-51565,0-2-47898,0-3-36840", "n2": "0-1-51565,0-3-36840,0-2-51612",
            "n3": "0-1-51565,0-2-51610,0-3-51611"}


def seed_443_as_logged(n1_on_disk: str | None) -> Observation:
    peers = (down_peer("n1", Role.FENCED, n1_on_disk), killed_peer("n2", SEED_443["n2"]))
    return view("n3", peers=peers, database=db(position="0-3-51611", server_id=3, source=None,
                                               binlog_state=SEED_443["n3"]))


CRASHED_CASES += [
    Case("seed 443 as logged: n3 holds all but n2's own unreceived writes -> takes over", "n3",
         fenced("n3"), seed_443_as_logged(SEED_443["n1"]), Role.CANDIDATE, TAKE),
    Case("seed 443 as it ran (n1's state unknown): waits for ever", "n3", fenced("n3"),
         seed_443_as_logged(None), Role.FENCED, (),
         (R.NO_PRIMARY_TO_REJOIN, R.PEER_POSITION_UNKNOWN, R.TAKEOVER_UNPROVEN),
         "binlog state of n1 unknown"),
]

@pytest.mark.parametrize("case", CRASHED_CASES, ids=[case.id for case in CRASHED_CASES])
def test_takeover_with_a_member_down_after_a_crash(case: Case) -> None:
    test_takeover_table(case)


def test_a_mysqld_down_after_a_crash_publishes_its_state_on_disk_until_it_answers() -> None:
    """Not killed by the fence (no repair awaits it): the state read from its binlog files goes
    out in ``binlog_state_at_kill`` with the server id that wrote them; never once mysqld answers,
    even if the adapter still has it; and never in place of the fence's state at a kill."""
    on_disk = BinlogState.parse(SOAK["n1"])
    repair = RepairView(evidence_problem=None, binlog_state_on_disk=on_disk, server_id_on_disk=1)
    down = db(healthy=False, reasons=("mysqld down",), read_only=None, position=None, server_id=None,
              source=None)
    peers = (killed_peer("n3", SOAK["n3"]),
             member("n2", Role.FENCED, position="0-2-4", server_id=2, binlog_state=SOAK["n2"]))
    config = replace(CONFIG, node_name="n1")

    def published(obs: Observation) -> MemberInfo:
        infos = [a.info for a in decide(obs, fenced("n1"), config).actions if isinstance(a, PublishMember)]
        assert infos
        return infos[0]

    info = published(view("n1", peers=peers, database=down, repair=repair))
    assert info.binlog_state_at_kill == on_disk and info.server_id == 1 and info.history is None
    up = db(position="0-1-5", server_id=1, source=None, binlog_state=SOAK["n1"])
    info = published(view("n1", peers=peers, database=up, repair=repair))
    assert info.binlog_state_at_kill is None and info.binlog_state == on_disk
    at_kill = BinlogState.parse("0-2-4,0-1-6")
    killed = replace(repair, awaiting_restart=True, binlog_state_at_kill=at_kill, server_id_at_kill=1)
    info = published(view("n1", peers=peers, database=down, repair=killed))
    assert info.binlog_state_at_kill == at_kill
