"""The primary's host is partitioned from the DCS and its peers under an application writer.

Its gate must refuse everything once its lease could have expired, another node must take the
lock within TTL + 2 s, nothing acknowledged may be lost, and after healing the old primary
either rejoins as a replica or stays fenced saying why.
"""

from __future__ import annotations

import json

import pytest

from dbfence.lab import netns
from dbfence.lab.agents import AgentTuning
from dbfence.lab.partition import PartitionOutcome, run_partition
from tests.conftest import LabFactory

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(netns.unavailable_reason() is not None,
                       reason=f"network partitions skipped: {netns.unavailable_reason()}"),
]

TUNING = AgentTuning(ttl=3.0, margin=1.0)
# The client sees an acknowledgement a little after the gate forwarded it; on a loaded 2-core
# machine that can take a few hundred milliseconds.
CLIENT_SLACK = 0.5


def _check_safety(outcome: PartitionOutcome) -> None:
    report = json.dumps(outcome.to_json(), indent=1)
    assert outcome.new_primary is not None and outcome.new_primary != outcome.isolated, report
    assert outcome.lock_taken_after is not None, report
    assert outcome.lock_taken_after <= TUNING.ttl + 2.0, report
    assert outcome.first_new_ack_after is not None, report
    assert outcome.lost == [], report
    assert outcome.overlapping == 0, report
    if outcome.last_old_ack_after is not None:
        assert outcome.last_old_ack_after <= outcome.old_gate_deadline_after + CLIENT_SLACK, report
    assert outcome.after_heal == "replica" or outcome.after_heal.startswith("fenced: errant_gtids"), report


def test_partitioned_primary_is_replaced_without_overlap_or_loss(lab_factory: LabFactory) -> None:
    lab = lab_factory(mysql_count=3, netns=True, agents=True, agent_tuning=TUNING)
    outcome = run_partition(lab, fault="partition")
    _check_safety(outcome)


# Known and open (issue 8, README "Known gaps"): the laggard may hold semi-sync-acknowledged
# commits the winner lacks, and its repoint discards its relay log; an acknowledged write was lost
# here in CI. Still run and reported until the race ranks by what replicas have received.
@pytest.mark.xfail(reason="a lagging replica's acknowledged commits can be lost (issue 8)", strict=False)
def test_partition_while_a_replica_lags_elects_the_up_to_date_one(lab_factory: LabFactory) -> None:
    lab = lab_factory(mysql_count=3, netns=True, agents=True, agent_tuning=TUNING)
    outcome = run_partition(lab, fault="partition-lagging-replica", replica_delay=30)
    _check_safety(outcome)
    assert outcome.new_primary != outcome.lagging, json.dumps(outcome.to_json(), indent=1)
