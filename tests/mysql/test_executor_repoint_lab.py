"""The agent's round is not held by a repoint to a new source that does not answer (soak seed 3:
10.1 s, the peer session's read timeout, with the source partitioned just after its TCP connect).

The executor runs against the lab's real mysqld (db2, only read here) and a real etcd lock that the
test never calls; the DCS view names a new primary whose mysqld port the kernel accepts on but no
server ever greets."""

from __future__ import annotations

import threading
import time

from dbfence.agent.actions import ActionReason, Repoint
from dbfence.agent.executor import Executor, NodeIdentity
from dbfence.agent.lease_keeper import LeaseKeeper
from dbfence.agent.repeats import RepeatBackoff
from dbfence.agent.sensors import DbSensor, DcsSensor, DcsView
from dbfence.breaker import Gate
from dbfence.breaker.config import GateConfig
from dbfence.discovery.metrics import Metrics
from dbfence.lab.cluster import LabCluster
from dbfence.locks.base import LockSettings
from dbfence.locks.etcd import EtcdLeaseLock
from dbfence.locks.etcd_transport import EtcdOptions
from dbfence.locks.model import ClusterSnapshot, MemberEntry, MemberRecord
from dbfence.mysql.hysteresis import HysteresisConfig
from dbfence.mysql.monitor import HealthMonitor
from dbfence.mysql.probes import ProbeSettings
from tests.mysql.mysql_lab_helpers import actions, creds, target
from tests.mysql.test_source_state import silent_listener


def executor_on(lab: LabCluster, node: str, source_read_budget: float) -> tuple[Executor, DcsSensor]:
    wake = threading.Event()
    lock = EtcdLeaseLock(EtcdOptions(tuple(lab.dcs_endpoints)), "repoint-test", node,
                         LockSettings(ttl=3, margin=1.0, call_timeout=0.5))
    gate = Gate(GateConfig(listen_host="127.0.0.1", listen_port=0, backend_host="127.0.0.1",
                           backend_port=lab.node(node).port))
    mysql = actions(lab, node)
    monitor = HealthMonitor(target(lab, node), ProbeSettings(), HysteresisConfig())
    dcs = DcsSensor(lock, wake)
    executor = Executor(
        identity=NodeIdentity("repoint-test", node, "127.0.0.1", 0, "127.0.0.1", lab.node(node).port,
                              100, "test"),
        keeper=LeaseKeeper(lock, gate, wake, renew_interval=1.0), lock=lock, gate=gate, mysql=mysql,
        monitor=monitor, db=DbSensor(monitor, mysql, creds(lab), wake), dcs=dcs,
        replication=creds(lab, "repl"), catalog=None, publish_etcd_primary=False, metrics=Metrics(),
        semi_sync_timeout_ms=10_000, relay_wait_timeout=5.0, source_read_budget=source_read_budget)
    return executor, dcs


def test_a_repoint_to_a_silent_new_primary_ends_the_round_within_a_second(shared_lab: LabCluster) -> None:
    executor, dcs = executor_on(shared_lab, "db2", source_read_budget=0.5)
    before = actions(shared_lab, "db2").replica_status()
    try:
        with silent_listener() as silent:
            record = MemberRecord(node="db9", role="primary", healthy=True, mysql_host=silent.host,
                                  mysql_port=silent.port)
            dcs.latest = DcsView(at=time.monotonic(), snapshot=ClusterSnapshot(
                cluster="repoint-test", index=1, lock=None, members=(MemberEntry("m/db9", record, ""),)))
            repoint = Repoint("db9", False, ActionReason.FOLLOW_PRIMARY)
            # Back off from the first repeat: only a round paced by its budget is spared.
            executor.backoff = RepeatBackoff(first=0.1, limit=2.0, after=0)
            errors = []
            for _ in range(3):  # the core asks again every round while the node does not follow db9
                started = time.monotonic()
                ok = executor.run(repoint)
                elapsed = time.monotonic() - started
                assert elapsed < 1.0, f"the round waited {elapsed:.1f} s for the silent source"
                assert not ok
                errors.append(executor.last_error["Repoint"])
                if "did not answer" in errors[-1]:
                    assert executor.backoff.after_round((repoint,)) == 0.0  # the loop goes on at once
                else:  # the background read gave up meanwhile (its own 2 s timeout, on a loaded host)
                    assert "timed out" in errors[-1]
            assert "did not answer" in errors[0]
    finally:
        executor.lock.close()
    # Nothing was changed on the local mysqld: the safety checks never ran against no state.
    after = actions(shared_lab, "db2").replica_status()
    assert (after is None) == (before is None)
    if before is not None and after is not None:
        assert (after.primary_host, after.primary_port) == (before.primary_host, before.primary_port)
