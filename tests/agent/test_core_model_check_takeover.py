"""Model check of a plain failover whose winner fences while promoting, the third node errant
(issue 16's all-fenced cluster; the takeover rule in dbfence/agent/decide_takeover.py).

The run: n1 (primary) writes twice, nothing replicates, its mysqld dies; n2 takes over and n1
comes back errant (FENCED). Then n2's mysqld dies: n2 fences and lets go (FENCED), n3 wins and
promotes; its fencing-token write waits for a semi-sync ack that nobody can give (n1 fenced,
n2 down), and n3 is cut off from the DCS before the wait ends, so it fences too (FENCED). Once
the faults stop every node is FENCED with the lock free: a FENCED node only rejoins under a
PRIMARY, and only a REPLICA races, so each refused ``no_primary_to_rejoin`` for ever.

With the rule, n3 (it holds everything n2 holds, and of n1 only what n1's own, never received
writes lack) takes the lock, n2 rejoins under it, n1 stays fenced for its errant writes. The
model's ``check_takeover`` judges every takeover on the histories themselves. Without the binlog
states the rule cannot prove anything, and the liveness check finds the stuck state.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

import pytest

from dbfence.agent.decide import RefusalReason, decide
from dbfence.agent.state import Role
from tests.agent.core_model import NAMES, Model, ModelLimits, ModelViolationError, World
from tests.agent.test_core_model_check import LIVENESS_TICKS, SETTLE_FOR_TTL

FULL = os.environ.get("DBFENCE_MODEL_FULL") == "1"

#: From the errant cluster (n1 FENCED, n2 PRIMARY, n3 REPLICA) to n3 winning the race.
N3_WINS = ["db-crash n2", "step n2", "step n2", "step n3"]
#: n3 promotes (its token waits for an ack), is cut off and fences while nobody acknowledges.
N3_FENCES = ["step n3", "partition n3", "clock", "clock", "step n3", "step n3", "clock", "step n3", "step n3"]


def errant_cluster(model: Model) -> World:
    warm = model.drive(model.initial_cold(), ["settle"])
    errant = model.drive(model.drive(warm, ["write n1"]), [
        "write n1", "db-crash n1", *SETTLE_FOR_TTL, "db-restart n1", "settle", "clock", "settle"])
    assert model.roles(errant) == {"n1": Role.FENCED, "n2": Role.PRIMARY, "n3": Role.REPLICA}
    return errant


def test_without_the_rule_every_node_stays_fenced() -> None:
    model = Model(ModelLimits(depth=5, faults=2, writes=1, max_time=14))
    failed = model.drive(errant_cluster(model), [*N3_WINS, *N3_FENCES])
    # From here on, agents that publish no binlog state: the rule proves nothing. (They play the
    # run up to here no more: by positions alone n3 cannot tell n1's errant tail from writes n2,
    # its mysqld down, may have acknowledged, and waits for n2: decide_ack_holders.)
    model.binlog_states = False
    assert model.roles(failed) == {"n1": Role.FENCED, "n2": Role.FENCING, "n3": Role.FENCED}
    assert failed.dcs.holder_at(float(failed.now)) is None
    # The final state, once the faults stopped: every node FENCED, each waiting for a primary.
    stuck = model.settle(model.faults_stop(failed))
    for _ in range(LIVENESS_TICKS):
        stuck = model.settle(replace(stuck, now=stuck.now + 1))  # as the liveness check's fair schedule
    assert model.roles(stuck) == {name: Role.FENCED for name in NAMES}
    assert [node.db.history for node in stuck.nodes] == [("n1",) * 3, ("n1", "n2"), ("n1", "n2", "n3")]
    for index, name in enumerate(NAMES):
        agent = stuck.nodes[index].agent
        assert agent is not None
        decision = decide(model.observe(stuck, index), agent.state, model.configs[name])
        assert decision.state.role is Role.FENCED
        assert decision.refusals[0].reason is RefusalReason.NO_PRIMARY_TO_REJOIN, decision.refusals
    with pytest.raises(ModelViolationError, match="liveness"):
        model.ticks_to_good(failed, ("<scripted>",), LIVENESS_TICKS)


def test_the_node_holding_everything_takes_over_in_every_interleaving() -> None:
    model = Model(ModelLimits(depth=5, faults=2, writes=1, max_time=14))
    won = model.drive(errant_cluster(model), N3_WINS)
    assert model.roles(won) == {"n1": Role.FENCED, "n2": Role.FENCING, "n3": Role.CANDIDATE}
    failed = model.drive(won, N3_FENCES)
    # Scripted: n3 takes over, n2 rejoins under it, n1 stays fenced for its own writes. n2 rejoins
    # while n3 promotes and acknowledges its token (decide_promoting_holder.py): no ended ack wait.
    assert not model.good(failed)
    model.ticks_to_good(failed, ("<scripted>",), LIVENESS_TICKS)
    assert model.token_waits_ended == 0
    recovered = model.settle(model.faults_stop(failed))
    for _ in range(LIVENESS_TICKS):
        if model.good(recovered):
            break
        recovered = model.settle(replace(recovered, now=recovered.now + 1))
    assert model.roles(recovered) == {"n1": Role.FENCED, "n2": Role.REPLICA, "n3": Role.PRIMARY}
    assert model.takeovers > 0
    # Every interleaving near it: faults while n3 promotes and fences, and during the takeover.
    started = time.monotonic()
    # `make test` keeps this to about 2 s of CPU; DBFENCE_MODEL_FULL=1 goes two levels deeper
    # from n3's win and one from the stuck state, with liveness from every state.
    roots = ((won, 6), (failed, 5)) if FULL else ((won, 4), (failed, 4))
    total, recoveries = model.explore_with_liveness(roots, LIVENESS_TICKS, full=FULL)
    checked = sum(recoveries.values())
    print(f"\ntakeover model check: {total} states, liveness checked for {checked}, {model.takeovers} "
          f"takeovers checked on the histories, {time.monotonic() - started:.1f}s wall")
    assert total > 10_000 and model.takeovers > 100
