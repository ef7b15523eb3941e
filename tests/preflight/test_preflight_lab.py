"""`dbfence check` against real servers: one lab, each requirement broken and restored in turn."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from dbfence.cli import main
from dbfence.config import load_config
from dbfence.lab.agents import AgentTuning, agent_address, write_agent_files
from dbfence.lab.cluster import LabCluster
from dbfence.locks.base import LockSettings
from dbfence.locks.factory import DcsConfig, open_lock
from dbfence.locks.model import HolderInfo, MemberRecord
from dbfence.preflight import Check, Status
from dbfence.preflight.run import check_config

pytestmark = pytest.mark.timeout(240)


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _results(path: Path) -> dict[str, Check]:
    return {check.name: check for check in check_config(load_config(path))}


def _failures(results: dict[str, Check]) -> dict[str, Check]:
    return {name: check for name, check in results.items() if check.status is Status.FAIL}


@contextmanager
def _broken(lab: LabCluster, node: str, break_sql: list[str], restore_sql: list[str]) -> Iterator[None]:
    """Change db2's server for one check; nothing reaches its binlog (no errant transactions)."""
    conn = lab.connect(node)
    try:
        with conn.cursor() as cur:
            cur.execute("SET SESSION sql_log_bin = 0")
            for statement in break_sql:
                cur.execute(statement)
        yield
    finally:
        with conn.cursor() as cur:
            for statement in restore_sql:
                cur.execute(statement)
        conn.close()


