"""``[rejoin] mode = "rebuild"`` end to end: a former primary whose errant write was committed and
acknowledged (asynchronous replication) is never truncated; it stays fenced until an operator
approves (``dbfence rejoin approve``), then is rebuilt from a donor over the agents' HTTP API
and rejoins, with the write saved and its old data directory kept."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dbfence.lab.agents import AgentTuning
from dbfence.lab.cluster import LabCluster
from tests.conftest import LabFactory
from tests.e2e.e2e_helpers import (
    assert_follows,
    hang_the_primary_after,
    rows_on,
    status,
    wait_for_role,
    write_row,
)

pytestmark = pytest.mark.timeout(300)


def run_dbfence(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dbfence", *args], capture_output=True, text=True,
                          timeout=60, check=False)


def cluster_status(lab: LabCluster) -> dict[str, Any]:
    """What `dbfence status --json` shows (the member records in the DCS)."""
    config = lab.directory / "agents" / f"{lab.mysql[0].name}.toml"
    done = run_dbfence("status", "--json", "--config", str(config))
    return dict(json.loads(done.stdout))


def test_an_acknowledged_errant_write_waits_for_the_operator_then_the_node_is_rebuilt(
        lab_factory: LabFactory) -> None:
    lab = lab_factory(mysql_count=3, dcs="etcd", agents=True,
                      agent_tuning=AgentTuning(rejoin="rebuild", lossless=False))
    # The write is acknowledged to the client, on the old primary only: errant once it is replaced.
    old, new = hang_the_primary_after(lab, lambda old: write_row(lab, 2))

    # Asynchronous: the errant write may have been acknowledged (it was), so no repair by itself.
    deadline = time.monotonic() + 60
    refusals: list[str] = []
    while time.monotonic() < deadline and not any("operator's approval" in r for r in refusals):
        refusals = status(lab, old).get("refusals", [])
        time.sleep(0.2)
    assert any(r.startswith("repair_unsafe: ") and "operator's approval" in r for r in refusals), refusals
    assert status(lab, old)["role"] == "fenced" and 2 in rows_on(lab, old)

    state_dir = lab.directory / "agents" / f"{old}-state"
    command = f"dbfence rejoin approve --node {old}"
    waiting: dict[str, Any] = {}
    record: dict[str, Any] = {}
    while time.monotonic() < deadline + 30 and not (
            (waiting.get("approve_command") or "").startswith(command)
            and any(command in reason for reason in record.get("reasons", []))):
        waiting = status(lab, old)["repair"]
        record = next(m for m in cluster_status(lab)["members"] if m["node"] == old)
        time.sleep(0.2)
    assert (waiting.get("approve_command") or "").startswith(command), waiting  # /status
    assert any(command in reason for reason in record["reasons"]), record  # dbfence status
    # The operator approves with the command (from any host that reaches the DCS and the agent).
    config = lab.directory / "agents" / f"{new}.toml"  # any agent's config: DCS and API token
    approve = run_dbfence("rejoin", "approve", "--node", old, "--config", str(config), "--by", "e2e")
    assert approve.returncode == 0, approve.stderr
    assert f"one rebuild of {old} approved" in approve.stdout
    approved = time.monotonic()
    wait_for_role(lab, old, "replica", timeout=180)
    back_after = time.monotonic() - approved
    repair = status(lab, old)["repair"]
    print(f"\n{old} rebuilt and back as a replica {back_after:.1f} s after the approval; repair: {repair}")
    assert not (state_dir / "rebuild-approved").exists()  # one approval, one rebuild
    saved = Path(repair["saved_file"])
    assert saved.name.startswith(f"errant-{old}-") and "GTID" in saved.read_text(), repair
    rebuild = repair["rebuild"]
    assert rebuild["progress"]["bytes"] > 0 and Path(rebuild["last"]["old_datadir"]).is_dir(), rebuild
    assert 2 not in rows_on(lab, old)  # thrown away here, kept in the saved file and the old data dir
    assert_follows(lab, old, new)
