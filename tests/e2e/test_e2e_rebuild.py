"""``[rejoin] mode = "rebuild"`` end to end: a former primary whose errant write was committed and
acknowledged (asynchronous replication) is never truncated; it stays fenced until an operator
approves, then is rebuilt from the new primary over the agents' HTTP API and rejoins, with the
write saved and its old data directory kept."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from dbfence.lab.agents import AgentTuning, http_status
from dbfence.lab.wait import wait_until
from dbfence.locks.factory import DcsConfig, open_lock
from dbfence.locks.model import Intent
from tests.conftest import LabFactory
from tests.e2e.e2e_helpers import rows_on, status, wait_for_role, write_row, write_until_acknowledged
from tests.e2e.test_e2e_rejoin import only_primary
from tests.mysql.mysql_lab_helpers import actions as mysql_actions

pytestmark = pytest.mark.timeout(300)


def test_an_acknowledged_errant_write_waits_for_the_operator_then_the_node_is_rebuilt(
        lab_factory: LabFactory) -> None:
    lab = lab_factory(mysql_count=3, dcs="etcd", agents=True,
                      agent_tuning=AgentTuning(rejoin="rebuild", lossless=False))
    old = only_primary(lab)
    write_row(lab, 1)
    replicas = [n.name for n in lab.mysql if n.name != old]
    wait_until(lambda: all(http_status(lab.agent(n), "/replica")[0] == 200 for n in replicas),
               timeout=60, what="the replicas to replicate")
    # Paused, the replicas' agents leave their IO threads stopped (they would restart them within a
    # round), so the next write reaches the old primary only; the pause ends once it is stopped.
    operator = open_lock(DcsConfig(kind="etcd", endpoints=tuple(lab.dcs_endpoints)), lab.cluster, "operator")
    try:
        operator.write_intent(Intent(paused=True, pause_reason="test"))
        wait_until(lambda: all(status(lab, n)["intent"]["paused"] for n in (old, *replicas)), timeout=10,
                   what="every agent to see the pause")
        for name in replicas:
            assert mysql_actions(lab, name).stop_receiving()
        write_row(lab, 2)  # acknowledged to the client, on the old primary only: errant once it is replaced
        lab.kill_mysql(old, signal.SIGSTOP)
        operator.write_intent(Intent())
    finally:
        operator.close()
    write_until_acknowledged(lab, 100, timeout=60)
    new = only_primary(lab)
    assert new != old
    lab.kill_mysql(old, signal.SIGCONT)

    # Asynchronous: the errant write may have been acknowledged (it was), so no repair by itself.
    deadline = time.monotonic() + 60
    refusals: list[str] = []
    while time.monotonic() < deadline and not any("operator's approval" in r for r in refusals):
        refusals = status(lab, old).get("refusals", [])
        time.sleep(0.2)
    assert any(r.startswith("repair_unsafe: ") and "operator's approval" in r for r in refusals), refusals
    assert status(lab, old)["role"] == "fenced" and 2 in rows_on(lab, old)

    state_dir = lab.directory / "agents" / f"{old}-state"
    (state_dir / "rebuild-approved").touch()
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
    write_row(lab, 1000)
    deadline = time.monotonic() + 30
    while rows_on(lab, old) != rows_on(lab, new) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rows_on(lab, old) == rows_on(lab, new)
    assert not status(lab, old)["database"]["errant"]
