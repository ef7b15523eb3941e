"""The repair's parts that need no server: judging the evidence, keeping it, refusing early."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from dbfence.mysql.actions import MysqlActions
from dbfence.mysql.binlog_excerpt import save_errant
from dbfence.mysql.connection import Endpoint
from dbfence.mysql.credentials import Credentials
from dbfence.mysql.gtid import ErrantRange, GtidState
from dbfence.mysql.repair import MysqldControl, binlog_files_of, kill_mysqld, recover_killed
from dbfence.mysql.repair_errors import BinlogCutShort, RepairDeferred, RepairError
from dbfence.mysql.repair_evidence import (
    CounterBaseline,
    FencingEvidence,
    clear_evidence,
    load_evidence,
    save_evidence,
    since_baseline,
)
from tests.mysql.mysql_lab_helpers import small_tmpfs

CLEAN = FencingEvidence(recorded_at=100.0, started_at=50.0, master_enabled=True, master_status=True,
                        wait_point="AFTER_SYNC", timeout_ms=86_400_000, no_times=0, no_tx=0, yes_tx=42,
                        gtid_binlog_pos="0-1-42", wait_sessions=1, server_id=1,
                        log_bin_basename="/var/lib/mysql/mysql-bin", datadir="/var/lib/mysql/",
                        flushed_after_s=0)


@pytest.mark.parametrize(("change", "problem"), [
    ({}, None),
    ({"master_enabled": False},
     "semi-sync was off on this node as primary (rpl_semi_sync_master_enabled = OFF)"),
    ({"wait_point": "AFTER_COMMIT"}, "semi-sync wait point AFTER_COMMIT, not AFTER_SYNC"),
    ({"no_times": 2}, "semi-sync fell back to asynchronous 2 time(s) (Rpl_semi_sync_master_no_times)"),
    ({"no_times": -1}, "the semi-sync counters could not be read"),
    ({"no_tx": -1}, "the semi-sync counters could not be read"),
    ({"no_tx": 3}, "3 commit(s) were not acknowledged by a replica (Rpl_semi_sync_master_no_tx)"),
    # Commits whose wait our own fence ended (gate blocked, client got an error) are not held against it.
    ({"no_tx": 2, "ended_by_fence": 2}, None),
    ({"no_tx": 3, "ended_by_fence": 2}, "1 commit(s) were not acknowledged by a replica "
                                        "(Rpl_semi_sync_master_no_tx, besides 2 whose wait the fence ended)"),
    ({"no_tx": 1, "ended_by_fence": 2}, "the semi-sync counters could not be read"),
    ({"no_tx": 1, "ended_by_fence": -1}, "the semi-sync counters could not be read"),
    ({"master_status": False}, "semi-sync was not active at fencing (Rpl_semi_sync_master_status = OFF)"),
    # Since mysqld started (no baseline): a FLUSH STATUS ever, or an unread flush time, proves nothing.
    ({"flushed_after_s": 30}, "FLUSH STATUS reset the semi-sync counters since mysqld start"),
    ({"flushed_after_s": -1}, "the semi-sync counters could not be read"),
])
def test_only_lossless_evidence_has_no_problem(change: dict[str, object], problem: str | None) -> None:
    assert replace(CLEAN, **change).problem() == problem  # type: ignore[arg-type]


# Soak seed 101: fenced, rejoined (turning the semi-sync master off counted a fallback), promoted
# again from a replica with no_times 3 already counted. Only what the term added is judged.
PROMOTED = CounterBaseline(pid="4242", started_at=50.5, flushed_after_s=0, no_times=3, no_tx=2,
                           recorded_at=1_800_000_000.0)
TERM = replace(CLEAN, no_times=3, no_tx=2)


@pytest.mark.parametrize(("change", "baseline", "pid", "problem"), [
    ({}, PROMOTED, "4242", None),
    ({}, None, "4242", "semi-sync fell back to asynchronous 3 time(s) (Rpl_semi_sync_master_no_times)"),
    ({"no_times": 4}, PROMOTED, "4242", "semi-sync fell back to asynchronous 1 time(s) "
                                        "(Rpl_semi_sync_master_no_times, 3 before this term)"),
    ({"no_tx": 3}, PROMOTED, "4242", "1 commit(s) were not acknowledged by a replica "
                                     "(Rpl_semi_sync_master_no_tx, 2 before this term)"),
    ({"no_tx": 3, "ended_by_fence": 1}, PROMOTED, "4242", None),
    ({"no_tx": 4, "ended_by_fence": 1}, PROMOTED, "4242",
     "1 commit(s) were not acknowledged by a replica (Rpl_semi_sync_master_no_tx, besides 1 whose wait "
     "the fence ended, 2 before this term)"),
    # The fence cannot have ended more waits than the term counted.
    ({"no_tx": 3, "ended_by_fence": 2}, PROMOTED, "4242", "the semi-sync counters could not be read"),
    # Another run of mysqld (restarted since the promotion; the same pid reused): nothing proven.
    ({}, PROMOTED, "4243", "mysqld restarted since this node became primary (pid 4242, now 4243): "
                           "the semi-sync counters of its term are gone"),
    ({"started_at": 60.0}, PROMOTED, "4242",
     "mysqld restarted since this node became primary (pid 4242, now 4242): "
     "the semi-sync counters of its term are gone"),
    # FLUSH STATUS zeroed the counters during the term (seen as a new flush time, or as less).
    ({"flushed_after_s": 40, "no_times": 0, "no_tx": 0}, PROMOTED, "4242",
     "FLUSH STATUS reset the semi-sync counters since the promotion at 2027-01-15T08:00:00Z"),
    ({"no_times": 2}, PROMOTED, "4242",
     "FLUSH STATUS reset the semi-sync counters since the promotion at 2027-01-15T08:00:00Z"),
    # The wait point and switch are still judged at fencing, whatever the baseline.
    ({"wait_point": "AFTER_COMMIT"}, PROMOTED, "4242", "semi-sync wait point AFTER_COMMIT, not AFTER_SYNC"),
])
def test_the_evidence_judges_what_the_term_added_since_its_baseline(
        change: dict[str, object], baseline: CounterBaseline | None, pid: str, problem: str | None) -> None:
    evidence = since_baseline(replace(TERM, **change), baseline, pid)  # type: ignore[arg-type]
    assert evidence.problem() == problem


def test_a_baseline_survives_an_agent_restart_with_the_evidence(tmp_path: Path) -> None:
    judged = since_baseline(TERM, PROMOTED, "4242")
    save_evidence(tmp_path, judged)
    assert load_evidence(tmp_path) == judged and judged.problem() is None
    assert CounterBaseline.of(TERM, "4242") == CounterBaseline("4242", 50.0, 0, 3, 2, 100.0)


def test_evidence_is_kept_private_and_forgotten(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert load_evidence(state) == "no evidence recorded"
    path = save_evidence(state, CLEAN)
    assert os.stat(path).st_mode & 0o077 == 0
    assert load_evidence(state) == CLEAN
    path.write_text("{not json")
    assert str(load_evidence(state)).startswith(f"evidence file {path} unusable")
    clear_evidence(state)
    assert load_evidence(state) == "no evidence recorded"


def test_nothing_is_saved_for_transactions_of_several_servers(tmp_path: Path) -> None:
    ranges = [ErrantRange(0, 1, 5, 6, True), ErrantRange(0, 2, 7, 8, True)]
    with pytest.raises(RepairError, match=r"several servers \(\[1, 2\]\)"):
        save_errant("mariadb-binlog", [], ranges, tmp_path / "out.sql", "")
    assert not (tmp_path / "out.sql").exists()


def test_a_missing_binlog_tool_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RepairError, match="no-such-binlog-tool failed"):
        save_errant("no-such-binlog-tool", [], [ErrantRange(0, 1, 5, 6, True)], tmp_path / "o.sql", "")


def test_kill_refuses_a_pid_that_is_not_mysqld(tmp_path: Path) -> None:
    pid_file = tmp_path / "mysqld.pid"
    pid_file.write_text(f"{os.getpid()}\n")  # this test process: must never be killed
    with pytest.raises(RepairError, match="not mysqld: not killed"):
        kill_mysqld(pid_file)
    with pytest.raises(RepairError, match="cannot read mysqld's pid"):
        kill_mysqld(tmp_path / "missing.pid")


def test_binlog_files_come_from_the_index_even_with_mysqld_down(tmp_path: Path) -> None:
    (tmp_path / "mysql-bin.index").write_text("./mysql-bin.000001\n/elsewhere/mysql-bin.000002\n")
    assert binlog_files_of(str(tmp_path / "mysql-bin"), str(tmp_path)) == [
        tmp_path / "./mysql-bin.000001", Path("/elsewhere/mysql-bin.000002")]
    with pytest.raises(RepairError, match="binary logging is off"):
        binlog_files_of("", str(tmp_path))
    with pytest.raises(RepairError, match="cannot read the binlog index"):
        binlog_files_of(str(tmp_path / "other-bin"), str(tmp_path))


def _binlog_tool_printing(tmp_path: Path, gtid_list: str, gtids: list[str], *, cut: str = "",
                          stderr: str = "", padding: int = 0, exit_code: int = 0, files: int = 0) -> str:
    """A stand-in for the binlog tool that prints a dump's comment lines as mariadb-binlog writes
    them (the real tool on real files: tests/mysql/test_mysql_repair_lab.py): each GTID's group
    ends with its XID, but ``cut``'s, which ends before it (a binlog file that ends inside it)."""
    dump = tmp_path / "dump.txt"
    prefix = "#261207  3:30:27 server id 1  end_log_pos 285 CRC32 0x3ac74636 \t"
    end = {g: f"{prefix}Table_map: `app`.`t` mapped to number 18" if g == cut else f"{prefix}Xid = 7"
           for g in gtids}
    lines = [*(f"{prefix}Start: binlog v 4, server v 10.11.19-MariaDB-log" for _ in range(files)),
             f"{prefix}Gtid list [{gtid_list}]", *(f"{prefix}GTID {g} trans\n{end[g]}" for g in gtids)]
    dump.write_text("\n".join(lines) + "\n" + "# padding\n" * padding)
    (tmp_path / "stderr.txt").write_text(stderr)
    tool = tmp_path / "binlog-tool"
    tool.write_text(f"#!/bin/sh\ncat {dump}\ncat {tmp_path / 'stderr.txt'} >&2\nexit {exit_code}\n")
    tool.chmod(0o755)
    return str(tool)


