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


def test_partition_while_a_replica_lags_loses_no_acknowledged_write(lab_factory: LabFactory) -> None:
    """The laggard applies 30 s behind but acknowledges on receipt: it may hold commits the
    up-to-date replica lacks. Either that replica wins (it holds as much), or the laggard wins
    and applies its relay log at once; nothing acknowledged is lost either way."""
    lab = lab_factory(mysql_count=3, netns=True, agents=True, agent_tuning=TUNING)
    outcome = run_partition(lab, fault="partition-lagging-replica", replica_delay=30)
    _check_safety(outcome)


def test_partition_when_only_the_laggard_holds_the_last_commits_elects_it(lab_factory: LabFactory) -> None:
    """The up-to-date replica lost the primary first: the last acknowledged commits are only in
    the laggard's relay log. The laggard must win despite its lag, lift its apply delay and
    apply them; the other replica must wait for it rather than win without them."""
    lab = lab_factory(mysql_count=3, netns=True, agents=True, agent_tuning=TUNING)
    outcome = run_partition(lab, fault="partition-laggard-holds-more", replica_delay=30)
    _check_safety(outcome)
    report = json.dumps(outcome.to_json(), indent=1)
    assert outcome.new_primary == outcome.lagging, report
    # it applied its relay log at once instead of waiting out its 30 s apply delay
    assert outcome.first_new_ack_after is not None and outcome.first_new_ack_after < 15, report
