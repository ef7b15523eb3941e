"""Helpers for the MySQL adapter's lab tests: targets, actions and monitors for lab nodes."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymysql
import pymysql.cursors
import pytest

from dbfence.lab.cluster import LabCluster
from dbfence.mysql.actions import MysqlActions, PrimaryAddress
from dbfence.mysql.connection import DbConnection, Endpoint
from dbfence.mysql.credentials import Credentials
from dbfence.mysql.hysteresis import HysteresisConfig
from dbfence.mysql.monitor import HealthMonitor, HealthObservation
from dbfence.mysql.probes import ProbeSettings, Role, Target
from dbfence.mysql.repair import MysqldControl

# For tests whose fault is not a timeout: generous timeouts so a loaded host does not trip them.
RELAXED = ProbeSettings(connect_timeout_s=3.0, select_timeout_s=1.5)


def creds(lab: LabCluster, account: str = "agent") -> Credentials:
    acc = lab.accounts[account]
    return Credentials(acc.user, acc.password)


def endpoint(lab: LabCluster, name: str) -> Endpoint:
    node = lab.node(name)
    return Endpoint(node.host, node.port)


def target(lab: LabCluster, name: str) -> Target:
    node = lab.node(name)
    return Target(
        endpoint=Endpoint(node.host, node.port),
        credentials=creds(lab),
        pid_file=Path(node.pid_file),
        datadir=Path(node.datadir),
        reserved_endpoint=Endpoint(node.host, node.extra_port),
    )


def actions(lab: LabCluster, name: str) -> MysqlActions:
    return MysqlActions(endpoint(lab, name), creds(lab), name=name)


def primary_address(lab: LabCluster, name: str) -> PrimaryAddress:
    node = lab.node(name)
    return PrimaryAddress(node.host, node.port, creds(lab, "repl"), name=name)


def monitor(
    lab: LabCluster,
    name: str,
    role: Role,
    settings: ProbeSettings | None = None,
    hysteresis: HysteresisConfig | None = None,
) -> HealthMonitor:
    return HealthMonitor(target(lab, name), settings or RELAXED, hysteresis, role)



def recovery_control(lab: LabCluster, name: str) -> MysqldControl:
    """``name``'s mysqld as the repair starts it: the lab's own start command, with
    ``--init-rpl-role=SLAVE`` for crash recovery."""
    return MysqldControl(pid_file=Path(lab.node(name).pid_file), start_timeout=120.0,
                         start_command=[sys.executable, "-m", "dbfence", "lab", "start-mysql", "--dir",
                                        str(lab.directory), "--recovery", name])


def sql(lab: LabCluster, name: str, account: str = "agent", **kwargs: Any) -> DbConnection:
    node = lab.node(name)
    acc = lab.accounts[account]
    conn: DbConnection = pymysql.connect(
        host=node.host,
        port=node.port,
        user=acc.user,
        password=acc.password,
        autocommit=True,
        connect_timeout=5,
        read_timeout=kwargs.pop("read_timeout", 30),
        write_timeout=30,
        cursorclass=pymysql.cursors.DictCursor,
        ssl_disabled=True,  # loopback: skip PyMySQL's per-connection TLS context
        **kwargs,
    )
    return conn


def one(conn: DbConnection, statement: str, params: Any = None) -> dict[str, Any]:
    with conn.cursor() as cur:
        cur.execute(statement, params)
        row = cur.fetchone()
    assert row is not None, statement
    return row


def run(conn: DbConnection, statement: str, params: Any = None) -> None:
    with conn.cursor() as cur:
        cur.execute(statement, params)


def poll(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Return the first truthy value of ``condition()`` or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def observe_until_tripped(mon: HealthMonitor, timeout: float) -> tuple[HealthObservation, float]:
    """Run rounds at the monitor's interval until it trips; return the tripping round and when."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obs = mon.observe()
        if not obs.healthy:
            return obs, time.monotonic()
        mon.sleep_until_next_round()
    raise AssertionError(f"monitor did not trip within {timeout} s: {mon.health.describe()}")


def observe_until_healthy(mon: HealthMonitor, timeout: float) -> HealthObservation:
    deadline = time.monotonic() + timeout
    obs = mon.observe()
    while not obs.confirmed_healthy:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"monitor did not recover within {timeout} s: {obs.describe()}; "
                f"not passed yet: {sorted(k.value for k in obs.unconfirmed)}"
            )
        mon.sleep_until_next_round()
        obs = mon.observe()
    return obs


@contextlib.contextmanager
def small_tmpfs(size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` of its own (root), unmounted and removed afterwards; skips the test
    where none can be mounted."""
    mount_point = Path(tempfile.mkdtemp(prefix="dbfence-tmpfs-"))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        mount_point.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)
        mount_point.rmdir()

