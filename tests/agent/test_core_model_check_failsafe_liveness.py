"""Liveness from failsafe starting states (docs/failsafe.md, Guarantee 6): from every state reached
after a DCS outage in which promises were asked, given and delivered (or lost), once the faults
stop *and the DCS returns* the fair fault-free schedule reaches one admitting primary that every
other node follows. Both returns are checked: every lease expired during the outage (a Consul
session invalidated; the worst case), and every lease kept (etcd refreshing leases when it elects
a leader)."""

from __future__ import annotations

import os
import time
from collections import Counter

from dbfence.agent.state import Role
from tests.agent.core_model import NAMES, Model, ModelLimits, World
from tests.agent.test_core_model_check import LIVENESS_TICKS, PROMISED

FULL = os.environ.get("DBFENCE_MODEL_FULL") == "1"


class DcsReturnsModel(Model):
    """The model whose "faults stop" also brings the DCS back, the way ``dcs_return`` says:
    ``dcs-up`` (leases expired meanwhile) or ``dcs-up-kept`` (leases refreshed). The return is
    the model's own event, so it is exactly what the exploration does."""

    dcs_return = "dcs-up"

    def faults_stop(self, world: World) -> World:
        world = super().faults_stop(world)
        if not world.dcs_down:
            return world
        returns = dict(self._failsafe_events(world))
        # With nobody holding the lock there is nothing to keep: both returns are the same.
        return returns.get(self.dcs_return, returns["dcs-up"])


def test_the_cluster_ends_with_one_primary_once_the_dcs_returns() -> None:
    model = DcsReturnsModel(ModelLimits(depth=5, faults=2, writes=1, max_time=12), failsafe=True)
    warm = model.drive(model.initial_cold(), ["settle"])
    outage = model.drive(warm, ["dcs-down", "clock", "step n1", "step n1"])
    extended = model.drive(outage, [*PROMISED, "clock", "step n1", "step n1", *PROMISED])
    assert extended.dcs_down and extended.nodes[0].gate.admits(float(extended.now))
    assert extended.nodes[0].gate.deadline is not None
    assert extended.nodes[0].agent is not None
    assert extended.nodes[0].gate.deadline > (extended.nodes[0].agent.lease.deadline or 0.0)  # on promises
    # Scripted: the DCS returns with the lease gone while the promises still bind; one primary.
    model.dcs_return = "dcs-up"
    assert model.ticks_to_good(extended, ("<scripted>",), LIVENESS_TICKS) >= 0
    model.dcs_return = "dcs-up-kept"
    assert model.ticks_to_good(extended, ("<scripted>",), 0) == 0  # kept: nothing moves at all

    started = time.monotonic()
    recoveries: Counter[tuple[str, int]] = Counter()
    on_promises = 0
    total = 0
    # The failsafe roots of test_failsafe_keeps_one_writer_through_dcs_outages, one level
    # shallower here (the liveness check of each state costs more than its safety check).
    roots = ((outage, 3), (extended, 4), (model.drive(extended, ["dcs-up", "partition n1"]), 3),
             (model.drive(outage, ["promise n2->n1", "partition n3"]), 3))
    for root, depth in roots:
        total += model.explore([root], depth=depth)
        liveness_depth = depth if FULL else depth - 1
        for world, trace in model.explored.items():
            if len(trace) - 1 > liveness_depth:
                continue
            now = float(world.now)
            if any(node.agent is not None and node.gate.admits(now)
                   and node.agent.lease.deadline is not None and node.gate.deadline is not None
                   and node.gate.deadline > node.agent.lease.deadline for node in world.nodes):
                on_promises += 1
            for dcs_return in ("dcs-up", "dcs-up-kept"):
                model.dcs_return = dcs_return
                recoveries[dcs_return, model.ticks_to_good(world, trace, LIVENESS_TICKS)] += 1
    checked = sum(recoveries.values()) // 2
    print(f"\nfailsafe liveness: {total} states, {checked} checked twice (DCS back with leases expired "
          f"/ kept), {on_promises} with a gate admitting on promises; ticks to a good state "
          f"{dict(sorted(recoveries.items()))}, {time.monotonic() - started:.1f}s wall")
    # Not vacuous: outages with promises given and in force, and futures that need time.
    assert checked > 2_000 and on_promises > 100
    assert max(ticks for (_, ticks) in recoveries) > 0
    assert model.roles(extended) == {"n1": Role.PRIMARY, "n2": Role.REPLICA, "n3": Role.REPLICA}
    assert set(NAMES) == {"n1", "n2", "n3"}
