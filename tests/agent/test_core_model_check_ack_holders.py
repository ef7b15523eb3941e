"""Model check of soak seed 401: a race past writes that a peer of unknown position may have
acknowledged (the rules in dbfence/agent/decide_ack_holders.py).

The run, scripted from the steady cluster (the seed's db2, db3, db1 are n1, n3, n2 here): n1
(primary) takes a write that n3 receives and n2 does not, then n1 is cut off from the DCS and
fences when its lease runs out (FENCED, mysqld up, its record back once the link heals). n3, which
holds the write, races and wins; its mysqld dies while it promotes, so it fences (FENCED) and its
record says nothing of what it holds. n2 then sees n1 FENCED ahead of it, n3 of unknown position,
and nobody the race ranks ahead of it.

The model's ``check_keeps_acknowledged`` judges every promotion on the histories: a promoting node
must hold every write that a node other than its writer received (lossless semi-sync acknowledged
it then). Without the rules n2 races and promotes past n1's write, which n3 received. With the
first rule n2 waits for n3's position; without the second, n2 races once n3's mysqld is back
(FENCED, holding the write), and the checker finds that too. With both, every interleaving near it
is safe and, once the faults stop, n3 (it holds everything) takes over and the others follow.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

import pytest

from dbfence.agent import decide_ack_holders, decide_race, decide_takeover
from dbfence.agent.decide import RefusalReason, decide
from dbfence.agent.decide_ack_holders import Concern, Holding
from dbfence.agent.state import Role
from tests.agent.core_model import Model, ModelLimits, ModelViolationError, World
from tests.agent.test_core_model_check import LIVENESS_TICKS

FULL = os.environ.get("DBFENCE_MODEL_FULL") == "1"

#: n1 writes, n3 receives it, n1 is cut off and fences, then comes back FENCED.
N1_FENCES = ["write n1", "replicate n3", "partition n1", "clock", "clock", "step n1", "step n1", "clock",
             "step n1", "step n1", "heal n1", "step n1"]
#: n3 wins the race and promotes; its mysqld dies: FENCED, position unknown.
N3_DIES_PROMOTING = ["step n3", "step n3", "db-crash n3", "step n3", "step n3", "step n3", "clock", "step n3"]


def seed401(model: Model) -> World:
    """The state of the script's end, with ``model``'s budgets for what comes next."""
    script = Model(ModelLimits(faults=2, writes=1))  # the script spends a write and two faults
    warm = script.drive(script.initial_cold(), ["settle"])
    world = replace(script.drive(warm, [*N1_FENCES, *N3_DIES_PROMOTING]),
                    faults_left=model.limits.faults, writes_left=model.limits.writes)
    assert model.roles(world) == {"n1": Role.FENCED, "n2": Role.REPLICA, "n3": Role.FENCED}
    assert [node.db.history for node in world.nodes] == [("n1", "n1"), ("n1",), ("n1", "n1", "n3")]
    assert world.dcs.holder_at(float(world.now)) is None and not world.nodes[2].db.alive
    n3 = world.dcs.record("n3")
    assert n3 is not None and n3.info.position is None
    return world


def _without_rules(monkeypatch: pytest.MonkeyPatch, *, keep_unknown: bool) -> None:
    """Play agents without the rules (``keep_unknown``: only with the first), and without the
    race's fenced-holder rule (seed 403), which covers the second rule's case as well."""
    judge = decide_ack_holders.ack_holder_concerns
    for module in (decide_race, decide_takeover):
        monkeypatch.setattr(module, "fenced_writes_lacking", lambda *_: [])

    def concerns(me: Holding, others: list[Holding]) -> list[Concern]:
        return [concern for concern in judge(me, others) if keep_unknown and concern.unknown is not None]

    monkeypatch.setattr(decide_ack_holders, "ack_holder_concerns", concerns)


def test_without_the_rules_n2_races_and_loses_the_write_n3_received(monkeypatch: pytest.MonkeyPatch) -> None:
    _without_rules(monkeypatch, keep_unknown=False)
    model = Model(ModelLimits(depth=6, faults=0, writes=0, max_time=8))
    lost = (r"n2 turns writable at \('n1', 'n2'\) without write 2 by n1 that \['n3'\] received "
            r"\(maybe acknowledged\)")
    with pytest.raises(ModelViolationError, match=lost):
        model.explore([seed401(model)])


def test_with_the_first_rule_only_n2_races_once_n3_is_back_fenced(monkeypatch: pytest.MonkeyPatch) -> None:
    """n3's mysqld comes back (FENCED, holding n1's write): the race does not rank a FENCED
    member, so without the second rule n2 races past it."""
    _without_rules(monkeypatch, keep_unknown=True)
    model = Model(ModelLimits(depth=6, faults=0, writes=0, max_time=8))
    world = seed401(model)
    n2 = world.nodes[1].agent
    assert n2 is not None
    refusals = decide(model.observe(world, 1), n2.state, model.configs["n2"]).refusals
    assert [refusal.reason for refusal in refusals] == [RefusalReason.PEER_POSITION_UNKNOWN]
    with pytest.raises(ModelViolationError, match="maybe acknowledged"):
        model.ticks_to_good(world, ("<scripted>",), LIVENESS_TICKS)


def test_with_the_rules_every_interleaving_keeps_the_write_and_recovers() -> None:
    model = Model(ModelLimits(depth=4, faults=1, writes=1, max_time=14))
    world = seed401(model)
    n2 = world.nodes[1].agent
    assert n2 is not None
    decision = decide(model.observe(world, 1), n2.state, model.configs["n2"])
    assert decision.state.role is Role.REPLICA
    unknown = [r for r in decision.refusals if r.reason is RefusalReason.PEER_POSITION_UNKNOWN]
    assert len(unknown) == 1
    assert "waiting for n3's position: it may hold writes n1 holds up to 0-1-2" in unknown[0].detail
    # n3's mysqld, down, publishes what its binlog files hold (seed 443): n1's write, received.
    assert any("n3 (fenced) holds 0-1-2" in r.detail for r in decision.refusals
               if r.reason is RefusalReason.PEER_MORE_ADVANCED), decision.refusals
    # Once the faults stop n3's mysqld is back: n3 holds everything and takes over.
    model.ticks_to_good(world, ("<scripted>",), LIVENESS_TICKS)
    recovered = model.settle(model.faults_stop(world))
    while not model.good(recovered):
        recovered = model.settle(replace(recovered, now=recovered.now + 1))
    assert model.roles(recovered) == {"n1": Role.REPLICA, "n2": Role.REPLICA, "n3": Role.PRIMARY}
    assert recovered.nodes[2].db.history[:2] == ("n1", "n1") and model.takeovers > 0
    started = time.monotonic()
    checked = 0
    # `make test`: about 10 s; DBFENCE_MODEL_FULL=1 goes three levels deeper with a second fault.
    if FULL:
        model = Model(ModelLimits(depth=7, faults=2, writes=1, max_time=16))
        world = seed401(model)
    total = model.explore([world])
    for explored, trace in model.explored.items():
        model.ticks_to_good(explored, trace, LIVENESS_TICKS)
        checked += 1
    print(f"\nseed 401 model check: {total} states, liveness checked for {checked}, "
          f"{model.promotions_checked} promotions judged on the histories, {model.takeovers} takeovers, "
          f"{time.monotonic() - started:.1f}s wall")
    assert total > 1_000 and model.promotions_checked > 100 and model.takeovers > 100
