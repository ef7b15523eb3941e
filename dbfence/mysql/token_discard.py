"""Discarding a fenced node's own fencing-token writes that crash recovery could not remove.

Why: a promotion that no replica can follow ends its token write's ack wait after a few seconds
(:mod:`token_writer`), and the token then commits in the engine unacknowledged. When that node
fences and another becomes primary, the token's GTID is errant; crash recovery removes only
in-doubt commits, so the truncation used to give up and leave the node FENCED for an operator
(soak seeds 411, 421, 423). The token carries no client data (the gate never admitted during its
write), so the repair may forget it, as the model checker's truncation already assumes.

What is proven before anything changes (:func:`plan_discard`), each by the binlog's content, never
by counting:

* every GTID still errant is this server's, and the binlog holds each one (read back to a file
  whose Gtid list shows no older file can hold one);
* each of their transactions is a token write (:func:`token_write_problem`): BEGIN, table maps of
  ``dbfence.fencing`` and ``dbfence.fencing_history`` only, inserts or updates of those tables, XID;
* they are the binlog's tail: nothing else follows the first of them (the position set below
  cannot leave a hole in a domain);
* each is in the repair's excerpt, whose row images name the ``fencing_history`` rows to delete;
* the position just before the first of them (``BINLOG_GTID_POS``) is what the node holds besides
  them, and the primary holds it;
* replication is stopped and the server read-only (FENCED).

Then (:func:`apply_discard`), in one session with ``sql_log_bin = 0``: the tokens' history rows
are deleted (the ``fencing`` row id=1 is left: the primary's next token overwrites it as it
replicates; only a row the first token inserted is deleted), ``RESET MASTER`` empties the binlog
and its GTID state, ``gtid_binlog_state`` is set to what it was without the tokens (every other
stream, as the primary's own state has them: :func:`state_without`), and ``gtid_slave_pos`` is set
to that position, where the agent's repoint
(``MASTER_USE_GTID = slave_pos``) starts. Why RESET MASTER: MariaDB keeps the token's GTID in
``gtid_binlog_state`` for as long as any binlog file or Gtid list counts it (PURGE keeps it), and
under ``gtid_strict_mode`` the primary's next transaction of the same domain would be refused as
out of order behind it; it also refuses (1947, measured on 10.11) a ``gtid_slave_pos`` behind the
binlog's own GTID, so the SET can only follow the RESET. A stop between the two (the agent or
mysqld dying) would leave an empty binlog and the ``gtid_slave_pos`` of before, which says nothing
errant and may not say what the tables hold; so an intent file is written in the state directory
before the first change and removed after the SET (:mod:`discard_intent`), and the agent finishes
the discard from it, or refuses to guess, before any errant check or repair. What it costs: this
node's older binlog files, every event of which the primary holds (checked above), as a rebuild
would.

Invariant: nothing is changed unless every check holds and the intent file is written; a refusal
says why, and the repair then gives up exactly as before.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dbfence.mysql import schema
from dbfence.mysql.actions import MysqlActions
from dbfence.mysql.connection import query, query_one
from dbfence.mysql.discard_intent import clear_intent, intent_of, run_discard, write_intent
from dbfence.mysql.gtid import (
    ErrantRange,
    Gtid,
    GtidPosition,
    GtidState,
    in_errant_ranges,
    parse_binlog_gtid_event,
    parse_binlog_gtid_list,
    ranges_predate,
)

TOKEN_TABLES = frozenset({f"{schema.SCHEMA}.fencing", f"{schema.SCHEMA}.fencing_history"})
_TABLE_MAP = re.compile(r"^table_id: (\d+) \(([^)]+)\)$")
_ROWS = re.compile(r"^table_id: (\d+)\b")
_INSERTS = ("Write_rows",)
_UPDATES = ("Update_rows",)
# Events that carry no transaction of their own (file headers, rotation, checkpoints).
_OUTSIDE = frozenset({"Format_desc", "Gtid_list", "Binlog_checkpoint", "Rotate", "Stop", "Start_encryption"})
# The row images mariadb-binlog --verbose prints for the history insert (the excerpt's text).
_HISTORY_INSERT = re.compile(
    rf"^### INSERT INTO `{schema.SCHEMA}`\.`fencing_history`\n### SET\n###   @1=(\d+)\n###   @2=.*\n"
    r"###   @3=(\d+)\n", re.MULTILINE)
_GTID_IN_DUMP = re.compile(r"^#.*\bGTID (\d+-\d+-\d+)\b", re.MULTILINE)


class NotDiscardable(Exception):
    """The errant transactions left are not (provably) this node's own token writes: kept."""


