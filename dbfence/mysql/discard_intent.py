"""The intent file of a token discard: what closes the window between ``RESET MASTER`` and the SET.

Why: :func:`~dbfence.mysql.token_discard.apply_discard` deletes the tokens' history rows, empties
the binlog (``RESET MASTER``) and only then sets ``gtid_slave_pos`` to the position before the
tokens (MariaDB refuses that SET while the binlog still holds a later GTID, error 1947). An agent or
mysqld that dies between the two leaves an empty binlog and the ``gtid_slave_pos`` of before:
nothing errant any more, so the ordinary repoint (``MASTER_USE_GTID = slave_pos``) would start
from a position that no longer says what the tables hold. So before it changes anything the
discard writes ``<state_dir>/token-discard-intent.json`` (atomically, 0600: the server, the mysqld
run, the binlog state and ``gtid_slave_pos`` it started from, the target position, the tokens), and
removes it once the SET is done.

Layout: the file (:func:`write_intent`, :func:`load_intent`, :func:`clear_intent`); the pure
decision over what mysqld shows now (:func:`next_step`, table-tested); and :func:`settle`, which
reads mysqld and carries the decision out. The agent calls it before every errant check and at the
start of every repair attempt (``RepairKeeper.settle_discard``): while the file stays, no errant
check is clean, so no repoint can start from the stale position.

Invariants: the file is removed only once ``gtid_slave_pos`` is the target with the binlog empty
(the discard done). The discard is finished or redone only from a state the file explains: the
binlog still exactly as the discard began (redo it all: the DELETEs find nothing the second time),
or empty with ``gtid_slave_pos`` still what it was (only the SET is left). Anything else (a write
since the reset, another server's data) is refused with the file named, and the node stays fenced.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from dbfence.durable import fsync_directory, write_json_atomically
from dbfence.mysql import schema
from dbfence.mysql.actions import MysqlActions
from dbfence.mysql.connection import DbConnection, query, query_one
from dbfence.mysql.gtid import GtidPosition, GtidState

INTENT_FILE = "token-discard-intent.json"


class DiscardRefused(Exception):
    """An interrupted discard's intent file does not explain what mysqld shows: nothing changed."""


@dataclass(frozen=True)
class DiscardIntent:
    """What a discard is about to do, written before it changes anything."""

    server_id: int
    mysqld_started: str  # the mysqld run it began in, UTC (for the operator: a later run may finish it)
    binlog_state: str  # gtid_binlog_state when it began: the tokens still in the binlog
    slave_pos_before: str  # gtid_slave_pos when it began: what a stop after RESET MASTER leaves
    target: str  # the gtid_slave_pos it sets: the position before the first token
    target_state: str  # the gtid_binlog_state it sets after RESET MASTER: the state without the tokens
    gtids: str  # the discarded GTIDs and tokens (the plan, as logged)
    history_tokens: tuple[int, ...]
    delete_fencing_row: bool


class Step(enum.Enum):
    """What an interrupted discard still needs, given what mysqld shows."""

    REDO = "redo"  # stopped before RESET MASTER: delete, reset and set again
    SET_STATE = "set_state"  # stopped right after RESET MASTER: the binlog state and the position
    SET_POSITION = "set_position"  # stopped before the position's SET: only that is left
    DONE = "done"  # stopped after the SET: only the file is left


@dataclass(frozen=True)
class ServerNow:
    """What mysqld shows, as :func:`next_step` judges it."""

    server_id: int
    read_only: bool
    replication_stopped: bool
    binlog_state: str
    slave_pos: str


def intent_path(state_dir: Path) -> Path:
    return state_dir / INTENT_FILE


def write_intent(state_dir: Path, intent: DiscardIntent) -> Path:
    """Durably, before the discard changes anything (OSError: the discard does not start)."""
    return write_json_atomically(intent_path(state_dir), asdict(intent))


def clear_intent(state_dir: Path) -> None:
    path = intent_path(state_dir)
    if path.exists():
        path.unlink()
        fsync_directory(state_dir)


def load_intent(state_dir: Path) -> DiscardIntent | None:
    """The intent file, None when there is none; DiscardRefused when it cannot be read."""
    path = intent_path(state_dir)
    try:
        raw: Any = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DiscardRefused(f"cannot read {path}: {exc}") from None
    names = {f.name for f in fields(DiscardIntent)}
    if not isinstance(raw, dict) or set(raw) != names:
        raise DiscardRefused(f"{path} is not a discard's intent file (not the fields {sorted(names)})")
    try:
        return DiscardIntent(**{**raw, "history_tokens": tuple(int(t) for t in raw["history_tokens"])})
    except (TypeError, ValueError) as exc:
        raise DiscardRefused(f"{path} is not a discard's intent file: {exc}") from None


def next_step(intent: DiscardIntent, now: ServerNow, primary: GtidState) -> Step | str:
    """What is left of the discard ``intent`` names, or why mysqld's state is not one it explains."""
    if now.server_id != intent.server_id:
        return f"the server's server_id is {now.server_id}, the discard's {intent.server_id} (rebuilt since?)"
    target = GtidPosition.parse(intent.target)
    slave_pos = GtidPosition.parse(now.slave_pos)
    state = GtidState.parse(now.binlog_state)
    state_set = bool(now.binlog_state) and state == GtidState.parse(intent.target_state)
    reset = not now.binlog_state or state_set
    state_done = state_set or not intent.target_state
    if reset:
        if slave_pos == target and state_done:
            return Step.DONE
        if slave_pos != GtidPosition.parse(intent.slave_pos_before):
            return (f"the binlog was reset but gtid_slave_pos is {now.slave_pos or 'empty'}, neither the "
                    f"discard's target {intent.target} nor {intent.slave_pos_before or 'empty'} (before it)")
    elif state != GtidState.parse(intent.binlog_state):
        return (f"gtid_binlog_state is {now.binlog_state}, neither empty or {intent.target_state} (reset by "
                f"the discard) nor {intent.binlog_state} (as the discard began): something wrote since")
    if not now.read_only:
        return "the server is writable (not fenced)"
    if not now.replication_stopped:
        return "replication is running"
    if not reset:
        streams = primary.streams
        lacking = [str(g) for g in target.gtids if streams.get((g.domain, g.server_id), -1) < g.seq]
        if lacking:
            return f"the primary lacks {', '.join(lacking)} of the target position {intent.target}"
        return Step.REDO
    return Step.SET_POSITION if state_done else Step.SET_STATE


