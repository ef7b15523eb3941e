"""The agent's connections parse each distinct column description once (issue 18), and return
exactly what PyMySQL's own connection returns, on real MariaDB 10.11."""

from __future__ import annotations

from typing import Any

import pymysql
import pymysql.cursors
import pytest
from pymysql.protocol import FieldDescriptorPacket

from dbfence.lab.cluster import LabCluster
from dbfence.mysql.connection import Timeouts, close_quietly, connect, query
from dbfence.mysql.facts import _VARIABLES
from tests.mysql.mysql_lab_helpers import creds, endpoint

# Every kind of value the agent reads, NULLs, and a second statement with the same column names.
STATEMENTS = (
    "SHOW SLAVE STATUS",
    _VARIABLES,
    "SELECT 1 AS n, NULL AS nothing, 2.5 AS d, NOW(6) AS at, x'00ff' AS raw, 'é' AS text, "
    "JSON_OBJECT('a', 1) AS doc",
    "SELECT 'one' AS n, 7 AS nothing",
)


def _plain_rows(lab: LabCluster, statement: str) -> list[dict[str, Any]]:
    node, account = lab.node("db2"), creds(lab)
    conn = pymysql.connect(host=node.host, port=node.port, user=account.user, password=account.password,
                           autocommit=True, charset="utf8mb4", cursorclass=pymysql.cursors.DictCursor)
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
            return list(cur.fetchall())
    finally:
        conn.close()


def _stable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows without the values that move between two reads (positions, clocks, state texts)."""
    moving = ("Pos", "Seconds", "Space", "State", "Log_File", "at", "uptime", "binlog_state")
    return [{k: (type(v) if any(m in k for m in moving) else v) for k, v in row.items()} for row in rows]


def test_results_are_those_of_pymysql_and_descriptions_are_parsed_once(
        shared_lab: LabCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[bytes] = []
    original = FieldDescriptorPacket.__init__

    def counting(packet: FieldDescriptorPacket, data: bytes, encoding: str) -> None:
        parsed.append(data)  # constructing one parses it
        original(packet, data, encoding)

    monkeypatch.setattr(FieldDescriptorPacket, "__init__", counting)
    conn = connect(endpoint(shared_lab, "db2"), creds(shared_lab), Timeouts(read_s=5.0, write_s=5.0))
    try:
        first = {statement: query(conn, statement) for statement in STATEMENTS}
        assert len(first["SHOW SLAVE STATUS"]) == 1 and len(first["SHOW SLAVE STATUS"][0]) > 50
        after_first = len(parsed)
        again = {statement: query(conn, statement) for statement in STATEMENTS}
        assert len(parsed) == after_first, "a description seen before was parsed again"
    finally:
        close_quietly(conn)
    # (The counter stays installed for the control: PyMySQL's own connection parses every time.)
    for statement in STATEMENTS:
        plain = _plain_rows(shared_lab, statement)
        assert _stable(first[statement]) == _stable(plain) == _stable(again[statement]), statement
        for mine, theirs in zip(first[statement][0].values(), plain[0].values(), strict=True):
            assert type(mine) is type(theirs)
    assert len(parsed) > after_first
