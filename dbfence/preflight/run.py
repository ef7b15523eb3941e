"""Run every preflight check in order; one failure never hides the checks after it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dbfence.config import AgentConfig, ConfigError, load_config
from dbfence.mysql import preflight as sql_checks
from dbfence.mysql.connection import Endpoint, Timeouts, close_quietly, connect, server_version
from dbfence.mysql.credentials import load_credentials_file
from dbfence.mysql.errors import MysqlAdapterError, MysqlQueryError
from dbfence.mysql.flavour import sql_for
from dbfence.mysql.preflight import ClusterFacts, Holder
from dbfence.preflight import dcs as dcs_checks
from dbfence.preflight import host as host_checks
from dbfence.preflight.result import Check, fail, ok


def run_checks(path: Path) -> list[Check]:
    try:
        config = load_config(path)
    except ConfigError as exc:
        return [fail("config", str(exc), f"dbfence config check --config {path} until it passes")]
    return [ok("config", f"{path} is valid"), *check_config(config)]


def check_config(config: AgentConfig) -> list[Check]:
    checks = host_checks.check_credentials(config) + host_checks.check_secret_files(config)
    checks.append(host_checks.check_port_free("gate.listen", config.gate.listen, config))
    checks.append(host_checks.check_port_free("http.listen", config.http.listen, config))
    checks += host_checks.check_api_tls(config)
    checks += host_checks.check_backend_source(config)
    checks.append(host_checks.check_clock())
    checks.append(dcs_checks.check_published_address(config))
    checks += dcs_checks.check_tls(config)
    checks += dcs_checks.check_endpoints(config)
    lock = dcs_checks.read_lock(config)
    checks.append(lock.check)
    checks += check_mysql(config, lock.holder if lock.reachable else None, lock_known=lock.reachable,
                          cluster=lock.cluster)
    return checks


def check_mysql(config: AgentConfig, holder: Holder | None, *, lock_known: bool,
                cluster: ClusterFacts | None = None) -> list[Check]:
    mysql = config.mysql
    endpoint = Endpoint(mysql.host, mysql.port, mysql.socket or None)
    try:
        agent = load_credentials_file(mysql.credentials_file, "client")
        replication = load_credentials_file(mysql.credentials_file, "replication")
    except MysqlAdapterError:
        return [fail("mysql", "skipped: the credentials file is unusable (see above)")]
    try:
        conn = connect(endpoint, agent, Timeouts(connect_s=2.0, read_s=5.0, write_s=5.0))
    except MysqlAdapterError as exc:
        return [fail("mysql", f"cannot log in as {agent.user}: {exc}",
                     "start mysqld, or check mysql.host/port/socket and [client] in "
                     f"{mysql.credentials_file}")]
    try:
        version = server_version(conn)
        flavour = sql_for(version)
        settings = sql_checks.read_settings(conn, version, flavour)
        checks = [ok("mysql", f"{version} at {endpoint}, as {agent.user}")]
        checks.append(sql_checks.check_gtid(settings))
        checks += sql_checks.check_binlog(settings)
        checks += sql_checks.check_semi_sync(settings, config.failover.lossless)
        checks.append(sql_checks.check_net_timeout(settings, config.dcs.ttl))
        if config.gate.proxy_protocol:
            checks.append(sql_checks.check_proxy_protocol(settings, host_checks.gate_backend_address(config)))
        checks.append(sql_checks.check_agent_account(conn, agent.user))
        checks += _guarded("replication_account",
                           lambda: [sql_checks.check_replication_account(conn, replication.user)])
        checks += _guarded("app_users", lambda: sql_checks.check_app_accounts(conn, mysql.app_users, flavour))
        if lock_known:
            checks.append(sql_checks.check_source(settings, config.node.name, holder, replication.user,
                                                  cluster))
        else:
            checks.append(fail("replication_source", "unknown: the DCS could not be read (see above)"))
        return checks
    except MysqlAdapterError as exc:
        return [fail("mysql", f"checking {endpoint} failed: {exc}")]
    finally:
        close_quietly(conn)


def _guarded(name: str, run: Callable[[], list[Check]]) -> list[Check]:
    """Reading other accounts' grants needs the agent's privileges: without them, say so here
    rather than abandon every check after this one."""
    try:
        return run()
    except MysqlQueryError as exc:
        return [fail(name, f"cannot check: {exc.message}",
                     "give the agent account its privileges (see agent_account)")]
