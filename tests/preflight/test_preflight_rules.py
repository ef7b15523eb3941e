"""The judgements of `dbfence check` over settings that cannot be broken on a running server
(log_bin, log_slave_updates, server_id and the semi-sync plugin need a restart), and the DCS rules."""

from __future__ import annotations

import pytest

from dbfence.config import parse_config
from dbfence.mysql.flavour import Flavour, ReplicaStatus, ServerVersion
from dbfence.mysql.preflight import (
    ClusterFacts,
    Holder,
    ServerSettings,
    check_binlog,
    check_gtid,
    check_net_timeout,
    check_proxy_protocol,
    check_semi_sync,
    check_source,
)
from dbfence.preflight import Check, Status, worst
from dbfence.preflight.dcs import check_published_address, check_tls
from dbfence.preflight.host import check_backend_source, gate_backend_address

MARIADB = ServerVersion(Flavour.MARIADB, (10, 11, 6), "10.11.6-MariaDB")
GOOD = {"log_bin": "ON", "log_slave_updates": "ON", "binlog_format": "ROW", "gtid_strict_mode": "ON",
        "server_id": "2", "slave_net_timeout": "60", "read_only": "ON",
        "rpl_semi_sync_master_enabled": "OFF", "rpl_semi_sync_slave_enabled": "ON",
        "rpl_semi_sync_master_wait_point": "AFTER_COMMIT", "innodb_flush_log_at_trx_commit": "3"}


def _settings(**changes: str | None) -> ServerSettings:
    variables = {**GOOD, **changes}
    return ServerSettings(MARIADB, {k: v for k, v in variables.items() if v is not None}, None)


def _by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in checks}


def test_good_settings_pass() -> None:
    checks = [*check_binlog(_settings()), check_gtid(_settings()), *check_semi_sync(_settings(), True),
              check_net_timeout(_settings(), 10.0)]
    assert worst(checks) is Status.OK, [c for c in checks if c.status is not Status.OK]


@pytest.mark.parametrize(("variable", "value", "check", "fix"), [
    ("log_bin", "OFF", "log_bin", '"log_bin = mysql-bin" under [mysqld] in my.cnf and restart mysqld'),
    ("log_slave_updates", "OFF", "log_slave_updates", '"log_slave_updates = ON" under [mysqld]'),
    ("binlog_format", "MIXED", "binlog_format", "SET GLOBAL binlog_format = ROW;"),
    ("server_id", "0", "server_id", '"server_id = <a number unique in the cluster>"'),
])
def test_binlog_requirements(variable: str, value: str, check: str, fix: str) -> None:
    found = _by_name(check_binlog(_settings(**{variable: value})))
    failing = {name for name, c in found.items() if c.status is Status.FAIL}
    assert failing == {check}
    assert fix in found[check].fix


def test_semi_sync_missing_names_the_plugin() -> None:
    [missing] = check_semi_sync(_settings(rpl_semi_sync_master_enabled=None), lossless=True)
    assert missing.status is Status.FAIL
    assert "INSTALL SONAME 'semisync_master'" in missing.fix
    [not_needed] = check_semi_sync(_settings(rpl_semi_sync_master_enabled=None), lossless=False)
    assert not_needed.status is Status.OK


@pytest.mark.parametrize("value", ["1", "2", "0", None])
def test_lossless_needs_commits_durable_in_innodb_before_the_ok(value: str | None) -> None:
    found = _by_name(check_semi_sync(_settings(innodb_flush_log_at_trx_commit=value), lossless=True))
    check = found["innodb_flush_log_at_trx_commit"]
    assert check.status is Status.FAIL and "acknowledged ones too" in check.detail
    assert "SET GLOBAL innodb_flush_log_at_trx_commit = 3;" in check.fix
    assert "innodb_flush_log_at_trx_commit" not in _by_name(check_semi_sync(_settings(), lossless=False))


