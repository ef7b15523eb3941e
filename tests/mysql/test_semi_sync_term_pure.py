"""The term's semi-sync watch without a server: what a sample shows, the taint and its file, and
how a taint reaches the evidence (also for an agent restarted while fenced)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from dbfence.agent.repair_keeper import RepairKeeper
from dbfence.mysql.actions import MysqlActions
from dbfence.mysql.connection import Endpoint
from dbfence.mysql.credentials import Credentials
from dbfence.mysql.repair import MysqldControl
from dbfence.mysql.repair_evidence import CounterBaseline, FencingEvidence, save_evidence, since_baseline
from dbfence.mysql.semi_sync_term import (
    TAINT_FILE,
    CounterSample,
    TermTaint,
    baseline_of,
    clear_taint,
    judge_sample,
    load_taint,
    save_taint,
)

# A term promoted at 1_800_000_000 (2027-01-15T08:00:00Z) on a mysqld started 1000 s earlier,
# flushed once at its second 200, with 3 fallbacks and 2 unacknowledged commits before the term.
PROMOTED = CounterBaseline(pid="4242", started_at=1_799_999_000.0, flushed_after_s=200, no_times=3, no_tx=2,
                           recorded_at=1_800_000_000.0)
SINCE_START = replace(PROMOTED, flushed_after_s=0, no_times=0, no_tx=0, since_start=True)
# Sampled 60 s into the term (2027-01-15T08:01:00Z), nothing added.
SAMPLE = CounterSample(no_times=3, no_tx=2, uptime_s=1060, since_flush_s=860, recorded_at=1_800_000_060.0)
SEEN = "seen by the agent's sampling at 2027-01-15T08:01:00Z"


@pytest.mark.parametrize(("baseline", "change", "previous", "pid", "own", "problem"), [
    (PROMOTED, {}, None, "4242", 0, None),
    (PROMOTED, {}, SAMPLE, "4242", 0, None),
    # A fallback during the term (then a FLUSH STATUS would hide it from the evidence at fencing).
    (PROMOTED, {"no_times": 4, "no_tx": 3}, None, "4242", 0,
     f"semi-sync fell back during the term ({SEEN}: Rpl_semi_sync_master_no_times 4, 3 as it began)"),
    (PROMOTED, {"no_tx": 4}, None, "4242", 0,
     f"2 commit(s) were not acknowledged by a replica during the term ({SEEN}: "
     "Rpl_semi_sync_master_no_tx 4, 2 as it began)"),
    # The agent's own token write whose wait it ended is no client's commit.
    (PROMOTED, {"no_tx": 4}, None, "4242", 2, None),
    (PROMOTED, {"no_tx": 4}, None, "4242", 1,
     f"1 commit(s) were not acknowledged by a replica during the term ({SEEN}: "
     "Rpl_semi_sync_master_no_tx 4, 2 as it began)"),
    # FLUSH STATUS: a new flush time, counters below the reference, or below the last sample.
    (PROMOTED, {"since_flush_s": 10}, None, "4242", 0,
     f"FLUSH STATUS since the promotion at 2027-01-15T08:00:00Z ({SEEN}): the semi-sync counters of the "
     "term were reset"),
    (PROMOTED, {"no_times": 0, "no_tx": 0}, None, "4242", 0,
     f"FLUSH STATUS since the promotion at 2027-01-15T08:00:00Z ({SEEN}): the semi-sync counters of the "
     "term were reset"),
    (PROMOTED, {"no_tx": 4}, replace(SAMPLE, no_tx=5), "4242", 9,
     f"FLUSH STATUS since the promotion at 2027-01-15T08:00:00Z ({SEEN}): the semi-sync counters of the "
     "term were reset"),
    # Another run of mysqld: its counters started again.
    (PROMOTED, {}, None, "4243", 0,
     f"mysqld restarted during the term ({SEEN}: pid 4242, now 4243): the semi-sync counters of its term "
     "are gone"),
    (PROMOTED, {"uptime_s": 5, "since_flush_s": 5}, None, "4242", 0,
     f"mysqld restarted during the term ({SEEN}: pid 4242, now 4242): the semi-sync counters of its term "
     "are gone"),
    # Judged since mysqld started (no promotion from a replica): everything before counts too.
    (SINCE_START, {"no_times": 0, "no_tx": 0, "since_flush_s": 1060}, None, "4242", 0, None),
    (SINCE_START, {"no_times": 1, "no_tx": 0, "since_flush_s": 1060}, None, "4242", 0,
     f"semi-sync fell back since mysqld start ({SEEN}: Rpl_semi_sync_master_no_times 1, 0 as it began)"),
    (SINCE_START, {"no_times": 0, "no_tx": 0}, None, "4242", 0,
     f"FLUSH STATUS since mysqld start ({SEEN}): the semi-sync counters of the term were reset"),
])
def test_a_sample_names_what_a_clean_term_never_shows(
        baseline: CounterBaseline, change: dict[str, int], previous: CounterSample | None, pid: str, own: int,
        problem: str | None) -> None:
    assert judge_sample(baseline, replace(SAMPLE, **change), previous, pid, own) == problem


SINCE_START_SAMPLE = replace(SAMPLE, since_flush_s=1060)  # never flushed


@pytest.mark.parametrize(("baseline", "change", "switch_offs", "problem"), [
    # db2 in soak seed 404: three demotions turned semi-sync off (each a fallback to MariaDB), then a
    # takeover's term judged since mysqld start: the agent's own switch-offs are no client's fallback.
    (SINCE_START, {"no_times": 3, "no_tx": 0}, 3, None),
    (SINCE_START, {"no_times": 3, "no_tx": 0}, 0,
     f"semi-sync fell back since mysqld start ({SEEN}: Rpl_semi_sync_master_no_times 3, 0 as it began)"),
    # One more than the agent's own: a real fallback (a commit that timed out waiting for its ack).
    (SINCE_START, {"no_times": 4, "no_tx": 0}, 3,
     f"semi-sync fell back since mysqld start ({SEEN}: Rpl_semi_sync_master_no_times 4, 3 of them the "
     "agent's own switch-offs as it demoted, 0 as it began)"),
    # They do not excuse an unacknowledged commit, nor a flush.
    (SINCE_START, {"no_times": 3, "no_tx": 1}, 3,
     f"1 commit(s) were not acknowledged by a replica since mysqld start ({SEEN}: "
     "Rpl_semi_sync_master_no_tx 1, 0 as it began)"),
    (SINCE_START, {"no_times": 3, "no_tx": 0, "since_flush_s": 10}, 3,
     f"FLUSH STATUS since mysqld start ({SEEN}): the semi-sync counters of the term were reset"),
    # A promotion's reference already holds the switch-offs before it: never taken off twice.
    (PROMOTED, {"no_times": 4}, 1,
     f"semi-sync fell back during the term ({SEEN}: Rpl_semi_sync_master_no_times 4, 3 as it began)"),
])
def test_a_term_judged_since_mysqld_start_does_not_count_the_agents_own_switch_offs(
        baseline: CounterBaseline, change: dict[str, int], switch_offs: int, problem: str | None) -> None:
    sample = replace(SINCE_START_SAMPLE if baseline.since_start else SAMPLE, **change)
    assert judge_sample(baseline, sample, None, "4242", 0, switch_offs) == problem


def test_a_reference_pins_the_run_of_mysqld_and_since_start_forgets_its_counts() -> None:
    sample = replace(SAMPLE, recorded_at=1_800_000_000.0, uptime_s=1000, since_flush_s=800)
    assert baseline_of(sample, "4242", since_start=False) == PROMOTED
    assert baseline_of(sample, "4242", since_start=True) == SINCE_START


EVIDENCE = FencingEvidence(recorded_at=1_800_000_100.0, started_at=1_799_999_000.0, master_enabled=True,
                           master_status=True, wait_point="AFTER_SYNC", timeout_ms=10_000, no_times=3,
                           no_tx=2, yes_tx=9, gtid_binlog_pos="0-1-9", flushed_after_s=200)
FELL_BACK = "semi-sync fell back during the term (...)"


@pytest.mark.parametrize(("change", "problem"), [
    ({}, None),
    ({"term_problem": FELL_BACK}, FELL_BACK),
    # Only the settings, and a reference of another run of mysqld, are named before it.
    ({"term_problem": "x", "wait_point": "AFTER_COMMIT"},
     "semi-sync wait point AFTER_COMMIT, not AFTER_SYNC"),
    ({"term_problem": "x", "baseline_problem": "mysqld restarted since ..."}, "mysqld restarted since ..."),
    ({"term_problem": "x", "no_times": 9}, "x"),
])
def test_a_taint_refuses_whatever_the_counters_say_at_fencing(change: dict[str, object],
                                                               problem: str | None) -> None:
    judged = since_baseline(EVIDENCE, PROMOTED, "4242")
    assert replace(judged, **change).problem() == problem  # type: ignore[arg-type]


UNFLUSHED = replace(EVIDENCE, flushed_after_s=0)


@pytest.mark.parametrize(("baseline", "change", "problem"), [
    (SINCE_START, {"own_switch_offs": 3},
     "2 commit(s) were not acknowledged by a replica (Rpl_semi_sync_master_no_tx)"),
    (SINCE_START, {"own_switch_offs": 3, "ended_by_fence": 2}, None),
    (SINCE_START, {"own_switch_offs": 2, "ended_by_fence": 2},
     "semi-sync fell back to asynchronous 1 time(s) (Rpl_semi_sync_master_no_times, besides 2 of the "
     "agent's own switch-offs as it demoted)"),
    (SINCE_START, {"own_switch_offs": 0, "ended_by_fence": 2},
     "semi-sync fell back to asynchronous 3 time(s) (Rpl_semi_sync_master_no_times)"),
    (SINCE_START, {"own_switch_offs": 4, "ended_by_fence": 2}, "the semi-sync counters could not be read"),
    (None, {"own_switch_offs": 3, "ended_by_fence": 2}, None),  # no term recorded: since mysqld start
    # A promotion's reference already holds them: ignored there.
    (replace(PROMOTED, flushed_after_s=0, no_times=1, no_tx=0), {"own_switch_offs": 2, "ended_by_fence": 2},
     "semi-sync fell back to asynchronous 2 time(s) (Rpl_semi_sync_master_no_times, 1 before this term)"),
])
def test_the_evidence_of_a_term_judged_since_mysqld_start_takes_off_the_agents_own_switch_offs(
        baseline: CounterBaseline | None, change: dict[str, int], problem: str | None) -> None:
    judged = since_baseline(UNFLUSHED, baseline, "4242")
    assert replace(judged, **change).problem() == problem  # type: ignore[arg-type]


def test_the_taint_file_is_private_durable_and_unreadable_means_tainted(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert load_taint(state) is None
    taint = TermTaint("semi-sync fell back during the term (...)", 1_800_000_060.0, "4242")
    path = save_taint(state, taint)
    assert path == state / TAINT_FILE and os.stat(path).st_mode & 0o077 == 0
    assert load_taint(state) == taint
    path.write_text("{not json")
    unusable = load_taint(state)
    assert unusable is not None and unusable.problem.startswith(f"taint file {path} unusable")
    assert clear_taint(state) == ""
    assert load_taint(state) is None
    (state / TAINT_FILE).mkdir()  # cannot be removed: said, never raised (a term must still start)
    (state / TAINT_FILE / "x").touch()
    assert clear_taint(state).startswith(f"could not remove {state / TAINT_FILE}: ")


def keeper(state: Path) -> RepairKeeper:
    # Port 9 on loopback: nothing listens; a keeper that loads its files never asks mysqld.
    mysql = MysqlActions(Endpoint("127.0.0.1", 9), Credentials("u", "p"), name="db1")
    return RepairKeeper(mode="truncate", state_dir=state, node="db1", mysql=mysql,
                        control=MysqldControl(pid_file=state / "none.pid", start_command=["true"]))


def test_an_agent_restarted_while_fenced_keeps_the_terms_taint(tmp_path: Path) -> None:
    clean = since_baseline(EVIDENCE, PROMOTED, "4242")
    save_evidence(tmp_path, clean)
    assert keeper(tmp_path).view().evidence_problem is None
    # The sampling's taint, should the evidence file lack it, is refused all the same.
    save_taint(tmp_path, TermTaint("FLUSH STATUS since the promotion at ... (seen by ...)", 1.0))
    assert keeper(tmp_path).view().evidence_problem == "FLUSH STATUS since the promotion at ... (seen by ...)"
    # Rejoined: the evidence and the taint are spent together.
    rejoined = keeper(tmp_path)
    rejoined.on_serving()
    assert load_taint(tmp_path) is None and keeper(tmp_path).view().evidence_problem == "no evidence recorded"
