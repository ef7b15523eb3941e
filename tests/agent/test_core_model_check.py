"""Exhaustive exploration of a 3-node cluster running the real ``decide`` (see core_model)."""

from __future__ import annotations

import os
import time

from dbfence.agent.state import Role, Trigger
from tests.agent.core_model import NAMES, Model, ModelLimits, World

FULL = os.environ.get("DBFENCE_MODEL_FULL") == "1"

#: Clock ticks (TTL 3) within which a cluster must recover once faults stop: a lease that
#: nobody renews expires, a stale record ages out, the race and the promotion finish.
LIVENESS_TICKS = 12

SETTLE_FOR_TTL = ["settle", "clock", "settle", "clock", "settle", "clock", "settle", "clock", "settle"]


def test_no_two_writers_in_any_interleaving() -> None:
    model = Model(ModelLimits(depth=6, faults=2, writes=1, max_time=10))
    cold = model.initial_cold()
    warm = model.drive(cold, ["settle"])
    assert model.roles(warm) == {"n1": Role.PRIMARY, "n2": Role.REPLICA, "n3": Role.REPLICA}
    failed_over = model.drive(warm, ["db-crash n1", *SETTLE_FOR_TTL])
    assert model.roles(failed_over) == {"n1": Role.FENCED, "n2": Role.PRIMARY, "n3": Role.REPLICA}
    # n1 takes a write that never replicates, dies, n2 takes over and writes its token:
    # n1's history has forked and it must stay fenced when it comes back.
    errant = model.drive(warm, ["write n1", "db-crash n1", *SETTLE_FOR_TTL,
                                "db-restart n1", "settle", "clock", "settle"])
    n1_state = errant.nodes[0].agent.state if errant.nodes[0].agent else None
    assert n1_state is not None and n1_state.role is Role.FENCED
    assert n1_state.fenced_reason is Trigger.ERRANT_GTIDS

    # An operator switchover: n1 fences, waits for n2, releases; n2 wins, n1 rejoins.
    switched = model.drive(warm, ["switchover n2", *SETTLE_FOR_TTL])
    assert model.roles(switched) == {"n1": Role.REPLICA, "n2": Role.PRIMARY, "n3": Role.REPLICA}
    assert switched.switchover is None

    # The primary's last write reached n3 only, then the primary died and let go: n3's record
    # still shows the old position, so n2 may win the race on stale data and must step down.
    stale_race = model.drive(warm, ["write n1", "replicate n3", "db-crash n1",
                                    "step n1", "step n1", "step n1"])
    assert model.roles(stale_race)["n1"] is Role.FENCED and stale_race.dcs.holder is None

    admitting_nodes: set[str] = set()
    roles_seen: set[Role] = set()

    def collect(world: World) -> None:
        for name, node in zip(NAMES, world.nodes, strict=True):
            if node.gate.admits(float(world.now)):
                admitting_nodes.add(name)
            if node.agent is not None:
                roles_seen.add(node.agent.state.role)

    started = time.monotonic()
    cpu_started = time.process_time()
    # Depths keep the run around a minute on a loaded 2-core machine; the steady
    # cluster, the most important root, gets one level more.
    roots = ((cold, 5), (warm, 6), (failed_over, 5), (errant, 4), (switched, 4), (stale_race, 4))
    # Liveness: from every state reached, once the faults stop, the fair fault-free schedule
    # reaches one admitting primary that every other node follows. In `make test` for the states
    # up to one event less deep (a third of them, most of its time); DBFENCE_MODEL_FULL=1 checks
    # every one.
    total, recoveries = model.explore_with_liveness(roots, LIVENESS_TICKS, full=FULL, on_state=collect)
    elapsed = time.monotonic() - started
    cpu = time.process_time() - cpu_started
    print(f"\nmodel check: {total} states explored, {model.acquisitions_checked} race decisions checked, "
          f"{model.promotions} promotions, {elapsed:.1f}s wall, {cpu:.1f}s cpu; liveness: ticks to a "
          f"good state {dict(sorted(recoveries.items()))} for {sum(recoveries.values())} states, "
          f"{len(model.liveness_memo)} fault-free futures")
    assert sum(recoveries.values()) >= (total if FULL else 20_000)  # not vacuous
    assert max(recoveries) > 0  # some states need time (lease expiry) to recover: not vacuous
    # The exploration is not vacuous: it reaches failovers by every node and every role.
    assert total > 10_000
    assert admitting_nodes == set(NAMES)
    assert roles_seen == set(Role)
    assert model.promotions > 100