def test_writable_node_without_semi_sync_is_a_warning() -> None:
    found = _by_name(check_semi_sync(_settings(read_only="OFF"), lossless=True))
    assert found["semi_sync_primary"].status is Status.WARN
    found = _by_name(check_semi_sync(_settings(read_only="OFF", rpl_semi_sync_master_enabled="ON",
                                               rpl_semi_sync_master_wait_point="AFTER_SYNC"), lossless=True))
    assert found["semi_sync_primary"].status is Status.OK


def test_net_timeout_must_exceed_the_ttl() -> None:
    assert check_net_timeout(_settings(slave_net_timeout="10"), 10.0).status is Status.FAIL
    assert "SET GLOBAL slave_net_timeout = 60;" in check_net_timeout(_settings(slave_net_timeout="5"), 10).fix
    assert check_net_timeout(_settings(slave_net_timeout="11"), 10.0).status is Status.OK


def test_replication_source() -> None:
    holder = Holder("db1", "10.0.0.11", 3306)
    assert check_source(_settings(), "db2", None, "repl").status is Status.WARN
    assert check_source(_settings(), "db1", holder, "repl").status is Status.OK
    lonely = check_source(_settings(), "db2", holder, "repl")
    assert lonely.status is Status.FAIL
    assert "MASTER_HOST = '10.0.0.11', MASTER_PORT = 3306, MASTER_USER = 'repl'" in lonely.fix
    running = ReplicaStatus("Yes", "Yes", 0, "", 0, "", 0, "10.0.0.11", 3306, 1, "0-1-5", "Slave_Pos")
    replicating = ServerSettings(MARIADB, GOOD, running)
    assert check_source(replicating, "db2", holder, "repl").status is Status.OK
    # Nobody holds the lock, on a new cluster: a replica's agent waits for its source's, which
    # adopts its running primary (docs/install.md: agents start in any order).
    waits = check_source(replicating, "db2", None, "repl", ClusterFacts(new_cluster=True, members={}))
    assert waits.status is Status.OK and "this agent waits" in waits.detail, waits
    assert check_source(replicating, "db2", None, "repl").status is Status.OK  # history unread: waits too
    followed = check_source(replicating, "db2", None, "repl",
                            ClusterFacts(True, {("10.0.0.11", 3306): ("db1", "starting")}))
    assert followed.status is Status.OK
    assert "db1 (10.0.0.11:3306), whose agent runs (starting)" in followed.detail
    # ... but with its IO thread not connected it would count the source as gone and may race.
    retrying = ServerSettings(MARIADB, GOOD, ReplicaStatus("Connecting", "Yes", 0, "", 0, "", 0, "10.0.0.11",
                                                          3306, 1, "0-1-5", "Slave_Pos"))
    gone = check_source(retrying, "db2", None, "repl", ClusterFacts(new_cluster=True, members={}))
    assert gone.status is Status.WARN and gone.fix.startswith("start the agent on 10.0.0.11 first"), gone
    # A cluster with a history: a source without an agent is a former member whose agent stopped.
    former = check_source(replicating, "db2", None, "repl", ClusterFacts(new_cluster=False, members={}))
    assert former.status is Status.WARN and "former primary" in former.detail, former
    # A writable node without a source: adopted on a new cluster, fenced at start otherwise.
    writable = _settings(read_only="OFF")
    adopted = check_source(writable, "db1", None, "repl", ClusterFacts(new_cluster=True))
    assert adopted.status is Status.OK and "adopts it as the primary" in adopted.detail, adopted
    fenced = check_source(writable, "db1", None, "repl", ClusterFacts(new_cluster=False))
    assert fenced.status is Status.WARN and "sets it read-only at start" in fenced.detail, fenced


def _config(endpoints: list[str], tls_ca: str = "") -> dict[str, object]:
    return {"cluster": {"name": "c"}, "node": {"name": "db1"},
            "mysql": {"credentials_file": "/nonexistent"},
            "dcs": {"kind": "etcd", "endpoints": endpoints, "tls_ca": tls_ca}}


