"""The raw copy of the binlog files crash recovery may cut (no server: a stand-in for the binlog
tool prints the checkpoint events; the real tool on real files:
tests/mysql/test_mysql_crashed_fenced_lab.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbfence.mysql.binlog_tail import copy_binlog_tail, recovery_files
from dbfence.mysql.repair_errors import RepairDeferred, RepairError
from tests.mysql.mysql_lab_helpers import small_tmpfs


def binlogs(directory: Path, checkpoints: dict[str, str], count: int = 3) -> tuple[str, str]:
    """``count`` binlog files and their index in ``directory``, and a binlog tool that prints, for
    each file named in ``checkpoints``, a checkpoint event naming the file given. Returns (tool,
    base)."""
    directory.mkdir(parents=True, exist_ok=True)
    names = [f"mysql-bin.{i:06d}" for i in range(1, count + 1)]
    for i, name in enumerate(names):
        (directory / name).write_bytes(bytes([i]) * (1000 * (i + 1)))
    (directory / "mysql-bin.index").write_text("".join(f"./{n}\n" for n in names))
    cases = "".join(f'  *{f}) echo "#261207 server id 1 \tBinlog checkpoint {c}";;\n'
                    for f, c in checkpoints.items())
    tool = directory.parent / "binlog-tool"
    tool.write_text(f'#!/bin/sh\ncase "$1" in\n{cases}esac\n')
    tool.chmod(0o755)
    return str(tool), str(directory / "mysql-bin")


def test_the_copy_holds_the_files_from_the_last_checkpoint_on(tmp_path: Path) -> None:
    tool, base = binlogs(tmp_path / "data", {"mysql-bin.000003": "mysql-bin.000002"})
    assert [f.name for f in recovery_files(tool, base, str(tmp_path / "data"))] == [
        "mysql-bin.000002", "mysql-bin.000003"]
    copies = copy_binlog_tail(tool, base, str(tmp_path / "data"), tmp_path / "tail")
    assert [c.read_bytes() for c in copies] == [(tmp_path / "data" / c.name).read_bytes() for c in copies]
    assert oct((tmp_path / "tail").stat().st_mode & 0o777) == "0o700"
    with pytest.raises(RepairError, match="never replaced"):
        copy_binlog_tail(tool, base, str(tmp_path / "data"), tmp_path / "tail")


def test_a_last_file_cut_in_its_header_defers_to_the_checkpoint_before(tmp_path: Path) -> None:
    tool, base = binlogs(tmp_path / "data", {"mysql-bin.000002": "mysql-bin.000001"})
    assert [f.name for f in recovery_files(tool, base, str(tmp_path / "data"))] == [
        "mysql-bin.000001", "mysql-bin.000002", "mysql-bin.000003"]
    tool, base = binlogs(tmp_path / "none", {})
    with pytest.raises(RepairError, match="no binlog checkpoint readable"):
        recovery_files(tool, base, str(tmp_path / "none"))


def test_no_room_for_the_copy_defers_and_leaves_nothing(tmp_path: Path) -> None:
    tool, base = binlogs(tmp_path / "data", {"mysql-bin.000003": "mysql-bin.000001"})
    with small_tmpfs("8m") as state:  # the copy wants its size and 16 MiB more
        with pytest.raises(RepairDeferred, match="no room in"):
            copy_binlog_tail(tool, base, str(tmp_path / "data"), state / "tail")
        assert list(state.iterdir()) == []
