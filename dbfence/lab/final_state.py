"""The I/O half of the fault-matrix checker: read every server after a run.

:func:`read_final_state` gives the final primary's rows and each node's errant GTIDs (against
that primary, with :meth:`dbfence.mysql.gtid.GtidState.errant_against`); :func:`read_tenures`
gives every fencing token ever written, from the ``dbfence.fencing_history`` tables of all the
nodes that answer (a deposed node may hold a token nobody else saw).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import pymysql

from dbfence.lab.cluster import LabCluster
from dbfence.lab.history import FinalState, Tenure
from dbfence.mysql.gtid import GtidPosition, GtidState
from dbfence.mysql.schema import SCHEMA


def _query(lab: LabCluster, node: str, sql: str) -> list[dict[str, Any]]:
    with lab.connect(node, connect_timeout=2, read_timeout=10) as conn, \
            conn.cursor(pymysql.cursors.DictCursor) as cur:
        cur.execute(sql)
        return list(cur.fetchall())


def _history_of(lab: LabCluster, node: str) -> GtidState:
    row = _query(lab, node, "SELECT @@gtid_binlog_state AS state, @@gtid_slave_pos AS slave_pos")[0]
    return GtidState.from_sources(GtidState.parse(row["state"]), GtidPosition.parse(row["slave_pos"]))


def read_final_state(lab: LabCluster, primary: str | None, table: str) -> FinalState:
    if primary is None:
        return FinalState(None, frozenset())
    rows = frozenset(int(r["id"]) for r in _query(lab, primary, f"SELECT id FROM {table}"))
    # The others first, the primary last: it keeps writing heartbeats, and a replica read after it
    # could hold one of them that the primary's older reading lacks (not an errant transaction).
    others: dict[str, GtidState] = {}
    for node in lab.mysql:
        if node.name == primary or not node.process.alive():
            continue
        with contextlib.suppress(pymysql.MySQLError, OSError):  # a frozen or dead node has no say
            others[node.name] = _history_of(lab, node.name)
    reference = _history_of(lab, primary)
    errant = {name: tuple(str(r) for r in state.errant_against(reference)) for name, state in others.items()}
    return FinalState(primary, rows, errant)


def read_tenures(lab: LabCluster) -> tuple[Tenure, ...]:
    tenures: dict[int, Tenure] = {}
    for node in lab.mysql:
        if not node.process.alive():
            continue
        with contextlib.suppress(pymysql.MySQLError, OSError):
            for row in _query(lab, node.name, f"SELECT token, holder, UNIX_TIMESTAMP(written_at) AS at "
                                              f"FROM {SCHEMA}.fencing_history"):
                tenures[int(row["token"])] = Tenure(int(row["token"]), str(row["holder"]), float(row["at"]))
    return tuple(sorted(tenures.values(), key=lambda t: t.token))


def remember_tenures(known: dict[int, Tenure], read: Iterable[Tenure],
                     logged: Iterable[Tenure] = ()) -> tuple[Tenure, ...]:
    """Every tenure read so far in a run (``known``, updated), oldest token first.

    One read sees only the nodes whose mysqld is up then: when every node that holds a token's
    row is down at a later check (fenced by a crash, say), that tenure would vanish and all of its
    writes would look like a second writer's (soak seed 302: 30,594 false alarms). A tenure whose
    row was down at *every* check so far (begun and ended between two checks) is taken from its
    agent's log (``logged``, :func:`dbfence.lab.agent_logs.tenures_in`) until a row is read, which
    then replaces it (soak seed 403: 60 false alarms)."""
    known.update((tenure.token, tenure) for tenure in read)
    for tenure in logged:
        known.setdefault(tenure.token, tenure)
    return tuple(known[token] for token in sorted(known))
