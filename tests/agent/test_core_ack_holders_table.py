"""Table tests of the rules for peers the race cannot rank (dbfence/agent/decide_ack_holders.py).

The observation every case starts from is db1's at 14:49:21.256 in soak seed 401 (db1..db3 are
n1..n3 here, server id = node number): n2 (primary, token 216) wrote 0-2-3578..0-2-3595 with
lossless semi-sync, n3 received all of it, n1 none; n2's lease ran out (FENCED, mysqld up); n3 raced
and its mysqld was killed while it promoted (FENCED, position unknown). n1 raced, promoted and would
have lost n2's writes, which n3 may have acknowledged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from dbfence.agent.actions import AcquireLock, Action, ActionReason, Promote, ReleaseLock, WriteFencingToken
from dbfence.agent.decide import RefusalReason, decide, race_refusals
from dbfence.agent.decide_ack_holders import Holding, ack_holder_concerns, holds_past_own_write
from dbfence.agent.gtid import BinlogState
from dbfence.agent.observation import LeaseView, LockView, MemberInfo, MemberRecord, Observation
from dbfence.agent.state import Role, State, Trigger
from tests.agent.core_builders import CONFIG, HELD, NOW, TOKEN, core_actions, db, member, observe, pos

R = RefusalReason
A = ActionReason
RACE = (AcquireLock(A.LOCK_FREE_AND_ELIGIBLE),)
TAKE = (AcquireLock(A.TAKEOVER_WITHOUT_PRIMARY),)

N1_STATE = "0-1-3577"
N2_STATE = "0-1-3577,0-2-3595"  # n2's writes on top of n1's


def n2_fenced(position: str = "0-2-3595", state: str = N2_STATE) -> MemberRecord:
    return member("n2", Role.FENCED, position=position, server_id=2, binlog_state=state)


def n3_unknown(role: Role = Role.FENCED) -> MemberRecord:
    """n3's record once its mysqld was killed: healthy False, position and server id unknown."""
    return member("n3", role, healthy=False, position=None, server_id=None)


def n3_known(position: str, state: str, role: Role = Role.FENCED) -> MemberRecord:
    return member("n3", role, position=position, server_id=3, binlog_state=state)


def n3_killed(at_kill: str) -> MemberRecord:
    """n3 as a mysqld the fence killed publishes it: the binlog state at the kill."""
    info = MemberInfo("n3", Role.FENCED, False, None, False, CONFIG.priority, server_id=3,
                      binlog_state_at_kill=BinlogState.parse(at_kill))
    return MemberRecord(info, NOW)


def seed401(*peers: MemberRecord, role: Role = Role.REPLICA, lease: LeaseView | None = None) -> Observation:
    """n1's view: its mysqld at 0-1-3577 (it received none of n2's writes), the lock free."""
    database = db(position="0-1-3577", server_id=1, source="n2", binlog_state=N1_STATE)
    peers = peers or (n2_fenced(), n3_unknown())
    if lease is None:
        return observe(role, peers=peers, database=database)
    return observe(role, peers=peers, database=database, lease=lease)


@dataclass(frozen=True)
class Case:
    id: str
    state: State
    obs: Observation
    role: Role
    actions: tuple[Action, ...] = ()
    refusals: tuple[RefusalReason, ...] = ()
    detail: str = ""  # in the first refusal's detail
    lossless: bool = True


REPLICA = State(Role.REPLICA, NOW - 10)
PROMOTING = State(Role.PROMOTING, NOW - 1)
UNKNOWN_N3 = "waiting for n3's position: it may hold writes n2 holds up to 0-2-3595"