def test_a_stream_the_primary_never_saw_is_saved_whole_only_from_its_first_file(tmp_path: Path) -> None:
    whole = [ErrantRange(0, 1, 0, 2**64 - 1, primary_has_stream=False)]
    tool = _binlog_tool_printing(tmp_path, "0-99-2", ["0-1-3", "0-1-4"])
    saved = save_errant(tool, [], whole, tmp_path / "ok.sql", "", exact=False)
    assert [str(g) for g in saved] == ["0-1-3", "0-1-4"]
    # The first file began after a GTID of server 1: an older, purged file held some of it.
    tool = _binlog_tool_printing(tmp_path, "0-1-2,0-99-1", ["0-1-3"])
    with pytest.raises(RepairError, match="does not match the errant set"):
        save_errant(tool, [], whole, tmp_path / "purged.sql", "", exact=False)
    assert not (tmp_path / "purged.sql").exists()
    # Known end (mysqld up): the last GTID of the stream must be in the excerpt; its lack is a
    # binlog not (yet) on disk to its end: nothing saved, to be tried again.
    tool = _binlog_tool_printing(tmp_path, "", ["0-1-3"])
    with pytest.raises(RepairDeferred, match="binlog files end before 0-1-4"):
        save_errant(tool, [], [ErrantRange(0, 1, 0, 4, primary_has_stream=False)], tmp_path / "short.sql", "")
    assert not (tmp_path / "short.sql").exists()