PROMISED = ["promise n2->n1", "promise n3->n1", "reply n2->n1", "reply n3->n1", "step n1"]


def test_failsafe_keeps_one_writer_through_dcs_outages() -> None:
    """DCS outage and return, lost and late promise answers, partitions, paused and restarted
    agents: never two admitting nodes, never an admitting gate while another node holds the
    lock, and no member races or promotes while a promise it gave is live."""
    model = Model(ModelLimits(depth=5, faults=2, writes=1, max_time=12), failsafe=True)
    warm = model.drive(model.initial_cold(), ["settle"])
    assert model.roles(warm) == {"n1": Role.PRIMARY, "n2": Role.REPLICA, "n3": Role.REPLICA}
    assert warm.dcs.listed == frozenset(NAMES)
    # The DCS goes down at t=1; every member promises, the primary admits past its lease deadline.
    outage = model.drive(warm, ["dcs-down", "clock", "step n1", "step n1"])
    extended = model.drive(outage, [*PROMISED, "clock", "step n1", "step n1", *PROMISED])
    n1 = extended.nodes[0]
    assert n1.agent is not None and n1.agent.lease.deadline == 2.0
    assert n1.gate.admits(2.0) and n1.gate.deadline == 4.0
    # The DCS returns with the lease expired meanwhile: n1 takes the lock again (n2 and n3 are
    # still bound by their promises), writes the new token, and only then admits under it.
    returned = model.drive(extended, ["dcs-up", "clock", "step n2", "step n1", "step n1"])
    n1 = returned.nodes[0]
    assert returned.dcs.holder_at(3.0) == "n1" and returned.dcs.token == 2
    # Semi-sync: the token write is visible once a replica received it; the gate stays on the
    # promises (token 1) until then.
    assert n1.db.unacked_token == 2 and n1.gate.token == 1 and n1.gate.admits(3.0)
    returned = model.drive(returned, ["replicate n2"])
    assert returned.nodes[0].db.token == 2 and returned.nodes[0].gate.token == 1
    returned = model.drive(returned, ["step n1"])
    assert returned.nodes[0].gate.token == 2 and model.roles(returned)["n2"] is Role.REPLICA
    # ... or with the lease kept (etcd refreshes leases on electing a leader): nothing moves.
    kept = model.drive(extended, ["dcs-up-kept", "step n1", "clock", "step n1", "clock", "step n1"])
    assert model.roles(kept)["n1"] is Role.PRIMARY and kept.nodes[0].gate.admits(float(kept.now))
    # A frozen peer never answers: the primary fences at its deadline.
    frozen = model.drive(outage, ["agent-pause n3", "promise n2->n1", "reply n2->n1", "step n1",
                                  "clock", "step n1"])
    assert model.roles(frozen)["n1"] is Role.FENCING
    # A promiser restarted during the outage keeps its persisted promise and does not race.
    restarted = model.drive(extended, ["agent-crash n2", "agent-restart n2", "dcs-up", "clock", "clock",
                                       "settle"])
    n2 = restarted.nodes[1]
    assert n2.promise is not None and restarted.now < n2.promise.until
    assert n2.agent is not None and n2.agent.state.role is Role.REPLICA

    started = time.monotonic()
    total = 0
    # Depths keep this to seconds; the primary running on promises gets one level more.
    roots = ((outage, 4), (extended, 5), (model.drive(extended, ["dcs-up", "partition n1"]), 4),
             (model.drive(outage, ["promise n2->n1", "partition n3"]), 4))
    for root, depth in roots:
        total += model.explore([root], depth=depth)
    print(f"\nfailsafe model check: {total} states, {model.promises_given} promises given, "
          f"{model.extensions} decisions admitting past the lease on promises, "
          f"{time.monotonic() - started:.1f}s wall")
    assert total > 10_000
    assert model.extensions > 100 and model.promises_given > 100
