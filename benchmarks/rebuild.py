"""Measure a rebuild ([rejoin] mode = rebuild): time to rejoin, and the donor's read latency while
it streams its backup at the configured rate.

A lab of 3 MariaDB (db1 primary, db2 and db3 its replicas). The donor db3 gets a dataset of
``--gib`` GiB written on it alone (sql_log_bin = 0: filling the whole cluster would triple the
work and the binlogs, and only the donor's files are copied). Then db2 takes over (db3 follows
it) and the old primary db1 commits a transaction db2 lacks (errant, committed: only a rebuild
removes it). db1 is rebuilt from db3's stream over the HTTP API on loopback at ``--rate-mib``
MiB/s and repointed to db2. Meanwhile a reader runs point SELECTs on the donor db3 and records
their latency (before the copy: the baseline; during it: the cost).

    PYTHONPATH=. .venv/bin/python benchmarks/rebuild.py [--gib 1.0] [--rate-mib 32] [--keep]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pymysql

from dbfence.discovery.backup_stream import fetch_backup
from dbfence.discovery.http_api import HttpApi, StatusBoard
from dbfence.discovery.metrics import Metrics
from dbfence.lab.cluster import LabCluster, LabSpec
from dbfence.mysql.actions import MysqlActions, PrimaryAddress
from dbfence.mysql.connection import Endpoint
from dbfence.mysql.credentials import Credentials
from dbfence.mysql.rebuild import BackupStream, Progress, rebuild_from_stream
from dbfence.mysql.repair import MysqldControl

ROW = 4000  # bytes of padding per row


def actions(lab: LabCluster, name: str) -> MysqlActions:
    node, acc = lab.node(name), lab.accounts["agent"]
    return MysqlActions(Endpoint(node.host, node.port), Credentials(acc.user, acc.password), name=name)


def fill(lab: LabCluster, name: str, gib: float) -> int:
    rows = max(1, int(gib * (1 << 30) / ROW))
    with lab.connect(name, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SET SESSION sql_log_bin = 0")
        cur.execute("CREATE TABLE app.filler (id INT PRIMARY KEY, pad VARCHAR(4000)) ENGINE=InnoDB")
        # The sequence engine, in batches: INSERT ... SELECT from the table itself needs a temporary
        # table as large as the batch.
        for first in range(1, rows + 1, 16384):
            last = min(rows, first + 16383)
            cur.execute(f"INSERT INTO app.filler SELECT seq, REPEAT('x', {ROW}) "
                        f"FROM app.seq_{first}_to_{last}")
    return rows


class Reader(threading.Thread):
    """Point SELECTs on the donor; latencies by phase."""

    def __init__(self, lab: LabCluster, name: str, rows: int) -> None:
        super().__init__(daemon=True)
        self.lab, self.name, self.rows = lab, name, rows
        self.phase = "baseline"
        self.samples: dict[str, list[float]] = {}
        self.errors = 0
        self.stop = threading.Event()

    def run(self) -> None:
        conn = self.lab.connect(self.name, autocommit=True)
        i = 0
        while not self.stop.is_set():
            i = (i * 7919 + 1) % self.rows + 1
            started = time.monotonic()
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT LENGTH(pad) FROM app.filler WHERE id = %s", (i,))
                    cur.fetchall()
            except pymysql.MySQLError:
                self.errors += 1
                conn = self.lab.connect(self.name, autocommit=True)
                continue
            self.samples.setdefault(self.phase, []).append(time.monotonic() - started)
            time.sleep(0.01)


def donor(lab: LabCluster, rate_mib: int) -> tuple[int, Iterator[bytes]]:
    stream = BackupStream(actions(lab, "db3"), rate_mib << 20)
    return stream.estimate, stream.chunks()


def wait_for_table(lab: LabCluster, name: str, table: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with lab.connect(name) as conn, conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM information_schema.tables WHERE table_name = %s", (table,))
            row = cur.fetchone()
            if row is not None and row[0] == 1:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{name} has no table {table} after {timeout:g} s")


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] * 1000 if len(values) >= 20 else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--rate-mib", type=int, default=32)
    parser.add_argument("--keep", action="store_true", help="keep the lab's files")
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="rebuild-bench-"))
    lab = LabCluster.up(LabSpec(directory=directory / "lab", mysql_count=3))
    try:
        started = time.monotonic()
        with lab.connect("db1", autocommit=True) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE app.seed (id INT PRIMARY KEY)")  # db1's stream, replicated
        for name in ("db2", "db3"):
            wait_for_table(lab, name, "seed")
        rows = fill(lab, "db3", args.gib)
        print(f"filled db3 with {rows} rows ({args.gib} GiB) in {time.monotonic() - started:.1f} s",
              flush=True)
        new, repl = lab.node("db2"), lab.accounts["repl"]
        with lab.connect("db2", autocommit=True) as conn, conn.cursor() as cur:
            cur.execute("STOP SLAVE")
            cur.execute("RESET SLAVE ALL")
            cur.execute("SET GLOBAL read_only = OFF")
        new_primary = PrimaryAddress(new.host, new.port, Credentials(repl.user, repl.password), name="db2")
        actions(lab, "db3").repoint(new_primary, actions(lab, "db2").gtid_positions().history,
                                    semi_sync_replica=False)
        with lab.connect("db1", autocommit=True) as conn, conn.cursor() as cur:
            # committed: only a rebuild removes it
            cur.execute("CREATE TABLE app.errant (id INT PRIMARY KEY)")
        reader = Reader(lab, "db3", rows)
        reader.start()
        time.sleep(5)
        token = "bench"
        api = HttpApi("127.0.0.1", 0, StatusBoard(), Metrics(), token=token,
                      backup=lambda: donor(lab, args.rate_mib)).start()
        host, port = api.address
        last: list[Progress] = []

        def progress(p: Progress) -> None:
            last.append(p)
            print(f"  {p.done >> 20} MiB of ~{p.estimate >> 20} MiB, {p.rate / (1 << 20):.1f} MiB/s, "
                  f"ETA {p.eta if p.eta is None else round(p.eta)} s", flush=True)

        node = lab.node("db1")
        control = MysqldControl(pid_file=Path(node.pid_file), start_timeout=600.0,
                                start_command=[sys.executable, "-m", "dbfence", "lab", "start-mysql", "--dir",
                                               str(lab.directory), "db1"])
        reader.phase = "streaming"
        started = time.monotonic()
        result = rebuild_from_stream(actions(lab, "db1"), control,
                                     lambda: actions(lab, "db2").gtid_positions().history,
                                     lambda: fetch_backup(f"http://{host}:{port}", token),
                                     directory / "errant-db1.sql", "-- bench\n", progress, stamp="bench")
        reader.phase = "after"
        rebuilt = time.monotonic() - started
        actions(lab, "db1").repoint(new_primary, actions(lab, "db2").gtid_positions().history,
                                    semi_sync_replica=False)
        with lab.connect("db2", autocommit=True) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE app.after_rebuild (id INT PRIMARY KEY)")
        wait_for_table(lab, "db1", "after_rebuild")
        rejoined = time.monotonic() - started
        time.sleep(3)
        reader.stop.set()
        reader.join(5)
        api.stop()
        print(f"\nrebuild: {result.progress.done >> 20} MiB streamed in {result.progress.seconds:.1f} s "
              f"({result.progress.rate / (1 << 20):.1f} MiB/s, throttle {args.rate_mib} MiB/s); "
              f"rebuilt in {rebuilt:.1f} s, replicating from db2 {rejoined:.1f} s after the start; "
              f"removed {result.errant_before}, saved {result.saved_file}, old data {result.old_datadir}")
        for phase in ("baseline", "streaming", "after"):
            values = reader.samples.get(phase, [])
            print(f"donor point-SELECT latency {phase:9}: n={len(values)} "
                  f"p50={statistics.median(values) * 1000 if values else float('nan'):.2f} ms "
                  f"p95={p95(values):.2f} ms")
        print(f"reader errors: {reader.errors}")
        return 0
    finally:
        LabCluster.load(lab.directory).down()
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
