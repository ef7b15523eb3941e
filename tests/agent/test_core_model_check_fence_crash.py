"""The model checker on issue 15's "killed by the fence, waiting for the repair" path.

With ``[rejoin] mode = "truncate"`` and lossless evidence, the fence of a primary whose commits
wait for an ack SIGKILLs its mysqld (the repair keeper's fence by crash). Nothing restarts that
mysqld but the repair the core asks for (TruncateErrant while the database is down and
``awaiting_restart``): a crash recovery that removes exactly the commits no replica received.
The model explores that path with a second fault meanwhile (the new primary's database or
agent, a partition, the DCS link...) and checks: never two writers, nothing another node holds
is removed, and once faults stop the killed node is started and back as a replica.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import replace

import pytest

from dbfence.agent.state import Role
from tests.agent.core_model import NAMES, TOKEN_ALONE_WAIT, Model, ModelLimits, ModelViolationError, World
from tests.agent.test_core_model_check import LIVENESS_TICKS

SETTLE_FOR_TTL = ["settle", "clock", "settle", "clock", "settle", "clock", "settle", "clock", "settle"]


def test_a_primary_killed_by_its_fence_is_repaired_and_rejoins_through_a_second_fault() -> None:
    model = Model(ModelLimits(depth=5, faults=2, writes=1, max_time=14), rejoin_mode="truncate",
                  fence_by_crash=True)
    warm = model.drive(model.initial_cold(), ["settle"])
    # n1 takes a write no replica receives, then loses the DCS: its fence finds the commit waiting.
    killed = model.drive(warm, ["write n1", "partition n1", "clock", "step n1", "clock", "step n1"])
    n1 = killed.nodes[NAMES.index("n1")]
    assert n1.db.killed_by_fence and not n1.db.alive, n1.db
    assert model.crash_fences >= 1
    # It stays down, awaiting its repair, until a primary is ready; after the heal it is repaired.
    healed = model.drive(killed, ["heal n1", *SETTLE_FOR_TTL])
    n1 = healed.nodes[NAMES.index("n1")]
    assert n1.db.alive and not n1.db.killed_by_fence and model.truncations >= 1
    assert model.good(healed), model.roles(healed)

    # While it is cut off, n2 takes over; n1's mysqld stays down (no primary it can see).
    taken_over = model.drive(killed, SETTLE_FOR_TTL)
    assert model.roles(taken_over)["n2"] is Role.PRIMARY
    assert taken_over.nodes[NAMES.index("n1")].db.killed_by_fence

    # Every interleaving from n1 killed, from n2's takeover, and from the heal on (the repair,
    # with a second fault before, during or after it); liveness from every state one event less deep.
    total = waiting = repaired = checked = 0
    recoveries: list[int] = []
    # (Depths keep it to about 20 s on a loaded 2-core machine.)
    for root, depth in ((killed, 4), (taken_over, 4), (model.drive(taken_over, ["heal n1"]), 4)):
        total += model.explore([root], depth=depth)
        for world, trace in model.explored.items():
            n1 = world.nodes[NAMES.index("n1")]
            waiting += n1.db.killed_by_fence
            repaired += n1.db.alive and not n1.db.killed_by_fence
            if len(trace) - 1 <= depth - 1:
                recoveries.append(model.ticks_to_good(world, trace, LIVENESS_TICKS))
                checked += 1
    assert total > 1_000 and waiting > 100 and repaired > 100, (total, waiting, repaired)  # not vacuous
    assert max(recoveries) > 0
    print(f"\nfence by crash: {total} states, {waiting} with the killed mysqld down, {repaired} after its "
          f"repair, {model.truncations} truncations, liveness checked for {checked}")


#: Issue 16's soak (seed 301), n1 in db2's place: n1 (primary) is killed -9 by the nemesis; n2
#: wins, promotes, turns writable, and its token waits for an ack (n3 has not received it) when
#: it is cut off: its fence SIGKILLs mysqld. Then the same happens to n3.
KILL_N2 = ["write n1", "settle", "db-crash n1", *["clock"] * 8, "step n2", "step n3", "step n2", "step n3",
           "step n2", "partition n2", *["clock"] * 4, "step n2", "step n2", "heal n2"]
KILL_N3 = ["step n3", "step n3", "step n3", "partition n3", *["clock"] * 4, "step n3", "step n3", "heal n3"]
FULL = os.environ.get("DBFENCE_MODEL_FULL") == "1"


def explore_checking_liveness(model: Model, roots: Iterable[World], depth: int) -> tuple[int, int]:
    """Every interleaving ``depth`` events deep from each root, and liveness from each state
    reached within ``depth`` events (``depth - 1`` unless FULL). Returns the states explored and
    the states whose liveness was checked."""
    total = checked = 0
    for root in roots:
        total += model.explore([root], depth=depth)
        for world, trace in model.explored.items():
            if len(trace) - 1 <= (depth if FULL else depth - 1):
                model.ticks_to_good(world, trace, LIVENESS_TICKS)
                checked += 1
    return total, checked


def soak_model(*, killed_states: bool) -> tuple[Model, World]:
    model = Model(ModelLimits(depth=5, faults=2, writes=1, max_time=30), rejoin_mode="truncate",
                  fence_by_crash=True)
    model.killed_states = killed_states
    n2_killed = model.drive(model.drive(model.initial_cold(), ["settle"]), KILL_N2)
    both_killed = model.drive(n2_killed, KILL_N3)  # (each drive refills the fault budget)
    assert [(node.db.history, node.db.killed_by_fence) for node in both_killed.nodes] == [
        (("n1", "n1"), False), (("n1", "n1", "n2"), True), (("n1", "n1", "n3"), True)]
    return model, both_killed


def test_without_the_killed_nodes_states_the_soak_ends_with_every_node_fenced() -> None:
    """Each killed mysqld waits for a primary to be repaired against; n1, restarted, holds every
    acknowledged write but cannot prove it without their binlog states: a circular wait."""
    model, both_killed = soak_model(killed_states=False)
    stuck = model.drive(both_killed, ["db-restart n1", "settle"])
    assert model.roles(stuck) == {name: Role.FENCED for name in NAMES}
    with pytest.raises(ModelViolationError, match="liveness"):
        model.ticks_to_good(both_killed, ("<scripted>",), LIVENESS_TICKS)


def test_the_killed_nodes_states_at_the_kill_let_the_node_holding_everything_take_over() -> None:
    """With the binlog state each killed mysqld had at the kill in its record, n1 proves it holds
    all but their own in-doubt tokens, takes over, and both are repaired (their tokens truncated)
    and rejoin. Every interleaving from the stuck state: never two writers, no acknowledged
    write lost (each takeover judged on the histories), and liveness."""
    model, both_killed = soak_model(killed_states=True)
    assert not model.good(both_killed)
    # n2 and n3 are repaired against n1 while it promotes and acknowledge its token: it is not
    # committed by the end of its ack wait (decide_promoting_holder.py). Shown with the wait's
    # early end (nobody attached) off, which would commit it first; explored with it on.
    model.token_alone_wait, ended = None, model.token_waits_ended
    model.ticks_to_good(both_killed, ("<scripted>",), LIVENESS_TICKS)
    assert model.token_waits_ended == ended
    model.token_alone_wait = TOKEN_ALONE_WAIT
    recovered = model.settle(model.faults_stop(both_killed))
    for _ in range(LIVENESS_TICKS):
        if model.good(recovered):
            break
        recovered = model.settle(replace(recovered, now=recovered.now + 1))
    assert model.roles(recovered) == {"n1": Role.PRIMARY, "n2": Role.REPLICA, "n3": Role.REPLICA}
    assert [node.db.history for node in recovered.nodes] == [("n1",) * 3] * 3
    assert model.takeovers > 0 and model.truncations >= 2
    started = time.monotonic()
    restarted = model.drive(both_killed, ["db-restart n1"])
    total, checked = explore_checking_liveness(model, (both_killed, restarted), depth=5 if FULL else 4)
    print(f"\nsoak takeover with killed members: {total} states, liveness checked for {checked}, "
          f"{model.takeovers} takeovers checked on the histories, {time.monotonic() - started:.1f}s wall")
    assert total > 5_000 and model.takeovers > 100


#: Issue 16's soak, seed 403, n1..n3 in db1..db3's places: n1 (primary) is killed -9; n2 wins and
#: writes w1, which n3 receives (acknowledged), and w2, which nobody receives, when it is cut off:
#: its fence SIGKILLs mysqld (w2 waits for an ack). n3 wins, promotes, and its token waits for an
#: ack (n1 fenced, n2 down) when it is cut off too: killed as well. n1's mysqld comes back.
N2_WRITES = ["write n2", "replicate n3"]
N2_KILLED = ["write n2", "partition n2", "clock", "step n2", "step n3", "clock", "step n2", "step n3",
             "clock", "step n2", "step n3"]
# n3 writes its token (its second step) before it is cut off: a winner cut off before it has
# written anything now takes no promotion step at all (seed 401's rules), and is not killed.
N3_KILLED = ["heal n2", "step n3", "step n3", "partition n3", *["clock", "step n3"] * 3, "heal n3",
             "db-restart n1"]


def seed_403_model() -> tuple[Model, World]:
    model = Model(ModelLimits(depth=5, faults=2, writes=1, max_time=30), rejoin_mode="truncate",
                  fence_by_crash=True)
    model.check_new_primaries = True  # a replica racing past the repaired nodes would lose w1
    warm = model.drive(model.drive(model.initial_cold(), ["settle"]), ["write n1", "settle"])
    n2_primary = model.drive(warm, ["db-crash n1", *SETTLE_FOR_TTL])
    stuck = model.drive(model.drive(model.drive(n2_primary, N2_WRITES), N2_KILLED), N3_KILLED)
    assert [(node.db.history, node.db.alive, node.db.killed_by_fence) for node in stuck.nodes] == [
        (("n1", "n1"), True, False),
        (("n1", "n1", "n2", "n2", "n2"), False, True),
        (("n1", "n1", "n2", "n2", "n3"), False, True)]
    assert model.roles(stuck) == {name: Role.FENCED for name in NAMES}
    return model, stuck


def test_a_killed_node_holding_what_no_live_node_holds_is_repaired_without_a_primary() -> None:
    """Seed 403: n1, alive, lacks n2's acknowledged w1 (n2 and n3 hold it), so it cannot take
    over; n2 and n3 wait for a primary to be repaired against. The repair of a killed node that
    holds everything (its state at the kill) while no live node can take over runs without a
    primary, against the others' states: recovery cuts only what nobody else holds; n3 then takes
    over and the others rejoin. Every interleaving from the stuck state: never two writers, no
    acknowledged write lost (each takeover and truncation judged on the histories), and liveness."""
    model, stuck = seed_403_model()
    assert not model.good(stuck)
    # As above: shown without the early end of the token's wait, explored with it.
    model.token_alone_wait, ended = None, model.token_waits_ended
    model.ticks_to_good(stuck, ("<scripted>",), LIVENESS_TICKS)
    assert model.token_waits_ended == ended  # n3's token acknowledged by n2, repaired while n3 promotes
    model.token_alone_wait = TOKEN_ALONE_WAIT
    recovered = model.settle(model.faults_stop(stuck))
    for _ in range(LIVENESS_TICKS):
        if model.good(recovered):
            break
        recovered = model.settle(replace(recovered, now=recovered.now + 1))
    assert model.roles(recovered) == {"n1": Role.REPLICA, "n2": Role.REPLICA, "n3": Role.PRIMARY}
    primary = recovered.nodes[NAMES.index("n3")].db.history
    assert primary[:4] == ("n1", "n1", "n2", "n2")  # w1 kept (acknowledged); w2 and n3's old token cut
    assert model.repairs_without_primary >= 1 and model.takeovers > 0
    started = time.monotonic()
    total, checked = explore_checking_liveness(model, (stuck,), depth=5 if FULL else 4)
    print(f"\nseed 403 model: {total} states, liveness checked for {checked}, {model.takeovers} "
          f"takeovers, {model.repairs_without_primary} repairs without a primary, "
          f"{time.monotonic() - started:.1f}s wall")
    assert total > 1_000 and model.repairs_without_primary > 50, (total, model.repairs_without_primary)


def test_an_agent_restarted_during_its_fence_crashes_the_same_mysqld_and_it_is_repaired() -> None:
    """Soak seed 423: the primary's agent decides to fence (its commit waits for an ack) and is
    killed before it acts. The restarted agent finds the fence in its term record (kept on disk,
    ``Node.term_open``): its startup fence SIGKILLs that run of mysqld as the fence would have,
    and the repair removes the in-doubt commit once a primary is ready. Every interleaving from
    the restart on: never two writers, nothing another node holds removed, and liveness."""
    model = Model(ModelLimits(depth=5, faults=2, writes=1, max_time=14), rejoin_mode="truncate",
                  fence_by_crash=True)
    warm = model.drive(model.initial_cold(), ["settle"])
    cut_off = model.drive(warm, ["write n1", "partition n1", "clock", "step n1", "clock"])
    decided = model.drive(cut_off, ["decide n1"])  # PRIMARY -> FENCING, its fence not run yet
    assert model.roles(decided)["n1"] is Role.FENCING and decided.nodes[NAMES.index("n1")].term_open
    died = model.drive(decided, ["agent-crash n1"])
    n1 = died.nodes[NAMES.index("n1")]
    assert n1.db.alive and not n1.db.read_only and n1.term_open  # writable, no agent; the record stays
    crashes = model.crash_fences
    restarted = model.drive(died, ["agent-restart n1", "step n1"])
    n1 = restarted.nodes[NAMES.index("n1")]
    assert n1.db.killed_by_fence and not n1.db.alive and model.crash_fences == crashes + 1, n1.db
    healed = model.drive(restarted, ["heal n1", *SETTLE_FOR_TTL])
    n1 = healed.nodes[NAMES.index("n1")]
    assert n1.db.alive and not n1.db.killed_by_fence and model.truncations >= 1
    assert not n1.term_open  # rejoined: spent
    assert model.good(healed), model.roles(healed)
    # A mysqld that restarted meanwhile is another run: the restarted agent fences it as usual.
    other_run = model.drive(died, ["db-crash n1", "db-restart n1", "agent-restart n1", "step n1"])
    assert not other_run.nodes[NAMES.index("n1")].db.killed_by_fence

    total = waiting = checked = 0
    for root, depth in ((died, 4), (restarted, 4)):
        total += model.explore([root], depth=depth)
        for world, trace in model.explored.items():
            waiting += world.nodes[NAMES.index("n1")].db.killed_by_fence
            if len(trace) - 1 <= depth - 1:
                model.ticks_to_good(world, trace, LIVENESS_TICKS)
                checked += 1
    assert total > 1_000 and waiting > 100, (total, waiting)  # not vacuous
    print(f"\nagent restarted during its fence: {total} states, {waiting} with the killed mysqld down, "
          f"liveness checked for {checked}")