@dataclass(frozen=True)
class BinlogEvent:
    """One row of ``SHOW BINLOG EVENTS``."""

    log: str
    pos: int
    kind: str
    info: str


@dataclass(frozen=True)
class TokenWrite:
    """What a token write's events did: rows inserted into the history, the fencing row inserted."""

    history_inserts: int
    fencing_inserted: bool


def _kind(kind: str) -> str:
    """``Write_rows_v1`` / ``Write_rows_compressed_v1`` → ``Write_rows``."""
    return kind.removesuffix("_v1").removesuffix("_compressed")


def token_write_problem(events: Sequence[BinlogEvent]) -> str | TokenWrite:
    """A transaction's events (its Gtid event first): a TokenWrite when they are only a fencing
    token's write, else why not (one line)."""
    if not events or events[0].kind != "Gtid" or not events[0].info.startswith("BEGIN GTID "):
        return "not a transaction (no BEGIN GTID event first)"
    tables: dict[str, str] = {}
    history_inserts, fencing_inserted, fencing_written, ended = 0, False, False, False
    for event in events[1:]:
        kind = _kind(event.kind)
        if ended:
            return f"{event.kind} after the transaction's end"
        if kind == "Annotate_rows":
            continue  # the statement's text, for reading only: no effect of its own
        if kind == "Table_map":
            match = _TABLE_MAP.match(event.info)
            if match is None or match[2] not in TOKEN_TABLES:
                return f"it writes {match[2] if match else event.info!r}, not only the fencing token's tables"
            tables[match[1]] = match[2]
        elif kind in _INSERTS or kind in _UPDATES:
            rows = _ROWS.match(event.info)
            table = tables.get(rows[1]) if rows else None
            if table is None:
                return f"{event.kind} of a table not mapped to the token's ({event.info!r})"
            if table.endswith(".fencing_history"):
                if kind not in _INSERTS:
                    return "it updates a fencing_history row (a token write only inserts one)"
                history_inserts += 1
            else:
                fencing_written = True
                fencing_inserted = fencing_inserted or kind in _INSERTS
        elif kind == "Xid" or (kind == "Query" and event.info.strip().upper() == "COMMIT"):
            ended = True
        else:
            return f"it holds a {event.kind} event ({event.info[:80]!r})"
    if not ended:
        return "the transaction does not end (no XID or COMMIT)"
    if not fencing_written:
        return f"it writes no {schema.SCHEMA}.fencing row"
    return TokenWrite(history_inserts, fencing_inserted)


def split_transactions(events: Sequence[BinlogEvent]) -> list[tuple[Gtid, list[BinlogEvent]]]:
    """The binlog's transactions in order, each its Gtid event and the events up to the next one,
    less the file and rotation events between transactions."""
    found: list[tuple[Gtid, list[BinlogEvent]]] = []
    for event in events:
        if event.kind == "Gtid":
            gtid = parse_binlog_gtid_event(event.info)
            if gtid is None:
                raise NotDiscardable(f"a Gtid event without a GTID at {event.log}:{event.pos}")
            found.append((gtid, [event]))
        elif found and _kind(event.kind) not in _OUTSIDE:
            found[-1][1].append(event)
    return found


