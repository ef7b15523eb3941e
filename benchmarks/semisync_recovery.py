"""Experiment: does MariaDB's crash recovery remove a commit that waited for a semi-sync ack?

A primary with lossless semi-sync (AFTER_SYNC, a timeout that never falls back) and one replica
whose IO thread is stopped, so a commit on the primary reaches the binlog and waits for an ack
that never comes. Then, per scenario, the primary is stopped in some way and started again with
or without ``--rpl-semi-sync-slave-enabled`` / ``--init-rpl-role=SLAVE``; the script prints
``gtid_binlog_pos`` before and after, whether the row is in the table, and the error log lines
recovery wrote. This is what docs/operations.md ("Repairing a former primary") is built on.

    PYTHONPATH=. .venv/bin/python benchmarks/semisync_recovery.py [--scenario NAME] [--keep DIR]

Scenarios:
  kill9             kill -9 while the commit waits; restart with --rpl-semi-sync-slave-enabled=ON
                    only (what the lab's servers always had)
  kill9-plain       the same, restarted without it either (the control)
  kill9-role        kill -9; restart with that option and --init-rpl-role=SLAVE
  fence-kill9       fence first as the agent does (KILL the waiting session, read_only=ON),
                    then kill -9 at once; restart with both options (as every scenario below)
  fence-wait-kill9  the same, but kill -9 only 3 s after the fence
  readonly-kill9    read_only=ON while the commit still waits (session not killed), then kill -9
  shutdown          SHUTDOWN (clean) while the commit waits
  sigterm           SIGTERM while the commit waits
"""

from __future__ import annotations

import argparse
import re
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql

from dbfence.lab import mariadb_servers
from dbfence.lab.mariadb_servers import Account, MysqlNode
from dbfence.lab.procs import ProcessRef, free_port, port_open, spawn, stop
from dbfence.lab.wait import wait_until

SCENARIOS = ("kill9", "kill9-plain", "kill9-role", "fence-kill9", "fence-wait-kill9", "readonly-kill9",
             "shutdown", "sigterm")
_RECOVERY_WORDS = re.compile(r"truncat|recover|semisync|semi-sync|Semi-sync|rolled back|prepared|"
                             r"Crash|crash|commit|binlog", re.IGNORECASE)


#: Every server this script started, stopped by pid at the end of each scenario.
_STARTED: list[ProcessRef] = []


@dataclass
class Pair:
    primary: MysqlNode
    replica: MysqlNode
    accounts: dict[str, Account]
    primary_dir: Path


def _sql(node: MysqlNode, account: Account, statement: str) -> list[dict[str, Any]]:
    with mariadb_servers.connect(node, account, cursorclass=pymysql.cursors.DictCursor) as conn, \
            conn.cursor() as cur:
        cur.execute(statement)
        return list(cur.fetchall())


def _value(node: MysqlNode, account: Account, expression: str) -> Any:
    return _sql(node, account, f"SELECT {expression} AS v")[0]["v"]


def start_pair(root: Path) -> Pair:
    accounts = {name: Account(name, secrets.token_hex(8)) for name in ("app", "agent", "repl")}
    template = root / "template"
    mariadb_servers.bootstrap_template(template, accounts, root / "bootstrap.log")
    nodes = []
    for i in (1, 2):
        node_dir = root / f"db{i}"
        mariadb_servers.copy_template(template, node_dir)
        nodes.append(mariadb_servers.start_node(node_dir, f"db{i}", i, free_port(), free_port(),
                                                socket_path=node_dir / "s.sock"))
        _STARTED.append(nodes[-1].process)
    primary, replica = nodes
    agent = accounts["agent"]
    mariadb_servers.open_for_writes(primary, agent)
    _sql(primary, agent, "CREATE TABLE app.t (id INT PRIMARY KEY, note VARCHAR(40)) ENGINE=InnoDB")
    for statement in ("SET GLOBAL rpl_semi_sync_master_wait_point = AFTER_SYNC",
                      "SET GLOBAL rpl_semi_sync_master_timeout = 3600000",
                      "SET GLOBAL rpl_semi_sync_master_wait_no_slave = ON",
                      "SET GLOBAL rpl_semi_sync_master_enabled = ON"):
        _sql(primary, agent, statement)
    mariadb_servers.start_replication(replica, primary, agent, accounts["repl"])
    wait_until(lambda: int(_sql(primary, agent, "SHOW STATUS LIKE 'Rpl_semi_sync_master_clients'")
                           [0]["Value"]) == 1, timeout=30, what="the replica to be a semi-sync client")
    _sql(primary, agent, "INSERT INTO app.t VALUES (1, 'acknowledged')")
    wait_until(lambda: _value(replica, agent, "(SELECT COUNT(*) FROM app.t)") == 1, timeout=30,
               what="the replica to apply the first row")
    return Pair(primary, replica, accounts, root / "db1")


