"""Real MariaDB servers for the lab: bootstrap, start, replicate, inspect.

One data directory is bootstrapped (system tables plus the lab's accounts) and copied for every
node, which is several times faster than running ``mariadb-install-db`` per node.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
import pymysql
import pymysql.cursors

from dbfence.lab.binaries import find_binary
from dbfence.lab.errors import LabError
from dbfence.lab.procs import ProcessRef, port_open, spawn, stop
from dbfence.lab.wait import wait_until

HOST = "127.0.0.1"
#: Added to a restart so that crash recovery rolls back and truncates the binlog tail that was
#: never committed in the engine (with --rpl-semi-sync-slave-enabled=ON, always on in the lab).
RECOVERY_ARGS = ("--init-rpl-role=SLAVE",)


@dataclass(frozen=True, slots=True)
class Account:
    user: str
    password: str

    def __repr__(self) -> str:  # never print a password by accident
        return f"Account(user={self.user!r}, password=***)"


@dataclass(frozen=True, slots=True)
class MysqlNode:
    """One lab ``mariadbd``: where it listens, where its data lives, which process it is."""

    name: str
    server_id: int
    host: str
    port: int
    extra_port: int
    socket: str
    datadir: str
    pid_file: str
    log_error: str
    pid: int
    create_time: float

    @property
    def process(self) -> ProcessRef:
        return ProcessRef(self.pid, self.create_time)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _bootstrap_sql(accounts: dict[str, Account], client_hosts: Sequence[str] = ()) -> str:
    app, agent, repl = accounts["app"], accounts["agent"], accounts["repl"]
    # A schema for applications and tests, present on every node from the start.
    # Bootstrap mode starts without grant tables; FLUSH PRIVILEGES loads them so CREATE USER works.
    lines = ["FLUSH PRIVILEGES;", "CREATE DATABASE app;", "USE mysql;"]
    # client_hosts: where else the lab's clients connect from (a namespaced lab's subnet).
    for host in ("127.0.0.1", "localhost", *client_hosts):
        lines += [
            # The agent administers the server: it must write through read_only, kill sessions,
            # and change replication.
            f"CREATE USER '{agent.user}'@'{host}' IDENTIFIED BY '{agent.password}';",
            f"GRANT ALL PRIVILEGES ON *.* TO '{agent.user}'@'{host}' WITH GRANT OPTION;",
            f"CREATE USER '{repl.user}'@'{host}' IDENTIFIED BY '{repl.password}';",
            f"GRANT REPLICATION SLAVE ON *.* TO '{repl.user}'@'{host}';",
            # Applications get data privileges only: SUPER or READ ONLY ADMIN would let them
            # write through read_only on MariaDB 10.11 and defeat the fence.
            f"CREATE USER '{app.user}'@'{host}' IDENTIFIED BY '{app.password}';",
            f"GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, INDEX, ALTER, "
            f"CREATE TEMPORARY TABLES, LOCK TABLES ON *.* TO '{app.user}'@'{host}';",
        ]
    return "\n".join(lines) + "\n"


def bootstrap_template(template: Path, accounts: dict[str, Account], log_path: Path,
                       client_hosts: Sequence[str] = ()) -> None:
    """Create a data directory with system tables and the lab's accounts, no server left running."""
    install_db = find_binary("mariadb-install-db")
    mariadbd = find_binary("mariadbd")
    user_args = ["--user=root"] if os.geteuid() == 0 else []
    try:
        _run_bootstrap(install_db, mariadbd, template, _bootstrap_sql(accounts, client_hosts), log_path,
                       user_args)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"bootstrapping MariaDB failed ({exc}); see {log_path}") from None


def _run_bootstrap(install_db: str, mariadbd: str, template: Path, bootstrap_sql: str,
                   log_path: Path, user_args: list[str]) -> None:
    # A private temporary directory: in the shared /tmp, bootstraps running at the same time
    # (other labs, other test runs) failed now and then deleting their own #sql-temptable files.
    tmpdir = template.parent / "bootstrap-tmp"
    tmpdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    with open(log_path, "ab") as log:
        subprocess.run(
            [install_db, "--no-defaults", f"--datadir={template}", "--skip-test-db",
             "--auth-root-authentication-method=socket", *user_args],
            stdout=log, stderr=subprocess.STDOUT, check=True, timeout=120, env=env,
        )
        subprocess.run(
            [mariadbd, "--no-defaults", "--bootstrap", f"--datadir={template}",
             f"--tmpdir={tmpdir}", "--log-warnings=0", *user_args],
            input=bootstrap_sql.encode(),
            stdout=log, stderr=subprocess.STDOUT, check=True, timeout=120, env=env,
        )