def test_an_excerpt_cut_short_by_a_full_disk_is_deferred_a_real_mismatch_refused(tmp_path: Path) -> None:
    errant = [ErrantRange(0, 1, 2, 4, primary_has_stream=True)]  # 0-1-3, 0-1-4
    out = tmp_path / "out.sql"
    # The binlog file ends inside 0-1-4's group, at an event boundary: it reads without an error.
    tool = _binlog_tool_printing(tmp_path, "", ["0-1-3", "0-1-4"], cut="0-1-4")
    with pytest.raises(RepairDeferred, match="holds only the start of 0-1-4"):
        save_errant(tool, [], errant, out, "")
    # ... inside an event: mariadb-binlog says so on stderr only, and exits 0.
    tool = _binlog_tool_printing(tmp_path, "", ["0-1-3", "0-1-4"], stderr=(
        "ERROR: Error in Log_event::read_log_event(): 'Event truncated', data_len: 540, event_type: 23\n"))
    with pytest.raises(RepairDeferred, match="'Event truncated'"):
        save_errant(tool, [], errant, out, "")
    # ... inside the first GTID event it was to print: exit 1 (measured, 10.11).
    tool = _binlog_tool_printing(tmp_path, "", [], exit_code=1, stderr=(
        "ERROR: Error in Log_event::read_log_event(): 'Event truncated', data_len: 42, event_type: 162\n"
        "ERROR: Binary logs never reached expected GTID state of 0-1-2\n"))
    with pytest.raises(RepairDeferred, match="'Event truncated'"):
        save_errant(tool, [], errant, out, "")
    # ... or a binlog file that a rotation created on the full disk, its header cut (measured).
    tool = _binlog_tool_printing(tmp_path, "", ["0-1-3"], exit_code=1,
                                 stderr="ERROR: Failed reading header; probably an empty file.\n")
    with pytest.raises(RepairDeferred, match="Failed reading header"):
        save_errant(tool, [], errant, out, "")
    # Ending before the start position with no event cut: short of the errant set a running mysqld
    # counts, but for one that is down (open-ended ranges) maybe nothing errant at all: not a cut.
    never = "ERROR: Binary logs never reached expected GTID state of 0-1-2\n"
    tool = _binlog_tool_printing(tmp_path, "", [], exit_code=1, stderr=never)
    with pytest.raises(RepairDeferred, match="never reached"):
        save_errant(tool, [], errant, out, "")
    with pytest.raises(RepairError, match="exited 1") as refused:
        save_errant(tool, [], [ErrantRange(0, 1, 2, 2**64 - 1, True)], out, "", exact=False)
    assert not isinstance(refused.value, RepairDeferred)
    # Any other failure of the tool is no cut-short binlog: refused.
    tool = _binlog_tool_printing(tmp_path, "", [], exit_code=1, stderr="ERROR: Could not open log file\n")
    with pytest.raises(RepairError, match="exited 1: ERROR: Could not open log file") as refused:
        save_errant(tool, [], errant, out, "")
    assert not isinstance(refused.value, RepairDeferred)
    # ... before any of them, the file ending cleanly (nothing of the group written yet).
    tool = _binlog_tool_printing(tmp_path, "", [])
    with pytest.raises(RepairDeferred, match="binlog files end before 0-1-3,0-1-4"):
        save_errant(tool, [], errant, out, "")
    # ... before 0-1-4's GTID event (seed 204's "does not match the errant set ...: found 0-1-3").
    tool = _binlog_tool_printing(tmp_path, "", ["0-1-3"])
    with pytest.raises(RepairDeferred, match="binlog files end before 0-1-4"):
        save_errant(tool, [], errant, out, "")
    assert not out.exists()
    # Mismatches that waiting cannot mend stay refusals: a gap before a GTID found, a GTID the
    # errant set lacks.
    for gtids in (["0-1-4"], ["0-1-3", "0-1-4", "0-1-5"]):
        tool = _binlog_tool_printing(tmp_path, "", gtids)
        with pytest.raises(RepairError, match="does not match the errant set") as refused:
            save_errant(tool, [], errant, out, "")
        assert not isinstance(refused.value, RepairDeferred)
    assert not out.exists()
    tool = _binlog_tool_printing(tmp_path, "", ["0-1-3", "0-1-4"])
    assert [str(g) for g in save_errant(tool, [], errant, out, "-- header\n")] == ["0-1-3", "0-1-4"]
    assert out.read_text().startswith("-- header\n") and oct(out.stat().st_mode & 0o777) == "0o600"


