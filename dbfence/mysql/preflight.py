"""What ``dbfence check`` asks the local mysqld, and what each answer means.

The server's settings are read once (:func:`read_settings`); the judgements over them are pure
functions, so settings that need a restart to change (``log_slave_updates``, ``log_bin``) are
table-tested while the dynamic ones are broken on a real server. Each failure names the exact fix:
the statement to run now and the ``my.cnf`` line that keeps it after a restart.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Sequence
from dataclasses import dataclass

from dbfence.mysql.accounts import find_unsafe_grants, unsafe_global_privileges
from dbfence.mysql.connection import DbConnection, query
from dbfence.mysql.errors import MysqlQueryError, UnsafeAccountError
from dbfence.mysql.flavour import Flavour, FlavourSql, ReplicaStatus, ServerVersion
from dbfence.preflight.result import Check, fail, ok, warn

_VARIABLES = (
    "log_bin", "log_slave_updates", "binlog_format", "gtid_strict_mode", "gtid_mode",
    "enforce_gtid_consistency", "server_id", "slave_net_timeout", "read_only",
    "rpl_semi_sync_master_enabled", "rpl_semi_sync_slave_enabled", "rpl_semi_sync_master_wait_point",
    "proxy_protocol_networks", "innodb_flush_log_at_trx_commit",
)


@dataclass(frozen=True)
class ServerSettings:
    version: ServerVersion
    variables: dict[str, str]  # lower-case names; a variable the server lacks is absent
    replica: ReplicaStatus | None
    replica_error: str = ""  # SHOW SLAVE STATUS failed (an agent account without its privileges)


def read_settings(conn: DbConnection, version: ServerVersion, flavour: FlavourSql) -> ServerSettings:
    marks = ", ".join(["%s"] * len(_VARIABLES))
    rows = query(conn, f"SHOW GLOBAL VARIABLES WHERE Variable_name IN ({marks})", _VARIABLES)
    variables = {str(row["Variable_name"]).lower(): str(row["Value"]) for row in rows}
    try:
        status_rows = query(conn, flavour.replica_status_query())
    except MysqlQueryError as exc:
        return ServerSettings(version, variables, None, exc.message)
    replica = flavour.parse_replica_status(status_rows[0]) if status_rows else None
    return ServerSettings(version, variables, replica)


def _on(value: str | None) -> bool:
    return (value or "").upper() in ("ON", "1", "YES", "TRUE")


def _persist(setting: str, value: str, *, dynamic: bool) -> str:
    line = f'"{setting} = {value}" under [mysqld] in my.cnf'
    if dynamic:
        return f"SET GLOBAL {setting} = {value}; and add {line}"
    return f"add {line} and restart mysqld (it cannot be changed at run time)"


def check_binlog(settings: ServerSettings) -> list[Check]:
    """Replicas must log what they apply (any of them may become the primary), in row format."""
    variables = settings.variables
    checks: list[Check] = []
    if _on(variables.get("log_bin")):
        checks.append(ok("log_bin", "ON"))
    else:
        checks.append(fail("log_bin", "the binary log is off: this node could not serve replicas "
                                      "after a promotion", _persist("log_bin", "mysql-bin", dynamic=False)))
    if _on(variables.get("log_slave_updates")):
        checks.append(ok("log_slave_updates", "ON"))
    else:
        checks.append(fail("log_slave_updates", "OFF: as a replica this node does not binlog what it "
                                                "applies, so after a promotion the other replicas "
                                                "would miss those transactions",
                           _persist("log_slave_updates", "ON", dynamic=False)))
    binlog_format = variables.get("binlog_format", "").upper()
    if binlog_format == "ROW":
        checks.append(ok("binlog_format", "ROW"))
    else:
        checks.append(fail("binlog_format", f"{binlog_format or 'unknown'}: dbfence needs ROW (statement "
                                            "replay can diverge between nodes)",
                           _persist("binlog_format", "ROW", dynamic=True)))
    server_id = variables.get("server_id", "0")
    if server_id not in ("", "0"):
        checks.append(ok("server_id", server_id))
    else:
        checks.append(fail("server_id", "0: a node without a server_id cannot replicate",
                           _persist("server_id", "<a number unique in the cluster>", dynamic=False)))
    return checks


def check_gtid(settings: ServerSettings) -> Check:
    variables = settings.variables
    if settings.version.flavour is Flavour.MARIADB:
        if _on(variables.get("gtid_strict_mode")):
            return ok("gtid_strict_mode", "ON")
        return fail("gtid_strict_mode", "OFF: an errant or out-of-order transaction would be applied "
                                        "silently instead of stopping replication",
                    _persist("gtid_strict_mode", "ON", dynamic=True))
    mode, consistency = variables.get("gtid_mode", ""), variables.get("enforce_gtid_consistency", "")
    if mode.upper() == "ON" and consistency.upper() == "ON":
        return ok("gtid_mode", "ON, enforce_gtid_consistency ON")
    return fail("gtid_mode", f"gtid_mode={mode or '?'}, enforce_gtid_consistency={consistency or '?'}",
                'add "gtid_mode = ON" and "enforce_gtid_consistency = ON" under [mysqld] in my.cnf '
                "and restart mysqld")


def check_semi_sync(settings: ServerSettings, lossless: bool) -> list[Check]:
    """Lossless mode needs semi-sync on every node: any replica may become the primary, and every
    node must acknowledge as a replica from its start (crash recovery of a former primary then
    truncates commits no replica acknowledged instead of keeping them as errant transactions)."""
    variables = settings.variables
    if not lossless:
        return [ok("semi_sync", "failover.lossless = false: not needed")]
    if "rpl_semi_sync_master_enabled" not in variables:
        plugin_fix = ("INSTALL SONAME 'semisync_master'; INSTALL SONAME 'semisync_slave';"
                      if settings.version.flavour is Flavour.MARIADB else
                      "INSTALL PLUGIN rpl_semi_sync_source SONAME 'semisync_source.so'; "
                      "INSTALL PLUGIN rpl_semi_sync_replica SONAME 'semisync_replica.so';")
        return [fail("semi_sync", "semi-synchronous replication is not available on this server "
                                  "(failover.lossless = true needs it)", plugin_fix)]
    checks = [ok("semi_sync", "available")]
    if _on(variables.get("rpl_semi_sync_slave_enabled")):
        checks.append(ok("rpl_semi_sync_slave_enabled", "ON"))
    else:
        checks.append(fail("rpl_semi_sync_slave_enabled",
                           "OFF: this node does not acknowledge lossless commits, and after a crash "
                           "it would keep commits no replica acknowledged",
                           _persist("rpl_semi_sync_slave_enabled", "ON", dynamic=True)))
    if settings.version.flavour is Flavour.MARIADB:
        checks.append(_check_commit_durability(variables.get("innodb_flush_log_at_trx_commit")))
    read_only = _on(variables.get("read_only"))
    if not read_only:
        wait_point = variables.get("rpl_semi_sync_master_wait_point", "").upper()
        if _on(variables.get("rpl_semi_sync_master_enabled")) and wait_point == "AFTER_SYNC":
            checks.append(ok("semi_sync_primary", "enabled, AFTER_SYNC"))
        else:
            checks.append(warn("semi_sync_primary",
                               f"this writable node has rpl_semi_sync_master_enabled="
                               f"{variables.get('rpl_semi_sync_master_enabled')}, wait point {wait_point}: "
                               "commits are not lossless until its agent holds the lock (it sets both)",
                               "start the agent on this node (it sets AFTER_SYNC and enables semi-sync)"))
    return checks


def _check_commit_durability(value: str | None) -> Check:
    """MariaDB's crash recovery as a semi-sync replica (``init_rpl_role = SLAVE``, which removes a
    former primary's unacknowledged tail) cuts from the binlog every commit InnoDB had not made
    durable. With ``innodb_flush_log_at_trx_commit = 1`` InnoDB leaves that to the binlog and
    flushes its commit about a second later, so a commit already acknowledged to its client is cut
    too; lossless then rests on one replica's relay log, which that replica's own crash loses
    (soak seed 442 lost a write so). 3 makes the commit durable in InnoDB before the client's OK."""
    if value == "3":
        return ok("innodb_flush_log_at_trx_commit", "3: a commit is durable in InnoDB before its OK")
    return fail("innodb_flush_log_at_trx_commit",
                f"{value}: crash recovery as a semi-sync replica (init_rpl_role = SLAVE) would remove "
                "commits InnoDB had not made durable yet, acknowledged ones too",
                _persist("innodb_flush_log_at_trx_commit", "3", dynamic=True))


