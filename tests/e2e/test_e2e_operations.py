"""Operator commands against a live cluster: status, pause/resume, switchover (and its refusals),
history. They talk to the DCS only; the agents act on what they read there."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner, Result

from dbfence.cli import main
from dbfence.lab.cluster import LabCluster
from dbfence.lab.wait import wait_until
from tests.conftest import LabFactory
from tests.e2e.e2e_helpers import status, write_until_acknowledged

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