def server_argv(node_dir: Path, server_id: int, port: int, extra_port: int, socket_path: Path,
                host: str = HOST) -> list[str]:
    datadir = node_dir / "data"
    user_args = ["--user=root"] if os.geteuid() == 0 else []
    return [
        find_binary("mariadbd"),
        "--no-defaults",
        *user_args,
        f"--datadir={datadir}",
        f"--socket={socket_path}",
        f"--pid-file={node_dir / 'mysqld.pid'}",
        f"--log-error={node_dir / 'error.log'}",
        f"--bind-address={host}",
        f"--port={port}",
        # A second listener with its own small connection budget: the agent can still get in
        # when applications have used up max_connections.
        f"--extra-port={extra_port}",
        "--extra-max-connections=4",
        f"--server-id={server_id}",
        "--log-bin=mysql-bin",
        "--relay-log=relay-bin",
        "--binlog-format=ROW",
        "--log-slave-updates=ON",
        "--gtid-strict-mode=ON",
        "--sync-binlog=1",
        # 3, not 1: InnoDB makes each commit durable before the client's OK. With 1 it relies on
        # the binlog for a commit's durability, and the recovery of --init-rpl-role=SLAVE cuts
        # from the binlog what InnoDB had not made durable: acknowledged commits of the last
        # second too (soak seed 442 lost one when the replica that held it crashed as well).
        "--innodb-flush-log-at-trx-commit=3",
        # Every node starts read-only; only the agent (or the lab, for node 1) opens it.
        "--read-only=ON",
        # Alone, this does NOT make crash recovery truncate a former primary's unacknowledged
        # tail (measured: benchmarks/semisync_recovery.py); it takes --init-rpl-role=SLAVE too,
        # which the repair's restart adds (RECOVERY_ARGS, `dbfence lab start-mysql --recovery`).
        "--rpl-semi-sync-slave-enabled=ON",
        "--skip-name-resolve",
        "--innodb-buffer-pool-size=32M",
        "--innodb-log-file-size=16M",
        "--max-connections=200",
        "--performance-schema=OFF",
        # Above any lab lease TTL: replicas of a frozen primary must still sit in their read when
        # the lease expires (KILL stops them at once); once reconnecting, a stop takes ~2 s.
        "--slave-net-timeout=60",
        "--character-set-server=utf8mb4",
    ]


def running_server(pid_file: Path) -> ProcessRef | None:
    """The live server whose pid ``pid_file`` holds, if it is a server started with that very
    file (a lab process another one restarted: the lab manifest may name an older one)."""
    try:
        pid = int(pid_file.read_text().strip())
        proc = psutil.Process(pid)
        running = proc.status() != psutil.STATUS_ZOMBIE and f"--pid-file={pid_file}" in proc.cmdline()
        return ProcessRef.of(pid) if running else None
    except (OSError, ValueError, psutil.Error):
        return None


def start_node(node_dir: Path, name: str, server_id: int, port: int, extra_port: int,
               socket_path: Path, timeout: float = 60.0, host: str = HOST,
               argv_prefix: Sequence[str] = (), extra_args: Sequence[str] = ()) -> MysqlNode:
    """Start (or restart) a node whose data directory exists; return once it accepts clients.

    ``argv_prefix`` runs the server inside a network namespace (``ip netns exec NS``); the
    caller must then be on a thread that reaches ``host``.
    """
    pid_file = node_dir / "mysqld.pid"
    running = running_server(pid_file)
    if running is not None:
        # Starting another would fail on the data directory's locks, and remove on its way out
        # the pid file of the one that runs.
        raise LabError(f"{name} is still running (pid {running.pid}, from {pid_file})")
    pid_file.unlink(missing_ok=True)
    socket_path.unlink(missing_ok=True)  # a killed server leaves its socket behind
    ref = spawn([*argv_prefix, *server_argv(node_dir, server_id, port, extra_port, socket_path, host),
                 *extra_args], node_dir / "stdout.log")
    sock = str(socket_path)

    exited: list[bool] = []

    def ready() -> bool:
        if not ref.alive():
            # Said after the wait: wait_until takes a probe's exception for "not yet", and a
            # server that aborted (a failed crash recovery, soak seed 443) was waited for until
            # the timeout (60 s) every time.
            exited.append(True)
            return True
        # mariadbd writes its pid file after it listens: wait for both, so that whoever looks
        # for the live server by its pid file (live_node) finds it
        return port_open(host, port) and running_server(pid_file) is not None

    wait_until(ready, timeout=timeout, what=f"{name} to accept connections")
    if exited:
        raise LabError(f"{name} exited during start; see {node_dir / 'error.log'}")
    return MysqlNode(
        name=name, server_id=server_id, host=host, port=port, extra_port=extra_port,
        socket=sock, datadir=str(node_dir / "data"), pid_file=str(pid_file),
        log_error=str(node_dir / "error.log"), pid=ref.pid, create_time=ref.create_time,
    )