def check_net_timeout(settings: ServerSettings, ttl: float) -> Check:
    """A replica of a frozen primary must still be in its read when the lease expires, so that the
    agent's KILL of its IO thread returns at once (docs/operations.md)."""
    raw = settings.variables.get("slave_net_timeout", "")
    try:
        seconds = float(raw)
    except ValueError:
        return warn("slave_net_timeout", f"unreadable value {raw!r}")
    wanted = max(60, math.ceil(ttl * 2))
    if seconds > ttl:
        return ok("slave_net_timeout", f"{raw} s, above the lease TTL ({ttl:g} s)")
    return fail("slave_net_timeout", f"{raw} s is not above the lease TTL ({ttl:g} s): promotions "
                                     "and repointing would wait on a reconnecting IO thread",
                _persist("slave_net_timeout", str(wanted), dynamic=True))


# ---------------------------------------------------------------------------------- PROXY protocol
LOCAL_SOCKET = "localhost"  # how proxy_protocol_networks names connections over mysqld's Unix socket


def _entries(networks: str) -> list[str]:
    return [entry for entry in networks.replace(",", " ").split() if entry]


def _entry_covers(entry: str, address: str) -> bool:
    if entry == "*":
        return True
    if entry.lower() == LOCAL_SOCKET or address == LOCAL_SOCKET:
        return entry.lower() == address
    try:
        return ipaddress.ip_address(address) in ipaddress.ip_network(entry, strict=False)
    except ValueError:  # an entry mysqld would have refused, or IPv4 against IPv6
        return False


