"""The checks of ``dbfence check`` that the agent repeats by itself when it starts.

With ``gate.proxy_protocol = true``, a mysqld whose ``proxy_protocol_networks`` does not cover the
gate's backend address refuses every client through the gate once this node is primary (1130, or
1045 as the gate's address). ``dbfence check`` finds it, but only if someone runs it on every node
and again after mysqld's settings change; the agent asks once at start, with the same rule.
"""

from __future__ import annotations

import json
import logging

from dbfence.config import AgentConfig
from dbfence.mysql import preflight as sql_checks
from dbfence.mysql.connection import Endpoint, Timeouts, close_quietly, connect, server_version
from dbfence.mysql.credentials import load_credentials_file
from dbfence.mysql.errors import MysqlAdapterError
from dbfence.mysql.flavour import sql_for
from dbfence.preflight.host import gate_backend_address
from dbfence.preflight.result import Check, Status

log = logging.getLogger("dbfence.agent")


def proxy_protocol_check(config: AgentConfig) -> Check | None:
    """``dbfence check``'s ``proxy_protocol_networks`` verdict for the local mysqld now, or None
    when ``gate.proxy_protocol`` is off. Raises MysqlAdapterError if mysqld cannot be asked."""
    if not config.gate.proxy_protocol:
        return None
    mysql = config.mysql
    credentials = load_credentials_file(mysql.credentials_file, "client")
    conn = connect(Endpoint(mysql.host, mysql.port, mysql.socket or None), credentials,
                   Timeouts(connect_s=2.0, read_s=5.0, write_s=5.0))
    try:
        version = server_version(conn)
        settings = sql_checks.read_settings(conn, version, sql_for(version))
    finally:
        close_quietly(conn)
    return sql_checks.check_proxy_protocol(settings, gate_backend_address(config))


def proxy_protocol_refusal(config: AgentConfig) -> str | None:
    """Why the agent must not start (``dbfence check`` fails the setting: every client through the
    gate would be refused), or None. A warning (mysqld also believes headers from other addresses)
    and a mysqld that cannot be asked now are logged, not refused: the agent must be able to start
    next to a mysqld that is down."""
    try:
        check = proxy_protocol_check(config)
    except MysqlAdapterError as exc:
        log.warning(json.dumps({"event": "proxy_protocol_unchecked", "node": config.node.name,
                                "error": str(exc), "fix": "run `dbfence check` once mysqld is up"}))
        return None
    if check is None or check.status is Status.OK:
        return None
    if check.status is Status.FAIL:
        return f"gate.proxy_protocol = true, but {check.detail} -- fix: {check.fix}"
    log.warning(json.dumps({"event": "proxy_protocol_networks", "node": config.node.name,
                            "detail": check.detail, "fix": check.fix}))
    return None