def copy_template(template: Path, node_dir: Path) -> None:
    node_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(template, node_dir / "data")


def connect(node: MysqlNode, account: Account, **kwargs: Any) -> pymysql.connections.Connection[Any]:
    options: dict[str, Any] = {
        "host": node.host, "port": node.port, "user": account.user,
        "password": account.password, "autocommit": True,
        "connect_timeout": 5, "read_timeout": 30, "write_timeout": 30,
        # Loopback only: skip PyMySQL's per-connection TLS context (tens of ms of CPU each).
        "ssl_disabled": True,
    }
    options.update(kwargs)
    return pymysql.connect(**options)


def start_replication(replica: MysqlNode, primary: MysqlNode, agent: Account, repl: Account) -> None:
    with connect(replica, agent) as conn, conn.cursor() as cur:
        cur.execute(
            "CHANGE MASTER TO MASTER_HOST=%s, MASTER_PORT=%s, MASTER_USER=%s, MASTER_PASSWORD=%s, "
            "MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1",
            (primary.host, primary.port, repl.user, repl.password),
        )
        cur.execute("START SLAVE")


def open_for_writes(node: MysqlNode, agent: Account) -> None:
    with connect(node, agent) as conn, conn.cursor() as cur:
        cur.execute("SET GLOBAL read_only = OFF")


def describe(node: MysqlNode, agent: Account) -> dict[str, Any]:
    """The node's live state for ``lab status``; an unreachable node says why."""
    info: dict[str, Any] = {"name": node.name, "port": node.port, "pid": node.pid,
                            "alive": node.process.alive()}
    try:
        with connect(node, agent, connect_timeout=2, read_timeout=5) as conn, \
                conn.cursor(pymysql.cursors.DictCursor) as cur:
            cur.execute("SELECT @@read_only AS read_only, @@gtid_binlog_pos AS gtid_binlog_pos, "
                        "@@gtid_slave_pos AS gtid_slave_pos, @@gtid_current_pos AS gtid_current_pos")
            row = cur.fetchone() or {}
            info.update(read_only=bool(row["read_only"]), gtid_binlog_pos=row["gtid_binlog_pos"],
                        gtid_slave_pos=row["gtid_slave_pos"], gtid_current_pos=row["gtid_current_pos"])
            cur.execute("SHOW SLAVE STATUS")
            slave = cur.fetchone()
    except pymysql.MySQLError as exc:
        info.update(role="unreachable", error=str(exc))
        return info
    if slave:
        info.update(
            role="replica", master_port=slave["Master_Port"],
            io_running=slave["Slave_IO_Running"], sql_running=slave["Slave_SQL_Running"],
            seconds_behind=slave["Seconds_Behind_Master"],
            last_error=slave["Last_IO_Error"] or slave["Last_SQL_Error"] or "",
        )
    else:
        info["role"] = "read-only" if info["read_only"] else "primary"
    return info


def stop_node(node: MysqlNode) -> None:
    stop(node.process, grace=30.0)


def restarted_elsewhere(node: MysqlNode) -> ProcessRef | None:
    """The node's mysqld when another process restarted it (an agent's repair runs
    `dbfence lab start-mysql`, which this process's manifest may not show yet): the pid in its
    pid file, if that is a mariadbd on this node's data directory."""
    try:
        pid = int(Path(node.pid_file).read_text().strip())
        if pid == node.pid:
            return None
        process = psutil.Process(pid)
        if f"--datadir={node.datadir}" not in process.cmdline():
            return None
        return ProcessRef(pid, process.create_time())
    except (OSError, ValueError, psutil.Error):
        return None


def short_socket_path(node_dir: Path) -> Path:
    """Unix socket paths are limited to ~107 bytes; deep test directories need a short stand-in."""
    path = node_dir / "mysqld.sock"
    if len(str(path)) < 100:
        return path
    digest = hashlib.sha1(str(node_dir).encode()).hexdigest()[:12]
    short = Path(tempfile.gettempdir()) / "dbfence-sockets"
    short.mkdir(mode=0o700, exist_ok=True)
    return short / f"{digest}.sock"


def account_host_pattern(subnet: str) -> str:
    """A MariaDB account host matching every address of ``subnet`` ("10.213.0.0/255.255.255.0")."""
    network = ipaddress.ip_network(subnet)
    return f"{network.network_address}/{network.netmask}"
