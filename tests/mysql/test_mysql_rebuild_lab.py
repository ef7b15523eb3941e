"""The rebuild on real MariaDB 10.11: a node whose errant transaction is committed (crash recovery
cannot remove it) is cloned from a donor with mariadb-backup, streamed over the donor agent's
HTTP API, keeps its old data directory and the saved errant transaction, and ends a replica of
the new primary."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbfence.discovery.backup_stream import BackupFetchError, fetch_backup
from dbfence.discovery.http_api import HttpApi, StatusBoard
from dbfence.discovery.metrics import Metrics
from dbfence.lab.cluster import LabCluster
from dbfence.mysql.rebuild import BackupStream, Progress, RebuildResult, rebuild_from_stream
from dbfence.mysql.repair import MysqldControl
from dbfence.mysql.repair_errors import NothingErrant, RepairError
from tests.conftest import LabFactory
from tests.mysql.mysql_lab_helpers import actions, poll, primary_address, run, sql
from tests.mysql.test_mysql_repair_lab import cut_replica_and_promote_it, rows

TOKEN = "donor-s3cret"


def committed_errant_pair(lab_factory: LabFactory) -> LabCluster:
    """db2 is the new primary; db1, the old one, holds a committed transaction db2 lacks."""
    lab = lab_factory(mysql_count=2)
    primary = sql(lab, "db1")
    run(primary, "CREATE TABLE app.t (id INT PRIMARY KEY, note VARCHAR(40))")
    run(primary, "INSERT INTO app.t VALUES (1, 'replicated')")
    primary.close()
    poll(lambda: rows(lab, "db2") == [(1, "replicated")], 30, "db2 to apply the first row")
    cut_replica_and_promote_it(lab)
    # Asynchronous: committed in the engine and maybe acknowledged. Crash recovery keeps it.
    run(sql(lab, "db1", account="app"), "INSERT INTO app.t VALUES (2, 'errant, committed')")
    return lab


@pytest.fixture
def donor_api(lab_factory: LabFactory) -> Iterator[tuple[LabCluster, str]]:
    """The lab, and the URL of db2's backup endpoint (what its agent serves as a donor)."""
    lab = committed_errant_pair(lab_factory)
    api = HttpApi("127.0.0.1", 0, StatusBoard(), Metrics(), token=TOKEN,
                  backup=lambda: open_donor(lab)).start()
    host, port = api.address
    try:
        yield lab, f"http://{host}:{port}"
    finally:
        api.stop()


def open_donor(lab: LabCluster) -> tuple[int, Iterator[bytes]]:
    donor = BackupStream(actions(lab, "db2"), bytes_per_second=64 << 20)
    return donor.estimate, donor.chunks()


def rebuild(lab: LabCluster, tmp_path: Path, url: str, token: str, progress: list[Progress],
            margin: int = 0) -> RebuildResult:
    control = MysqldControl(pid_file=Path(lab.node("db1").pid_file), start_timeout=120.0,
                            start_command=[sys.executable, "-m", "dbfence", "lab", "start-mysql", "--dir",
                                           str(lab.directory), "db1"])
    return rebuild_from_stream(actions(lab, "db1"), control,
                               lambda: actions(lab, "db2").gtid_positions().history,
                               lambda: fetch_backup(url, token), tmp_path / "errant-db1.sql",
                               "-- dbfence test excerpt\n", progress.append, stamp="test", margin=margin)


def test_a_committed_errant_transaction_is_saved_and_the_node_is_rebuilt_from_the_donor(
        donor_api: tuple[LabCluster, str], tmp_path: Path) -> None:
    lab, url = donor_api
    datadir = Path(lab.node("db1").datadir)
    progress: list[Progress] = []
    older = datadir.with_name(f"{datadir.name}.dbfence-old-20261101T000000Z")  # an earlier rebuild's
    (older / "mysql").mkdir(parents=True)

    result = rebuild(lab, tmp_path, url, TOKEN, progress)
    print(f"\nrebuild: {result}")

    assert result.errant_before == "0-1-3"
    saved = result.saved_file.read_text()
    assert "GTID 0-1-3" in saved and "errant, committed" in saved
    assert result.saved_file.stat().st_mode & 0o077 == 0
    assert result.old_datadir == datadir.with_name(f"{datadir.name}.dbfence-old-test")
    assert (result.old_datadir / "mysql-bin.index").exists()  # the old data directory is kept
    # only the newest one is kept ([rejoin] keep_old_datadirs = 1)
    assert result.pruned == (older,) and not older.exists()
    assert not datadir.with_name(f"{datadir.name}.dbfence-rebuild-test").exists()
    assert result.position == "0-2-3"
    assert progress and progress[-1].done == result.progress.done > 0 and progress[-1].estimate > 0
    assert rows(lab, "db1") == [(1, "replicated"), (3, "new primary")]  # the donor's data, not its own

    # A second request (from facts read before the first finished) copies nothing.
    with pytest.raises(NothingErrant):
        rebuild(lab, tmp_path, url, TOKEN, [])
    siblings = sorted(p.name for p in datadir.parent.iterdir() if p.name.startswith(datadir.name))
    assert siblings == [datadir.name, f"{datadir.name}.dbfence-old-test"]

    actions(lab, "db1").repoint(primary_address(lab, "db2"), actions(lab, "db2").gtid_positions().history,
                                semi_sync_replica=False)
    run(sql(lab, "db2"), "INSERT INTO app.t VALUES (4, 'after the rebuild')")
    poll(lambda: rows(lab, "db1") == [(1, "replicated"), (3, "new primary"), (4, "after the rebuild")], 30,
         "db1 to replicate from db2 after the rebuild")


def test_without_the_token_the_donor_refuses_and_the_node_is_left_as_it_was(
        donor_api: tuple[LabCluster, str], tmp_path: Path) -> None:
    lab, url = donor_api
    datadir = Path(lab.node("db1").datadir)
    with pytest.raises(BackupFetchError, match="answered 401"):
        rebuild(lab, tmp_path, url, "wrong", [])
    assert lab.node("db1").process.alive()
    assert rows(lab, "db1") == [(1, "replicated"), (2, "errant, committed")]
    siblings = sorted(p.name for p in datadir.parent.iterdir() if p.name.startswith(datadir.name))
    assert siblings == [datadir.name]  # nothing moved aside, no staging left


def test_without_room_for_the_copy_nothing_is_copied_and_the_node_is_left_as_it_was(
        donor_api: tuple[LabCluster, str], tmp_path: Path) -> None:
    lab, url = donor_api
    datadir = Path(lab.node("db1").datadir)
    free = shutil.disk_usage(datadir.parent).free
    with pytest.raises(RepairError, match="not enough free space for the copy"):
        rebuild(lab, tmp_path, url, TOKEN, [], margin=free + (1 << 30))
    assert lab.node("db1").process.alive()
    assert rows(lab, "db1") == [(1, "replicated"), (2, "errant, committed")]
    siblings = sorted(p.name for p in datadir.parent.iterdir() if p.name.startswith(datadir.name))
    assert siblings == [datadir.name]  # no partial copy left
    # The donor let go of the copy: the next one is served.
    poll(lambda: _donor_free(lab), 30, "the donor to end the abandoned copy")


def _donor_free(lab: LabCluster) -> bool:
    try:
        _, chunks = open_donor(lab)
        next(iter(chunks))
    except RepairError:
        return False
    close = getattr(chunks, "close", None)
    if close is not None:
        close()
    return True