def test_an_excerpt_with_no_room_is_deferred_and_leaves_no_partial_file(tmp_path: Path) -> None:
    errant = [ErrantRange(0, 1, 2, 3, primary_has_stream=True)]
    tool = _binlog_tool_printing(tmp_path, "", ["0-1-3"], padding=200_000)  # about 2 MB
    with small_tmpfs("1m") as state_dir:
        with pytest.raises(RepairDeferred, match=f"no space left in {state_dir} for the excerpt"):
            save_errant(tool, [], errant, state_dir / "errant.sql", "")
        assert list(state_dir.iterdir()) == []  # nothing that could pass for the copy
        (state_dir / "errant.sql").write_text("an earlier copy")
        tool = _binlog_tool_printing(tmp_path, "", ["0-1-3"])
        with pytest.raises(RepairError, match="cannot write the excerpt"):
            save_errant(tool, [], errant, state_dir / "errant.sql", "")
        assert (state_dir / "errant.sql").read_text() == "an earlier copy"  # never replaced


def test_a_killed_mysqld_whose_binlog_ends_inside_a_commit_is_saved_as_far_as_it_reads_when_asked(
        tmp_path: Path) -> None:
    control = MysqldControl(pid_file=tmp_path / "mysqld.pid", start_command=["false"],
                            binlog_tool=_binlog_tool_printing(tmp_path, "", ["0-1-3", "0-1-4"], cut="0-1-4"))
    mysql = MysqlActions(Endpoint("127.0.0.1", 9), Credentials("u", "p"))
    primary, out = (lambda: GtidState.parse("0-1-2")), tmp_path / "out.sql"
    with pytest.raises(BinlogCutShort, match=r"holds only the start of 0-1-4"):
        recover_killed(mysql, control, primary, [], 1, "0-1-4", out, "")
    assert not (tmp_path / "out.sql").exists()
    # The caller kept the files byte for byte: saved as far as it reads, then started ('false' fails).
    with pytest.raises(RepairError, match=r"start command \['false'\] exited 1"):
        recover_killed(mysql, control, primary, [], 1, "0-1-4", out, "", tail_abandoned=True)
    assert (tmp_path / "out.sql").read_text().startswith("-- the binlog ends inside or before 0-1-4")



