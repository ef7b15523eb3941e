"""Soak seed 443, one node's part, end to end: the primary's mysqld is killed -9 and its crash
recovery then fails for good (its redo log damaged here; a MariaDB recovery bug there). Its agent
keeps starting it with backoff (a failed start is no operator's stop), names the cause from the
error log in its status and member record, and publishes the binlog state its files hold, so
that peers can prove a takeover without it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from dbfence.lab.agents import AgentTuning
from dbfence.lab.fault_model import exited
from dbfence.lab.wait import wait_until
from dbfence.mysql.gtid import GtidState
from tests.conftest import LabFactory
from tests.e2e.e2e_helpers import settled_two_nodes, status, wait_for_role, wait_for_status

pytestmark = pytest.mark.timeout(240)


def damage_redo_log(datadir: Path) -> None:
    """Overwrite the redo log's checkpoint blocks: crash recovery cannot start from them."""
    with (datadir / "ib_logfile0").open("r+b") as f:
        f.seek(0)
        f.write(os.urandom(12288))
        f.flush()
        os.fsync(f.fileno())


def test_a_primary_whose_crash_recovery_fails_is_retried_named_and_publishes_its_state_on_disk(
        lab_factory: LabFactory) -> None:
    lab = lab_factory(mysql_count=2, dcs="etcd", agents=True,
                      agent_tuning=AgentTuning(rejoin="truncate", lossless=False))
    primary, replica = settled_two_nodes(lab)
    node = lab.live_node(primary)
    with lab.connect(primary) as conn, conn.cursor() as cur:
        cur.execute("SELECT @@gtid_binlog_state, @@server_id")
        state_text, server_id = cur.fetchone()
    before = GtidState.parse(str(state_text))

    lab.kill_mysql(primary)
    wait_until(exited(node.process.alive), timeout=60, what=f"{primary}'s mysqld to die")
    damage_redo_log(Path(node.datadir))  # before its agent's first start (the tail copy comes first)
    wait_for_role(lab, replica, "primary", timeout=60)

    def retried(report: dict[str, object]) -> bool:
        restart = report.get("mysqld_restart") or {}
        assert isinstance(restart, dict)
        repair = report.get("repair") or {}
        assert isinstance(repair, dict)
        return (int(restart.get("failed_starts") or 0) >= 2 and restart.get("held") is None
                and repair.get("binlog_state_on_disk") is not None)

    damaged = time.monotonic()
    # Within a minute: the lab's start command says at once that mysqld exited (it waited for its
    # 60 s timeout in the soak), and the second start comes 4 s after the first failed.
    wait_for_status(lab, primary, retried, timeout=60, what=f"{primary}'s agent to start mysqld again")
    retried_after = time.monotonic() - damaged
    report = status(lab, primary)
    restart, repair = report["mysqld_restart"], report["repair"]
    print(f"\n{primary}: retried after {retried_after:.1f} s; {restart}\n"
          f"on disk: {repair['binlog_state_on_disk']} (before the kill: {before})")
    assert restart["cause"] and "datadir needs a rebuild" in restart["cause"], restart
    on_disk = GtidState.parse(str(repair["binlog_state_on_disk"]))
    # At least what it said before the kill (its agent's heartbeat may have written since).
    assert all(on_disk.streams.get(stream, -1) >= seq for stream, seq in before.streams.items())
    assert int(server_id) in {g.server_id for g in on_disk.gtids}
