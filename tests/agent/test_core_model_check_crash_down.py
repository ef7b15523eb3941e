"""The model checker on issue 16's soak seed 443: a primary whose mysqld crashes and never starts
again (MariaDB's crash recovery failed for good), then each next winner fenced.

n1 (primary) crashes and its recovery fails (``db-break``: it never starts again); n2 wins,
promotes, and its token waits for an ack when it is cut off: its fence SIGKILLs mysqld (awaiting
its repair, publishing its state at the kill). n3 wins, promotes, and its mysqld stops (SIGSTOP
in the soak; a crash here): it fences. Every node is FENCED, and each live one waited for n1's
binlog state ("binlog state of n1 unknown"), which a mysqld that never answers again never gave.

With ``RepairView.binlog_state_on_disk`` (the agent reads its down mysqld's binlog files, an upper
bound of what it holds: a crash adds nothing and recovery only removes) n1's record says what it
may hold, and the others prove the takeover (or the repair without a primary) without it.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

import pytest

from dbfence.agent.state import Role
from tests.agent.core_model import NAMES, Model, ModelLimits, ModelViolationError, World
from tests.agent.test_core_model_check import LIVENESS_TICKS
from tests.agent.test_core_model_check_fence_crash import KILL_N2, explore_checking_liveness

FULL = os.environ.get("DBFENCE_MODEL_FULL") == "1"
#: n1's crash is one whose recovery fails for good (the rest as in seed 301's script).
BREAK_N1_KILL_N2 = [("db-break n1" if event == "db-crash n1" else event) for event in KILL_N2]
#: n1's agent fences; n3 wins and promotes (its token waits for an ack: n2 is down, n1 broken),
#: then its mysqld stops; it fences once its health checks trip (the clock moves on).
STOP_N3 = ["step n1", "step n1", "step n3", "step n3", "step n3", "db-crash n3",
           "clock", "step n3", "clock", "step n3", "clock", "step n3"]
LATER = ["clock", "settle"] * 3


def seed_443_model(*, crashed_states: bool) -> tuple[Model, World]:
    model = Model(ModelLimits(depth=5, faults=2, writes=1, max_time=30), rejoin_mode="truncate",
                  fence_by_crash=True)
    model.crashed_states = crashed_states
    n2_killed = model.drive(model.drive(model.initial_cold(), ["settle"]), BREAK_N1_KILL_N2)
    stopped = model.drive(n2_killed, STOP_N3)
    assert model.roles(stopped) == {name: Role.FENCED for name in NAMES}
    assert stopped.dcs.holder_at(float(stopped.now)) is None
    assert [(node.db.history, node.db.alive, node.db.killed_by_fence, node.db.broken)
            for node in stopped.nodes] == [
        (("n1", "n1"), False, False, True),
        (("n1", "n1", "n2"), False, True, False),
        (("n1", "n1", "n3"), False, False, False)]
    return model, stopped


def test_without_the_state_on_disk_the_cluster_waits_for_a_mysqld_that_never_starts() -> None:
    model, stopped = seed_443_model(crashed_states=False)
    stuck = model.drive(stopped, ["db-restart n3", *LATER])
    assert model.roles(stuck) == {name: Role.FENCED for name in NAMES}
    assert stuck.dcs.holder_at(float(stuck.now)) is None
    with pytest.raises(ModelViolationError, match="liveness"):
        model.ticks_to_good(stopped, ("<scripted>",), LIVENESS_TICKS)


def test_the_state_on_disk_of_a_mysqld_that_never_starts_lets_the_others_take_over() -> None:
    """n1's record carries the binlog state its files hold; n2's repair runs without a primary
    (n3 is down), n2 takes over, n3 rejoins once back, n1 stays down (an operator rebuilds it).
    Every interleaving from n3's stop and from its restart: never two writers, no acknowledged
    write lost (each takeover and truncation judged on the histories), and liveness."""
    model, stopped = seed_443_model(crashed_states=True)
    assert not model.good(stopped)
    recovered = model.settle(model.faults_stop(stopped))
    for _ in range(LIVENESS_TICKS):
        if model.good(recovered):
            break
        recovered = model.settle(replace(recovered, now=recovered.now + 1))
    assert model.good(recovered), model.roles(recovered)
    holder = recovered.dcs.holder_at(float(recovered.now))
    assert holder in ("n2", "n3") and model.roles(recovered)[holder] is Role.PRIMARY
    assert recovered.nodes[NAMES.index("n1")].db.broken  # still down: not part of "good"
    primary = recovered.nodes[NAMES.index(holder)].db.history
    assert primary[:2] == ("n1", "n1")  # n1's acknowledged writes kept
    assert model.takeovers > 0 and model.repairs_without_primary > 0  # n2 repaired alone, then took over
    started = time.monotonic()
    restarted = model.drive(stopped, ["db-restart n3"])
    total, checked = explore_checking_liveness(model, (stopped, restarted), depth=5 if FULL else 4)
    print(f"\nseed 443 model: {total} states, liveness checked for {checked}, {model.takeovers} "
          f"takeovers, {model.repairs_without_primary} repairs without a primary, "
          f"{time.monotonic() - started:.1f}s wall")
    assert total > 1_000 and model.takeovers > 50, (total, model.takeovers)
