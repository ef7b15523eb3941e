"""The fencing evidence across an agent restart, on real MariaDB 10.11 (soak seed 423).

A primary's mysqld is SIGSTOPped while a commit waits for its semi-sync ack; the agent fences (the
fence cannot reach mysqld), and is killed -9 before it could read the evidence. The restarted agent
finds the fence in its term record and reads the evidence from the same run of mysqld once it
answers, fences it by crash (the commit stays in doubt) and the repair truncates it. A mysqld that
restarted meanwhile proves nothing, and the reason says so.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dbfence.agent.actions import ActionReason, TruncateErrant
from dbfence.agent.term_record import RECORD_FILE
from dbfence.lab.cluster import LabCluster
from dbfence.mysql.errors import MysqlAdapterError
from dbfence.mysql.repair_evidence import EVIDENCE_FILE
from tests.conftest import LabFactory
from tests.mysql.mysql_lab_helpers import actions, poll
from tests.mysql.test_mysql_repair_lab import (
    cut_replica_and_promote_it,
    lab_keeper,
    lossless_pair,
    rows,
)

# The agent that was primary, in a process of its own so that it can be killed -9 as in the soak:
# its term begins, a client's commit waits for its ack on a connection of this process (as the
# gate's connection to mysqld dies with the agent), the parent SIGSTOPs mysqld, the agent fences
# and the fence cannot reach mysqld, then it waits to be killed with its evidence still unread.
OLD_AGENT = textwrap.dedent("""
    import signal, sys
    from pathlib import Path
    from dbfence.lab.cluster import LabCluster
    from tests.mysql.test_mysql_repair_lab import commit_waiting_for_an_ack, lab_keeper

    lab = LabCluster.load(Path(sys.argv[1]))
    keeper = lab_keeper(lab, Path(sys.argv[2]), [])
    keeper.on_promoted()
    commit_waiting_for_an_ack(lab)
    print("waiting", flush=True)
    sys.stdin.readline()
    keeper.on_fencing()
    keeper.fence_unreached()  # what the executor reports when the fence finds mysqld stopped
    print("fenced", flush=True)
    signal.pause()  # an agent idling until the test kills it -9
""")


def fenced_then_killed(lab: LabCluster, tmp_path: Path) -> None:
    """The soak's sequence up to the agent's kill: db1 primary, a commit waiting for its ack,
    mysqld SIGSTOPped, the agent fenced and killed -9 before the evidence could be read."""
    agent = subprocess.Popen([sys.executable, "-c", OLD_AGENT, str(lab.directory), str(tmp_path)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parents[2])
    try:
        assert agent.stdout is not None and agent.stdin is not None
        assert agent.stdout.readline().strip() == "waiting"
        lab.node("db1").process.signal(signal.SIGSTOP)
        agent.stdin.write("go\n")
        agent.stdin.flush()
        assert agent.stdout.readline().strip() == "fenced"
        record = tmp_path / "state" / RECORD_FILE
        poll(lambda: record.exists() and json.loads(record.read_text())["unreached"], 30,
             "the fence to be on disk")
        time.sleep(1.5)  # the old agent tries (and fails) to read the stopped mysqld meanwhile
        assert not (tmp_path / "state" / EVIDENCE_FILE).exists()
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait(30)


@pytest.mark.parametrize("resumed", ["before-the-restart", "after-the-restart"])
def test_an_agent_killed_during_its_fence_reads_the_evidence_from_the_same_mysqld_and_repairs(
        lab_factory: LabFactory, tmp_path: Path, resumed: str) -> None:
    lab = lossless_pair(lab_factory)
    fenced_then_killed(lab, tmp_path)
    process = lab.node("db1").process
    history: list[tuple[str, str]] = []
    if resumed == "before-the-restart":  # the soak's order: SIGCONT 0.1 s before the agent started
        process.signal(signal.SIGCONT)
        keeper = lab_keeper(lab, tmp_path, history)
    else:
        keeper = lab_keeper(lab, tmp_path, history)
        keeper.fence_unreached()  # its startup fence finds mysqld still stopped
        assert keeper.view().evidence_problem == "evidence not read yet"
        process.signal(signal.SIGCONT)
    # The restarted agent reads the evidence itself, from the run of mysqld that was primary.
    poll(lambda: keeper.view().evidence_problem != "evidence not read yet", 60, "the evidence to be read")
    assert keeper.view().evidence_problem is None, keeper.status()
    # The commit still waits: its client's connection died with the agent, and a waiting commit
    # does not notice (a KILL of its session, or a clean stop, would commit it).
    evidence = json.loads((tmp_path / "state" / EVIDENCE_FILE).read_text())
    assert evidence["wait_sessions"] == 1 and evidence["baseline_from"].startswith("the promotion at ")
    # Its startup fence: the commit still waits for its ack; a KILL would commit it, a crash keeps
    # it in doubt. Before this, the restarted agent knew no fence and killed the session.
    crashed = False

    def startup_fence() -> bool:
        nonlocal crashed
        try:
            crashed = keeper.fence_by_crash()
        except MysqlAdapterError:
            return False  # mysqld still waking up: the loop asks again next round
        return True
    poll(startup_fence, 30, "the startup fence")
    assert crashed and not process.alive()
    view = keeper.view()
    assert view.awaiting_restart and view.evidence_problem is None
    # mysqld is down: nothing can make the waiting commit durable now, however long this takes.
    cut_replica_and_promote_it(lab)

    keeper.start_truncate(TruncateErrant("db2", (), ActionReason.REPAIR_UNACKNOWLEDGED),
                          lambda: actions(lab, "db2").gtid_positions().history)
    poll(lambda: not keeper.view().running, 120, "the repair to finish")
    print(f"\nrepair after the agent's restart ({resumed}): {keeper.status()}")
    view = keeper.view()
    assert view.gave_up == "" and not view.awaiting_restart, keeper.status()
    assert "never acknowledged" in Path(view.saved_file).read_text()
    assert rows(lab, "db1") == [(1, "acknowledged")]
    assert history[0][0] == "repair" and history[0][1].startswith("truncated 0-1-3 in ")
    keeper.on_serving()  # rejoined: the record of that term is spent with its evidence
    assert not (tmp_path / "state" / RECORD_FILE).exists()


def test_a_mysqld_that_restarted_while_no_agent_ran_proves_nothing_and_says_so(
        lab_factory: LabFactory, tmp_path: Path) -> None:
    lab = lossless_pair(lab_factory)
    fenced_then_killed(lab, tmp_path)
    fenced_pid = lab.node("db1").pid
    lab.kill_mysql("db1", signal.SIGKILL)  # a stopped process dies of SIGKILL too
    poll(lambda: not lab.node("db1").process.alive(), 30, "db1's mysqld to exit")
    started = lab.start_mysql("db1")
    poll(lambda: _answers(lab), 60, "db1 to answer after its restart")

    keeper = lab_keeper(lab, tmp_path, [])
    poll(lambda: keeper.view().evidence_problem != "evidence not read yet", 60, "the evidence to be read")
    assert keeper.view().evidence_problem == (
        f"no evidence: mysqld restarted after fencing before its semi-sync counters could be read "
        f"(pid {fenced_pid} at fencing, now {started.pid}): a new run's counters say nothing of the term")
    assert not keeper.fence_by_crash() and lab.node("db1").process.alive()
    assert not (tmp_path / "state" / EVIDENCE_FILE).exists()


def _answers(lab: LabCluster) -> bool:
    try:
        actions(lab, "db1").gtid_positions()
    except MysqlAdapterError:
        return False
    return True
