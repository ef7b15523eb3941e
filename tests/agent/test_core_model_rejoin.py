"""The model checker with ``[rejoin] mode = "truncate"``: a fenced former primary removes its
errant transactions only when none can have been acknowledged, and the cluster converges."""

from __future__ import annotations

from dbfence.agent.decide import RefusalReason, decide
from dbfence.agent.state import Role, Trigger
from tests.agent.core_model import NAMES, Model, ModelLimits, World

SETTLE_FOR_TTL = ["settle", "clock", "settle", "clock", "settle", "clock", "settle", "clock", "settle"]
ERRANT = ["write n1", "db-crash n1", *SETTLE_FOR_TTL, "db-restart n1", "settle", "clock", "settle"]


def test_a_fenced_primary_truncates_what_no_replica_received_and_rejoins() -> None:
    model = Model(ModelLimits(depth=5, faults=2, writes=1, max_time=12), rejoin_mode="truncate")
    warm = model.drive(model.initial_cold(), ["settle"])
    repaired = model.drive(warm, ERRANT)
    assert model.roles(repaired) == {"n1": Role.REPLICA, "n2": Role.PRIMARY, "n3": Role.REPLICA}
    assert model.truncations >= 1
    histories = {node.db.history for node in repaired.nodes}
    assert len(histories) == 1, histories  # n1 lost its unreplicated write and follows n2

    roles_seen: set[Role] = set()

    def collect(world: World) -> None:
        roles_seen.update(node.agent.state.role for node in world.nodes if node.agent is not None)

    # Every interleaving around the fault, the repair and further faults: the model raises on a
    # truncation of anything another node holds, on two writers, on an errant rejoin.
    total = 0
    for root, depth in ((warm, 5), (model.drive(warm, ERRANT[:-3]), 5)):
        total += model.explore([root], on_state=collect, depth=depth)
    assert total > 1_000
    assert Role.FENCED in roles_seen and Role.PRIMARY in roles_seen


def test_without_lossless_evidence_it_stays_fenced_and_says_why() -> None:
    model = Model(ModelLimits(depth=4, faults=2, writes=1, max_time=12), lossless=False,
                  rejoin_mode="truncate")
    warm = model.drive(model.initial_cold(), ["settle"])
    errant = model.drive(warm, ERRANT)
    n1 = errant.nodes[NAMES.index("n1")]
    assert n1.agent is not None and n1.agent.state.role is Role.FENCED
    assert n1.agent.state.fenced_reason is Trigger.ERRANT_GTIDS
    decision = decide(model.observe(errant, 0), n1.agent.state, model.configs["n1"])
    assert (RefusalReason.REPAIR_UNSAFE, "asynchronous replication") in [
        (refusal.reason, refusal.detail) for refusal in decision.refusals]
    assert model.truncations == 0
    model.explore([errant], depth=4)
    assert model.truncations == 0


def test_rebuild_without_proof_waits_for_the_operator_then_rebuilds_and_converges() -> None:
    limits = ModelLimits(depth=4, faults=2, writes=1, max_time=12)
    waiting = Model(limits, lossless=False, rejoin_mode="rebuild")
    errant = waiting.drive(waiting.drive(waiting.initial_cold(), ["settle"]), ERRANT)
    n1 = errant.nodes[NAMES.index("n1")]
    assert n1.agent is not None and n1.agent.state.role is Role.FENCED
    waiting.explore([errant], depth=3)
    assert waiting.rebuilds == 0 and waiting.truncations == 0

    approved = Model(limits, lossless=False, rejoin_mode="rebuild", rebuild_approved=True)
    warm = approved.drive(approved.initial_cold(), ["settle"])
    rebuilt = approved.drive(warm, ERRANT)
    assert approved.rebuilds >= 1
    assert approved.roles(rebuilt) == {"n1": Role.REPLICA, "n2": Role.PRIMARY, "n3": Role.REPLICA}
    assert len({node.db.history for node in rebuilt.nodes}) == 1  # n1 holds the donor's copy
    approved.explore([approved.drive(warm, ERRANT[:-3])], depth=4)