def _entry_is_exactly(entry: str, address: str) -> bool:
    if address == LOCAL_SOCKET or entry.lower() == LOCAL_SOCKET:
        return entry.lower() == address
    try:
        network = ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False
    return network.num_addresses == 1 and _entry_covers(entry, address)


def check_proxy_protocol(settings: ServerSettings, backend_address: str | None) -> Check:
    """With gate.proxy_protocol, mysqld must take the header from the gate's backend address
    (``localhost`` when the gate reaches it over the Unix socket), or every client through the gate
    is refused. Every other listed address may claim any client address: worth a warning."""
    name = "proxy_protocol_networks"
    if "proxy_protocol_networks" not in settings.variables:
        return fail(name, f"{settings.version} does not accept the PROXY protocol (MariaDB does, from "
                          "10.3), so the gate's clients could not log in", "gate.proxy_protocol = false")
    if backend_address is None:
        return fail(name, "cannot tell which address the gate's connections to mysqld come from",
                    'set gate.backend_source = "127.0.0.2" (with mysqld on loopback)')
    networks = settings.variables["proxy_protocol_networks"]
    entries = _entries(networks)
    listed = ", ".join(entries) if entries else "(empty)"
    gate_only = (backend_address if backend_address == LOCAL_SOCKET
                 else str(ipaddress.ip_network(backend_address)))  # 127.0.0.2/32
    if not any(_entry_covers(entry, backend_address) for entry in entries):
        value = ",".join([*entries, gate_only])
        return fail(name, f"{listed} does not include the gate's backend address {backend_address}: mysqld "
                          "would refuse every client through the gate",
                    _persist(name, f"'{value}'", dynamic=True))
    others = [entry for entry in entries if not _entry_is_exactly(entry, backend_address)]
    if others:
        return warn(name, f"{listed}: besides the gate ({backend_address}), any client connecting from "
                          f"{', '.join(others)} may claim any client address",
                    _persist(name, f"'{gate_only}'", dynamic=True) + " (unless those are proxies you trust)")
    return ok(name, f"{listed}: mysqld takes the client's address from the gate ({backend_address}) only")


# ---------------------------------------------------------------------------------- accounts
def _grant_lines(conn: DbConnection, grantee_sql: str, params: Sequence[str]) -> list[str]:
    return [str(next(iter(row.values()))) for row in query(conn, f"SHOW GRANTS FOR {grantee_sql}", params)]


def _has_global(lines: list[str], privileges: frozenset[str]) -> bool:
    found, _roles = unsafe_global_privileges(lines, privileges | {"ALL PRIVILEGES"})
    return bool(found)


