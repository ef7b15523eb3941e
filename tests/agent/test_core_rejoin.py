"""Table tests of ``[rejoin]``: when a FENCED former primary removes its errant transactions."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from dbfence.agent.actions import Action, ActionReason, RebuildNode, Repoint, TruncateErrant
from dbfence.agent.core_config import CoreConfig, CoreConfigError
from dbfence.agent.decide import RefusalReason, decide
from dbfence.agent.observation import (
    ErrantCheck,
    LockView,
    MemberInfo,
    MemberRecord,
    Observation,
    OperatorIntents,
    RepairView,
)
from dbfence.agent.rejoin import NEEDS_APPROVAL, NO_DONOR, RepairHold, choose_donors, plan_repair
from dbfence.agent.state import Role, State, Trigger
from tests.agent.core_builders import CONFIG, NOW, core_actions, db, member, observe

R = RefusalReason
TRUNCATE = replace(CONFIG, rejoin_mode="truncate")
REBUILD = replace(CONFIG, rejoin_mode="rebuild")
FENCED = State(role=Role.FENCED, since=NOW - 10, fenced_reason=Trigger.LEASE_EXPIRED)
OWN_ERRANT = ErrantCheck("n2", ("0-11-101", "1-11-5..1-11-7"))  # the builders' server_id is 11
LOSSLESS = RepairView(evidence_problem=None)
TOKENS_ONLY = ErrantCheck("n2", ("0-11-101..0-11-102",), only_own_tokens=True)
SURVIVED = "0-11-101 survived crash recovery (committed in the engine): rebuild this node"
ERRANT_REFUSAL = (RefusalReason.ERRANT_GTIDS, "0-11-101,1-11-5..1-11-7")


def fenced_seeing_n2(errant: ErrantCheck | None = OWN_ERRANT, repair: RepairView = LOSSLESS,
                     n3: MemberRecord | None = None, **db_fields: object) -> Observation:
    obs = observe(Role.FENCED, lock=LockView(True, "n2", 3),
                  peers=(member("n2", Role.PRIMARY, position="0-2-120"),
                         n3 or member("n3", position="0-2-110")),
                  database=db(errant=errant, **db_fields))  # type: ignore[arg-type]
    return replace(obs, repair=repair)


@dataclass(frozen=True)
class Case:
    name: str
    config: CoreConfig
    observation: Observation
    actions: tuple[Action, ...]
    refusals: tuple[tuple[RefusalReason, str], ...]
    role: Role = Role.FENCED


CASES = [
    Case("manual: errant GTIDs keep it fenced, nothing removed", CONFIG, fenced_seeing_n2(),
         (), ((R.ERRANT_GTIDS, "0-11-101,1-11-5..1-11-7"),)),
    Case("truncate: lossless evidence and its own transactions -> truncate", TRUNCATE, fenced_seeing_n2(),
         (TruncateErrant("n2", OWN_ERRANT.gtids, ActionReason.REPAIR_UNACKNOWLEDGED),),
         ((R.ERRANT_GTIDS, "0-11-101,1-11-5..1-11-7"),)),
    Case("truncate: no evidence recorded -> stays fenced, says why", TRUNCATE,
         fenced_seeing_n2(repair=RepairView()),
         (), ((R.ERRANT_GTIDS, "0-11-101,1-11-5..1-11-7"), (R.REPAIR_UNSAFE, "no evidence recorded"))),
    Case("truncate: semi-sync fell back to async -> never", TRUNCATE,
         fenced_seeing_n2(repair=RepairView(evidence_problem="semi-sync fell back to asynchronous 2 times")),
         (), ((R.ERRANT_GTIDS, "0-11-101,1-11-5..1-11-7"),
              (R.REPAIR_UNSAFE, "semi-sync fell back to asynchronous 2 times"))),
    Case("truncate: no evidence, but only its own fencing tokens are errant -> truncate", TRUNCATE,
         fenced_seeing_n2(TOKENS_ONLY, repair=RepairView()),
         (TruncateErrant("n2", TOKENS_ONLY.gtids, ActionReason.REPAIR_UNACKNOWLEDGED),),
         ((R.ERRANT_GTIDS, "0-11-101..0-11-102"),)),
    Case("truncate: a fallback, but only its own fencing tokens are errant -> truncate", TRUNCATE,
         fenced_seeing_n2(TOKENS_ONLY, repair=RepairView(evidence_problem="semi-sync is off")),
         (TruncateErrant("n2", TOKENS_ONLY.gtids, ActionReason.REPAIR_UNACKNOWLEDGED),),
         ((R.ERRANT_GTIDS, "0-11-101..0-11-102"),)),
    Case("truncate: 'tokens only' with another server's GTID -> the evidence still decides", TRUNCATE,
         fenced_seeing_n2(replace(TOKENS_ONLY, gtids=("0-3-7",)), repair=RepairView()),
         (), ((R.ERRANT_GTIDS, "0-3-7"), (R.REPAIR_UNSAFE, "no evidence recorded"))),
    Case("truncate: a transaction of another server -> never", TRUNCATE,
         fenced_seeing_n2(ErrantCheck("n2", ("0-11-101", "0-3-7"))),
         (), ((R.ERRANT_GTIDS, "0-11-101,0-3-7"), (R.REPAIR_UNSAFE, "not written by this node: 0-3-7"))),
    Case("truncate: an errant range it cannot read -> never", TRUNCATE,
         fenced_seeing_n2(ErrantCheck("n2", ("garbage",))),
         (), ((R.ERRANT_GTIDS, "garbage"), (R.REPAIR_UNSAFE, "not written by this node: garbage"))),
    Case("truncate: own server id unknown -> never", TRUNCATE, fenced_seeing_n2(server_id=None),
         (), ((R.ERRANT_GTIDS, "0-11-101,1-11-5..1-11-7"),
              (R.REPAIR_UNSAFE, "not written by this node: 0-11-101,1-11-5..1-11-7"))),
    Case("truncate: a repair under way is not started again", TRUNCATE,
         fenced_seeing_n2(repair=RepairView(None, running=True, saved_file="/s/errant.sql")),
         (), ((R.ERRANT_GTIDS, "0-11-101,1-11-5..1-11-7"), (R.REPAIR_RUNNING, "/s/errant.sql"))),
    Case("truncate: after a failed attempt it gives up, with the reason", TRUNCATE,
         fenced_seeing_n2(repair=RepairView(None, gave_up="0-11-101 survived crash recovery")),
         (), ((R.ERRANT_GTIDS, "0-11-101,1-11-5..1-11-7"),
              (R.REPAIR_GAVE_UP, "0-11-101 survived crash recovery"))),
    Case("truncate: mysqld down (restarting for the repair) -> waits", TRUNCATE,
         fenced_seeing_n2(repair=RepairView(None, running=True), healthy=False, reasons=("mysqld down",)),
         (), ((R.DB_UNHEALTHY, "mysqld down"),)),
    Case("truncate: mysqld killed by the fence -> start it for recovery, errant set not known yet",
         TRUNCATE, fenced_seeing_n2(None, RepairView(None, awaiting_restart=True), healthy=False,
                                    reasons=("mysqld down",), position=None),
         (TruncateErrant("n2", (), ActionReason.REPAIR_UNACKNOWLEDGED),), ((R.DB_UNHEALTHY, "mysqld down"),)),
    Case("manual: mysqld down -> waits, as ever", CONFIG,
         fenced_seeing_n2(None, RepairView(None, awaiting_restart=True), healthy=False,
                          reasons=("mysqld down",), position=None),
         (), ((R.DB_UNHEALTHY, "mysqld down"),)),
    Case("truncate: killed by the fence, but the last attempt failed -> gives up", TRUNCATE,
         fenced_seeing_n2(None, RepairView(None, awaiting_restart=True, gave_up="binlog unreadable"),
                          healthy=False, reasons=("mysqld down",), position=None),
         (), ((R.DB_UNHEALTHY, "mysqld down"), (R.REPAIR_GAVE_UP, "binlog unreadable"))),
    Case("truncate: clean after the repair -> the ordinary rejoin", TRUNCATE,
         fenced_seeing_n2(ErrantCheck("n2", ()), source=None),
         (Repoint("n2", True, ActionReason.REJOIN),), (), Role.REPLICA),
    Case("truncate: paused -> no repair", TRUNCATE,
         replace(fenced_seeing_n2(), intents=OperatorIntents(paused=True)), (), ((R.PAUSED, ""),)),
    # rebuild: truncate when provably safe, else rebuild; by itself only when never acknowledged.
    Case("rebuild: lossless evidence -> truncate first (cheap, keeps the node's data)", REBUILD,
         fenced_seeing_n2(), (TruncateErrant("n2", OWN_ERRANT.gtids, ActionReason.REPAIR_UNACKNOWLEDGED),),
         (ERRANT_REFUSAL,)),
    Case("rebuild: lossless, but the truncation could not remove them -> rebuild from a replica",
         REBUILD, fenced_seeing_n2(repair=RepairView(None, gave_up=SURVIVED, gave_up_on="truncate")),
         (RebuildNode("n2", "n3", OWN_ERRANT.gtids, ActionReason.REBUILD_UNACKNOWLEDGED),),
         (ERRANT_REFUSAL,)),
    Case("truncate: the same failure -> gives up (rebuild is not its job)", TRUNCATE,
         fenced_seeing_n2(repair=RepairView(None, gave_up=SURVIVED, gave_up_on="truncate")),
         (), (ERRANT_REFUSAL, (R.REPAIR_GAVE_UP, SURVIVED))),
    Case("rebuild: asynchronous (maybe acknowledged) -> stays fenced, says how to approve", REBUILD,
         fenced_seeing_n2(repair=RepairView(evidence_problem="semi-sync is off")),
         (), (ERRANT_REFUSAL, (R.REPAIR_UNSAFE, "semi-sync is off" + NEEDS_APPROVAL.format(node="n1")))),
    Case("rebuild: no evidence and a truncation failed -> still needs the approval", REBUILD,
         fenced_seeing_n2(repair=RepairView(gave_up="binlog unreadable", gave_up_on="truncate")),
         (), (ERRANT_REFUSAL, (R.REPAIR_UNSAFE, "no evidence recorded" + NEEDS_APPROVAL.format(node="n1")))),
    Case("rebuild: a transaction of another server -> needs the approval", REBUILD,
         fenced_seeing_n2(ErrantCheck("n2", ("0-11-101", "0-3-7"))),
         (), ((R.ERRANT_GTIDS, "0-11-101,0-3-7"),
              (R.REPAIR_UNSAFE, "not written by this node: 0-3-7" + NEEDS_APPROVAL.format(node="n1")))),
    Case("rebuild: not proven, but an operator approved -> rebuild", REBUILD,
         fenced_seeing_n2(repair=RepairView(evidence_problem="semi-sync is off", rebuild_approved=True)),
         (RebuildNode("n2", "n3", OWN_ERRANT.gtids, ActionReason.REBUILD_APPROVED),), (ERRANT_REFUSAL,)),
    Case("rebuild: the only replica is unhealthy -> waits for one, never copies the primary", REBUILD,
         fenced_seeing_n2(repair=RepairView(None, gave_up=SURVIVED, gave_up_on="truncate"),
                          n3=member("n3", healthy=False)),
         (), (ERRANT_REFUSAL, (R.REPAIR_UNSAFE, NO_DONOR))),
    Case("rebuild: the only replica's record is stale -> waits for one", REBUILD,
         fenced_seeing_n2(repair=RepairView(evidence_problem="semi-sync is off", rebuild_approved=True),
                          n3=member("n3", last_seen=NOW - 60)),
         (), (ERRANT_REFUSAL, (R.REPAIR_UNSAFE, NO_DONOR))),
    Case("rebuild: a rebuild under way is not started again", REBUILD,
         fenced_seeing_n2(repair=RepairView(None, running=True, gave_up=SURVIVED, gave_up_on="truncate",
                                            saved_file="/s/errant.sql")),
         (), (ERRANT_REFUSAL, (R.REPAIR_RUNNING, "/s/errant.sql"))),
    Case("rebuild: a failed rebuild is not retried by itself", REBUILD,
         fenced_seeing_n2(repair=RepairView(None, gave_up="mbstream -x exited 1", gave_up_on="rebuild",
                                            rebuild_approved=True)),
         (), (ERRANT_REFUSAL, (R.REPAIR_GAVE_UP, "mbstream -x exited 1"))),
    Case("rebuild: clean after the rebuild -> the ordinary rejoin", REBUILD,
         fenced_seeing_n2(ErrantCheck("n2", ()), source=None),
         (Repoint("n2", True, ActionReason.REJOIN),), (), Role.REPLICA),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_rejoin_table(case: Case) -> None:
    decision = decide(case.observation, FENCED, case.config)
    assert decision.state.role is case.role
    assert core_actions(decision) == case.actions
    assert tuple((refusal.reason, refusal.detail) for refusal in decision.refusals) == case.refusals


def test_the_fence_stays_up_while_truncating() -> None:
    """Truncating never opens anything: the gate stays blocked, mysqld read-only."""
    decision = decide(fenced_seeing_n2(), FENCED, TRUNCATE)
    assert decision.state.fenced_reason is Trigger.ERRANT_GTIDS
    assert [type(action).__name__ for action in core_actions(decision)] == ["TruncateErrant"]


def test_plan_repair_is_none_in_manual_mode_whatever_the_evidence() -> None:
    assert plan_repair("manual", LOSSLESS, OWN_ERRANT, 11) is None
    unsafe = (RepairHold.UNSAFE, "no evidence recorded")
    assert plan_repair("truncate", RepairView(), OWN_ERRANT, 11) == unsafe


def test_an_unknown_rejoin_mode_is_refused() -> None:
    with pytest.raises(CoreConfigError, match="rejoin_mode must be one of manual, truncate, rebuild"):
        replace(CONFIG, rejoin_mode="clone")


@pytest.mark.parametrize("lock", [LockView(True, "n2", 3), LockView(True, None, None), LockView(False)],
                         ids=["a primary", "no lock holder", "DCS unreachable"])
def test_an_agent_restarted_while_its_killed_mysqld_awaits_the_repair_goes_fenced_not_replica(
        lock: LockView) -> None:
    """Found by the model checker (fence by crash, then the agent crashed): a restarted agent
    passes STARTING (mysqld down completes the fence) into REPLICA, where nothing asks for the
    repair, so the mysqld its fence killed stayed down for ever. It holds commits no replica
    received (in doubt until recovery removes them): it is fenced for errant GTIDs, and FENCED
    asks for the repair once a primary is ready."""
    down = db(healthy=False, reasons=("mysqld down",), position=None, read_only=None, source=None)
    replica = replace(observe(Role.REPLICA, lock=lock, peers=(member("n2", Role.PRIMARY, position="0-2-120"),
                                                             member("n3", position="0-2-110")),
                              database=down),
                      repair=RepairView(None, awaiting_restart=True))
    decision = decide(replica, State(role=Role.REPLICA, since=NOW - 1), TRUNCATE)
    assert decision.state.role is Role.FENCED
    assert decision.state.fenced_reason is Trigger.ERRANT_GTIDS
    assert (R.ERRANT_GTIDS, "mysqld killed by the fence: its commits no replica received await the "
            "repair") in [(refusal.reason, refusal.detail) for refusal in decision.refusals]
    assert not any(isinstance(action, (Repoint, TruncateErrant)) for action in core_actions(decision))
    if lock.holder == "n2":  # the next round asks for the repair (mysqld started for recovery)
        fenced = replace(replica, db=down)
        assert core_actions(decide(fenced, decision.state, TRUNCATE)) == (
            TruncateErrant("n2", (), ActionReason.REPAIR_UNACKNOWLEDGED),)
    # Without the repair keeper's word (manual mode never kills mysqld) a replica waits, as ever.
    plain = decide(replace(replica, repair=RepairView()), State(role=Role.REPLICA, since=NOW - 1), CONFIG)
    assert plain.state.role is Role.REPLICA


# ---------------------------------------------------------------- donor choice (choose_donors)
def info(name: str, role: Role = Role.REPLICA, *, healthy: bool = True,
         position: str | None = "0-2-120") -> MemberInfo:
    return member(name, role, healthy=healthy, position=position).info


PRIMARY_N2 = info("n2", Role.PRIMARY, position="0-2-120,1-2-40")


@dataclass(frozen=True)
class DonorCase:
    name: str
    members: tuple[MemberInfo, ...]
    switchover_target: str | None
    allow_primary: bool
    donors: tuple[str, ...]


DONOR_CASES = [
    DonorCase("the replica least behind the primary first, whatever the names",
              (PRIMARY_N2, info("n3", position="0-2-100,1-2-40"), info("n4", position="0-2-120,1-2-39")),
              None, False, ("n4", "n3")),
    DonorCase("lag counted over every domain; ties by name",
              (PRIMARY_N2, info("n5", position="0-2-119,1-2-40"), info("n4", position="0-2-120,1-2-39"),
               info("n3", position="0-2-110")), None, False, ("n4", "n5", "n3")),
    DonorCase("a replica with no known position comes after every known one",
              (PRIMARY_N2, info("n3", position=None), info("n4", position="0-2-1")), None, False,
              ("n4", "n3")),
    DonorCase("never the switchover target (it is about to carry the primary's load)",
              (PRIMARY_N2, info("n3", position="0-2-120,1-2-40"), info("n4", position="0-2-100")),
              "n3", False, ("n4",)),
    DonorCase("never an unhealthy replica, a fenced node (repairing itself) or this node",
              (PRIMARY_N2, info("n3", healthy=False), info("n4", Role.FENCED), info("n1")),
              None, False, ()),
    DonorCase("the primary only when allowed, and after every replica",
              (PRIMARY_N2, info("n3", position="0-2-1")), None, True, ("n3", "n2")),
    DonorCase("the primary alone when allowed and no replica can serve",
              (PRIMARY_N2, info("n3", healthy=False)), None, True, ("n2",)),
    DonorCase("not an unhealthy primary, even when allowed", (info("n2", Role.PRIMARY, healthy=False),),
              None, True, ()),
    DonorCase("the primary's record missing: replicas by name", (info("n4"), info("n3")), None, True,
              ("n3", "n4")),
]


@pytest.mark.parametrize("case", DONOR_CASES, ids=lambda c: c.name)
def test_donor_choice(case: DonorCase) -> None:
    assert choose_donors(case.members, "n1", "n2", case.switchover_target, case.allow_primary) == case.donors


def test_a_rebuild_copies_from_the_least_lagging_replica_and_the_refusal_names_the_command() -> None:
    approved = replace(LOSSLESS, evidence_problem="semi-sync is off", rebuild_approved=True)
    obs = observe(Role.FENCED, lock=LockView(True, "n2", 3),
                  peers=(member("n2", Role.PRIMARY, position="0-2-120"), member("n3", position="0-2-90"),
                         member("n4", position="0-2-119")),
                  database=db(errant=OWN_ERRANT))
    actions = core_actions(decide(replace(obs, repair=approved), FENCED, REBUILD))
    assert RebuildNode("n2", "n4", OWN_ERRANT.gtids, ActionReason.REBUILD_APPROVED) in actions
    unapproved = replace(obs, repair=replace(approved, rebuild_approved=False))
    refusals = decide(unapproved, FENCED, REBUILD).refusals
    assert any(r.reason is R.REPAIR_UNSAFE and r.detail.endswith("dbfence rejoin approve --node n1")
               for r in refusals)


def test_the_primary_is_a_donor_only_when_configured() -> None:
    truncation_failed = RepairView(evidence_problem=None, gave_up="x", gave_up_on="truncate")
    obs = replace(observe(Role.FENCED, lock=LockView(True, "n2", 3),
                          peers=(member("n2", Role.PRIMARY, position="0-2-120"),),
                          database=db(errant=OWN_ERRANT)), repair=truncation_failed)
    actions = core_actions(decide(obs, FENCED, REBUILD))
    assert not any(isinstance(a, RebuildNode) for a in actions)
    actions = core_actions(decide(obs, FENCED, replace(REBUILD, rejoin_donor_primary=True)))
    assert RebuildNode("n2", "n2", OWN_ERRANT.gtids, ActionReason.REBUILD_UNACKNOWLEDGED) in actions