def history_tokens_in_excerpt(text: str, gtids: Collection[Gtid]) -> dict[Gtid, list[tuple[int, int]]]:
    """For each of ``gtids`` in the excerpt (mariadb-binlog --verbose), the (token, server_id) of
    the fencing_history rows its row images insert; a GTID absent from the excerpt is absent here."""
    heads = list(_GTID_IN_DUMP.finditer(text))
    found: dict[Gtid, list[tuple[int, int]]] = {}
    for head, end in zip(heads, [m.start() for m in heads[1:]] + [len(text)], strict=True):
        gtid = Gtid.parse(head[1])
        if gtid in gtids:
            found[gtid] = [(int(m[1]), int(m[2])) for m in _HISTORY_INSERT.finditer(text, head.end(), end)]
    return found


def history_without(history: GtidState, ranges: Sequence[ErrantRange]) -> GtidPosition:
    """The position a node holds besides ``ranges``: per domain, the last GTID of its history with
    each errant stream cut back to what the primary has of it (dropped when it has nothing)."""
    cut = {(r.domain, r.server_id): r.after_seq for r in ranges}
    last: dict[int, Gtid] = {}
    for gtid in history.gtids:
        seq = cut.get((gtid.domain, gtid.server_id), gtid.seq)
        if seq and (gtid.domain not in last or seq > last[gtid.domain].seq):
            last[gtid.domain] = Gtid(gtid.domain, gtid.server_id, seq)
    return GtidPosition.of(last.values())


def state_without(state: GtidState, ranges: Sequence[ErrantRange]) -> GtidState:
    """``state`` (a ``gtid_binlog_state``) as it was before ``ranges``: each errant stream cut back
    to what the primary has of it, dropped when it has nothing. What the discard sets after
    ``RESET MASTER``, which empties the state: without it the node would look to its peers as if
    it lacked every other server's stream it holds (soak seed 461: a node that discarded a token
    later lost every race, its peers' older streams "maybe acknowledged" and missing on it)."""
    cut = {(r.domain, r.server_id): r.after_seq for r in ranges}
    kept = ((g, cut.get((g.domain, g.server_id), g.seq)) for g in state.gtids)
    return GtidState.of(Gtid(g.domain, g.server_id, seq) for g, seq in kept if seq)


@dataclass(frozen=True)
class DiscardPlan:
    """The proven token writes and what discarding them changes."""

    gtids: tuple[Gtid, ...]
    history_tokens: tuple[int, ...]
    delete_fencing_row: bool  # the first token inserted the fencing row: there was none before
    slave_pos: GtidPosition
    binlog_state: str  # as read when planned: nothing may have changed when it is applied
    state_before: GtidState  # the binlog state without the tokens, set again after RESET MASTER

    def __str__(self) -> str:
        tokens = ", ".join(map(str, self.history_tokens)) or "none"
        return f"{','.join(map(str, self.gtids))} (fencing token(s) {tokens})"


def _events_back_to(mysql: MysqlActions, ranges: Sequence[ErrantRange],
                    max_events: int) -> list[BinlogEvent]:
    """The binlog's events, oldest first, from the newest file back to one whose Gtid list shows
    that no older file holds a GTID of ``ranges``."""
    files: list[list[BinlogEvent]] = []
    budget = max_events
    with mysql.session(read_timeout_s=60.0) as conn:
        logs = [str(row["Log_name"]) for row in query(conn, "SHOW BINARY LOGS")]
        for log in reversed(logs):
            if budget <= 0:
                raise NotDiscardable(f"more than {max_events} binlog events before the first errant one")
            rows = query(conn, "SHOW BINLOG EVENTS IN %s LIMIT %s", (log, budget))
            budget -= len(rows)
            events = [BinlogEvent(log, int(r["Pos"]), str(r["Event_type"]), str(r["Info"] or ""))
                      for r in rows]
            files.append(events)
            lists = [e for e in events if e.kind == "Gtid_list"]
            if lists and ranges_predate(parse_binlog_gtid_list(lists[0].info), ranges):
                return [event for events in reversed(files) for event in events]
    raise NotDiscardable("the binlog files do not reach back to before the errant transactions")