def test_an_end_whose_write_was_abandoned_is_saved_as_far_as_it_reads_and_named(tmp_path: Path) -> None:
    errant = [ErrantRange(0, 1, 2, 4, primary_has_stream=True)]  # 0-1-3, 0-1-4
    cut = "ERROR: Error in Log_event::read_log_event(): 'Event truncated', data_len: 540, event_type: 23\n"
    tool = _binlog_tool_printing(tmp_path, "", ["0-1-3", "0-1-4"], cut="0-1-4", stderr=cut)
    out = tmp_path / "out.sql"
    assert [str(g) for g in save_errant(tool, [], errant, out, "-- h\n", tail_abandoned=True)] == ["0-1-3"]
    assert out.read_text().startswith("-- h\n-- the binlog ends inside or before 0-1-4: its write was")
    # Cut before its GTID event could be read: the same.
    tool = _binlog_tool_printing(tmp_path, "", ["0-1-3"], stderr=cut)
    saved = save_errant(tool, [], errant, tmp_path / "o2.sql", "", tail_abandoned=True)
    assert [str(g) for g in saved] == ["0-1-3"]
    # Still refused: a gap, a GTID the set lacks, whole transactions after the cut one, another error,
    # a stop before the last file.
    for gtids, stderr, kind in ((["0-1-4"], "", RepairError), (["0-1-3", "0-1-9"], "", RepairError),
                                (["0-1-3", "0-1-4"], "ERROR: Could not open log file\n", BinlogCutShort)):
        tool = _binlog_tool_printing(tmp_path, "", gtids, stderr=stderr)
        with pytest.raises(kind):
            save_errant(tool, [], errant, tmp_path / "no.sql", "", tail_abandoned=True)
    tool = _binlog_tool_printing(tmp_path, "", ["0-1-3", "0-1-4"], cut="0-1-3")
    with pytest.raises(RepairError, match="whole transactions after it"):
        save_errant(tool, [], errant, tmp_path / "no.sql", "", tail_abandoned=True)
    tool = _binlog_tool_printing(tmp_path, "", ["0-1-3"], stderr=cut, files=1)
    with pytest.raises(BinlogCutShort, match="stopped in binlog file 2 of 3"):
        save_errant(tool, [tmp_path / "a", tmp_path / "b", tmp_path / "c"], errant, tmp_path / "no.sql", "",
                    tail_abandoned=True)
    assert not (tmp_path / "no.sql").exists()


