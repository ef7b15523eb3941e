"""Adopting a running cluster (issue 17) in the model checker: agents start in any order on a
primary that already takes writes from a direct client and on replicas that already replicate."""

from __future__ import annotations

import os
import time
from collections import Counter
from itertools import permutations

import pytest

from dbfence.agent import core_adoption
from dbfence.agent.decide import RefusalReason, decide
from dbfence.agent.state import Role
from tests.agent.core_model import NAMES, ModelLimits, ModelViolationError, World
from tests.agent.core_model_adopt import UNMANAGED, AdoptionModel, AdoptionWorld

LIVENESS_TICKS = 12
FULL = os.environ.get("DBFENCE_MODEL_FULL") == "1"


def refusals(model: AdoptionModel, world: World, name: str) -> set[RefusalReason]:
    index = NAMES.index(name)
    agent = world.nodes[index].agent
    assert agent is not None
    decision = decide(model.observe(world, index), agent.state, model.configs[name])
    return {refusal.reason for refusal in decision.refusals}


@pytest.mark.parametrize("order", list(permutations(NAMES)), ids="-".join)
def test_agents_started_in_any_order_adopt_the_running_primary(order: tuple[str, ...]) -> None:
    """Whatever the order, nothing moves: n1 becomes the primary without ever being set read-only
    (its direct client keeps writing), the replicas keep their source, no acknowledged write is lost."""
    model = AdoptionModel(ModelLimits(faults=0, writes=3))
    world: World = model.initial_unmanaged()
    for name in order:
        world = model.drive(world, [f"agent-restart {name}", "settle"])
        assert isinstance(world, AdoptionWorld)
        # The client writes straight to n1 until n1's agent serves, then through n1's gate.
        client = f"direct-write {UNMANAGED}" if world.direct_writer else f"write {UNMANAGED}"
        world = model.drive(world, [client, "settle"])
        if name != UNMANAGED and world.nodes[0].agent is None:
            # A replica whose source has no agent yet neither races nor detaches.
            assert world.dcs.holder is None
            assert world.nodes[NAMES.index(name)].db.receiving
            assert RefusalReason.SOURCE_UNMANAGED in refusals(model, world, name)
    world = model.drive(world, ["clock", "settle"])
    assert isinstance(world, AdoptionWorld)
    assert model.roles(world) == {"n1": Role.PRIMARY, "n2": Role.REPLICA, "n3": Role.REPLICA}
    assert model.good(world)
    assert model.direct_cuts == 0
    assert world.direct_writer is None  # moved to the gate once n1 served
    assert world.dcs.last_failover is not None  # the cluster now has a history
    n1 = world.nodes[0].db.history
    # The first transaction, three client writes and n1's fencing token, everywhere.
    assert n1 == (UNMANAGED,) * 5 and all(node.db.history == n1 for node in world.nodes)


def test_adoption_keeps_one_writer_in_every_interleaving() -> None:
    """Agents starting in any order while faults strike (crashes, pauses, partitions, stalls,
    a switchover request): never two writers counting the direct client's node, no acknowledged
    write lost, and once faults stop and every agent runs, one primary that every node follows."""
    model = AdoptionModel(ModelLimits(depth=7, faults=1, writes=1, max_time=8))
    unmanaged = model.initial_unmanaged()
    replica_first = model.drive(unmanaged, ["agent-restart n2", "settle"])
    primary_first = model.drive(unmanaged, ["agent-restart n1", "step n1"])
    started = time.monotonic()
    cpu_started = time.process_time()
    total = 0
    recoveries: Counter[int] = Counter()
    # About 30,000 states and 15 s of CPU; DBFENCE_MODEL_FULL=1: 207,000 states, about 2 minutes.
    depths = (7, 7, 7) if FULL else (6, 5, 5)
    for root, depth in zip((unmanaged, replica_first, primary_first), depths, strict=True):
        total += model.explore([root], depth=depth)
        # Liveness from every state reached: once faults stop, every agent runs (faults_stop
        # starts the missing ones) and the fair schedule must reach one primary followed by all.
        for world, trace in model.explored.items():
            recoveries[model.ticks_to_good(world, trace, LIVENESS_TICKS)] += 1
    print(f"\nadoption model check: {total} states, {model.promotions} promotions, "
          f"{time.monotonic() - started:.1f}s wall, {time.process_time() - cpu_started:.1f}s cpu; "
          f"ticks to a good state {dict(sorted(recoveries.items()))}")
    assert total > 20_000
    assert model.promotions > 1_000
    assert max(recoveries) > 0  # some states need lease expiry to recover: not vacuous


def test_the_checker_catches_a_replica_that_races_past_an_unmanaged_primary(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Without rule (a) (the behaviour before issue 17), a replica whose agent starts first takes
    the free lock and promotes while n1 still takes direct writes: the checker must say so."""
    monkeypatch.setattr(core_adoption, "unmanaged_source", lambda obs: None)
    model = AdoptionModel(ModelLimits(depth=10, faults=0, writes=1, max_time=6))
    # Caught as two writers, or first as the write n1 took that the new primary lacks.
    with pytest.raises(ModelViolationError, match=r"two writers|maybe acknowledged"):
        model.explore([model.initial_unmanaged()])
