"""``[rejoin] mode = "truncate"`` end to end: a former primary whose commits waited for an ack
repairs itself and comes back as a replica, with what it removed saved and named."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from dbfence.cli import main
from dbfence.lab.agents import AgentTuning
from dbfence.lab.cluster import LabCluster
from dbfence.lab.wait import WaitTimeout, wait_until
from tests.conftest import LabFactory
from tests.e2e.e2e_helpers import (
    assert_follows,
    hang_the_primary_after,
    only_primary,
    role,
    status,
    wait_for_role,
)

pytestmark = pytest.mark.timeout(240)


def waiting_for_an_ack(lab: LabCluster, name: str) -> bool:
    with lab.connect(name) as conn, conn.cursor() as cur:
        cur.execute("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_wait_sessions'")
        row = cur.fetchone()
    return row is not None and int(row[1]) > 0


def a_commit_waits_for_an_ack(lab: LabCluster, name: str) -> None:
    wait_until(lambda: waiting_for_an_ack(lab, name), timeout=10,
               what=f"a commit on {name} to wait for an ack")


def test_a_hung_primary_with_waiting_commits_truncates_them_and_rejoins(lab_factory: LabFactory) -> None:
    lab = lab_factory(mysql_count=3, dcs="etcd", agents=True, agent_tuning=AgentTuning(rejoin="truncate"))
    # Its replicas stop receiving, so its next commits (the agent's heartbeat writes at least)
    # wait for an ack; then mysqld hangs: the others take over, the old one cannot be asked.
    old, new = hang_the_primary_after(lab, lambda old: a_commit_waits_for_an_ack(lab, old))
    resumed = time.monotonic()

    wait_for_role(lab, old, "replica", timeout=90)
    back_after = time.monotonic() - resumed
    report = status(lab, old)
    repair = report["repair"]
    print(f"\n{old} back as a replica {back_after:.1f} s after SIGCONT; repair: {repair}")
    assert repair["gave_up"] == "", repair
    saved = Path(repair["saved_file"])
    assert saved.name.startswith(f"errant-{old}-") and saved.exists(), repair
    assert repair["last"]["errant_before"] and repair["last"]["errant_after"] == "", repair
    assert "GTID" in saved.read_text()
    # The waiting commits stayed in doubt: the fence SIGKILLed mysqld before anything ended them.
    assert '"event": "fenced_by_crash"' in Path(lab.agent(old).log).read_text(errors="replace")
    # It follows the new primary and has everything acknowledged there, nothing of its own.
    assert_follows(lab, old, new)



def switchover(lab: LabCluster, target: str) -> None:
    """Switch over to ``target``; asked again while it is refused (a replica that has just rejoined
    publishes its lag with its next heartbeat)."""
    outputs: list[str] = []

    def done() -> bool:
        result = CliRunner().invoke(main, ["switchover", "--to", target, "--timeout", "60", "--etcd",
                                           ",".join(lab.dcs_endpoints), "--cluster", lab.cluster])
        outputs.append(result.output)
        return result.exit_code == 0
    try:
        wait_until(done, timeout=60, what=f"a switchover to {target}")
    except WaitTimeout as exc:
        raise AssertionError(f"{exc}; last answer: {outputs[-1:]}") from exc
    wait_for_role(lab, target, "primary", timeout=60)


def test_a_primary_again_after_a_rejoin_truncates_what_its_new_term_left(lab_factory: LabFactory) -> None:
    """Soak seed 101: a primary that rejoined as a replica (its repoint turns its semi-sync master
    off, which MariaDB counts as a fallback) and was made primary again must still be able to
    repair itself: the evidence judges only what its new term added."""
    lab = lab_factory(mysql_count=3, dcs="etcd", agents=True, agent_tuning=AgentTuning(rejoin="truncate"))
    first = only_primary(lab)
    other = next(n.name for n in lab.mysql if n.name != first)
    switchover(lab, other)
    wait_for_role(lab, first, "replica", timeout=60)
    switchover(lab, first)
    with lab.connect(first) as conn, conn.cursor() as cur:
        cur.execute("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_no_times'")
        row = cur.fetchone()
    assert row is not None and int(row[1]) >= 1  # counted when its rejoin turned the master off

    old, new = hang_the_primary_after(lab, lambda old: a_commit_waits_for_an_ack(lab, old))
    assert old == first
    wait_for_role(lab, old, "replica", timeout=90)
    repair = status(lab, old)["repair"]
    print(f"\n{old} repaired in its second term: {repair}")
    assert repair["gave_up"] == "" and repair["last"]["errant_after"] == "", repair
    log = Path(lab.agent(old).log).read_text(errors="replace")
    assert '"event": "fenced_by_crash"' in log and '"event": "semi_sync_baseline"' in log
    assert_follows(lab, old, new)


def test_a_hung_primary_whose_agent_was_killed_during_the_fence_is_repaired_by_the_restarted_agent(
        lab_factory: LabFactory) -> None:
    """Soak seed 423: the old primary's agent fences while mysqld is stopped (the evidence cannot be
    read yet) and is killed -9; mysqld resumes, the agent starts again. It resumes the fence from its
    term record, reads the evidence from the same run of mysqld, fences it by crash at startup (the
    commits still wait) and the repair truncates them: back as a replica, no operator."""
    lab = lab_factory(mysql_count=3, dcs="etcd", agents=True, agent_tuning=AgentTuning(rejoin="truncate"))

    def kill_its_agent(old: str) -> None:
        wait_until(lambda: '"to": "fenced"' in Path(lab.agent(old).log).read_text(errors="replace"),
                   timeout=30, what=f"{old} to fence")
        lab.kill_agent(old)
        wait_until(lambda: not lab.agent(old).process.alive(), timeout=30, what=f"{old}'s agent to exit")

    old, new = hang_the_primary_after(lab, lambda old: a_commit_waits_for_an_ack(lab, old), kill_its_agent)
    log = Path(lab.agent(old).log)
    assert '"event": "fencing_evidence"' not in log.read_text(errors="replace")  # never read by that agent
    lab.restart_agent(old)
    resumed = time.monotonic()
    # STARTING passes into REPLICA for a moment before the errant check fences it: wait for the
    # replica that the repair made (a CI run caught the first one).
    wait_for_role(lab, old, "replica", timeout=120)
    wait_until(lambda: status(lab, old)["repair"].get("last") is not None and role(lab, old) == "replica",
               timeout=120, what=f"{old} repaired and a replica again")
    repair = status(lab, old)["repair"]
    print(f"\n{old} back as a replica {time.monotonic() - resumed:.1f} s after its agent restarted: {repair}")
    assert repair["gave_up"] == "" and repair["last"]["errant_before"], repair
    assert repair["last"]["errant_after"] == "", repair
    text = log.read_text(errors="replace")
    assert '"event": "term_resumed"' in text and '"event": "fenced_by_crash"' in text
    assert_follows(lab, old, new)