def _two_files_tool(tmp_path: Path, next_list: str) -> str:
    """A stand-in for the binlog tool over two files: the first ends inside 0-1-5's group (an event
    cut: an error on stderr, also when that file is read alone), the second begins with the Gtid
    list ``next_list`` and holds 0-1-9 whole (seed 305's shape; the real files:
    tests/mysql/test_mysql_repair_full_disk_again_lab.py)."""
    prefix = "#261207 14:16:37 server id 1  end_log_pos 285 CRC32 0x3ac74636 \t"
    start = f"{prefix}Start: binlog v 4, server v 10.11.19-MariaDB-log"
    (tmp_path / "dump.txt").write_text("\n".join([
        start, f"{prefix}Gtid list []", f"{prefix}GTID 0-1-5 trans", "START TRANSACTION",
        start, "ROLLBACK/*!*/;", f"{prefix}Gtid list [{next_list}]", f"{prefix}GTID 0-1-9 trans",
        f"{prefix}Xid = 7", "COMMIT/*!*/;"]) + "\n")
    error = "ERROR: Error in Log_event::read_log_event(): 'Event truncated', data_len: 73, event_type: 160"
    tool = tmp_path / "binlog-tool"
    tool.write_text(f"#!/bin/sh\n[ $# -gt 1 ] && cat {tmp_path / 'dump.txt'}\necho \"{error}\" >&2\n")
    tool.chmod(0o755)
    return str(tool)


