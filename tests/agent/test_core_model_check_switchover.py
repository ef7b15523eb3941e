"""Model check of a switchover whose target fails while promoting (soak seed 204).

The old primary is fenced for the switchover and the third node for errant GTIDs; the target
wins the lock and writes its fencing token, which waits for a semi-sync ack, then loses its
lease (the DCS lost quorum; here: a partition). No node was PRIMARY after the old one, so the
old primary, FENCED until it could rejoin under a ready primary, waited for ever, and the
cluster had no node that may race. The main exploration (test_core_model_check) starts from
a steady cluster and needs more events than its depth to get here: this root starts at the
handover, with the errant node already fenced.
"""

from __future__ import annotations

import pytest

from dbfence.agent.state import Role
from tests.agent.core_model import Model, ModelLimits, ModelViolationError
from tests.agent.test_core_model_check import FULL, LIVENESS_TICKS, SETTLE_FOR_TTL


def test_switchover_target_failing_while_promoting_leaves_a_racer() -> None:
    model = Model(ModelLimits(depth=5, faults=2, writes=1, max_time=12))
    warm = model.drive(model.initial_cold(), ["settle"])
    # n1 writes twice, nothing replicates, its mysqld dies: n2 takes over and fences n1 for
    # its errant writes (two of them: a sequence number of their own, not the new token's).
    errant = model.drive(model.drive(warm, ["write n1"]), [
        "write n1", "db-crash n1", *SETTLE_FOR_TTL, "db-restart n1", "settle", "clock", "settle"])
    assert model.roles(errant) == {"n1": Role.FENCED, "n2": Role.PRIMARY, "n3": Role.REPLICA}
    # Switchover to n3: n2 fences and releases once n3 caught up, n3 takes the lock.
    handover = model.drive(errant, ["switchover n3", "step n2", "step n2", "step n3"])
    assert model.roles(handover) == {"n1": Role.FENCED, "n2": Role.FENCING, "n3": Role.CANDIDATE}
    # The soak's run, then exhaustively every interleaving near it: n3 promotes, its token
    # waits for an ack, it is cut off from the DCS and fences; then the faults stop.
    failed = model.drive(handover, ["step n2", "step n3", "partition n3", "clock", "clock", "step n3",
                                     "step n3", "clock", "step n3", "step n3"])
    assert model.roles(failed)["n3"] is Role.FENCED and failed.dcs.holder_at(float(failed.now)) is None
    assert model.ticks_to_good(failed, ("<scripted>",), LIVENESS_TICKS) > 0
    total = model.explore([handover])
    for world, trace in model.explored.items():
        model.ticks_to_good(world, trace, LIVENESS_TICKS)
    assert total > 1_000


@pytest.mark.parametrize("binlog_states", [True, False], ids=["binlog-states", "positions-only"])
def test_handed_over_replica_races_despite_a_sequence_number_clash(binlog_states: bool) -> None:
    """The same run with n1's errant write alone: it is 0-1-2, the old primary's last write (its
    token) 0-2-2. The handed-over n2 took that clash for a fork of its own history and refused to
    race (``unreplicated_own_writes``) although n3 had received its write; n3 fenced, n1 errant:
    nobody raced for ever. A peer's binlog state now shows it holds n2's write (issue 16)."""
    model = Model(ModelLimits(depth=4, faults=2, writes=1, max_time=12))
    model.binlog_states = binlog_states
    warm = model.drive(model.initial_cold(), ["settle"])
    errant = model.drive(warm, ["write n1", "db-crash n1", *SETTLE_FOR_TTL, "db-restart n1", "settle",
                                "clock", "settle"])
    assert [node.db.history for node in errant.nodes] == [("n1", "n1"), ("n1", "n2"), ("n1", "n2")]
    failed = model.drive(errant, ["switchover n3", "step n2", "step n2", "step n3", "step n2", "step n3",
                                  "partition n3", "clock", "clock", "step n3", "step n3", "clock", "step n3",
                                  "step n3"])
    assert model.roles(failed) == {"n1": Role.FENCED, "n2": Role.REPLICA, "n3": Role.FENCED}
    if not binlog_states:
        with pytest.raises(ModelViolationError, match="liveness"):
            model.ticks_to_good(failed, ("<scripted>",), LIVENESS_TICKS)
        return
    assert model.ticks_to_good(failed, ("<scripted>",), LIVENESS_TICKS) > 0
    if FULL:  # every interleaving near it
        model.explore([failed])
        for world, trace in model.explored.items():
            model.ticks_to_good(world, trace, LIVENESS_TICKS)