def hang_a_commit(pair: Pair) -> threading.Thread:
    """Stop the replica's IO thread, then commit a row on the primary from a thread: it waits."""
    agent = pair.accounts["agent"]
    _sql(pair.replica, agent, "STOP SLAVE IO_THREAD")

    def commit() -> None:
        try:
            _sql(pair.primary, agent, "INSERT INTO app.t VALUES (2, 'never acknowledged')")
            print("  !! the waiting commit returned OK")
        except pymysql.MySQLError as exc:
            print(f"  the waiting commit's client got: {exc.args}")

    writer = threading.Thread(target=commit, daemon=True)
    writer.start()
    wait_until(lambda: any("semi-sync" in str(row.get("State") or "").lower()
                           or "ack" in str(row.get("State") or "").lower()
                           for row in _sql(pair.primary, agent, "SHOW PROCESSLIST")),
               timeout=20, what="the commit to wait for the ack")
    return writer


def restart(pair: Pair, extra: list[str], drop: tuple[str, ...] = ()) -> MysqlNode:
    old = pair.primary
    argv = [arg for arg in mariadb_servers.server_argv(pair.primary_dir, old.server_id, old.port,
                                                       old.extra_port, Path(old.socket))
            if arg not in drop]
    Path(old.socket).unlink(missing_ok=True)
    ref = spawn([*argv, *extra], pair.primary_dir / "stdout.log")
    _STARTED.append(ref)
    wait_until(lambda: port_open(old.host, old.port) or not ref.alive(), timeout=60,
               what="the primary to start again")
    if not ref.alive():
        raise SystemExit(f"the primary did not start; see {old.log_error}")
    return MysqlNode(**{**old.to_json(), "pid": ref.pid, "create_time": ref.create_time})


def run(scenario: str, root: Path) -> dict[str, Any]:
    print(f"== scenario {scenario} ({root})")
    pair = start_pair(root)
    agent = pair.accounts["agent"]
    writer = hang_a_commit(pair)
    before = {
        "gtid_binlog_pos": _value(pair.primary, agent, "@@gtid_binlog_pos"),
        "replica_gtid": _value(pair.replica, agent, "@@gtid_current_pos"),
        "rows_seen_by_reader": _value(pair.primary, agent, "(SELECT COUNT(*) FROM app.t)"),
    }
    print(f"  waiting: {before}")
    log_offset = Path(pair.primary.log_error).stat().st_size
    proc = pair.primary.process
    extra: list[str] = []
    drop: tuple[str, ...] = ()
    started = time.monotonic()
    if scenario in ("fence-kill9", "fence-wait-kill9", "readonly-kill9"):
        if scenario != "readonly-kill9":
            for row in _sql(pair.primary, agent, "SHOW PROCESSLIST"):
                if row["Info"] and "INSERT" in str(row["Info"]):
                    _sql(pair.primary, agent, f"KILL CONNECTION {row['Id']}")
            writer.join(10)
        reader = threading.Thread(target=lambda: _sql(pair.primary, agent, "SET GLOBAL read_only = ON"),
                                  daemon=True)
        reader.start()
        reader.join(5)
        print(f"  read_only set: {not reader.is_alive()}; after fence: rows="
              f"{_value(pair.primary, agent, '(SELECT COUNT(*) FROM app.t)')}, "
              f"gtid_binlog_pos={_value(pair.primary, agent, '@@gtid_binlog_pos')}")
        if scenario == "fence-wait-kill9":
            time.sleep(3.0)  # the experiment's point: InnoDB flushes its redo log once a second
    if scenario == "shutdown":
        try:
            _sql(pair.primary, agent, "SHUTDOWN")
        except pymysql.MySQLError as exc:
            print(f"  SHUTDOWN: {exc.args}")
        wait_until(lambda: not proc.alive(), timeout=120, what="the clean shutdown")
    elif scenario == "sigterm":
        proc.signal(signal.SIGTERM)
        wait_until(lambda: not proc.alive(), timeout=120, what="SIGTERM to stop mysqld")
    else:
        proc.signal(signal.SIGKILL)
        wait_until(lambda: not proc.alive(), timeout=30, what="kill -9")
    print(f"  stopped after {time.monotonic() - started:.2f} s")
    writer.join(10)
    if scenario == "kill9-plain":
        drop = ("--rpl-semi-sync-slave-enabled=ON",)
    if scenario not in ("kill9", "kill9-plain"):
        extra = ["--init-rpl-role=SLAVE"]
    started = time.monotonic()
    pair.primary = restart(pair, extra, drop)
    after = {
        "restart_s": round(time.monotonic() - started, 2),
        "gtid_binlog_pos": _value(pair.primary, agent, "@@gtid_binlog_pos"),
        "rows": [tuple(row.values()) for row in _sql(pair.primary, agent, "SELECT * FROM app.t")],
    }
    print(f"  after restart: {after}")
    with open(pair.primary.log_error, encoding="utf-8", errors="replace") as log:
        log.seek(log_offset)
        lines = [line.rstrip() for line in log if _RECOVERY_WORDS.search(line)]
    print("  error log of the restart (recovery lines):")
    for line in lines:
        print(f"    {line}")
    return {"scenario": scenario, "before": before, "after": after, "log": lines}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    parser.add_argument("--keep", type=Path, help="leave the data directories here")
    args = parser.parse_args()
    for scenario in SCENARIOS if args.scenario == "all" else (args.scenario,):
        root = Path(tempfile.mkdtemp(prefix=f"semisync-{scenario}-", dir=args.keep))
        try:
            run(scenario, root)
        finally:
            while _STARTED:
                stop(_STARTED.pop(), grace=30.0)
            if args.keep is None:
                shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