def test_an_earlier_crashs_cut_transaction_in_an_older_file_is_left_out_only_if_uncounted(
        tmp_path: Path) -> None:
    """Soak seed 305: the start of 0-1-5 at the end of an older file, which the state the next file
    began with does not count (its restart dropped it), is nobody's transaction: left out, named,
    and its file's read error is its own. Counted there, it is the node's: refused as before."""
    files = [tmp_path / "mysql-bin.000001", tmp_path / "mysql-bin.000002"]
    errant = [ErrantRange(0, 1, 4, 2**64 - 1, primary_has_stream=True)]  # a killed mysqld: open-ended
    out = tmp_path / "out.sql"
    saved = save_errant(_two_files_tool(tmp_path, "0-2-8,0-1-4"), files, errant, out, "-- h\n", exact=False)
    assert [str(g) for g in saved] == ["0-1-9"]
    assert out.read_text().startswith("-- h\n-- left out: 0-1-5, the start of a transaction cut short at "
                                      "the end of mysql-bin.000001 by an earlier crash")
    tool = _two_files_tool(tmp_path, "0-2-8,0-1-5")
    with pytest.raises(BinlogCutShort):
        save_errant(tool, files, errant, tmp_path / "no.sql", "", exact=False)
    with pytest.raises(RepairError, match="holds only the start of 0-1-5, and whole transactions after it"):
        save_errant(tool, files, errant, tmp_path / "no.sql", "", exact=False, tail_abandoned=True)
    assert not (tmp_path / "no.sql").exists()


def _tool_with_other_writers(tmp_path: Path, own: list[str], others: list[str]) -> str:
    """A stand-in for the binlog tool: with ``--server-id`` the groups of ``own`` (whole), without
    it the GTIDs of ``own`` and ``others`` in seq order (what the domain's other primaries wrote)."""
    prefix = "#261207 14:16:37 server id 1  end_log_pos 285 CRC32 0x3ac74636 \t"
    (tmp_path / "own.txt").write_text("".join(f"{prefix}GTID {g} trans\n{prefix}Xid = 7\n" for g in own))
    every = sorted([*own, *others], key=lambda g: int(g.rsplit("-", 1)[1]))
    (tmp_path / "every.txt").write_text("".join(f"{prefix}GTID {g} trans\n" for g in every))
    tool = tmp_path / "binlog-tool"
    tool.write_text(f"#!/bin/sh\ncase \"$*\" in *--server-id*) cat {tmp_path / 'own.txt'};; "
                    f"*) cat {tmp_path / 'every.txt'};; esac\n")
    tool.chmod(0o755)
    return str(tool)


@pytest.mark.parametrize(("own", "others", "saved"), [
    (["0-1-6", "0-1-9"], ["0-2-3", "0-2-4", "0-2-5", "0-2-7", "0-2-8"], ["0-1-6", "0-1-9"]),
    (["0-1-9"], ["0-2-3", "0-2-4", "0-2-5", "0-2-6", "0-2-7", "0-2-8"], ["0-1-9"]),
    (["0-1-9"], ["0-2-3", "0-2-4", "0-2-6", "0-2-7", "0-2-8"], None),  # 0-1-5 missing, nobody's seq
    (["0-1-8", "0-1-9"], ["0-2-3", "0-2-4", "0-2-5", "0-2-6", "0-2-7", "0-2-8"], None),  # 8 twice
    (["0-1-3", "0-1-9"], ["0-2-4", "0-2-5", "0-2-6", "0-2-7", "0-2-8", "0-3-9"], None),  # 9 twice
])
def test_a_stream_that_skips_the_other_primarys_seqs_is_saved_only_when_each_seq_is_accounted_for(
        tmp_path: Path, own: list[str], others: list[str], saved: list[str] | None) -> None:
    """Rejoined and primary again, the new primary holding nothing of the new term (0-1-2 its last of
    server 1): the errant stream 0-1-3..0-1-9 skips the seqs the other primary wrote in the domain."""
    errant = [ErrantRange(0, 1, 2, 9, primary_has_stream=True)]
    tool, out = _tool_with_other_writers(tmp_path, own, others), tmp_path / "out.sql"
    if saved is None:
        with pytest.raises(RepairError, match="does not match the errant set"):
            save_errant(tool, [], errant, out, "")
        assert not out.exists()
    else:
        assert [str(g) for g in save_errant(tool, [], errant, out, "")] == saved