def test_dcs_tls_rules() -> None:
    assert worst(check_tls(parse_config(_config(["http://127.0.0.1:2379"])))) is Status.OK
    plain = check_tls(parse_config(_config(["http://10.0.0.21:2379"])))
    assert [c.status for c in plain] == [Status.WARN]
    assert 'dcs.tls_ca = "/etc/dbfence/dcs-ca.pem"' in plain[0].fix
    no_ca = check_tls(parse_config(_config(["https://10.0.0.21:2379"])))
    assert [c.status for c in no_ca] == [Status.FAIL]
    missing_ca = check_tls(parse_config(_config(["https://10.0.0.21:2379"], "/nonexistent/ca.pem")))
    assert Status.FAIL in [c.status for c in missing_ca]


def test_line_format() -> None:
    assert Check("x", Status.OK, "fine").line() == "ok   x: fine"
    assert Check("x", Status.FAIL, "bad", "do it").line() == "fail x: bad -- fix: do it"


def test_published_mysql_address_must_reach_other_hosts() -> None:
    remote = _config(["https://10.0.0.21:2379"], "/etc/ca.pem")
    assert check_published_address(parse_config(remote)).status is Status.FAIL
    remote["mysql"] = {"credentials_file": "/x", "host": "10.0.0.11", "socket": "/run/mysqld/mysqld.sock"}
    assert check_published_address(parse_config(remote)).status is Status.OK
    assert check_published_address(parse_config(_config(["http://127.0.0.1:2379"]))).status is Status.OK


@pytest.mark.parametrize(
    ("networks", "backend", "status"),
    [
        ("127.0.0.2/32", "127.0.0.2", Status.OK),
        ("127.0.0.2", "127.0.0.2", Status.OK),
        ("localhost", "localhost", Status.OK),
        ("", "127.0.0.2", Status.FAIL),
        ("127.0.0.1/32", "127.0.0.2", Status.FAIL),
        ("127.0.0.2/32", "localhost", Status.FAIL),
        ("localhost", "127.0.0.2", Status.FAIL),
        ("::1", "127.0.0.2", Status.FAIL),
        ("10.0.0.0/24", "10.0.0.11", Status.WARN),  # every host of the subnet may claim addresses
        ("127.0.0.2/32, 10.0.0.5", "127.0.0.2", Status.WARN),
        ("*", "127.0.0.2", Status.WARN),
        ("127.0.0.2/32,localhost", "127.0.0.2", Status.WARN),
    ],
)
def test_proxy_protocol_networks_must_cover_the_gate_backend_address(
    networks: str, backend: str, status: Status
) -> None:
    check = check_proxy_protocol(_settings(proxy_protocol_networks=networks), backend)
    assert check.status is status, check.line()
    if status is Status.FAIL:
        assert "SET GLOBAL proxy_protocol_networks" in check.fix and backend in check.fix


def test_proxy_protocol_without_server_support_or_a_known_address_fails() -> None:
    mysql = ServerSettings(ServerVersion(Flavour.MYSQL, (8, 0, 36), "8.0.36"), dict(GOOD), None)
    assert check_proxy_protocol(mysql, "127.0.0.2").fix == "gate.proxy_protocol = false"
    unknown = check_proxy_protocol(_settings(proxy_protocol_networks="127.0.0.2"), None)
    assert unknown.status is Status.FAIL and "backend_source" in unknown.fix


def test_the_gate_backend_address_and_its_source() -> None:
    base = _config(["http://127.0.0.1:2379"])
    assert gate_backend_address(parse_config(base)) == "127.0.0.1"  # the route to mysql.host
    assert check_backend_source(parse_config(base)) == []
    base["gate"] = {"proxy_protocol": True, "backend_source": "127.0.0.2"}
    assert gate_backend_address(parse_config(base)) == "127.0.0.2"
    assert [c.status for c in check_backend_source(parse_config(base))] == [Status.OK]
    base["gate"] = {"backend_source": "192.0.2.1"}  # TEST-NET-1: no host has it
    assert [c.status for c in check_backend_source(parse_config(base))] == [Status.FAIL]
    socket_config = {**_config(["http://127.0.0.1:2379"]),
                     "mysql": {"credentials_file": "/x", "socket": "/run/mysqld/mysqld.sock"}}
    assert gate_backend_address(parse_config(socket_config)) == "localhost"
