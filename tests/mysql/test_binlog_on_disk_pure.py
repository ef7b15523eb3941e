"""Table tests of the binlog state read from a stopped mysqld's files (no server needed; the lab
test compares it with a real one: test_binlog_on_disk_lab.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbfence.mysql.binlog_on_disk import binlog_state_on_disk, parse_binlog_dump
from dbfence.mysql.gtid import GtidState
from dbfence.mysql.repair_errors import RepairError

H = "#261207 21:12:05 server id"
START = f"# at 4\n{H} 1  end_log_pos 256 CRC32 0x0aacd0a4 \tStart: binlog v 4, server v 10.11.19 created\n"
# mariadb-binlog wraps a long Gtid list over comment lines (db1's last file, soak seed 443).
WRAPPED = "[0-2-32016,\n# 0-3-36840,\n# 0-1-37261]"
LIST = f"# at 256\n{H} 1  end_log_pos 331 CRC32 0xe645c5a8 \tGtid list {WRAPPED}\n"
CHECKPOINT = f"# at 331\n{H} 1  end_log_pos 374 CRC32 0xc52513d9 \tBinlog checkpoint mysql-bin.000007\n"


def gtid(seq: str, server: int = 1) -> str:
    return f"# at 400\n{H} {server}  end_log_pos 416 CRC32 0x5e1cc2bd \tGTID {seq} trans\nSTART TRANSACTION\n"


ROW_TEXT = "#Q> INSERT INTO app.t VALUES ('GTID 0-9-99 in a row')\n"


@pytest.mark.parametrize(("dump", "state", "server_id"), [
    (START + LIST + CHECKPOINT, "0-1-37261,0-2-32016,0-3-36840", 1),
    (START + LIST + CHECKPOINT + gtid("0-2-37262", 2) + ROW_TEXT + gtid("0-1-51565"),
     "0-1-51565,0-2-37262,0-3-36840", 1),
    # A new stream (a domain or server the list does not name), and the newest seq kept.
    (START + LIST + gtid("1-1-4") + gtid("1-1-5") + gtid("0-4-1", 4),
     "0-1-37261,0-2-32016,0-3-36840,0-4-1,1-1-5", 1),
    (START.replace("server id 1", "server id 7") + f"{H} 7  end_log_pos 299 \tGtid list []\n"
     + gtid("0-7-1", 7), "0-7-1", 7),
], ids=["list only", "list and GTIDs, a row's text ignored", "new streams", "an empty list"])
def test_the_state_is_the_last_files_list_and_the_gtids_after_it(dump: str, state: str,
                                                                  server_id: int) -> None:
    assert parse_binlog_dump(dump) == (GtidState.parse(state), server_id)


@pytest.mark.parametrize("dump", ["", START, LIST + gtid("0-1-5"), "ERROR: Failed reading header\n"],
                         ids=["nothing", "no Gtid list", "no header", "cut in its header"])
def test_a_file_whose_start_is_not_read_is_refused_never_guessed(dump: str) -> None:
    with pytest.raises(RepairError, match="state is unknown"):
        parse_binlog_dump(dump)


def test_a_binlog_file_the_index_does_not_name_is_refused(tmp_path: Path) -> None:
    """A rotation the index missed: the newest file would be left out (the state too low)."""
    base = tmp_path / "mysql-bin"
    (tmp_path / "mysql-bin.index").write_text("./mysql-bin.000001\n./mysql-bin.000002\n")
    for n in (1, 2, 3):
        (tmp_path / f"mysql-bin.00000{n}").write_bytes(b"")
    with pytest.raises(RepairError, match=r"mysql-bin.000003 after the index's last \(mysql-bin.000002\)"):
        binlog_state_on_disk("mariadb-binlog", str(base), str(tmp_path))
    (tmp_path / "mysql-bin.index").write_text("")
    with pytest.raises(RepairError, match="names no file"):
        binlog_state_on_disk("mariadb-binlog", str(base), str(tmp_path))
    (tmp_path / "mysql-bin.index").write_text("./mysql-bin.000001\n./mysql-bin.000002\n./mysql-bin.000003\n")
    with pytest.raises(RepairError, match="state is unknown"):  # an empty file: no header
        binlog_state_on_disk("mariadb-binlog", str(base), str(tmp_path))
    with pytest.raises(RepairError, match="failed"):
        binlog_state_on_disk(str(tmp_path / "no-such-tool"), str(base), str(tmp_path))