def run_discard(conn: DbConnection, intent: DiscardIntent,
                step_done: Callable[[str], None] | None = None) -> None:
    """The discard's changes, in ``conn`` (``sql_log_bin = 0``): the tokens' history rows (and the
    fencing row they inserted), ``RESET MASTER``, the binlog state without the tokens, then
    ``gtid_slave_pos``. Each DELETE finds nothing when run again. ``step_done`` (tests: a stop
    there) is called with "rows deleted" before the reset and "binlog reset" after it."""
    query(conn, "SET SESSION sql_log_bin = 0")
    if intent.history_tokens:
        marks = ", ".join(["%s"] * len(intent.history_tokens))
        query(conn, f"DELETE FROM {schema.SCHEMA}.fencing_history WHERE server_id = @@server_id "
                    f"AND token IN ({marks})", intent.history_tokens)
    if intent.delete_fencing_row:
        query(conn, f"DELETE FROM {schema.SCHEMA}.fencing WHERE id = 1 AND server_id = @@server_id")
    if step_done is not None:
        step_done("rows deleted")
    query(conn, "RESET MASTER")
    if step_done is not None:
        step_done("binlog reset")
    _set_state_and_position(conn, intent)


def _set_state_and_position(conn: DbConnection, intent: DiscardIntent) -> None:
    """After RESET MASTER: the binlog state (only an empty binlog takes it), then the position,
    which MariaDB refuses (1947) behind the binlog's own GTID, so never before the state."""
    if intent.target_state:
        query(conn, "SET GLOBAL gtid_binlog_state = %s", (intent.target_state,))
    query(conn, "SET GLOBAL gtid_slave_pos = %s", (intent.target,))


def intent_of(conn: DbConnection, *, binlog_state: str, target: str, target_state: str, gtids: str,
              history_tokens: tuple[int, ...], delete_fencing_row: bool) -> DiscardIntent:
    """The intent of a discard about to run in ``conn``'s server (reads who and where it is)."""
    row = query_one(conn, "SELECT @@global.server_id AS server_id, @@global.gtid_slave_pos AS slave_pos, "
                          "FROM_UNIXTIME(UNIX_TIMESTAMP() - VARIABLE_VALUE) AS started "
                          "FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'UPTIME'")
    return DiscardIntent(server_id=int(row["server_id"]), mysqld_started=str(row["started"]),
                         binlog_state=binlog_state, slave_pos_before=str(row["slave_pos"] or ""),
                         target=target, target_state=target_state, gtids=gtids,
                         history_tokens=history_tokens,
                         delete_fencing_row=delete_fencing_row)


def _server_now(mysql: MysqlActions, conn: DbConnection) -> ServerNow:
    row = query_one(conn, "SELECT @@global.server_id AS server_id, @@global.read_only AS ro, "
                          "@@global.gtid_binlog_state AS state, @@global.gtid_slave_pos AS slave_pos")
    status = mysql.replica_status()
    return ServerNow(server_id=int(row["server_id"]), read_only=bool(int(row["ro"])),
                     replication_stopped=status is None or (status.io_running == "No"
                                                            and status.sql_running == "No"),
                     binlog_state=str(row["state"] or ""), slave_pos=str(row["slave_pos"] or ""))


def settle(mysql: MysqlActions, state_dir: Path, primary: GtidState) -> str:
    """Finish the discard an intent file in ``state_dir`` names, if any: "" when there is none,
    else what was done (one line). DiscardRefused when mysqld's state is not one the file
    explains (nothing changed; the file stays); MysqlAdapterError when mysqld does not answer."""
    intent = load_intent(state_dir)
    if intent is None:
        return ""
    path = intent_path(state_dir)
    with mysql.session() as conn:
        step = next_step(intent, _server_now(mysql, conn), primary)
        if isinstance(step, str):
            raise DiscardRefused(
                f"{path} names a token discard ({intent.gtids}) that stopped before it was done, and "
                f"{step}: not finished. Check what this node's tables hold, set gtid_slave_pos to match "
                f"(the discard's target: {intent.target}) or rebuild the node, then delete the file")
        if step is Step.REDO:
            run_discard(conn, intent)
        elif step is Step.SET_STATE:
            _set_state_and_position(conn, intent)
        elif step is Step.SET_POSITION:
            query(conn, "SET GLOBAL gtid_slave_pos = %s", (intent.target,))
    clear_intent(state_dir)
    done = {Step.REDO: "redone (rows deleted, RESET MASTER, binlog state and gtid_slave_pos set)",
            Step.SET_STATE: "finished (binlog state and gtid_slave_pos set after its RESET MASTER)",
            Step.SET_POSITION: "finished (gtid_slave_pos set after the RESET MASTER it had done)",
            Step.DONE: "already done (only its file was left)"}[step]
    return f"token discard {intent.gtids} {done}: gtid_slave_pos = {intent.target}"