def _token_writes(mysql: MysqlActions, ranges: Sequence[ErrantRange], max_events: int
                  ) -> tuple[list[tuple[Gtid, list[BinlogEvent]]], list[int], dict[Gtid, TokenWrite]]:
    """The binlog's transactions back to before ``ranges``, the indexes of those in ``ranges``, and
    what each of them wrote; raises NotDiscardable unless the binlog holds every one of them and
    each is a fencing-token write."""
    transactions = split_transactions(_events_back_to(mysql, ranges, max_events))
    errant = [i for i, (gtid, _) in enumerate(transactions) if in_errant_ranges(gtid, ranges)]
    found = {transactions[i][0] for i in errant}
    missing = [str(r.last) for r in ranges if r.last not in found]
    if not errant or missing:
        raise NotDiscardable(f"the binlog does not hold {', '.join(missing) or 'them'}")
    writes: dict[Gtid, TokenWrite] = {}
    for i in errant:
        gtid, group = transactions[i]
        judged = token_write_problem(group)
        if isinstance(judged, str):
            raise NotDiscardable(f"{gtid} is not a fencing-token write: {judged}")
        writes[gtid] = judged
    return transactions, errant, writes


def only_own_token_writes(mysql: MysqlActions, ranges: Sequence[ErrantRange], *,
                          max_events: int = 200_000) -> str:
    """Why the transactions of ``ranges`` (errant against the primary) are not all this server's
    own fencing-token writes, read from the local binlog's events; "" when they are. Changes
    nothing: the errant check the core reads carries it (``ErrantCheck.only_own_tokens``), and the
    repair proves it again, with more, before it discards anything (:func:`plan_discard`).
    Raises MysqlAdapterError when mysqld does not answer."""
    if not ranges:
        return "nothing errant"
    with mysql.session() as conn:
        server_id = int(query_one(conn, "SELECT @@global.server_id AS server_id")["server_id"])
    try:
        _only_this_server(ranges, server_id)
        _token_writes(mysql, ranges, max_events)
    except NotDiscardable as exc:
        return str(exc)
    return ""


def _only_this_server(ranges: Sequence[ErrantRange], server_id: int) -> None:
    """Raises NotDiscardable when ``ranges`` name another server's transactions."""
    others = sorted({r.server_id for r in ranges if r.server_id != server_id})
    if others:
        raise NotDiscardable(f"errant transactions of server(s) {others}, not this node's ({server_id})")


