"""The agent's TOML configuration: one schema that validates, documents and prints itself.

Every setting is a field of a frozen dataclass with its default and a one-line description in the
field's metadata. The loader walks that schema, so an unknown key, a wrong type or a value out of
range is reported with its full dotted name and the form it expects, and the reference in
``docs/configuration.md`` is generated from the same place (a test keeps it current).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


class ConfigError(ValueError):
    """The configuration is unusable; the message names the key and the expected form."""


REQUIRED: Any = dataclasses.MISSING


def setting(default: Any, doc: str, *, minimum: float | None = None, maximum: float | None = None,
            choices: tuple[str, ...] | None = None) -> Any:
    """A documented setting; ``REQUIRED`` as default makes it mandatory."""
    metadata = {"doc": doc, "min": minimum, "max": maximum, "choices": choices}
    if default is REQUIRED:
        return field(metadata=metadata)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterSection:
    name: str = setting(REQUIRED, "Cluster name: the DCS key prefix and the Consul service name.")


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSection:
    name: str = setting(REQUIRED, "This node's name, unique in the cluster.")
    address: str = setting("127.0.0.1", "Address applications use to reach this node's gate "
                                        "(published in discovery).")
    priority: int = setting(100, "Preference among equally advanced candidates: higher wins; "
                                 "0 means never promote this node (it then does not acknowledge "
                                 "lossless commits either).", minimum=0, maximum=1000)
    state_dir: str = setting("/var/lib/dbfence", "Directory where the agent keeps what must survive "
                                                 "its restart (systemd's StateDirectory): the "
                                                 "failsafe promises it gave (written with fsync), "
                                                 "the fencing evidence, the open term as primary "
                                                 "and saved errant transactions of [rejoin], an "
                                                 "operator's rebuild approval. "
                                                 "Replaces [rejoin] state_dir (still read, with a "
                                                 "warning, for one release).")
    page_out_libraries: bool = setting(True, "After its first round, take the agent's clean "
                                             "library pages out of its memory (madvise "
                                             "MADV_DONTNEED on read-only file mappings without "
                                             "private copies: pages touched while loading, "
                                             "most of gRPC's); the ones it uses fault back in. "
                                             "They stay in the page cache: resident memory "
                                             "given back, not code removed.")


@dataclass(frozen=True, slots=True, kw_only=True)
class GateSection:
    listen: str = setting("0.0.0.0:3307", "host:port the gate accepts application connections on.")
    workers: int = setting(0, "Gate worker processes sharing the port; 0 = one per two CPU cores "
                                       "(at least one).",
                           minimum=0, maximum=64)
    max_connections: int = setting(0, "Upper bound on the gate's connections to mysqld (one per "
                                      "admitted client); 0 = mysqld's @@max_connections minus "
                                      "reserved_connections, re-read every probe round. The gate "
                                      "never exceeds that figure, whatever this says. Beyond the "
                                      "cap clients get MySQL error 1040 (too many connections) and "
                                      "no connection to mysqld is opened for them.",
                                   minimum=0, maximum=100000)
    reserved_connections: int = setting(10, "mysqld connection slots the gate leaves free for the "
                                            "agent, the replicas' IO threads, other agents' checks "
                                            "and administrators.", minimum=0, maximum=10000)
    login_timeout: float = setting(5.0, "Seconds a client has, from connecting, to finish its login "
                                        "(or switch to TLS) before the gate drops it with its "
                                        "connection to mysqld.", minimum=0.1, maximum=300)
    idle_timeout: float = setting(0.0, "Seconds of client silence before the gate closes a "
                                       "connection; 0 = never.", minimum=0)
    kernel_forwarding: str = setting("auto", "Once a client on this host has logged in, join its "
                                             "socket to mysqld's in the kernel (BPF, behind the same "
                                             "fence; clients on other hosts always go through the "
                                             "workers): auto = when the host allows it (root, cgroup "
                                             "v2, TCP to mysqld at an IPv4 address), on = refuse to "
                                             "start without it, off = never.",
                                     choices=("auto", "on", "off"))
    proxy_protocol: bool = setting(False, "Start each connection to mysqld with a PROXY protocol "
                                          "(version 2) header naming the client, so that mysqld "
                                          "authenticates, shows and logs the client's address "
                                          "instead of the gate's (on every path: the kernel joins "
                                          "a link after its login). mysqld's "
                                          "proxy_protocol_networks must list the gate's backend "
                                          "address (backend_source, or localhost with "
                                          "mysql.socket); `dbfence check` verifies it. MariaDB "
                                          "only.")
    backend_source: str = setting("", "Local IP address the gate's TCP connections to mysqld "
                                      "come from; empty = the kernel's choice. With "
                                      "proxy_protocol, an address only the gate uses (127.0.0.2 "
                                      "with mysqld on loopback) keeps proxy_protocol_networks to "
                                      "the gate alone. Not with mysql.socket.")
    remote_path: str = setting("off", "Clients on other hosts: forward their connections to mysqld "
                                      "(mysql.host:mysql.port) in the kernel, with no relay: nftables "
                                      "DNAT, fenced on every packet by a BPF filter on the interfaces "
                                      "(docs/gate-paths.md). on = refuse to start without it, auto = "
                                      "when the host allows it (root, Linux 6.6+ tcx, nftables NAT, "
                                      "ss -K, mysql.host an IPv4 address), off = the workers relay them.",
                               choices=("auto", "on", "off"))
    remote_interfaces: list[str] = setting([], "Interfaces remote clients arrive on, for remote_path; "
                                               "empty = every Ethernet interface that is up at start.")
    # At most 5 s: the agent's decision loop waits for the drain, and systemd's watchdog is 10 s.
    drain_timeout: float = setting(2.0, "Seconds a switchover lets in-flight transactions finish "
                                        "(new connections already refused) before cutting the rest; "
                                        "writes are refused from the start of the drain until the "
                                        "new primary admits.", minimum=0, maximum=5)


@dataclass(frozen=True, slots=True, kw_only=True)
class MysqlSection:
    host: str = setting("127.0.0.1", "Address of the local mysqld on the network: the agent "
                                     "connects there unless socket is set, and publishes it, so "
                                     "that the other nodes replicate from it and read its GTIDs "
                                     "(on several hosts it must be reachable from them, not "
                                     "127.0.0.1).")
    port: int = setting(3306, "TCP port of the local mysqld.", minimum=1, maximum=65535)
    socket: str = setting("", "Unix socket of the local mysqld; preferred over host:port when set.")
    extra_port: int = setting(0, "MariaDB extra_port for the agent's reserved connection, so it "
                                 "still sees when max_connections is used up; 0 = the client "
                                 "port.", minimum=0, maximum=65535)
    credentials_file: str = setting(REQUIRED, "Option file with the agent's account in [client] and "
                                              "the replication account in [replication] "
                                              "(mode 0600).")
    pid_file: str = setting("", "mysqld's pid file, for the process-alive probe; empty = skip.")
    datadir: str = setting("", "mysqld's data directory, for the free-space probe; empty = skip.")
    app_users: list[str] = setting([], "Application accounts that must not hold SUPER or READ ONLY "
                                       "ADMIN (checked at start).")


@dataclass(frozen=True, slots=True, kw_only=True)
class DcsSection:
    kind: str = setting(REQUIRED, "Lock service: etcd or consul.", choices=("etcd", "consul"))
    endpoints: list[str] = setting(REQUIRED, "etcd client URLs (all members), or the local Consul "
                                             "agent's HTTP URL.")
    ttl: float = setting(10.0, "Lease/session TTL in seconds.", minimum=1, maximum=3600)
    margin: float = setting(2.0, "Safety margin in seconds: the holder stops admitting at "
                                 "renewal send time + ttl - margin.", minimum=0.1)
    renew_interval: float = setting(0.0, "Seconds between lease renewals; 0 = ttl / 5.", minimum=0)
    lock_delay: float = setting(1.0, "Consul: a floor for the lock-delay after a session is invalidated "
                                     "(s); the lock uses at least ttl - margin, so no rival acquires "
                                     "before the old holder's gate has closed (docs/locks.md).",
                                minimum=0, maximum=60)
    tls_ca: str = setting("", "CA certificate file for TLS to the DCS; empty = plain TCP.")
    tls_cert: str = setting("", "Client certificate file for mutual TLS.")
    tls_key: str = setting("", "Client key file for mutual TLS.")
    username: str = setting("", "etcd user name (with password_file).")
    password_file: str = setting("", "File holding the etcd password (mode 0600).")
    acl_token_file: str = setting("", "File holding the Consul ACL token (mode 0600).")


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectionSection:
    interval: float = setting(0.2, "Seconds between probe rounds.", minimum=0.01, maximum=60)
    connect_timeout: float = setting(1.0, "Connect probe timeout (s): a crashed mysqld refuses at "
                                          "once; hangs are the select probe's job.", minimum=0.01)
    select_timeout: float = setting(0.3, "SELECT 1 probe timeout in seconds.", minimum=0.01)
    write_timeout: float = setting(0.5, "Heartbeat write probe timeout in seconds (primary only).",
                                   minimum=0.01)
    trip_after: int = setting(3, "Consecutive failed rounds before the database counts as "
                                 "unhealthy.", minimum=1, maximum=100)
    recover_after: int = setting(3, "Consecutive good rounds before it counts as healthy again.",
                                 minimum=1, maximum=1000)
    min_free_disk_mb: int = setting(512, "Free space the data directory needs, in MiB.", minimum=0)
    idle_probe_every: int = setting(5, "While every probe passes in good time, the connect probe (a "
                                       "fresh login) and the disk probe run every this many rounds; "
                                       "any failure, late answer or trip brings them back to every "
                                       "round. 1 = every round.", minimum=1, maximum=100)


@dataclass(frozen=True, slots=True, kw_only=True)
class FailoverSection:
    max_lag: float = setting(10.0, "A replica further behind than this (seconds) does not race "
                                   "for the lock, unless (lossless mode) it holds commits no other "
                                   "candidate received: it then races and applies them first.",
                             minimum=0)
    cooldown: float = setting(300.0, "Seconds after a failover during which no automatic "
                                     "failover starts.", minimum=0)
    lossless: bool = setting(True, "Semi-synchronous replication (AFTER_SYNC): no acknowledged "
                                   "write lost on failover.")
    semi_sync_timeout_ms: int = setting(3600000, "rpl_semi_sync_master_timeout: how long a commit "
                                                 "waits for a replica's acknowledgement.", minimum=1)
    relay_wait_timeout: float = setting(30.0, "Seconds a promotion waits for the relay log to be "
                                              "applied.", minimum=0)
    failsafe: bool = setting(False, "Keep admitting writes through a DCS outage while every member "
                                    "of the last membership promises not to race (see "
                                    "docs/failsafe.md). Off by default: it needs http.token_file "
                                    "(or mutual TLS) and node.state_dir on every agent, and a "
                                    "member that is "
                                    "paused or cut off during an outage still ends writes.")


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpSection:
    listen: str = setting("127.0.0.1:8008", "host:port of the HTTP API (/primary, /replica, "
                                            "/health, /status, /metrics); empty = off.")
    token_file: str = setting("", "File holding the cluster token (the same on every agent) that the "
                                  "mutating, failsafe promise and backup endpoints require as "
                                  "'Authorization: Bearer'; empty = those endpoints need mutual TLS "
                                  "(tls_ca), or are off.")
    tls_cert: str = setting("", "Certificate (PEM, with its chain) the HTTP API presents: it then "
                                "speaks HTTPS only, and peers reach it at https:// (published in the "
                                "member record); empty = plain HTTP.")
    tls_key: str = setting("", "Private key of tls_cert (mode 0600).")
    tls_ca: str = setting("", "Cluster CA (PEM) for mutual TLS between agents: the mutating, failsafe "
                              "promise and backup endpoints refuse a caller without a client "
                              "certificate from it (with token_file set, the token is required "
                              "too), and peers' server certificates are checked against it (their "
                              "names must match the host in their URL). Probes of /primary, "
                              "/health, /metrics need none. Needs tls_cert.")
    tls_client_cert: str = setting("", "Client certificate this agent presents to its peers (promise "
                                       "requests, backup fetches); empty = tls_cert.")
    tls_client_key: str = setting("", "Private key of tls_client_cert; empty = tls_key.")


@dataclass(frozen=True, slots=True, kw_only=True)
class DiscoverySection:
    consul_agent: str = setting("", "Local Consul agent URL for service registration; empty = "
                                    "no Consul registration.")
    etcd_key: bool = setting(True, "Publish the primary's gate address under "
                                   "dbfence/<cluster>/primary in etcd.")


@dataclass(frozen=True, slots=True, kw_only=True)
class RejoinSection:
    # manual by default: the fence kills sessions that wait for a semi-sync ack, which commits
    # them in the engine (durable within ~1 s), so after most partitions and freezes crash
    # recovery has nothing left to truncate; and the agent needs the rights to SIGKILL and start
    # mysqld (docs/operations.md, "Repairing a former primary").
    mode: str = setting("manual", "What a fenced former primary does about errant transactions "
                                  "(GTIDs the new primary lacks): manual = stay fenced until an "
                                  "operator rebuilds it; truncate = when the evidence recorded at "
                                  "fencing proves they were never acknowledged (lossless AFTER_SYNC "
                                  "semi-sync that never fell back to async), save them to a file "
                                  "in node.state_dir, kill -9 mysqld and start it so that crash "
                                  "recovery removes them, then rejoin if nothing errant is left; "
                                  "rebuild = truncate when that is proven safe, else clone the "
                                  "node from the primary with mariadb-backup over the agents' "
                                  "HTTP API (the old data directory is kept): by itself only when "
                                  "the evidence proves them never acknowledged, otherwise after "
                                  "an operator creates node.state_dir/rebuild-approved.",
                        choices=("manual", "truncate", "rebuild"))
    start_command: list[str] = setting(["systemctl", "start", "mariadb.service"],
                                       "Command that starts mysqld after the repair killed it; it "
                                       "must start it with rpl_semi_sync_slave_enabled = ON and "
                                       "init_rpl_role = SLAVE (put both in my.cnf).")
    start_timeout: float = setting(600.0, "Seconds to wait for mysqld to answer again after the "
                                          "start command (crash recovery can take minutes).",
                                   minimum=1)
    binlog_tool: str = setting("mariadb-binlog", "Program that writes the errant transactions out "
                                                 "of the binlog files.")
    donor_rate_mib: int = setting(32, "With mode = rebuild: MiB/s at most that this node streams "
                                      "a backup to a node being rebuilt, so that its own clients "
                                      "stay served (0 = unlimited).", minimum=0)
    backup_tool: str = setting("mariadb-backup", "Program that copies and prepares a backup "
                                                 "(mode = rebuild; Debian package mariadb-backup).")
    mbstream_tool: str = setting("mbstream", "Program that unpacks the donor's backup stream.")
    donor_primary: bool = setting(False, "With mode = rebuild: copy from the primary when no "
                                         "healthy replica can serve. Off by default: the copy "
                                         "blocks the donor's commits for a moment (BACKUP STAGE "
                                         "BLOCK_COMMIT), which under load can trip the primary's "
                                         "write probe and fail it over.")
    free_space_margin_mib: int = setting(1024, "With mode = rebuild: free space the target's "
                                               "filesystem must keep beyond the donor's data size "
                                               "(plus 10 %) before a copy starts.", minimum=0)
    keep_old_datadirs: int = setting(1, "With mode = rebuild: how many data directories moved "
                                        "aside by rebuilds to keep (newest first); older ones are "
                                        "deleted after a successful rebuild. The saved errant "
                                        "transactions in state_dir are never deleted.", minimum=0)
    approval_ttl: float = setting(3600.0, "With mode = rebuild: seconds an operator's rebuild "
                                          "approval (dbfence rejoin approve) counts; an older one "
                                          "is removed unused (0 = until spent). It is spent anyway "
                                          "when the rebuild starts, when another fence begins, and "
                                          "when the node serves again (truncated, primary again, "
                                          "fixed by hand): it never allows a later rebuild.",
                                  minimum=0)


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    cluster: ClusterSection
    node: NodeSection
    mysql: MysqlSection
    dcs: DcsSection
    gate: GateSection = field(default_factory=GateSection)
    detection: DetectionSection = field(default_factory=DetectionSection)
    failover: FailoverSection = field(default_factory=FailoverSection)
    http: HttpSection = field(default_factory=HttpSection)
    discovery: DiscoverySection = field(default_factory=DiscoverySection)
    rejoin: RejoinSection = field(default_factory=RejoinSection)
    # Not a section: what the loader has to tell (a deprecated key it still read).
    notices: tuple[str, ...] = field(default=(), metadata={"not_a_section": True})

    @property
    def renew_interval(self) -> float:
        return self.dcs.renew_interval or self.dcs.ttl / 5


SECTIONS: dict[str, type[Any]] = {f.name: typing.get_type_hints(AgentConfig)[f.name]
                                  for f in dataclasses.fields(AgentConfig)
                                  if not f.metadata.get("not_a_section")}

# (old section, old key) -> (section, key) it moved to; the old one is read for one release.
MOVED_KEYS = {("rejoin", "state_dir"): ("node", "state_dir")}


def type_name(kind: Any) -> str:
    if kind == list[str]:
        return "a list of strings"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}[kind]


def _coerce(key: str, kind: Any, value: Any, meta: typing.Mapping[str, Any]) -> Any:
    ok = (
        (kind is str and isinstance(value, str))
        or (kind is bool and isinstance(value, bool))
        or (kind is int and isinstance(value, int) and not isinstance(value, bool))
        or (kind is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (kind == list[str] and isinstance(value, list) and all(isinstance(v, str) for v in value))
    )
    if not ok:
        raise ConfigError(f"{key}: expected {type_name(kind)}, got {value!r}")
    if kind is float:
        value = float(value)
        if math.isnan(value):  # nan: every comparison false, so no limit would hold it
            raise ConfigError(f"{key}: expected a number, got nan")
    if meta["choices"] and value not in meta["choices"]:
        raise ConfigError(f"{key}: expected one of {', '.join(meta['choices'])}, got {value!r}")
    if meta["min"] is not None and value < meta["min"]:
        raise ConfigError(f"{key}: must be at least {meta['min']}, got {value!r}")
    if meta["max"] is not None and value > meta["max"]:
        raise ConfigError(f"{key}: must be at most {meta['max']}, got {value!r}")
    return value


def _build_section(name: str, cls: type[Any], raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"[{name}]: expected a table, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]}: unknown setting (known: {', '.join(fields)})")
    values = {}
    for key, spec in fields.items():
        if key in raw:
            values[key] = _coerce(f"{name}.{key}", hints[key], raw[key], spec.metadata)
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{name}.{key}: required ({spec.metadata['doc']})")
    return cls(**values)


def parse_config(raw: dict[str, Any]) -> AgentConfig:
    """Validate a parsed TOML document and return the typed configuration."""
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"[{unknown[0]}]: unknown section (known: {', '.join(SECTIONS)})")
    raw, notices = _move_keys(raw)
    sections = {}
    for name, cls in SECTIONS.items():
        section_field = next(f for f in dataclasses.fields(AgentConfig) if f.name == name)
        required = section_field.default_factory is dataclasses.MISSING
        if name not in raw and required:
            raise ConfigError(f"[{name}]: required section is missing")
        sections[name] = _build_section(name, cls, raw.get(name, {}))
    config = AgentConfig(**sections, notices=tuple(notices))
    _check_relations(config)
    return config


def _move_keys(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Read a moved key under its new name, saying so; both set to different values is an error."""
    notices = []
    for (old_section, old_key), (new_section, new_key) in MOVED_KEYS.items():
        old_table, new_table = raw.get(old_section), raw.get(new_section, {})
        if not isinstance(old_table, dict) or old_key not in old_table or not isinstance(new_table, dict):
            continue
        old, new = f"{old_section}.{old_key}", f"{new_section}.{new_key}"
        value = old_table[old_key]
        if new_key in new_table and new_table[new_key] != value:
            raise ConfigError(f"{old}: replaced by {new}, which is set to {new_table[new_key]!r} while "
                              f"{old} says {value!r}: keep only {new} (move the files if they differ)")
        notices.append(f"{old} is deprecated: it is now {new} (one state directory for everything the "
                       f"agent keeps); {'remove it' if new_key in new_table else 'rename it'} (this "
                       "release still reads it)")
        raw = {**raw, old_section: {k: v for k, v in old_table.items() if k != old_key},
               new_section: {**new_table, new_key: value}}
    return raw, notices


