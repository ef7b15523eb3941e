"""The rebuild's server-free parts: pacing, progress, the copy's GTID position."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbfence.mysql.rebuild import Progress, RateLimit, backup_position, datadir_estimate
from dbfence.mysql.repair import RepairError


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