def check_agent_account(conn: DbConnection, user: str) -> Check:
    """The agent writes through read_only, kills sessions, changes replication and reads grants:
    the tested grant is ALL PRIVILEGES on *.*."""
    lines = _grant_lines(conn, "CURRENT_USER()", ())
    if _has_global(lines, frozenset()):
        return ok("agent_account", f"{user} has ALL PRIVILEGES on *.*")
    return fail("agent_account", f"{user} lacks ALL PRIVILEGES on *.* (it must set read_only, kill "
                                 "sessions, change replication and read the application accounts' grants)",
                f"GRANT ALL PRIVILEGES ON *.* TO '{user}'@'<its host>';")


def _hosts(conn: DbConnection, user: str) -> list[str]:
    return [str(row["host"]) for row in
            query(conn, "SELECT Host AS host FROM mysql.user WHERE User = %s", (user,))]


def check_replication_account(conn: DbConnection, user: str) -> Check:
    """Every node may become the primary, so every node needs the replication account."""
    hosts = _hosts(conn, user)
    fix = f"CREATE USER IF NOT EXISTS '{user}'@'<replicas' subnet>' IDENTIFIED BY '...'; " \
          f"GRANT REPLICATION SLAVE ON *.* TO '{user}'@'<replicas' subnet>';"
    if not hosts:
        return fail("replication_account", f"{user} does not exist on this server", fix)
    able = [host for host in hosts
            if _has_global(_grant_lines(conn, "%s@%s", (user, host)), frozenset({"REPLICATION SLAVE"}))]
    if able:
        return ok("replication_account", f"{user}@{','.join(able)} has REPLICATION SLAVE")
    return fail("replication_account", f"{user}@{','.join(hosts)} lacks REPLICATION SLAVE",
                f"GRANT REPLICATION SLAVE ON *.* TO '{user}'@'{hosts[0]}';")


def check_app_accounts(conn: DbConnection, users: Sequence[str], flavour: FlavourSql) -> list[Check]:
    """No application account may write through read_only: fencing could not stop it."""
    if not users:
        return [warn("app_users", "mysql.app_users is empty: nothing verifies that the applications "
                                  "cannot write through read_only",
                     'mysql.app_users = ["<each application account>"] in the agent\'s configuration')]
    checks: list[Check] = []
    for user in users:
        name = f"app_account {user}"
        try:
            unsafe = find_unsafe_grants(conn, user, flavour)
        except UnsafeAccountError as exc:
            checks.append(fail(name, str(exc), f"CREATE USER '{user}'@'<application hosts>' ...; or remove "
                                               "it from mysql.app_users"))
            continue
        except MysqlQueryError as exc:
            checks.append(fail(name, f"cannot read its grants: {exc.message}"))
            continue
        if not unsafe:
            checks.append(ok(name, "no SUPER, READ ONLY ADMIN or ALL PRIVILEGES"))
            continue
        fixes = []
        for grant in unsafe:
            holder = f"'{grant.via_role}'" if grant.via_role else _quoted(grant.grantee)
            fixes.append(f"REVOKE {grant.privilege} ON *.* FROM {holder};")
        if any(grant.privilege == "ALL PRIVILEGES" for grant in unsafe):
            fixes.append(f"then GRANT only data privileges (SELECT, INSERT, UPDATE, DELETE, ...) ON "
                         f"<schema>.* TO '{user}'@...;")
        what = ", ".join(f"{g.privilege}" + (f" via role {g.via_role}" if g.via_role else "")
                         + f" ({g.grantee})" for g in unsafe)
        checks.append(fail(name, f"can write through read_only: {what}", " ".join(dict.fromkeys(fixes))))
    return checks


def _quoted(grantee: str) -> str:
    user, _, host = grantee.rpartition("@")
    return f"'{user}'@'{host}'"


# ---------------------------------------------------------------------------------- topology
@dataclass(frozen=True)
class Holder:
    """The current lock holder as its member record names it."""

    node: str
    mysql_host: str
    mysql_port: int


@dataclass(frozen=True)
class ClusterFacts:
    """What the DCS says beyond the lock: whether the cluster has any history (None: unread), and
    the agents that run, by the mysqld address each publishes: (host, port) -> (node, role)."""

    new_cluster: bool | None = None
    members: dict[tuple[str, int], tuple[str, str]] | None = None


