"""Operator commands against a live cluster: status, pause/resume, switchover (and its refusals),
history. They talk to the DCS only; the agents act on what they read there."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pymysql
import pytest
from click.testing import CliRunner, Result

from dbfence.cli import main
from dbfence.lab.agents import AgentTuning
from dbfence.lab.cluster import LabCluster
from dbfence.lab.wait import wait_until
from tests.conftest import LabFactory
from tests.e2e.e2e_helpers import app_connect, rows_on, status, write_until_acknowledged

pytestmark = pytest.mark.timeout(240)


def run(lab: LabCluster, *args: str) -> Result:
    return CliRunner().invoke(main, [*args, "--etcd", ",".join(lab.dcs_endpoints), "--cluster", lab.cluster])


def test_status_pause_switchover_and_history(lab_factory: LabFactory) -> None:
    lab = lab_factory(mysql_count=3, dcs="etcd", agents=True)
    primary = lab.primaries()[0]
    target = next(a.name for a in lab.agents if a.name != primary)

    shown = run(lab, "status", "--json")
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.output)
    assert report["primary"] == primary
    assert {m["node"]: m["role"] for m in report["members"]}[target] == "replica"

    refused = run(lab, "switchover", "--to", "nosuchnode")
    assert refused.exit_code == 1 and "unknown node 'nosuchnode'" in refused.output
    refused = run(lab, "switchover", "--to", primary)
    assert refused.exit_code == 1 and "already the primary" in refused.output

    assert run(lab, "pause", "--reason", "kernel upgrade").exit_code == 0
    wait_until(lambda: status(lab, target)["intent"]["paused"], timeout=10, what="agents to see the pause")
    text = run(lab, "status")
    assert "PAUSED (kernel upgrade)" in text.output
    refused = run(lab, "switchover", "--to", target)
    assert refused.exit_code == 1 and "paused" in refused.output
    assert run(lab, "resume").exit_code == 0
    wait_until(lambda: not status(lab, target)["intent"]["paused"], timeout=10, what="the resume")

    done = run(lab, "switchover", "--to", target, "--timeout", "60")
    assert done.exit_code == 0, done.output
    assert f"{target} is the primary after" in done.output
    assert lab.primaries() == [target]
    write_until_acknowledged(lab, 1000, timeout=30)
    wait_until(lambda: status(lab, primary).get("role") == "replica", timeout=30,
               what=f"the old primary {primary} to rejoin as a replica")

    history = run(lab, "history", "--json")
    entries = json.loads(history.output)
    assert [e["node"] for e in entries if e["kind"] == "switchover"] == [target]


def test_status_without_a_dcs_is_a_clean_error() -> None:
    result = CliRunner().invoke(main, ["status", "--etcd", "http://127.0.0.1:1", "--cluster", "x"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_switchover_drains_the_gate_then_hands_over(lab_factory: LabFactory) -> None:
    """Issue 7: new connections are refused at once, a transaction in flight may still commit,
    one that outlives the drain is cut without an OK, and no acknowledged write is lost."""
    lab = lab_factory(mysql_count=3, dcs="etcd", agents=True, agent_tuning=AgentTuning(drain_timeout=5.0))
    primary = lab.primaries()[0]
    target = next(a.name for a in lab.agents if a.name != primary)
    write_until_acknowledged(lab, 1, timeout=30)  # creates app.e2e
    old = lab.agent(primary)
    finishing = app_connect(lab, old.address, old.gate_port)
    stuck = app_connect(lab, old.address, old.gate_port)
    with finishing.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("INSERT INTO app.e2e VALUES (101)")
    with stuck.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("INSERT INTO app.e2e VALUES (201)")

    requested = run(lab, "switchover", "--to", target, "--no-wait")
    assert requested.exit_code == 0, requested.output

    def refused_while_draining() -> str | None:
        try:
            app_connect(lab, old.address, old.gate_port, timeout=2).close()
        except pymysql.MySQLError as exc:
            return str(exc) if "draining for switchover" in str(exc) else None
        return None

    wait_until(refused_while_draining, timeout=30, what="the old primary's gate to refuse while draining")
    with finishing.cursor() as cur:  # the transaction in flight finishes behind the draining gate
        cur.execute("INSERT INTO app.e2e VALUES (102)")
        cur.execute("COMMIT")
    wait_until(lambda: lab.primaries() == [target], timeout=60, what=f"{target} to admit")
    with pytest.raises(pymysql.MySQLError), stuck.cursor() as cur:
        cur.execute("COMMIT")  # cut when the drain ran out: no OK for it
    finishing.close()
    stuck.close()

    write_until_acknowledged(lab, 1000, timeout=30)
    rows = rows_on(lab, target)
    assert {101, 102} <= rows  # committed during the drain: on the new primary
    assert 201 not in rows  # never acknowledged, and rolled back
    wait_until(lambda: status(lab, primary).get("role") == "replica", timeout=30,
               what=f"the old primary {primary} to rejoin as a replica")


def test_an_agent_whose_gate_cannot_start_refuses_with_the_reason(
    lab_factory: LabFactory, tmp_path: Path
) -> None:
    # kernel_forwarding = "on" with mysqld behind its Unix socket cannot work: the agent must say
    # so and exit, not run with a different gate than asked for (nor die with a traceback).
    lab = lab_factory(mysql_count=1, dcs="etcd", etcd_members=1, agents=True)
    [agent] = lab.agents
    config = Path(agent.config).read_text()
    config, replaced = re.subn(r'(?m)^kernel_forwarding = ".*"$', 'kernel_forwarding = "on"', config)
    assert replaced == 1, "the lab writes one kernel_forwarding line"
    config = config.replace("[mysql]\n", f'[mysql]\nsocket = "{lab.mysql[0].socket}"\n', 1)
    path = tmp_path / "agent.toml"
    path.write_text(config)
    done = subprocess.run([sys.executable, "-m", "dbfence", "agent", "--config", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "refusing to start: the gate cannot start: kernel forwarding unavailable" in done.stderr
    assert "Unix socket" in done.stderr
    assert "Traceback" not in done.stderr
