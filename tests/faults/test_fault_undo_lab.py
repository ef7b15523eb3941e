"""A fault row whose injection fails half-way undoes its first half, on real servers: the soak
goes on after a fault it could not inject (seed 201 waited for a primary writing on promises with
failsafe off, gave up, and left etcd without quorum for the rest of the run)."""

from __future__ import annotations

import pytest

from dbfence.lab import etcd_servers
from dbfence.lab.agents import AgentTuning
from dbfence.lab.faults import FaultContext, all_faults
from dbfence.lab.wait import WaitTimeout, wait_until
from dbfence.lab.workload import DiscoveryWriter
from tests.conftest import LabFactory


@pytest.mark.parametrize("kind", ["etcd-quorum-loss+mysqld-kill+failsafe",
                                  "etcd-quorum-loss+promiser-restart+failsafe"])
def test_a_quorum_loss_whose_next_step_fails_gives_etcd_its_quorum_back(lab_factory: LabFactory,
                                                                         kind: str) -> None:
    lab = lab_factory(mysql_count=1, etcd_members=3)
    fault = next(f for f in all_faults() if f.name == kind)
    # no agent here writes on promises: the wait for it fails (TTL 0.5 s: after 6.5 s)
    ctx = FaultContext(lab, AgentTuning(ttl=0.5), DiscoveryWriter(lab, "app.undo"), "db1", "app.undo")
    with pytest.raises(WaitTimeout):
        fault.inject(ctx)
    wait_until(lambda: all(etcd_servers.healthy(m) for m in lab.etcd), timeout=30, what="etcd's quorum back")
