"""``[rejoin] mode = "rebuild"`` end to end: a former primary whose errant write was committed and
acknowledged (asynchronous replication) is never truncated; it stays fenced until an operator
approves, then is rebuilt from the new primary over the agents' HTTP API and rejoins, with the
write saved and its old data directory kept."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dbfence.lab.agents import AgentTuning
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
    assert_follows(lab, old, new)
