"""The rebuild's server-free parts: pacing, progress, the copy's GTID position."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbfence.mysql.rebuild import (
    Progress,
    RateLimit,
    backup_position,
    datadir_estimate,
    prune_old_datadirs,
    room_problem,
)
from dbfence.mysql.repair_errors import RepairError


def test_the_rate_limit_sleeps_until_the_average_allows_the_bytes() -> None:
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limit = RateLimit(1000, clock=lambda: now[0], sleep=sleep)
    limit.pace(500)
    limit.pace(500)
    assert slept == [0.5, 0.5]
    now[0] += 3.0  # idle: only a quarter second's worth is saved up, not three seconds'
    limit.pace(1000)
    assert slept == [0.5, 0.5, 0.75]
    unlimited = RateLimit(0, clock=lambda: now[0], sleep=sleep)
    unlimited.pace(10**9)
    assert len(slept) == 3


def test_progress_reports_rate_and_eta() -> None:
    assert Progress(50, 200, 5.0).as_dict() == {"bytes": 50, "estimate_bytes": 200, "seconds": 5.0,
                                                "bytes_per_second": 10, "eta_seconds": 15.0}
    assert Progress(50, 0, 5.0).eta is None  # unknown size
    assert Progress(0, 200, 0.0).eta is None
    assert Progress(300, 200, 5.0).eta is None  # past the estimate: unknown, not negative
    assert Progress(150, 200, 5.0, complete=True).eta == 0.0


def test_the_position_of_a_replica_donor_comes_from_its_slave_info(tmp_path: Path) -> None:
    (tmp_path / "mariadb_backup_binlog_info").write_text("mysql-bin.000002\t812\t0-3-57\n")
    assert str(backup_position(tmp_path)) == "0-3-57"
    (tmp_path / "mariadb_backup_slave_info").write_text(
        "SET GLOBAL gtid_slave_pos = '0-2-55,1-2-4';\nCHANGE MASTER TO master_use_gtid = slave_pos\n")
    assert str(backup_position(tmp_path)) == "0-2-55,1-2-4"


def test_a_copy_without_a_position_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RepairError, match="no binlog position file"):
        backup_position(tmp_path)
    (tmp_path / "xtrabackup_binlog_info").write_text("mysql-bin.000002\t812\n")
    with pytest.raises(RepairError, match="names no GTID position"):
        backup_position(tmp_path)


def test_the_estimate_leaves_out_binlogs_relay_logs_and_the_redo_log(tmp_path: Path) -> None:
    for name, size in (("ibdata1", 1000), ("mysql-bin.000001", 5000), ("relay-bin.000002", 7000),
                       ("ib_logfile0", 9000), ("app/t.ibd", 300)):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x" * size)
    assert datadir_estimate(tmp_path, str(tmp_path / "mysql-bin")) == 1300


def test_a_copy_starts_only_with_room_for_the_donors_data_a_tenth_more_and_the_margin() -> None:
    mib = 1 << 20
    assert room_problem(free=1200 * mib, estimate=1000 * mib, margin=100 * mib) is None
    problem = room_problem(free=1199 * mib, estimate=1000 * mib, margin=100 * mib)
    assert problem is not None
    assert "1199 MiB free, 1200 MiB needed" in problem and "free_space_margin_mib" in problem
    assert room_problem(free=0, estimate=0, margin=0) is None


def test_only_the_newest_moved_aside_data_directories_are_kept(tmp_path: Path) -> None:
    datadir = tmp_path / "data"
    datadir.mkdir()
    stamps = ["20261101T000000Z", "20261201T000000Z", "20261207T050000Z"]
    for stamp in stamps:
        (tmp_path / f"data.dbfence-old-{stamp}" / "mysql").mkdir(parents=True)
    (tmp_path / "data.dbfence-rebuild-20261207T050000Z").mkdir()  # not an old data directory
    (tmp_path / "database").mkdir()  # a neighbour with a similar name
    spare = tmp_path / "errant-db1.sql"
    spare.write_text("-- saved\n")

    removed, problems = prune_old_datadirs(datadir, 1, spare)

    assert removed == tuple(tmp_path / f"data.dbfence-old-{s}" for s in stamps[:2]) and problems == ()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "data", "data.dbfence-old-20261207T050000Z", "data.dbfence-rebuild-20261207T050000Z",
        "database", "errant-db1.sql"]
    assert prune_old_datadirs(datadir, 0, spare) == ((tmp_path / "data.dbfence-old-20261207T050000Z",), ())


def test_a_moved_aside_directory_holding_the_saved_transactions_is_never_deleted(tmp_path: Path) -> None:
    datadir = tmp_path / "data"
    datadir.mkdir()
    holder = tmp_path / "data.dbfence-old-20261101T000000Z"
    (holder / "state").mkdir(parents=True)
    spare = holder / "state" / "errant-db1.sql"
    spare.write_text("-- saved\n")
    removed, problems = prune_old_datadirs(datadir, 0, spare)
    assert removed == () and spare.exists() and problems == (f"{holder}: kept, it holds {spare}",)