def check_source(settings: ServerSettings, node: str, holder: Holder | None, repl_user: str,
                 cluster: ClusterFacts | None = None) -> Check:
    """A replica should replicate from the node that holds the lock (the primary)."""
    replica = settings.replica
    read_only = _on(settings.variables.get("read_only"))
    if settings.replica_error:
        return fail("replication_source", f"cannot read the replication status: {settings.replica_error}",
                    "give the agent account its privileges (see agent_account)")
    if holder is None:
        return _check_without_holder(replica, read_only, cluster or ClusterFacts())
    if holder.node == node:
        return ok("replication_source", "this node holds the lock (it is the primary)")
    if not holder.mysql_host or not holder.mysql_port:
        return warn("replication_source", f"{holder.node} holds the lock but published no mysqld "
                                          "address (an agent from before this was published?)")
    change = (f"STOP SLAVE; CHANGE MASTER TO MASTER_HOST = '{holder.mysql_host}', MASTER_PORT = "
              f"{holder.mysql_port}, MASTER_USER = '{repl_user}', MASTER_PASSWORD = '...', "
              f"MASTER_USE_GTID = slave_pos; START SLAVE;")
    if replica is None:
        return fail("replication_source", f"{holder.node} holds the lock but this node does not "
                                          "replicate", change)
    if (replica.primary_host, replica.primary_port) != (holder.mysql_host, holder.mysql_port):
        return fail("replication_source", f"replicates from {replica.primary_host}:{replica.primary_port}, "
                                          f"but {holder.node} ({holder.mysql_host}:{holder.mysql_port}) "
                                          "holds the lock", change)
    if replica.io_running != "Yes" or replica.sql_running != "Yes":
        error = replica.last_io_error or replica.last_sql_error
        return fail("replication_source", f"from {holder.node}, but IO={replica.io_running} "
                                          f"SQL={replica.sql_running}" + (f": {error}" if error else ""),
                    "START SLAVE; (and fix the error shown by SHOW SLAVE STATUS)")
    return ok("replication_source", f"replicates from the lock holder {holder.node} "
                                    f"({holder.mysql_host}:{holder.mysql_port})")


def _check_without_holder(replica: ReplicaStatus | None, read_only: bool, cluster: ClusterFacts) -> Check:
    """Nobody holds the lock: what this node's agent will do when it starts (docs/install.md,
    "Start the agents"). On a new cluster (no history in the DCS) the agents adopt it in any order."""
    new = cluster.new_cluster
    if replica is None:
        if read_only:
            return warn("replication_source", "no agent holds the lock yet; this node is read-only and not "
                                              "replicating", "start the agent on the current primary first "
                                              "(docs/install.md)")
        if new:
            return ok("replication_source", "no agent holds the lock yet; this node is writable and not "
                                            "replicating: its agent adopts it as the primary without "
                                            "interrupting its writers (new cluster)")
        why = ("the DCS history could not be read" if new is None
               else "the cluster has a history in the DCS")
        return warn("replication_source", f"no agent holds the lock yet; this node is writable, but {why}: "
                                          "its agent sets it read-only at start (its writers get errors) "
                                          "and it races like any node",
                    "move its writers to the gate, or see docs/install.md (adopting a running cluster)")
    source = f"{replica.primary_host}:{replica.primary_port}"
    member = (cluster.members or {}).get((replica.primary_host, replica.primary_port))
    if member is not None:
        name, role = member
        return ok("replication_source", f"no agent holds the lock yet; this node replicates from {name} "
                                        f"({source}), whose agent runs ({role})")
    if new is False:
        return warn("replication_source",
                    f"the lock is free, the cluster has a history, and this node replicates from {source}, "
                    "which has no agent: started now, this agent treats it as a former primary whose "
                    "agent stopped (it stops receiving from it and may take the lock)",
                    f"start the agent on {replica.primary_host} first")
    if replica.io_running != "Yes":
        return warn("replication_source",
                    f"the lock is free and this node replicates from {source}, which has no agent, but "
                    f"its IO thread is not connected (IO={replica.io_running}): started now, this agent "
                    "counts that source as gone and may take the lock",
                    f"start the agent on {replica.primary_host} first, or fix replication "
                    "(SHOW SLAVE STATUS)")
    return ok("replication_source",
              f"the lock is free and this node replicates from {source}, which has no agent yet: this "
              "agent waits (it neither takes the lock nor stops replicating) until that source's agent "
              "adopts it")
