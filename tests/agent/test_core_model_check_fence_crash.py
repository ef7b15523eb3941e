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

from dbfence.agent.state import Role
from tests.agent.core_model import NAMES, Model, ModelLimits
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
