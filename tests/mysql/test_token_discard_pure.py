"""The content check of a token write to discard (issue 16), on event lists as ``SHOW BINLOG EVENTS``
prints them on MariaDB 10.11 (the rows below were read from a lab server), and the position checks."""

from __future__ import annotations

import pytest

from dbfence.mysql.gtid import ErrantRange, Gtid, GtidPosition, GtidState
from dbfence.mysql.token_discard import (
    BinlogEvent,
    NotDiscardable,
    TokenWrite,
    checked_position,
    history_tokens_in_excerpt,
    history_without,
    split_transactions,
    state_without,
    token_write_problem,
)

FENCING_UPSERT = ("INSERT INTO dbfence.fencing (id, token, holder, server_id, written_at) VALUES "
                  "(1, 6, 'agent-db1', @@server_id, NOW(6)) ON DUPLICATE KEY UPDATE token = VALUES(token)")
HISTORY_INSERT = ("INSERT IGNORE INTO dbfence.fencing_history (token, holder, server_id, written_at) VALUES "
                  "(6, 'agent-db1', @@server_id, NOW(6))")


def events(*rows: tuple[str, str]) -> list[BinlogEvent]:
    return [BinlogEvent("mysql-bin.000002", 100 + 10 * i, kind, info) for i, (kind, info) in enumerate(rows)]


BEGIN = ("Gtid", "BEGIN GTID 0-1-6")
MAP_FENCING = ("Table_map", "table_id: 18 (dbfence.fencing)")
MAP_HISTORY = ("Table_map", "table_id: 22 (dbfence.fencing_history)")
UPDATE_FENCING = ("Update_rows_v1", "table_id: 18 flags: STMT_END_F")
INSERT_FENCING = ("Write_rows_v1", "table_id: 18 flags: STMT_END_F")
INSERT_HISTORY = ("Write_rows_v1", "table_id: 22 flags: STMT_END_F")
XID = ("Xid", "COMMIT /* xid=24 */")
TOKEN = (BEGIN, ("Annotate_rows", FENCING_UPSERT), MAP_FENCING, UPDATE_FENCING,
         ("Annotate_rows", HISTORY_INSERT), MAP_HISTORY, INSERT_HISTORY, XID)


@pytest.mark.parametrize(("rows", "expected"), [
    pytest.param(TOKEN, TokenWrite(1, False), id="the writer's transaction, fencing row updated"),
    pytest.param((BEGIN, MAP_FENCING, INSERT_FENCING, MAP_HISTORY, INSERT_HISTORY, XID),
                 TokenWrite(1, True), id="the first token ever: the fencing row inserted, no annotations"),
    pytest.param((BEGIN, MAP_FENCING, UPDATE_FENCING, XID), TokenWrite(0, False),
                 id="the history row already there (INSERT IGNORE wrote none)"),
    pytest.param((BEGIN, MAP_FENCING, ("Update_rows_compressed_v1", "table_id: 18 flags: STMT_END_F"),
                  XID), TokenWrite(0, False), id="compressed row events"),
    pytest.param((BEGIN, MAP_FENCING, UPDATE_FENCING, ("Query", "COMMIT")), TokenWrite(0, False),
                 id="ended by a COMMIT query"),
    pytest.param(TOKEN[:-1], "the transaction does not end (no XID or COMMIT)", id="cut before its XID"),
    pytest.param((("Gtid", "GTID 0-1-6"), ("Query", "CREATE TABLE dbfence.x (i INT)")),
                 "not a transaction (no BEGIN GTID event first)", id="a DDL"),
    pytest.param((BEGIN, ("Table_map", "table_id: 30 (app.t)"),
                  ("Write_rows_v1", "table_id: 30 flags: STMT_END_F"), XID),
                 "it writes 'app.t', not only the fencing token's tables", id="a client's row"),
    pytest.param((*TOKEN[:-1], ("Table_map", "table_id: 19 (dbfence.heartbeat)"),
                  ("Update_rows_v1", "table_id: 19 flags: STMT_END_F"), XID),
                 "it writes 'dbfence.heartbeat', not only the fencing token's tables",
                 id="a heartbeat in it"),
    pytest.param((BEGIN, MAP_FENCING, ("Delete_rows_v1", "table_id: 18 flags: STMT_END_F"), XID),
                 "it holds a Delete_rows_v1 event ('table_id: 18 flags: STMT_END_F')", id="a delete"),
    pytest.param((BEGIN, MAP_FENCING, UPDATE_FENCING, MAP_HISTORY,
                  ("Update_rows_v1", "table_id: 22 flags: STMT_END_F"), XID),
                 "it updates a fencing_history row (a token write only inserts one)", id="a history update"),
    pytest.param((BEGIN, MAP_HISTORY, INSERT_HISTORY, XID), "it writes no dbfence.fencing row",
                 id="a history row alone"),
    pytest.param((BEGIN, MAP_FENCING, ("Write_rows_v1", "table_id: 30 flags: STMT_END_F"), XID),
                 "Write_rows_v1 of a table not mapped to the token's ('table_id: 30 flags: STMT_END_F')",
                 id="rows of an unmapped table"),
    pytest.param((BEGIN, ("Query", "use `app`; UPDATE t SET note = 'x'"), MAP_FENCING, UPDATE_FENCING,
                  XID), "it holds a Query event (\"use `app`; UPDATE t SET note = 'x'\")",
                 id="a statement-based write"),
    pytest.param((*TOKEN, INSERT_HISTORY), "Write_rows_v1 after the transaction's end",
                 id="events after XID"),
    pytest.param((), "not a transaction (no BEGIN GTID event first)", id="nothing"),
])
def test_token_write_content(rows: tuple[tuple[str, str], ...], expected: TokenWrite | str) -> None:
    assert token_write_problem(events(*rows)) == expected


