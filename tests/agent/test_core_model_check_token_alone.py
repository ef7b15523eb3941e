"""The model checker on the early end of a fencing-token wait that no replica is attached to.

Issue 16's soak (seed 442, burst 8, kill -9 RTO 6.4 / 6.6 s): the third node fenced with its
mysqld stopped, the primary's mysqld killed. The winner's token waits for a semi-sync ack, but no
replica is attached to it (the third is stopped, the killed one rejoins only a ready primary), so
it waited out its whole bound (6 s) and committed unacknowledged. The writer now ends such a wait
after ``alone_wait_s`` (1 s) while no semi-sync replica is connected
(``dbfence/mysql/token_writer.py``); the model ends it after TOKEN_ALONE_WAIT ticks while no node
receives from the holder. Scripted here, n1..n3: n3's mysqld dies (or n3 is cut off), then n1's;
n2 wins and promotes with nobody attached. From there every interleaving (the early end racing a
replica that attaches, a crash of the winner with its token committed, the other faults): never
two writers, nothing acknowledged lost, and liveness.

Found on the way and left (present with the early end off too): had n1 taken a write nobody
received before its mysqld died, the model's restart of that mysqld keeps it (its crash recovery
commits what the binlog holds), and n3, restarted or healed and still attached to n1, may apply it
between deciding to follow n2 and doing so; the model calls that rejoin with errant transactions.
The adapter checks for errant transactions as the repoint begins, then stops the IO thread and
applies only what the new primary holds, so only a write applied inside that window gets through;
MariaDB's strict GTID mode then stops n3's replication (a stuck replica, nothing lost), and the
lab's mysqld recovers as a replica (``init_rpl_role``), which cuts such a write. The roots here
leave that write out.
"""

from __future__ import annotations

import os
import time

from dbfence.agent.state import Role
from tests.agent.core_model import TOKEN_ACK_WAIT, TOKEN_ALONE_WAIT, Model, ModelLimits, World
from tests.agent.test_core_model_check import LIVENESS_TICKS
from tests.agent.test_core_model_check_promoting_repair import SETTLE_FOR_TTL

FULL = os.environ.get("DBFENCE_MODEL_FULL") == "1"
N3_DOWN = ["db-crash n3", *SETTLE_FOR_TTL]
N3_CUT_OFF = ["partition n3", *SETTLE_FOR_TTL]
N1_KILLED = ["db-crash n1"]
ROUND = ["clock", "step n1", "step n2"]


def model_with(alone_wait: int | None) -> Model:
    model = Model(ModelLimits(depth=5, faults=2, writes=1, max_time=30), rejoin_mode="truncate",
                  fence_by_crash=True)
    model.token_alone_wait = alone_wait
    return model


def promoting(model: Model, third: list[str] = N3_DOWN) -> World:
    """n2 promoting, its token waiting, nobody attached to it."""
    world = model.drive(model.drive(model.drive(model.initial_cold(), ["settle"]), third), N1_KILLED)
    while model.roles(world)["n2"] is not Role.PROMOTING:
        world = model.drive(world, ROUND)
    n2 = world.nodes[1].db
    assert n2.unacked_token is not None and not any(node.db.source == "n2" for node in world.nodes)
    return world


def ticks_to_primary(model: Model, world: World) -> int:
    started = world.now
    while model.roles(world)["n2"] is not Role.PRIMARY:
        assert world.now - started <= LIVENESS_TICKS, model.roles(world)
        world = model.drive(world, ROUND)
    return world.now - started


def test_a_token_nobody_is_attached_to_commits_after_the_alone_wait() -> None:
    early = model_with(TOKEN_ALONE_WAIT)
    bound = model_with(None)
    early_ticks = ticks_to_primary(early, promoting(early))
    bound_ticks = ticks_to_primary(bound, promoting(bound))
    assert early.token_alone_ends == 1 and bound.token_alone_ends == 0
    assert bound.token_waits_ended == 1
    assert early_ticks == bound_ticks - (TOKEN_ACK_WAIT - TOKEN_ALONE_WAIT), (early_ticks, bound_ticks)


def test_every_interleaving_from_a_promotion_nobody_is_attached_to() -> None:
    model = model_with(TOKEN_ALONE_WAIT)
    started = time.monotonic()
    # About 10 s of CPU; DBFENCE_MODEL_FULL=1 goes one level deeper.
    depth = 6 if FULL else 5
    roots = ((promoting(model), depth), (promoting(model, N3_CUT_OFF), depth))
    total, recoveries = model.explore_with_liveness(roots, LIVENESS_TICKS, full=FULL)
    print(f"\ntoken alone: {total} states, liveness checked for {sum(recoveries.values())}, "
          f"{model.token_alone_ends} early ends of {model.token_waits_ended} ended waits, "
          f"{time.monotonic() - started:.1f}s wall")
    assert total > 20_000 and model.token_alone_ends > 1_000, (total, model.token_alone_ends)