CASES = [
    # ------------------------------------------------------------------ the race
    Case("seed 401 at 14:49:21.256: n3 unknown may hold n2's writes n1 lacks -> no race", REPLICA,
         seed401(), Role.REPLICA, (), (R.PEER_POSITION_UNKNOWN,), UNKNOWN_N3),
    Case("... n3 unknown as an unhealthy replica -> no race either", REPLICA,
         seed401(n2_fenced(), n3_unknown(Role.REPLICA)), Role.REPLICA, (), (R.PEER_POSITION_UNKNOWN,),
         UNKNOWN_N3),
    Case("... n3 known at 0-1-3577 (it received none of n2's writes) -> races", REPLICA,
         seed401(n2_fenced(), n3_known("0-1-3577", N1_STATE)), Role.CANDIDATE, RACE),
    Case("... n3 known as a replica at 0-1-3577 -> races", REPLICA,
         seed401(n2_fenced(), n3_known("0-1-3577", N1_STATE, Role.REPLICA)), Role.CANDIDATE, RACE),
    Case("... n3's mysqld back, FENCED at 0-2-3595 (received n2's writes) -> defers to it", REPLICA,
         seed401(n2_fenced(), n3_known("0-2-3595", N2_STATE)), Role.REPLICA, (), (R.PEER_MORE_ADVANCED,),
         "n3 holds 0-2-3595 (received, not its own: maybe acknowledged)"),
    Case("... the same without binlog states (positions only) -> no race", REPLICA,
         seed401(member("n2", Role.FENCED, position="0-2-3595", server_id=2), n3_unknown()),
         Role.REPLICA, (), (R.PEER_POSITION_UNKNOWN,), UNKNOWN_N3),
    Case("... asynchronous mode makes no such promise -> races", REPLICA, seed401(), Role.CANDIDATE, RACE,
         lossless=False),
    Case("n3 killed by the fence, its state at the kill lacks n2's writes -> races", REPLICA,
         seed401(n2_fenced(), n3_killed("0-1-3577,0-3-3578")), Role.CANDIDATE, RACE),
    Case("n3 killed by the fence, its state at the kill holds some of n2's writes -> no race", REPLICA,
         seed401(n2_fenced(), n3_killed("0-1-3577,0-2-3580")), Role.REPLICA, (),
         (R.PEER_MORE_ADVANCED, R.PEER_POSITION_UNKNOWN), "writes n2 holds up to 0-2-3595"),
    # The ordinary failovers are unaffected.
    Case("kill -9 of the primary n2: its position unknown, n3 known behind n1 -> races at once", REPLICA,
         observe(peers=(member("n2", Role.FENCING, healthy=False, position=None, server_id=None),
                        member("n3", position="0-2-118", server_id=3, binlog_state="0-1-100,0-2-118")),
                 database=db(position="0-2-120", server_id=1, binlog_state="0-1-100,0-2-120")),
         Role.CANDIDATE, RACE),
    Case("fenced old primary n2 with a tail of its own, every replica known -> races", REPLICA,
         seed401(n2_fenced(), n3_known("0-1-3577", N1_STATE, Role.REPLICA)), Role.CANDIDATE, RACE),
    Case("errant fenced n2 (forked tail) while the primary n3's mysqld was killed -> races at once",
         REPLICA,
         observe(peers=(member("n2", Role.FENCED, position="0-2-11", server_id=2,
                               binlog_state="0-1-10,0-2-11"),
                        member("n3", Role.FENCING, healthy=False, position=None, server_id=None)),
                 database=db(position="0-3-14", server_id=1, source="n3", binlog_state="0-1-10,0-3-14")),
         Role.CANDIDATE, RACE),
    Case("... the fork seen by positions only (same sequence number, another server) -> races", REPLICA,
         observe(peers=(member("n2", Role.FENCED, position="0-2-11", server_id=2),
                        member("n3", Role.FENCING, healthy=False, position=None, server_id=None)),
                 database=db(position="0-3-11", server_id=1, source="n3")),
         Role.CANDIDATE, RACE),
    Case("a priority-0 fenced peer that received n2's writes: maybe acknowledged, no race (n2 may take "
         "over)", REPLICA,
         seed401(n2_fenced(), member("n3", Role.FENCED, position="0-2-3595", server_id=3, priority=0,
                                     binlog_state=N2_STATE)), Role.REPLICA, (), (R.PEER_MORE_ADVANCED,),
         "n2 (fenced) holds 0-2-3595"),
    # ------------------------------------------------------------------ the winner's promotion
    Case("promoting: n3's mysqld dies after the race -> keeps the lock, writes nothing", PROMOTING,
         seed401(role=Role.PROMOTING, lease=HELD), Role.PROMOTING, (), (R.PEER_POSITION_UNKNOWN,),
         UNKNOWN_N3),
    Case("promoting: n3 known without n2's writes -> stops replication", PROMOTING,
         seed401(n2_fenced(), n3_known("0-1-3577", N1_STATE), role=Role.PROMOTING, lease=HELD),
         Role.PROMOTING, (Promote(True, A.PROMOTION),)),
    Case("promoting: DCS unreachable before anything is written -> no step (no records to compare)",
         PROMOTING, observe(Role.PROMOTING, lease=HELD, lock=LockView(reachable=False), peers=()),
         Role.PROMOTING, (), (R.DCS_UNREACHABLE,), "no promotion step"),
    Case("promoting: DCS unreachable once writable -> finishes (past the point of no return)", PROMOTING,
         observe(Role.PROMOTING, lease=HELD, lock=LockView(reachable=False), peers=(),
                 database=db(source=None, read_only=False)),
         Role.PROMOTING, (WriteFencingToken(TOKEN, A.PROMOTION),)),
    Case("promoting: our token 0-1-3578 ties with n2's 0-2-3578 that n3 received -> steps down",
         PROMOTING,
         observe(Role.PROMOTING, lease=HELD,
                 peers=(n2_fenced("0-2-3578", "0-1-3577,0-2-3578"),
                        n3_known("0-2-3578", "0-1-3577,0-2-3578", Role.REPLICA)),
                 database=db(position="0-1-3578", server_id=1, source=None, binlog_state="0-1-3578")),
         Role.REPLICA, (ReleaseLock(TOKEN, A.OVERTAKEN),), (R.PEER_MORE_ADVANCED,), "n3"),
    Case("promoting: n3 back FENCED with n2's writes -> steps down and lets go", PROMOTING,
         seed401(n2_fenced(), n3_known("0-2-3595", N2_STATE), role=Role.PROMOTING, lease=HELD),
         Role.REPLICA, (ReleaseLock(TOKEN, A.OVERTAKEN),), (R.PEER_MORE_ADVANCED,), "n3 holds 0-2-3595"),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_ack_holders_table(case: Case) -> None:
    config = replace(CONFIG, lossless=case.lossless)
    decision = decide(case.obs, case.state, config)
    assert decision.state.role is case.role, decision.refusals
    assert core_actions(decision) == case.actions, decision.refusals
    # The race's fenced-holder rule (seed 403) may refuse for the same writes as well: the set of
    # reasons, and one refusal naming them, are what this table is about.
    assert {refusal.reason for refusal in decision.refusals} == set(case.refusals), decision.refusals
    if case.detail:
        assert any(case.detail in refusal.detail for refusal in decision.refusals), decision.refusals


def test_the_refusal_names_the_unknown_peer_and_the_writes_for_the_operator() -> None:
    (refusal,) = race_refusals(seed401(), CONFIG)
    assert refusal.reason is R.PEER_POSITION_UNKNOWN
    assert refusal.detail == ("waiting for n3's position: it may hold writes n2 holds up to 0-2-3595, which "
                              "this node lacks (maybe acknowledged)")


def test_after_n3_comes_back_it_or_n2_takes_over_and_n1_waits() -> None:
    """The end of seed 401 with the rule: n3's mysqld is back (FENCED, holding n2's writes), n1
    defers to it; nobody may race, so a node that holds everything takes over without a primary
    (n2 ranks first on the tie: same data, smaller name) and the others wait."""
    n1 = member("n1", Role.REPLICA, position="0-1-3577", server_id=1, binlog_state=N1_STATE)
    records = {"n1": n1, "n2": n2_fenced(), "n3": n3_known("0-2-3595", N2_STATE)}
    taken = []
    for me in ("n2", "n3"):
        position = records[me].info.position
        assert position is not None
        database = db(position=str(position), server_id=int(me[1:]), source=None, binlog_state=N2_STATE)
        own = MemberRecord(replace(records[me].info, healthy=True), NOW)
        obs = observe(Role.FENCED, database=database, own_record=own,
                      peers=tuple(record for name, record in records.items() if name != me))
        state = State(Role.FENCED, NOW - 10, fenced_reason=Trigger.LEASE_EXPIRED,
                      members_seen=frozenset(records) - {me}, first_read_at=NOW - 60)
        decision = decide(obs, state, replace(CONFIG, node_name=me))
        if core_actions(decision) == TAKE:
            taken.append(me)
    assert taken == ["n2"]
    n1_decision = decide(seed401(n2_fenced(), records["n3"]), REPLICA, CONFIG)
    assert core_actions(n1_decision) == () and n1_decision.state.role is Role.REPLICA


def test_concerns_are_per_holder_and_unknown_peer() -> None:
    """The pure judgement: one concern per (unknown peer, holder) pair, writes per stream."""
    me = Holding("n1", pos("0-1-3577"), BinlogState.parse(N1_STATE), 1)
    n2 = Holding("n2", pos("0-2-3595"), BinlogState.parse(N2_STATE), 2, ranked=False)
    n3 = Holding("n3", None)
    n4 = Holding("n4", None)
    concerns = ack_holder_concerns(me, [n2, n3, n4])
    assert [(c.unknown, c.holder, [str(g) for g in c.writes]) for c in concerns] == [
        ("n3", "n2", ["0-2-3595"]), ("n4", "n2", ["0-2-3595"])]
    # Its own writes: n2 is no holder of received writes; with n3 and n4 known nothing is left.
    assert ack_holder_concerns(me, [n2, replace(n3, holds=pos("0-1-3577"))]) == []


def test_a_holders_own_writes_past_ours_are_no_tie_with_our_token() -> None:
    """``holds_past_own_write``: only another server's writes the holder received count; its own
    (an errant tail nobody else received) are passed over, and the next stream is looked at."""
    me = Holding("n1", pos("0-1-5"), BinlogState.parse("0-1-5,0-2-3"), server_id=1)
    own_tail = Holding("n2", pos("0-2-9"), BinlogState.parse("0-1-4,0-2-9"), server_id=2)
    assert not holds_past_own_write(own_tail, me)
    received = Holding("n3", pos("0-2-9"), BinlogState.parse("0-1-4,0-2-9,0-5-7"), server_id=3)
    assert holds_past_own_write(received, me)
