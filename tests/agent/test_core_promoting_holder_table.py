"""Table tests of a FENCED node repaired against, and rejoining, a holder still PROMOTING
(dbfence/agent/decide_promoting_holder.py, issue 16's kill -9 RTO).

Every case starts from the state the model checker scripts (test_core_model_check_promoting_repair.py),
one domain, server id = node number, seen by n2:

* n1 was primary, took 0-1-2 that nobody received and was cut off: its fence killed its mysqld
  (FENCED, awaiting its repair; its record shows its binlog state at the kill);
* n2 (this node) took over, took 0-2-3 that nobody received, and its mysqld was killed -9:
  FENCED, mysqld back, 0-2-3 errant against n3;
* n3 won the lock and promotes: its token 0-3-3 waits for a semi-sync ack that only n1 or n2
  can give.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from dbfence.agent.actions import Action, ActionReason, RebuildNode, Repoint, TruncateErrant
from dbfence.agent.core_config import CoreConfig
from dbfence.agent.decide import RefusalReason, decide
from dbfence.agent.gtid import BinlogState
from dbfence.agent.observation import (
    ErrantCheck,
    LeaseView,
    LocalDatabase,
    LockView,
    MemberInfo,
    MemberRecord,
    Observation,
    RepairView,
)
from dbfence.agent.state import Role, State, Trigger
from tests.agent.core_builders import CLOSED, CONFIG, NOW, TOKEN, core_actions, db, pos

R = RefusalReason
A = ActionReason
ME = "n2"
LOCK = LockView(True, "n3", TOKEN)
PROVEN = RepairView(evidence_problem=None)
ERRANT = ErrantCheck("n3", ("0-2-3",))
CLEAN = ErrantCheck("n3", ())
TRUNCATE = (TruncateErrant("n3", ("0-2-3",), A.REPAIR_UNACKNOWLEDGED),)
REJOIN = (Repoint("n3", True, A.REJOIN),)
KILLED = RepairView(evidence_problem=None, awaiting_restart=True,
                    binlog_state_at_kill=BinlogState.parse("0-1-1,0-2-3"), server_id_at_kill=2)
READ_AT = NOW - 60


def holder(*, role: Role = Role.PROMOTING, seen_token: int | None = TOKEN, received: str | None = None,
           last_seen: float = NOW, binlog_state: str | None = "0-1-1,0-2-2,0-3-3") -> MemberRecord:
    return MemberRecord(MemberInfo(
        "n3", role, True, pos("0-3-3"), False, 100, None if received is None else pos(received),
        seen_token, 3, None if binlog_state is None else BinlogState.parse(binlog_state)), last_seen)


def killed_n1(*, seen_token: int | None = TOKEN, at_kill: str | None = "0-1-2") -> MemberRecord:
    return MemberRecord(MemberInfo(
        "n1", Role.FENCED, False, None, False, 100, None, seen_token, 1, None,
        None if at_kill is None else BinlogState.parse(at_kill)), NOW)


def local(*, errant: ErrantCheck | None = ERRANT, position: str = "0-2-3",
          binlog_state: str | None = "0-1-1,0-2-3") -> LocalDatabase:
    return db(position=position, server_id=2, source=None, errant=errant, binlog_state=binlog_state)


DOWN = LocalDatabase(health=db(healthy=False, reasons=("mysqld down",)).health, read_only=None,
                     position=None, server_id=None)


def view(*, peers: tuple[MemberRecord, ...] | None = None, database: LocalDatabase | None = None,
         repair: RepairView = PROVEN, lock: LockView = LOCK) -> Observation:
    database = local() if database is None else database
    peers = (killed_n1(), holder()) if peers is None else peers
    own = MemberRecord(MemberInfo(ME, Role.FENCED, database.health.healthy, database.position, False, 100,
                                  database.received, TOKEN, database.server_id, database.binlog_state), NOW)
    return Observation(now=NOW, lease=LeaseView(), lock=lock, members=(own, *peers), db=database, gate=CLOSED,
                       repair=repair)


def fenced(**fields: object) -> State:
    return replace(State(Role.FENCED, NOW - 10, fenced_reason=Trigger.DB_UNHEALTHY,
                         members_seen=frozenset({"n1", "n3"}), first_read_at=READ_AT), **fields)  # type: ignore[arg-type]


FENCED = fenced()


@dataclass(frozen=True)
class Case:
    id: str
    obs: Observation
    role: Role = Role.FENCED
    actions: tuple[Action, ...] = ()
    refusals: tuple[RefusalReason, ...] = (R.NO_PRIMARY_TO_REJOIN,)
    detail: str = ""  # in the last refusal's detail
    state: State = FENCED
    mode: str = "truncate"
    donor_primary: bool = False


NOT_FOLLOWED = "not followed while promoting: "
CASES = [
    # The rule holds: n3 holds every write the others hold but their own unreceived ones.
    Case("errant own write -> truncated against the promoting holder", view(), actions=TRUNCATE,
         refusals=(R.ERRANT_GTIDS,)),
    Case("clean -> rejoins the promoting holder (acknowledges its token)", view(database=local(errant=CLEAN)),
         Role.REPLICA, REJOIN, ()),
    Case("mysqld killed by the fence, awaiting its repair -> repaired against it (state at the kill)",
         view(database=DOWN, repair=KILLED),
         actions=(TruncateErrant("n3", (), A.REPAIR_UNACKNOWLEDGED),), refusals=(R.DB_UNHEALTHY,)),
    Case("manual mode: clean rejoin only, errant waits for an operator", view(), refusals=(R.ERRANT_GTIDS,),
         mode="manual"),
    Case("rebuild mode: a rebuild (minutes) waits for a ready primary",
         view(repair=replace(PROVEN, gave_up="survived crash recovery", gave_up_on="truncate")),
         refusals=(R.ERRANT_GTIDS, R.NO_PRIMARY_TO_REJOIN), detail="a rebuild waits until n3 is primary",
         mode="rebuild", donor_primary=True),
    # Not a promoting holder: as before.
    Case("holder still a candidate (no record of its promotion)",
         view(peers=(killed_n1(), holder(role=Role.CANDIDATE))),
         detail="n3 holds the lock, not primary yet"),
    Case("holder's record stale", view(peers=(killed_n1(), holder(last_seen=NOW - 60)))),
    # What the proof needs.
    Case("holder's record of an older term", view(peers=(killed_n1(), holder(seen_token=TOKEN - 1))),
         detail=NOT_FOLLOWED + "its record is not of this term yet"),
    Case("holder received more than it applied (what looks errant may be in its relay log)",
         view(peers=(killed_n1(), holder(received="0-3-4"))), detail="relay log is not applied yet"),
    Case("agent just restarted: the records may not all be back", view(), state=fenced(first_read_at=NOW - 1),
         detail="has not read the members' records"),
    Case("agent's first read not finished yet", view(lock=replace(LOCK, read_yet=False)),
         state=fenced(first_read_at=None),
         detail="has not read the members' records"),
    Case("a member seen before has no record now", view(peers=(holder(),)), detail="no fresh record of n1"),
    Case("a member has not seen the holder's lock yet (may still receive from a lost source)",
         view(peers=(killed_n1(seen_token=None), holder())), detail="waiting for n1 to see its lock"),
    Case("a member's position unknown (mysqld down, no state at a kill)",
         view(peers=(killed_n1(at_kill=None), holder())), detail="binlog state of n1 unknown"),
    Case("the holder's binlog state unknown (an older agent)",
         view(peers=(killed_n1(), holder(binlog_state=None))),
         detail="binlog state of n3 unknown"),
    Case("this node's mysqld down, not by the fence: it may hold anything",
         view(database=DOWN), refusals=(R.NO_PRIMARY_TO_REJOIN,), detail="n2 (this node)"),
    Case("a member received this node's write the holder lacks (maybe acknowledged)",
         view(peers=(killed_n1(at_kill="0-1-1,0-2-3"), holder())),
         detail="it lacks n2's 0-2-3; n1's 0-2-3 (maybe acknowledged)"),
    Case("asynchronous: no ack to wait for, no proof of what was acknowledged", view(), mode="async"),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_promoting_holder_table(case: Case) -> None:
    changes: dict[str, object] = {"node_name": ME, "rejoin_donor_primary": case.donor_primary,
                                  "rejoin_mode": "truncate" if case.mode == "async" else case.mode}
    if case.mode == "async":
        changes["lossless"] = False
    config: CoreConfig = replace(CONFIG, **changes)  # type: ignore[arg-type]
    decision = decide(case.obs, case.state, config)
    assert decision.state.role is case.role, decision.refusals
    assert core_actions(decision) == case.actions
    assert tuple(refusal.reason for refusal in decision.refusals) == case.refusals, decision.refusals
    if case.detail:
        assert case.detail in decision.refusals[-1].detail, decision.refusals


def test_a_restarted_agent_wakes_when_the_records_are_back() -> None:
    config = replace(CONFIG, node_name=ME, rejoin_mode="truncate")
    decision = decide(view(), fenced(first_read_at=NOW - 1), config)
    assert decision.next_wakeup <= NOW - 1 + CONFIG.member_stale_after


def test_the_rebuild_in_that_case_is_what_a_ready_primary_gets() -> None:
    """The same observation with n3 PRIMARY: the rebuild goes ahead (the case above waits only)."""
    obs = view(peers=(killed_n1(), holder(role=Role.PRIMARY)),
               repair=replace(PROVEN, gave_up="survived crash recovery", gave_up_on="truncate"))
    config = replace(CONFIG, node_name=ME, rejoin_mode="rebuild", rejoin_donor_primary=True)
    assert core_actions(decide(obs, fenced(), config)) == (
        RebuildNode("n3", "n3", ("0-2-3",), A.REBUILD_UNACKNOWLEDGED),)
