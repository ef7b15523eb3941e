"""TLS clients through the gate, with a real agent and a MariaDB that speaks TLS (a certificate the
test makes): on the remote path the TLS session runs end to end between the application's host and
mysqld (the client verifies mysqld's own certificate, mysqld sees the client's address), and the
fence still cuts it at the deadline with the agent frozen; on the worker relay (a client on the
database host) the TLS bytes are relayed unread, and mysqld sees the gate's address."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pymysql
import pytest

from dbfence.lab import netns
from dbfence.lab.agents import AgentTuning
from dbfence.lab.cluster import LabCluster
from dbfence.lab.wait import wait_until
from tests.conftest import LabFactory
from tests.e2e.test_e2e_remote_path import _status

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(netns.unavailable_reason() is not None,
                       reason=f"namespaced labs skipped: {netns.unavailable_reason()}"),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl to make a certificate"),
]

TUNING = AgentTuning(ttl=3.0, margin=1.0, lossless=False, remote_path="on")


def _certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "mysqld-cert.pem", directory / "mysqld-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=dbfence-test-mysqld", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def _tls_connection(host: str, port: int, lab: LabCluster, ca: Path) -> pymysql.connections.Connection[Any]:
    app = lab.accounts["app"]
    # Verified against the test's own certificate: the server at the other end of the TLS session
    # is mysqld itself, not anything in between.
    return pymysql.connect(host=host, port=port, user=app.user, password=app.password, database="app",
                           autocommit=True, connect_timeout=5, read_timeout=4, write_timeout=4,
                           ssl_ca=str(ca), ssl_verify_cert=True, ssl_verify_identity=False)


def _session(conn: pymysql.connections.Connection[Any]) -> tuple[str, str]:
    """(the TLS cipher mysqld negotiated for this session, the client address mysqld sees)."""
    with conn.cursor() as cur:
        cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        (_, cipher) = cur.fetchone()
        cur.execute("SELECT host FROM information_schema.processlist WHERE id = CONNECTION_ID()")
        (host,) = cur.fetchone()
    return str(cipher), str(host).rsplit(":", 1)[0]


def test_tls_passes_the_remote_path_untouched_and_is_fenced_and_relayed_opaque_by_workers(
        lab_factory: LabFactory, tmp_path: Path) -> None:
    lab = lab_factory(mysql_count=1, netns=True, agents=False)
    layout = lab.netns
    assert layout is not None
    cert, key = _certificate(tmp_path)
    # mysqld again, now with TLS; the application account may log in over TLS only.
    lab.kill_mysql("db1", signal.SIGTERM)
    wait_until(lambda: not lab.node("db1").process.alive(), timeout=60, what="mysqld to stop")
    lab.start_mysql("db1", [f"--ssl-cert={cert}", f"--ssl-key={key}"])
    with lab.in_client(lab.connect, "db1", "agent") as conn, conn.cursor() as cur:
        # Not binlogged: a write of its own that no peer has would keep the agent from racing.
        cur.execute("SET SESSION sql_log_bin = 0")
        cur.execute("SELECT host FROM mysql.user WHERE user = %s", (lab.accounts["app"].user,))
        for (app_host,) in cur.fetchall():
            cur.execute("ALTER USER %s@%s REQUIRE SSL", (lab.accounts["app"].user, app_host))
    lab.start_agents(TUNING)
    primary = lab.wait_settled()
    assert _status(lab, primary)["gate"]["remote_path"] == "on: eth0"
    agent = lab.agent(primary)

    # A client on another host: TLS end to end with mysqld, its own address seen.
    pooled = lab.in_client(_tls_connection, agent.address, agent.gate_port, lab, cert)
    frozen: list[psutil.Process] = []
    try:
        cipher, host = _session(pooled)
        assert cipher != "" and host == layout.address("client"), (cipher, host)
        with pooled.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS tls_marks (mark VARCHAR(64) PRIMARY KEY)")
            cur.execute("INSERT INTO tls_marks VALUES ('before-the-deadline')")
        wait_until(lambda: "remote-kernel" in [row["forwarding"] for row in
                                               _status(lab, primary)["gate"]["connections"]],
                   timeout=20, what="the TLS connection listed as remote-kernel in /status")

        # A client on the database host (its packets to the gate never cross eth0: the workers):
        # TLS relayed unread.
        local = netns.NamespaceRunner(layout.namespace(primary), threads=1)
        try:
            with local.call(_tls_connection, agent.address, agent.gate_port, lab, cert) as relayed:
                cipher, host = _session(relayed)
                # mysqld sees the gate's backend connection (this host's address) over TLS.
                assert cipher != "" and host == agent.address, (cipher, host)
                wait_until(lambda: "worker" in [row["forwarding"] for row in
                                                _status(lab, primary)["gate"]["connections"]],
                           timeout=20, what="the local TLS connection listed as worker in /status")
        finally:
            local.close()

        # The fence: the agent and its workers frozen, the deadline passes, no write lands.
        process = psutil.Process(agent.pid)
        frozen = [process, *process.children(recursive=True)]
        for each in frozen:
            os.kill(each.pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        wait_until(lambda: time.monotonic() > frozen_at + TUNING.ttl - TUNING.margin + 0.3, timeout=10,
                   what="the lease deadline to pass")
        with pytest.raises(pymysql.err.OperationalError), pooled.cursor() as cur:
            cur.execute("INSERT INTO tls_marks VALUES ('after-the-deadline')")
    finally:
        for each in frozen:
            os.kill(each.pid, signal.SIGCONT)
        pooled.close()

    def marks() -> tuple[tuple[str, ...], ...]:
        # The thawed agent fences (its lease ran out): its KILL of client sessions may cut this
        # read, so a cut read is tried again on a new session.
        with lab.in_client(lab.connect, primary, "agent") as conn, conn.cursor() as cur:
            cur.execute("SELECT mark FROM app.tls_marks")
            return tuple(cur.fetchall())

    seen = wait_until(marks, timeout=20, what="the marks readable after the thaw")
    assert seen == (("before-the-deadline",),)