def plan_discard(mysql: MysqlActions, left: Sequence[ErrantRange], excerpt: str, saved: Collection[Gtid],
                 primary: GtidState, *, max_events: int = 1_000_000) -> DiscardPlan:
    """Prove that ``left`` (errant after crash recovery) are only this node's own token writes,
    saved in ``excerpt``; raises NotDiscardable saying why not. Changes nothing."""
    with mysql.session() as conn:
        row = query_one(conn, "SELECT @@global.server_id AS server_id, @@global.read_only AS ro, "
                              "@@global.gtid_binlog_state AS state, @@global.gtid_slave_pos AS slave_pos")
    server_id = int(row["server_id"])
    _only_this_server(left, server_id)
    if not int(row["ro"]):
        raise NotDiscardable("the server is writable (not fenced)")
    status = mysql.replica_status()
    if status is not None and (status.io_running != "No" or status.sql_running != "No"):
        raise NotDiscardable(f"replication is running (IO {status.io_running}, SQL {status.sql_running})")
    transactions, errant, writes = _token_writes(mysql, left, max_events)
    after = [str(gtid) for gtid, _ in transactions[errant[0]:] if not in_errant_ranges(gtid, left)]
    if after:
        raise NotDiscardable(f"{', '.join(after[:3])} follow(s) the first of them in the binlog")
    unsaved = [str(g) for g in writes if g not in saved]
    in_excerpt = history_tokens_in_excerpt(excerpt, set(writes))
    if unsaved or set(in_excerpt) != set(writes):
        raise NotDiscardable(f"{', '.join(unsaved) or 'some'} not in the repair's excerpt")
    tokens: list[int] = []
    for gtid, write in writes.items():
        rows = in_excerpt[gtid]
        if len(rows) != write.history_inserts or any(sid != server_id for _, sid in rows):
            raise NotDiscardable(f"the excerpt's row images of {gtid} do not match its binlog events")
        tokens += [token for token, _ in rows]
    first = transactions[errant[0]][1][0]
    with mysql.session() as conn:
        at = query_one(conn, "SELECT BINLOG_GTID_POS(%s, %s) AS pos", (first.log, first.pos))["pos"]
    if at is None:
        raise NotDiscardable(f"BINLOG_GTID_POS({first.log}, {first.pos}) is NULL")
    position = GtidPosition.parse(str(at))
    binlog_state = GtidState.parse(str(row["state"] or ""))
    held = history_without(GtidState.from_sources(binlog_state,
                                                  GtidPosition.parse(str(row["slave_pos"] or ""))), left)
    return DiscardPlan(tuple(sorted(writes)), tuple(sorted(tokens)),
                       writes[transactions[errant[0]][0]].fencing_inserted,
                       checked_position(position, held, primary), str(row["state"] or ""),
                       state_without(binlog_state, left))


def checked_position(position: GtidPosition, held: GtidPosition, primary: GtidState) -> GtidPosition:
    """``position`` (before the first token) when it is everything else the node holds and the
    primary holds it; else NotDiscardable."""
    if not position.gtids:
        raise NotDiscardable("nothing precedes the first token in the binlog: no position to replicate from")
    if position != held:
        raise NotDiscardable(f"the binlog position before the first token ({position}) is not what the node "
                             f"holds besides the tokens ({held})")
    streams: Mapping[tuple[int, int], int] = primary.streams
    lacking = [str(g) for g in position.gtids if streams.get((g.domain, g.server_id), -1) < g.seq]
    if lacking:
        raise NotDiscardable(f"the primary lacks {', '.join(lacking)} of the position before the tokens")
    return position


def apply_discard(mysql: MysqlActions, plan: DiscardPlan, state_dir: Path,
                  step_done: Callable[[str], None] | None = None) -> None:
    """Delete the tokens' rows without binlogging them, empty the binlog and set ``gtid_slave_pos``
    to the position before them. Raises NotDiscardable, changing nothing, if the binlog moved.
    The intent file (:mod:`discard_intent`) is written in ``state_dir`` before the first change
    and removed after the last; ``step_done``: see :func:`~dbfence.mysql.discard_intent.run_discard`."""
    with mysql.session() as conn:
        now = query_one(conn, "SELECT @@global.gtid_binlog_state AS state")["state"]
        if str(now or "") != plan.binlog_state:
            raise NotDiscardable(f"the binlog state changed since the check ({plan.binlog_state} → {now})")
        intent = intent_of(conn, binlog_state=plan.binlog_state, target=str(plan.slave_pos),
                           target_state=str(plan.state_before), gtids=str(plan),
                           history_tokens=plan.history_tokens, delete_fencing_row=plan.delete_fencing_row)
        try:
            write_intent(state_dir, intent)
        except OSError as exc:
            raise NotDiscardable(f"cannot write the discard's intent file in {state_dir}: "
                                 f"{exc.strerror or exc}") from None
        run_discard(conn, intent, step_done)
    with contextlib.suppress(OSError):  # done: a file left behind is found done and removed (discard_intent)
        clear_intent(state_dir)
