"""The term record (dbfence/agent/term_record.py) a restarted agent resumes a fence from, without a
server: what is kept, which run of mysqld counts, and when the record is spent. The real sequence
(soak seed 423) is in tests/mysql/test_mysql_repair_agent_restart_lab.py."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import psutil
import pytest

from dbfence.agent import repair_fencing
from dbfence.agent.repair_keeper import RepairKeeper
from dbfence.agent.term_record import RECORD_FILE, TermRecord, load_record, save_record
from dbfence.mysql.actions import MysqlActions
from dbfence.mysql.connection import Endpoint
from dbfence.mysql.credentials import Credentials
from dbfence.mysql.repair import MysqldControl
from dbfence.mysql.repair_evidence import CounterBaseline

BASELINE = CounterBaseline(pid="4242", started_at=100.0, flushed_after_s=3, no_times=2, no_tx=1,
                           recorded_at=160.0)


def keeper(state_dir: Path) -> RepairKeeper:
    mysql = MysqlActions(Endpoint("127.0.0.1", 9), Credentials("u", "p"), name="db1")  # never answers
    control = MysqldControl(pid_file=state_dir / "mysqld.pid", start_command=["true"])
    return RepairKeeper(mode="truncate", state_dir=state_dir, node="db1", mysql=mysql, control=control)


def dead_pid() -> str:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return str(child.pid)


def settled(agent: RepairKeeper) -> str | None:
    deadline = time.monotonic() + 30
    while agent.view().evidence_problem == "evidence not read yet":
        assert time.monotonic() < deadline, "the evidence reader never finished"
        time.sleep(0.05)
    return agent.view().evidence_problem


def on_disk(state_dir: Path, check: Callable[[dict[str, object]], bool]) -> dict[str, object]:
    deadline = time.monotonic() + 30
    while True:
        path = state_dir / RECORD_FILE
        if path.exists():
            raw: dict[str, object] = json.loads(path.read_text())
            if check(raw):
                return raw
        assert time.monotonic() < deadline, "the term record never showed it"
        time.sleep(0.05)


def test_the_record_round_trips_with_its_baseline_and_an_unusable_one_is_named(tmp_path: Path) -> None:
    record = TermRecord("4242", 99.5, BASELINE, "a taint", fenced_at=170.0, ended_by_fence=2, unreached=True)
    save_record(tmp_path, record)
    assert load_record(tmp_path) == record
    save_record(tmp_path, TermRecord("4242", 0.0, None))
    assert load_record(tmp_path) == TermRecord("4242", 0.0, None)
    (tmp_path / RECORD_FILE).write_text("{not json")
    problem = load_record(tmp_path)
    assert isinstance(problem, str) and problem.startswith(f"term record {tmp_path / RECORD_FILE} unusable")
    # A restarted agent says so instead of "no evidence recorded" (and never reads evidence on it).
    assert str(keeper(tmp_path).view().evidence_problem).startswith("no evidence: term record ")


def test_a_restarted_agent_whose_fenced_mysqld_exited_says_so(tmp_path: Path) -> None:
    pid = dead_pid()
    (tmp_path / "mysqld.pid").write_text(pid)  # a crash leaves the pid file
    save_record(tmp_path, TermRecord(pid, 99.5, BASELINE, fenced_at=time.time() - 5, unreached=True))
    agent = keeper(tmp_path)
    assert settled(agent) == (f"no evidence: mysqld (pid {pid}) exited after fencing before its semi-sync "
                              "counters could be read")
    assert not agent.fence_by_crash()


def test_the_same_pid_in_a_process_started_later_is_another_run(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(repair_fencing, "mysqld_running", lambda pid_file: True)  # this process plays mysqld
    pid = str(os.getpid())
    (tmp_path / "mysqld.pid").write_text(pid)
    agent = keeper(tmp_path)
    agent._fenced_pid = pid
    agent._fenced_started_at = psutil.Process().create_time()
    assert agent._run_changed() == ""  # the same run, even stopped
    agent._fenced_started_at -= 5.0  # a process with this pid started 5 s earlier: a reused pid
    assert agent._run_changed().startswith(
        f"no evidence: mysqld restarted after fencing before its semi-sync counters could be read (pid {pid} "
        f"at fencing, now {pid})")
    agent._fenced_started_at = 0.0  # an older record without the start: the pid alone, as before
    assert agent._run_changed() == ""


def test_an_agent_that_died_while_primary_resumes_its_term_as_a_fence(tmp_path: Path) -> None:
    pid = dead_pid()
    (tmp_path / "mysqld.pid").write_text(pid)
    save_record(tmp_path, TermRecord(pid, 99.5, BASELINE))  # the term began; no fence yet
    before = time.time()
    agent = keeper(tmp_path)
    settled(agent)
    raw = on_disk(tmp_path, lambda raw: raw["fenced_at"] is not None)
    assert float(str(raw["fenced_at"])) >= before  # its restart is the fence
    assert raw["baseline"] == asdict(BASELINE)  # judged against the term's reference still


def test_the_fence_is_kept_as_it_goes_and_spent_once_the_node_follows_the_primary(tmp_path: Path) -> None:
    pid = dead_pid()
    (tmp_path / "mysqld.pid").write_text(pid)
    save_record(tmp_path, TermRecord(pid, 99.5, BASELINE, fenced_at=time.time()))
    agent = keeper(tmp_path)
    settled(agent)
    agent.fence_unreached()  # the startup fence could not reach mysqld
    on_disk(tmp_path, lambda raw: raw["unreached"] is True)
    agent.on_followed()  # STARTING passed into REPLICA, and it replicates: a rejoin's spending
    assert not (tmp_path / RECORD_FILE).exists()
    assert agent.view().evidence_problem == "no evidence recorded"
    assert keeper(tmp_path).view().evidence_problem == "no evidence recorded"  # and a later restart


def test_on_serving_and_stepping_down_forget_the_record(tmp_path: Path) -> None:
    save_record(tmp_path, TermRecord(dead_pid(), 99.5, None, fenced_at=time.time()))
    agent = keeper(tmp_path)
    settled(agent)
    agent.on_serving()
    assert not (tmp_path / RECORD_FILE).exists()
    save_record(tmp_path, TermRecord("1", 99.5, None))
    agent.on_stepped_down()
    assert not (tmp_path / RECORD_FILE).exists()


def test_a_new_term_s_record_is_never_written_over_by_the_fence_before_it(tmp_path: Path) -> None:
    pid = dead_pid()
    (tmp_path / "mysqld.pid").write_text(pid)
    save_record(tmp_path, TermRecord(pid, 99.5, BASELINE, fenced_at=time.time()))
    agent = keeper(tmp_path)
    settled(agent)
    agent.term._begin(None, "")  # the node won a race and its new term began (FENCED -> ... PROMOTING)
    assert load_record(tmp_path) == TermRecord(pid, 0.0, None)  # (that pid is gone: start unknown)
    agent.fence_unreached()  # a late report about the old fence
    assert load_record(tmp_path) == TermRecord(pid, 0.0, None)