def test_check_names_every_broken_requirement(lab_factory: Callable[..., LabCluster]) -> None:
    lab = lab_factory(mysql_count=2, etcd_members=1)
    address = agent_address(2)
    config_path = write_agent_files(lab, lab.node("db2"), address, _free_port(address), _free_port(address),
                                    AgentTuning(ttl=3.0, margin=1.0))

    # Nobody holds the lock yet, the DCS has no history and db2 replicates from db1, which has no
    # agent: db2's agent may start first, it waits for db1's (docs/install.md).
    baseline = _results(config_path)
    assert _failures(baseline) == {}, _failures(baseline)
    assert baseline["replication_source"].status is Status.OK, baseline["replication_source"]
    assert "this agent waits" in baseline["replication_source"].detail
    assert "no history (a new cluster)" in baseline["dcs_read"].detail
    assert baseline["gtid_strict_mode"].status is Status.OK
    assert baseline["app_account app"].status is Status.OK

    # db1 takes the lock as its agent would and publishes where its mysqld is.
    db1 = lab.node("db1")
    lock = open_lock(DcsConfig("etcd", tuple(lab.dcs_endpoints)), lab.cluster, "db1",
                     LockSettings(ttl=10, margin=2, call_timeout=1.0))
    try:
        lock.try_acquire(HolderInfo("db1", agent_address(1), 3307, time.time()))
        lock.publish_member(MemberRecord(node="db1", role="primary", healthy=True,
                                         mysql_host=db1.host, mysql_port=db1.port))
        results = _results(config_path)
        assert results["replication_source"].status is Status.OK, results["replication_source"]

        broken_requirements: list[tuple[str, list[str], list[str], str]] = [
            ("gtid_strict_mode", ["SET GLOBAL gtid_strict_mode = OFF"],
             ["SET GLOBAL gtid_strict_mode = ON"], "SET GLOBAL gtid_strict_mode = ON"),
            ("binlog_format", ["SET GLOBAL binlog_format = 'STATEMENT'"],
             ["SET GLOBAL binlog_format = 'ROW'"], "SET GLOBAL binlog_format = ROW"),
            ("rpl_semi_sync_slave_enabled", ["SET GLOBAL rpl_semi_sync_slave_enabled = OFF"],
             ["SET GLOBAL rpl_semi_sync_slave_enabled = ON"], "rpl_semi_sync_slave_enabled = ON"),
            ("slave_net_timeout", ["SET GLOBAL slave_net_timeout = 2"],
             ["SET GLOBAL slave_net_timeout = 60"], "SET GLOBAL slave_net_timeout = 60"),
            ("app_account app", ["GRANT SUPER ON *.* TO 'app'@'127.0.0.1'"],
             ["REVOKE SUPER ON *.* FROM 'app'@'127.0.0.1'"], "REVOKE SUPER ON *.* FROM 'app'@'127.0.0.1';"),
            ("replication_account",
             [f"REVOKE REPLICATION SLAVE ON *.* FROM '{lab.accounts['repl'].user}'@'{host}'"
              for host in ("127.0.0.1", "localhost")],
             [f"GRANT REPLICATION SLAVE ON *.* TO '{lab.accounts['repl'].user}'@'{host}'"
              for host in ("127.0.0.1", "localhost")], "GRANT REPLICATION SLAVE ON *.*"),
            ("replication_source", ["STOP SLAVE"], ["START SLAVE"], "START SLAVE;"),
        ]
        for name, break_sql, restore_sql, fix in broken_requirements:
            with _broken(lab, "db2", break_sql, restore_sql):
                failures = _failures(_results(config_path))
            assert set(failures) == {name}, (name, failures)
            assert fix in failures[name].fix, failures[name]
        assert lab.accounts["app"].user == "app"

        # A lock held by a node this one does not replicate from.
        lock.publish_member(MemberRecord(node="db1", role="primary", healthy=True,
                                         mysql_host=db1.host, mysql_port=db1.port + 1))
        failures = _failures(_results(config_path))
        assert set(failures) == {"replication_source"}
        assert "holds the lock" in failures["replication_source"].detail
        assert f"MASTER_PORT = {db1.port + 1}" in failures["replication_source"].fix
        lock.publish_member(MemberRecord(node="db1", role="primary", healthy=True,
                                         mysql_host=db1.host, mysql_port=db1.port))

        # The host's side: a readable credentials file, an agent account without its privileges,
        # a port already taken, an unreachable DCS.
        credentials = Path(load_config(config_path).mysql.credentials_file)
        os.chmod(credentials, 0o644)
        failures = _failures(_results(config_path))
        os.chmod(credentials, 0o600)
        assert {"credentials [client]", "credentials [replication]"} <= set(failures)
        assert f"chmod 0600 {credentials}" in failures["credentials [client]"].fix

        original = credentials.read_text()
        app = lab.accounts["app"]
        credentials.write_text(original.replace(
            f"user = {lab.accounts['agent'].user}\npassword = {lab.accounts['agent'].password}",
            f"user = {app.user}\npassword = {app.password}", 1))
        results = _results(config_path)
        failures = _failures(results)
        credentials.write_text(original)
        # Without its privileges the agent cannot read grants or the replication status either:
        # those checks say so, and every other check still runs.
        assert "agent_account" in failures, failures
        assert all(check.fix == "give the agent account its privileges (see agent_account)"
                   for name, check in failures.items() if name != "agent_account"), failures
        assert results["gtid_strict_mode"].status is Status.OK
        assert "GRANT ALL PRIVILEGES ON *.* TO 'app'" in failures["agent_account"].fix

        gate = load_config(config_path).gate.listen
        host, port = gate.rsplit(":", 1)
        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind((host, int(port)))
            squatter.listen()
            failures = _failures(_results(config_path))
        assert set(failures) == {"gate.listen"}
        assert f"sport = :{port}" in failures["gate.listen"].fix

        # gate.proxy_protocol: mysqld must take the header from the gate's backend address.
        text = config_path.read_text()
        config_path.write_text(text.replace("proxy_protocol = false", "proxy_protocol = true", 1)
                                   .replace('backend_source = ""', 'backend_source = "127.0.0.2"', 1))
        failures = _failures(_results(config_path))
        assert set(failures) == {"proxy_protocol_networks"}, failures
        fix = failures["proxy_protocol_networks"].fix
        assert "SET GLOBAL proxy_protocol_networks = '127.0.0.2/32'" in fix, fix
        with _broken(lab, "db2", ["SET GLOBAL proxy_protocol_networks = '127.0.0.2/32'"],
                     ["SET GLOBAL proxy_protocol_networks = ''"]):
            results = _results(config_path)
        config_path.write_text(text)
        assert not _failures(results) and results["proxy_protocol_networks"].status is Status.OK
        assert results["gate.backend_source"].status is Status.OK

        dead = f"http://127.0.0.1:{_free_port('127.0.0.1')}"
        config_path.write_text(text.replace(f'endpoints = ["{lab.dcs_endpoints[0]}"]',
                                            f'endpoints = ["{dead}"]'))
        failures = _failures(_results(config_path))
        config_path.write_text(text)
        assert {"dcs_endpoints", "dcs_read", "replication_source"} == set(failures), failures
    finally:
        lock.close_session()
        lock.close()

    # The command itself: one line per check, JSON on request, exit status by the worst result.
    # db1's own configuration: nobody holds the lock and it is writable: its agent adopts it.
    db1_config = write_agent_files(lab, db1, agent_address(1), _free_port(agent_address(1)),
                                   _free_port(agent_address(1)), AgentTuning(ttl=3.0, margin=1.0))
    runner = CliRunner()
    plain = runner.invoke(main, ["check", "--config", str(db1_config)])
    assert plain.exit_code <= 1, plain.output  # a warning at most (the clock, semi-sync on db1)
    assert any(line.startswith("ok   gtid_strict_mode: ON") for line in plain.output.splitlines())
    assert any(line.startswith("ok   replication_source: no agent holds the lock yet; this node is writable")
               and "its agent adopts it" in line for line in plain.output.splitlines()), plain.output
    as_json = runner.invoke(main, ["check", "--config", str(config_path), "--json"])
    rows = json.loads(as_json.output)
    assert {row["name"] for row in rows} >= {"gtid_strict_mode", "log_slave_updates", "dcs_read"}
    assert as_json.exit_code == max({"ok": 0, "warn": 1, "fail": 2}[row["status"]] for row in rows)
    with _broken(lab, "db1", ["SET GLOBAL gtid_strict_mode = OFF"], ["SET GLOBAL gtid_strict_mode = ON"]):
        failing = runner.invoke(main, ["check", "--config", str(db1_config)])
    assert failing.exit_code == 2
    assert any(line.startswith("fail gtid_strict_mode: OFF") for line in failing.output.splitlines())


def test_check_on_a_node_whose_agent_runs(lab_factory: Callable[..., LabCluster]) -> None:
    """Its ports are in use by its own agent (asked on http.listen): not a failure."""
    lab = lab_factory(mysql_count=1, agents=True, agent_tuning=AgentTuning(lossless=False))
    lab.wait_settled(timeout=60)
    results = _results(Path(lab.agent("db1").config))
    assert _failures(results) == {}, _failures(results)
    assert "in use by this node's running agent" in results["gate.listen"].detail
    assert "in use by this node's running agent" in results["http.listen"].detail
    assert results["replication_source"].detail == "this node holds the lock (it is the primary)"
