"""The repair keeper's view of a mysqld the fence killed, from its saved evidence (no server):
the binlog state at the kill that the member record publishes while mysqld stays down."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

from dbfence.agent.gtid import BinlogState
from dbfence.agent.repair_keeper import RepairKeeper, state_at_kill
from dbfence.mysql.actions import MysqlActions
from dbfence.mysql.connection import Endpoint
from dbfence.mysql.credentials import Credentials
from dbfence.mysql.repair import MysqldControl
from dbfence.mysql.repair_evidence import EVIDENCE_FILE, FencingEvidence, save_evidence

KILLED = FencingEvidence(
    recorded_at=1.0, started_at=0.0, master_enabled=True, master_status=True, wait_point="AFTER_SYNC",
    timeout_ms=1000, no_times=0, no_tx=1, yes_tx=3, gtid_binlog_pos="0-3-5", wait_sessions=1,
    server_id=3, killed_by_fence=True, ended_by_fence=1, flushed_after_s=0,
    gtid_binlog_state="0-2-4,0-3-5", gtid_slave_pos="0-2-4")


def restarted_agent(state_dir: Path) -> RepairKeeper:
    """An agent started while its mysqld is down (no pid file): it reads the saved evidence."""
    mysql = MysqlActions(Endpoint("127.0.0.1", 9), Credentials("u", "p"), name="db3")  # never asked
    control = MysqldControl(pid_file=state_dir / "mysqld.pid", start_command=["true"])
    return RepairKeeper(mode="truncate", state_dir=state_dir, node="db3", mysql=mysql, control=control)


def test_a_restarted_agent_publishes_the_binlog_state_its_killed_mysqld_had(tmp_path: Path) -> None:
    save_evidence(tmp_path, KILLED)
    view = restarted_agent(tmp_path).view()
    assert view.awaiting_restart and view.evidence_problem is None
    assert view.binlog_state_at_kill == BinlogState.parse("0-2-4,0-3-5") and view.server_id_at_kill == 3


def test_no_state_at_the_kill_when_mysqld_was_not_killed_or_it_was_not_read(tmp_path: Path) -> None:
    save_evidence(tmp_path, replace(KILLED, killed_by_fence=False))
    view = restarted_agent(tmp_path).view()
    assert not view.awaiting_restart and view.binlog_state_at_kill is None and view.server_id_at_kill is None
    # An older agent's evidence file has neither field: unknown, never an empty binlog.
    older = {key: value for key, value in asdict(KILLED).items()
             if key not in ("gtid_binlog_state", "gtid_slave_pos")}
    (tmp_path / EVIDENCE_FILE).write_text(json.dumps(older))
    view = restarted_agent(tmp_path).view()
    assert view.awaiting_restart and view.binlog_state_at_kill is None and view.server_id_at_kill == 3


def test_the_state_at_the_kill_merges_what_the_node_applied_as_a_replica() -> None:
    # log_slave_updates puts replicated transactions in the binlog; the applied position is merged
    # anyway, as the live history merges it (a replica's stream the binlog might lack).
    assert str(state_at_kill(replace(KILLED, gtid_slave_pos="0-2-6"))) == "0-2-6,0-3-5"
    assert state_at_kill(replace(KILLED, gtid_binlog_state="0-3")) is None  # unparsable: unknown
    assert state_at_kill(replace(KILLED, gtid_slave_pos=None)) is None