def test_transactions_are_split_at_gtid_events_without_the_files_own_events() -> None:
    listed = events(("Format_desc", "Server ver: 10.11.6-MariaDB-log, Binlog ver: 4"),
                    ("Gtid_list", "[0-1-5]"), ("Binlog_checkpoint", "mysql-bin.000002"), *TOKEN,
                    ("Gtid", "BEGIN GTID 0-1-7"), MAP_FENCING, UPDATE_FENCING, XID,
                    ("Rotate", "mysql-bin.000003;pos=4"))
    split = split_transactions(listed)
    assert [gtid for gtid, _ in split] == [Gtid(0, 1, 6), Gtid(0, 1, 7)]
    assert [e.kind for e in split[0][1]] == [kind for kind, _ in TOKEN]
    assert [e.kind for e in split[1][1]] == ["Gtid", "Table_map", "Update_rows_v1", "Xid"]
    with pytest.raises(NotDiscardable, match="a Gtid event without a GTID"):
        split_transactions(events(("Gtid", "BEGIN")))


EXCERPT = """-- dbfence: errant transactions of db2
# at 2176
#261207 17:40:00 server id 2  end_log_pos 2218 CRC32 0x1  GTID 0-2-8 trans
START TRANSACTION
### UPDATE `dbfence`.`fencing`
### WHERE
###   @1=1
###   @2=5
### SET
###   @1=1
###   @2=7
### INSERT INTO `dbfence`.`fencing_history`
### SET
###   @1=7
###   @2='agent-db2'
###   @3=2
###   @4='2026-12-07 17:40:00.123456'
COMMIT/*!*/;
# at 2966
#261207 17:40:01 server id 2  end_log_pos 3008 CRC32 0x2  GTID 0-2-9 trans
### INSERT INTO `app`.`t`
### SET
###   @1=7
COMMIT/*!*/;
"""


def test_the_history_rows_come_from_the_excerpts_row_images_of_those_gtids_only() -> None:
    found = history_tokens_in_excerpt(EXCERPT, {Gtid(0, 2, 8), Gtid(0, 2, 9), Gtid(0, 2, 10)})
    assert found == {Gtid(0, 2, 8): [(7, 2)], Gtid(0, 2, 9): []}  # 0-2-10: not saved, so absent


def test_what_a_node_holds_besides_its_errant_streams() -> None:
    history = GtidState.parse("0-1-100,0-2-101,1-3-7")
    new_stream = ErrantRange(0, 2, 0, 101, primary_has_stream=False)
    assert history_without(history, [new_stream]) == GtidPosition.parse("0-1-100,1-3-7")
    known_stream = ErrantRange(0, 2, 40, 101, primary_has_stream=True)
    assert history_without(GtidState.parse("0-1-30,0-2-101"), [known_stream]) == GtidPosition.parse("0-2-40")


def test_the_binlog_state_set_after_the_reset_keeps_every_other_stream() -> None:
    """Soak seed 461: emptied by RESET MASTER, the state made the node look as if it lacked its
    peers' older streams (and its own), so it lost every race after the discard."""
    state = GtidState.parse("0-1-100,0-2-101,0-3-90,1-3-7")
    assert state_without(state, [ErrantRange(0, 2, 0, 101, primary_has_stream=False)]) == GtidState.parse(
        "0-1-100,0-3-90,1-3-7")
    assert state_without(state, [ErrantRange(0, 2, 40, 101, primary_has_stream=True)]) == GtidState.parse(
        "0-1-100,0-2-40,0-3-90,1-3-7")


@pytest.mark.parametrize(("position", "held", "primary", "problem"), [
    ("0-1-100", "0-1-100", "0-1-120,0-3-130", None),
    ("", "", "0-1-120", "nothing precedes the first token"),
    ("0-1-99", "0-1-100", "0-1-120", "is not what the node holds besides the tokens (0-1-100)"),
    ("0-1-100", "0-1-100", "0-1-90,0-3-130", "the primary lacks 0-1-100"),
    ("0-1-100,1-4-3", "0-1-100,1-4-3", "0-1-120", "the primary lacks 1-4-3"),
])
def test_the_position_before_the_tokens_must_be_all_the_node_holds_and_the_primarys(
        position: str, held: str, primary: str, problem: str | None) -> None:
    args = (GtidPosition.parse(position), GtidPosition.parse(held), GtidState.parse(primary))
    if problem is None:
        assert checked_position(*args) == GtidPosition.parse(position)
    else:
        with pytest.raises(NotDiscardable, match=problem.replace("(", r"\(").replace(")", r"\)")):
            checked_position(*args)
