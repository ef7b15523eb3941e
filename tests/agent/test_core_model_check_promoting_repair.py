"""The model checker on a FENCED node repaired against a lock holder that is still PROMOTING.

Issue 16's soak (kill -9 RTO 6.45 / 6.51 s): the third node FENCED, the primary's mysqld killed;
the new holder's fencing token waits for an ack that only a FENCED node could give, and a FENCED
node repaired and rejoined only under a *ready* primary, so the token waited out its bound and
committed unacknowledged. The rule (dbfence/agent/decide_promoting_holder.py) lets a FENCED node
repair against and follow a promoting holder once that holder provably holds every write any
member holds that may have been acknowledged. Scripted here, n1..n3:

* n1 (primary) takes a write nobody receives and is cut off: its fence kills its mysqld (the
  commit waited for an ack); n2 takes over (n3 acknowledges);
* n2 takes a write nobody receives and its mysqld is killed -9; n3 wins, promotes, and its token
  waits for an ack: n1 is still cut off (FENCED, mysqld down awaiting its repair), n2 FENCED;
* n1's link heals and n2's mysqld restarts: both FENCED, each with its own unreceived write.

From there every interleaving: never two writers, nothing another node holds truncated,
promotions keep every maybe-acknowledged write, and liveness. And the rule's dangers, scripted:
a holder promoting without a write a third node received (and may have acknowledged) while the
FENCED node holds it too; and a third node whose record predates the holder's lock, still
receiving from the FENCED node's restarted mysqld. A rule without the proof, or without waiting
for every member to see the lock, truncates such a write (the model raises).
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

import pytest

from dbfence.agent import decide_fence, decide_promoting_holder
from dbfence.agent.decide import decide
from dbfence.agent.decide_round import RefusalReason, Round, fresh
from dbfence.agent.observation import MemberRecord
from dbfence.agent.state import Role
from tests.agent.core_model import NAMES, TOKEN_ACK_WAIT, Model, ModelLimits, ModelViolationError, World
from tests.agent.test_core_model_check import LIVENESS_TICKS

SETTLE_FOR_TTL = ["settle", "clock", "settle", "clock", "settle", "clock", "settle", "clock", "settle"]
N1_KILLED = ["write n1", "partition n1", "clock", "step n1", "clock", "step n1"]
N2_KILLED_9 = ["write n2", "db-crash n2", "clock", "step n2", "step n3", "clock", "step n2", "step n3",
               "clock", "step n3"]
BOTH_BACK = ["step n2", "heal n1", "db-restart n2"]
FULL = os.environ.get("DBFENCE_MODEL_FULL") == "1"


def scripted() -> tuple[Model, World, World]:
    model = Model(ModelLimits(depth=5, faults=2, writes=1, max_time=30), rejoin_mode="truncate",
                  fence_by_crash=True)
    model.check_new_primaries = True  # every new primary holds every write others received
    n2_primary = model.drive(model.drive(model.drive(model.initial_cold(), ["settle"]), N1_KILLED),
                             SETTLE_FOR_TTL)
    promoting = model.drive(n2_primary, N2_KILLED_9)
    stuck = model.drive(promoting, BOTH_BACK)
    assert model.roles(stuck) == {"n1": Role.FENCED, "n2": Role.FENCED, "n3": Role.PROMOTING}
    n1, n2, n3 = stuck.nodes
    assert (n1.db.history, n1.db.alive, n1.db.killed_by_fence) == (("n1", "n1"), False, True)
    assert (n2.db.history, n2.db.alive) == (("n1", "n2", "n2"), True)
    assert n3.db.history == ("n1", "n2", "n3") and n3.db.unacked_token is not None  # the token waits
    return model, promoting, stuck


def recover(model: Model, world: World) -> tuple[World, int]:
    """The fair fault-free schedule from ``world`` until it is good; returns it and the ticks."""
    recovered = model.settle(model.faults_stop(world))
    ticks = 0
    while not model.good(recovered):
        ticks += 1
        assert ticks <= LIVENESS_TICKS, model.roles(recovered)
        recovered = model.settle(replace(recovered, now=recovered.now + 1))
    return recovered, ticks


def test_fenced_nodes_repaired_against_the_promoting_holder_acknowledge_its_token() -> None:
    model, promoting, stuck = scripted()
    recovered, ticks = recover(model, stuck)
    assert ticks < TOKEN_ACK_WAIT
    assert model.roles(recovered) == {"n1": Role.REPLICA, "n2": Role.REPLICA, "n3": Role.PRIMARY}
    # Both truncated their own unreceived write and hold n3's token: acknowledged, not committed
    # by the end of the ack wait.
    assert [node.db.history for node in recovered.nodes] == [("n1", "n2", "n3")] * 3
    assert model.truncations >= 2 and model.token_waits_ended == 0
    started = time.monotonic()
    # About 3 s of CPU; DBFENCE_MODEL_FULL=1 goes two levels deeper (about 40 s).
    roots = ((promoting, 6), (stuck, 6)) if FULL else ((promoting, 4), (stuck, 4))
    total, recoveries = model.explore_with_liveness(roots, LIVENESS_TICKS, full=FULL)
    checked = sum(recoveries.values())
    print(f"\npromoting-holder repair: {total} states, liveness checked for {checked}, "
          f"{model.truncations} truncations, {model.promotions_checked} promotions checked, "
          f"{model.token_waits_ended} token waits ended, {time.monotonic() - started:.1f}s wall")
    assert total > 5_000 and model.truncations > 500


def test_without_the_rule_the_token_waits_out_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """The soak's figure: nobody acknowledges n3's token until its wait is ended (committed
    unacknowledged), and only then are n1 and n2 repaired under the ready primary."""
    monkeypatch.setattr(decide_fence, "promoting_holder", lambda r: (None, ""))
    model, _, stuck = scripted()
    model.token_alone_wait = None  # the bound as it was (test_core_model_check_token_alone.py)
    recovered, ticks = recover(model, stuck)
    assert ticks >= TOKEN_ACK_WAIT and model.token_waits_ended == 1
    assert model.roles(recovered) == {"n1": Role.REPLICA, "n2": Role.REPLICA, "n3": Role.PRIMARY}


#: n1 (primary) writes w, which n3 receives; n3's mysqld dies, then n1's; n2 (lacking w) wins,
#: since no member it can see holds w, and writes its token (waiting for an ack); n1's mysqld
#: comes back holding w, errant against n2. n3, down, holds w too: maybe acknowledged.
HOLDER_LACKS = ["write n1", "replicate n3", "db-crash n3", "db-crash n1", *["clock", "step n1", "step n2",
                "step n3"] * 3, "db-restart n1", "step n1", "step n2"]


def lacking_holder() -> tuple[Model, World]:
    model = Model(ModelLimits(depth=5, faults=2, writes=1, max_time=30), rejoin_mode="truncate")
    # n3's state must be unknown while it is down (an agent that reads no binlog files: manual
    # mode, an older agent, a read that failed); with it n2 sees n3 holds w and never wins.
    model.crashed_states = False
    model.limits = replace(model.limits, faults=3)  # the script spends three
    world = model.drive(model.drive(model.initial_cold(), ["settle"]), HOLDER_LACKS)
    model.limits = replace(model.limits, faults=2)
    world = replace(world, faults_left=2)
    assert model.roles(world) == {"n1": Role.FENCED, "n2": Role.PROMOTING, "n3": Role.REPLICA}
    assert [node.db.history for node in world.nodes] == [("n1", "n1"), ("n1", "n2"), ("n1", "n1")]
    return model, world


def _any_promoting_holder(r: Round) -> tuple[str | None, str]:
    """The rule without its proof: any fresh PROMOTING holder."""
    holder = r.obs.lock.holder
    record = None if holder is None or holder == r.me else r.obs.member(holder)
    if record is None or record.info.role is not Role.PROMOTING or not fresh(r, record):
        return None, ""
    return holder, ""


def test_a_holder_lacking_a_maybe_acknowledged_write_is_not_repaired_against() -> None:
    """n1 waits (n3's state unknown, then n3 holds w, which n2 lacks); n2 steps down for n3,
    which takes over; n1 then holds nothing errant. Every interleaving: safety and liveness."""
    model, world = lacking_holder()
    recovered, _ = recover(model, world)
    assert model.roles(recovered)["n3"] is Role.PRIMARY
    assert recovered.nodes[NAMES.index("n3")].db.history[:2] == ("n1", "n1")  # w kept
    total = checked = 0
    depth = 10 if FULL else 8
    # No further fault, and one tick: with three faults spent, a crash of n2's mysqld (its token
    # committed by recovery), or n1's and n3's agents not stepping for a TTL (their records gone),
    # lets n2 complete its promotion without w, and n1 then truncates w under a *ready* primary:
    # a gap of the older rules (check_keeps_acknowledged leaves unseen members out), not this one's.
    model.limits = replace(model.limits, max_time=world.now + 1)
    total += model.explore([replace(world, faults_left=0)], depth=depth)
    for state, trace in model.explored.items():
        if len(trace) - 1 <= (depth if FULL else depth - 1):
            model.ticks_to_good(state, trace, LIVENESS_TICKS)
            checked += 1
    assert total > 200, total


@pytest.mark.parametrize("weakened", ["no proof at all", "positions known, no proof of what is held"])
def test_without_the_proof_the_repair_truncates_a_maybe_acknowledged_write(
        monkeypatch: pytest.MonkeyPatch, weakened: str) -> None:
    model, world = lacking_holder()
    if weakened == "no proof at all":
        monkeypatch.setattr(decide_fence, "promoting_holder", _any_promoting_holder)
        script = ["step n1"]
    else:
        monkeypatch.setattr(decide_promoting_holder, "maybe_acknowledged", lambda *args: ())
        script = ["db-restart n3", "step n3", "step n1"]  # n3's record shows w: known now
    with pytest.raises(ModelViolationError, match=r"n1 truncates .* which n3 holds"):
        model.drive(world, script)


#: n1 (primary) takes w, which no replica has received yet, and its mysqld dies; n2 wins and
#: promotes, waiting for n3 to see its lock (n3's agent has not stepped since: its fresh record
#: is of n1's term, and it still receives from n1). n1's mysqld comes back, w errant against n2:
#: n3 may receive w from it any moment now.
UNSEEN = ["clock", "settle", "clock", "settle", "clock", "settle", "write n1", "db-crash n1", "step n1",
          "step n1", "step n2", "step n2", "step n1", "db-restart n1"]


def unseen_lock() -> tuple[Model, World]:
    model = Model(ModelLimits(depth=5, faults=1, writes=1, max_time=6), rejoin_mode="truncate")
    world = model.drive(model.drive(model.initial_cold(), ["settle"]), UNSEEN)
    assert model.roles(world) == {"n1": Role.FENCED, "n2": Role.PROMOTING, "n3": Role.REPLICA}
    n3 = world.dcs.record("n3")
    assert n3 is not None and n3.info.seen_token != world.dcs.token
    # A stalled decision of n3 (publish, then receive w, then detach) or a stalled Repoint is a
    # fault of its own (the model's Repoint is stricter than the adapter's, which checks again):
    # explored without further faults.
    return model, replace(world, faults_left=0)


def test_a_member_that_has_not_seen_the_holders_lock_is_waited_for() -> None:
    model, world = unseen_lock()
    n1 = world.nodes[NAMES.index("n1")].agent
    assert n1 is not None
    refusals = decide(model.observe(world, 0), n1.state, model.configs["n1"]).refusals
    assert any(refusal.reason is RefusalReason.NO_PRIMARY_TO_REJOIN
               and "waiting for n3 to see its lock" in refusal.detail for refusal in refusals), refusals
    total = checked = 0
    depth = 9 if FULL else 7
    total += model.explore([world], depth=depth)
    for state, trace in model.explored.items():
        if len(trace) - 1 <= (depth if FULL else depth - 1):
            model.ticks_to_good(state, trace, LIVENESS_TICKS)
            checked += 1
    assert total > 2_000 and model.truncations > 100, (total, model.truncations)


def test_without_waiting_for_it_the_repair_truncates_what_it_received(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = decide_promoting_holder.promoting_holder

    def seen_by_everyone(r: Round) -> tuple[str | None, str]:
        token = r.obs.lock.token
        members = tuple(MemberRecord(replace(m.info, seen_token=token), m.last_seen) for m in r.obs.members)
        return real(Round(replace(r.obs, members=members), r.config, r.state))
    monkeypatch.setattr(decide_fence, "promoting_holder", seen_by_everyone)
    model, world = unseen_lock()
    with pytest.raises(ModelViolationError, match=r"n1 truncates .* which n3 holds"):
        model.drive(world, ["replicate n3", "step n1"])
