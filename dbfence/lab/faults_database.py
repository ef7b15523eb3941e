"""Database faults: the primary's mysqld stalls, fills its disk, runs out of connections, its
gate is flooded, or a replica lags when the primary dies.

Each injector takes a :class:`~dbfence.lab.fault_model.FaultContext` and returns its heal; the
rows that use them are in the registry, :mod:`dbfence.lab.faults`.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import pymysql

from dbfence.lab.fault_model import FaultContext, Heal
from dbfence.lab.faults_process import kill_mysqld
from dbfence.lab.flood import BareFlood, ConnectionWatch


def held_connection(ctx: FaultContext, node: str, *statements: str, what: str) -> Heal:
    """Run ``statements`` on a connection kept open until heal (locks live as long as it)."""
    conn = ctx.lab.connect(node, read_timeout=5)

    def heal() -> None:
        with contextlib.suppress(pymysql.MySQLError, OSError), conn.cursor() as cur:
            cur.execute("UNLOCK TABLES")
        with contextlib.suppress(Exception):
            conn.close()
    # registered before the statements: one that fails after another took a lock releases it
    release = ctx.step(what, heal)
    with conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)
    return release


def write_stall(ctx: FaultContext) -> Heal:
    return held_connection(ctx, ctx.primary, "FLUSH TABLES WITH READ LOCK",
                           what=f"held FLUSH TABLES WITH READ LOCK on {ctx.primary}")


def fill_datadir(ctx: FaultContext) -> Heal:
    datadir = Path(ctx.lab.node(ctx.primary).datadir)
    if not os.path.ismount(datadir):
        raise RuntimeError(f"{datadir} is not a mount of its own; this fault needs a tmpfs lab")
    filler = datadir / "dbfence-filler"
    remove = ctx.step(f"filled {ctx.primary}'s data directory", lambda: filler.unlink(missing_ok=True))
    with open(filler, "wb") as out:
        chunk = b"\0" * (1 << 20)
        with contextlib.suppress(OSError):  # ENOSPC: full, as wanted
            while True:
                out.write(chunk)
                out.flush()
    return remove


def use_up_connections(ctx: FaultContext) -> Heal:
    """Open application connections straight to mysqld until it says "Too many connections"."""
    node = ctx.lab.node(ctx.primary)
    app = ctx.lab.accounts["app"]
    held: list[Any] = []

    def heal() -> None:
        for conn in held:
            with contextlib.suppress(Exception):
                conn.close()
    release = ctx.step(f"held application connections straight to {ctx.primary}'s mysqld", heal)
    for _ in range(1000):
        try:
            held.append(pymysql.connect(host=node.host, port=node.port, user=app.user, password=app.password,
                                        connect_timeout=2, ssl_disabled=True))
        except pymysql.MySQLError as exc:
            if exc.args and exc.args[0] == 1040:  # ER_CON_COUNT_ERROR
                break
            raise
    ctx.notes.append(f"{len(held)} application connections held straight to mysqld")
    _expect_1040_through_the_gate(ctx, "mysqld's slots used up")
    return release


def _expect_1040_through_the_gate(ctx: FaultContext, why: str) -> None:
    """One more application client through the primary's gate must get ERR 1040."""
    agent, app = ctx.lab.agent(ctx.primary), ctx.lab.accounts["app"]
    try:
        pymysql.connect(host=agent.address, port=agent.gate_port, user=app.user, password=app.password,
                        connect_timeout=5, ssl_disabled=True).close()
    except pymysql.MySQLError as exc:
        if exc.args and exc.args[0] == 1040:
            ctx.notes.append(f"a new client through the gate got 1040 ({why}): {exc.args[1]}")
            return
        ctx.problems.append(f"a new client through the gate got {exc!r}, not 1040 ({why})")
        return
    ctx.problems.append(f"a new client through the gate was admitted ({why})")


def flood_the_gate(ctx: FaultContext) -> Heal:
    """5,000 bare TCP connections to the primary's gate, opened at once and kept open (the closed
    ones replaced every second): the gate must keep mysqld under its own limit."""
    agent, node = ctx.lab.agent(ctx.primary), ctx.lab.node(ctx.primary)
    account = ctx.lab.accounts["agent"]
    watch = ConnectionWatch(node.host, node.extra_port, account.user, account.password).start()
    stop_watch = ctx.step("", watch.stop)  # a watcher, not an act: stopped, never reported
    gate = ctx.lab.agent_status(ctx.primary).get("gate", {})
    with ctx.lab.connect(ctx.primary) as conn, conn.cursor() as cur:
        cur.execute("SELECT @@global.max_connections")
        row = cur.fetchone()
    mysqld_max = int(row[0]) if row else 0
    if gate.get("mysqld_max_connections") != mysqld_max or gate.get("backend_cap", 0) >= mysqld_max:
        ctx.problems.append(f"the gate's cap does not follow mysqld's max_connections {mysqld_max}: "
                            f"{ {k: gate.get(k) for k in ('mysqld_max_connections', 'backend_cap')} }")
    flood = BareFlood(agent.address, agent.gate_port, size=5000).start()
    stop_flood = ctx.step(f"flooded {ctx.primary}'s gate with bare connections", flood.stop)
    _expect_1040_through_the_gate(ctx, "the gate's backend cap reached")

    def heal() -> None:
        stop_flood()
        stop_watch()
        ctx.notes.append(flood.summary())
        ctx.notes.append(f"mysqld: peak Threads_connected {watch.peak} of max_connections "
                         f"{watch.max_connections} ({watch.samples} samples over extra_port)")
        if watch.samples == 0:
            ctx.problems.append("mysqld's connection count could not be read during the flood")
        elif watch.peak >= watch.max_connections:
            ctx.problems.append(f"mysqld ran out of connections: {watch.peak} of {watch.max_connections}")
        if flood.greeted + sum(flood.refused.values()) == 0:
            ctx.problems.append("the flood got no answer from the gate at all")
        if flood.refused.get(1040, 0) == 0:
            ctx.problems.append("no flooding client was refused with 1040")
    return heal


def lagging_replica_then_kill(ctx: FaultContext) -> Heal:
    """One replica's applier is stuck behind a table lock while the primary's mysqld dies: the
    other, up-to-date replica must win (lossless), not the laggard."""
    ctx.wait_until_writing(before="locking a replica's applier")
    laggard = sorted(ctx.others())[0]
    unlock = held_connection(ctx, laggard, f"LOCK TABLES {ctx.table} READ",
                             what=f"held {laggard}'s applier (LOCK TABLES {ctx.table} READ)")
    ctx.wait_for_more_writes(10, what="writes the laggard has not applied")
    heal_mysqld = kill_mysqld(ctx)

    def heal() -> None:
        unlock()
        heal_mysqld()
    return heal