def _check_relations(config: AgentConfig) -> None:
    dcs = config.dcs
    if dcs.margin >= dcs.ttl:
        raise ConfigError(f"dcs.margin: must be smaller than dcs.ttl ({dcs.ttl}), got {dcs.margin}")
    if config.renew_interval >= dcs.ttl - dcs.margin:
        raise ConfigError(f"dcs.renew_interval: must be shorter than ttl - margin "
                          f"({dcs.ttl - dcs.margin}s) so a lease is renewed before it lapses")
    if dcs.kind == "consul" and not 10 <= dcs.ttl <= 86400:
        raise ConfigError(f"dcs.ttl: Consul sessions take a TTL of 10 to 86400 seconds, got {dcs.ttl}")
    if not dcs.endpoints:
        raise ConfigError("dcs.endpoints: at least one endpoint is required")
    if config.rejoin.mode != "manual" and not config.rejoin.start_command:
        raise ConfigError("rejoin.start_command: required when rejoin.mode is not manual "
                          "(the repair kills mysqld and must start it again)")
    if config.rejoin.mode != "manual" and not config.mysql.pid_file:
        raise ConfigError("mysql.pid_file: required when rejoin.mode is not manual "
                          "(the repair kills mysqld by the pid in it)")
    http = config.http
    if bool(http.tls_cert) != bool(http.tls_key):
        raise ConfigError("http.tls_cert: tls_cert and tls_key must be given together")
    if bool(http.tls_client_cert) != bool(http.tls_client_key):
        raise ConfigError("http.tls_client_cert: tls_client_cert and tls_client_key must be given together")
    if http.tls_ca and not http.tls_cert:
        raise ConfigError("http.tls_ca: mutual TLS needs the API's own certificate (http.tls_cert, "
                          "http.tls_key)")
    authenticated = bool(http.token_file or http.tls_ca)
    if config.rejoin.mode == "rebuild" and not (authenticated and http.listen):
        raise ConfigError("http.token_file: rebuild copies the donor over the agents' HTTP API, which "
                          "needs http.listen and the same cluster token (or mutual TLS, http.tls_ca) "
                          "on every node")
    for address_key, value in (("gate.listen", config.gate.listen), ("http.listen", config.http.listen)):
        if value:
            parse_host_port(address_key, value)
    source = config.gate.backend_source
    if source:
        if config.mysql.socket:
            raise ConfigError("gate.backend_source: the gate reaches mysqld over mysql.socket, not TCP; "
                              "unset one of them")
        try:
            ipaddress.ip_address(source)
        except ValueError:
            raise ConfigError(f"gate.backend_source: expected an IP address, got {source!r}") from None
    if bool(config.dcs.tls_cert) != bool(config.dcs.tls_key):
        raise ConfigError("dcs.tls_cert: tls_cert and tls_key must be given together")
    if config.failover.failsafe:
        # Promises are asked over the HTTP API, authenticated with the cluster token, and kept
        # across restarts in the state directory (docs/failsafe.md).
        if not http.listen or not authenticated:
            raise ConfigError("failover.failsafe: needs http.listen and http.token_file or mutual TLS "
                              "(http.tls_ca): the same cluster token, or certificates from the same "
                              "CA, on every agent authenticate promise requests")
        if not config.node.state_dir:
            raise ConfigError("failover.failsafe: needs node.state_dir (promises survive restarts)")


def api_url_of(config: AgentConfig) -> str:
    """The agent's HTTP API as peers reach it (empty: off): https:// with http.tls_cert; a
    wildcard listen address is replaced by node.address."""
    if not config.http.listen:
        return ""
    host, port = parse_host_port("http.listen", config.http.listen)
    if host in ("", "0.0.0.0", "::"):
        host = config.node.address
    scheme = "https" if config.http.tls_cert else "http"
    return f"{scheme}://{'[' + host + ']' if ':' in host else host}:{port}"


def parse_host_port(key: str, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{key}: expected host:port, got {value!r}")
    return host.strip("[]"), int(port)


def load_config(path: Path) -> AgentConfig:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration ({exc.strerror})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return parse_config(raw)


if __name__ == "__main__":
    from dbfence.config_docs import reference_markdown  # it imports this module: only here

    sys.stdout.write(reference_markdown())
