"""Checks of the lock service: every endpoint reachable, TLS where it crosses the network, and who
holds the lock now (the node the others should replicate from)."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from dbfence.config import AgentConfig
from dbfence.locks.base import LockSettings
from dbfence.locks.errors import LockError
from dbfence.locks.factory import DcsConfig, open_lock
from dbfence.mysql.preflight import ClusterFacts, Holder
from dbfence.preflight.result import Check, fail, ok, warn

_CONNECT_TIMEOUT = 1.5


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_tls(config: AgentConfig) -> list[Check]:
    dcs = config.dcs
    checks: list[Check] = []
    files = (("dcs.tls_ca", dcs.tls_ca), ("dcs.tls_cert", dcs.tls_cert), ("dcs.tls_key", dcs.tls_key))
    for key, path in files:
        if path:
            try:
                Path(path).read_bytes()
            except OSError as exc:
                checks.append(fail(f"dcs_tls {key}", f"cannot read {path}: {exc.strerror}",
                                   f"install the file at {path} (readable by the agent's user)"))
    plain_remote = [url for url in dcs.endpoints
                    if urlsplit(url).scheme != "https" and not _is_loopback(urlsplit(url).hostname or "")]
    https_without_ca = [url for url in dcs.endpoints if urlsplit(url).scheme == "https" and not dcs.tls_ca]
    if plain_remote:
        checks.append(warn("dcs_tls", f"plain TCP across the network to {', '.join(plain_remote)}: the "
                                      "lock and the discovery records travel unauthenticated",
                           'dcs.endpoints = ["https://..."] and dcs.tls_ca = "/etc/dbfence/dcs-ca.pem"'))
    elif https_without_ca:
        checks.append(fail("dcs_tls", f"https endpoints without dcs.tls_ca: {', '.join(https_without_ca)}",
                           'dcs.tls_ca = "<the CA that signed the DCS servers\' certificates>"'))
    elif not any(check.status > 0 for check in checks):
        tls = [url for url in dcs.endpoints if urlsplit(url).scheme == "https"]
        checks.append(ok("dcs_tls", "TLS with dcs.tls_ca" if tls else "loopback only: no TLS needed"))
    return checks


def check_endpoints(config: AgentConfig) -> list[Check]:
    """Each endpoint answers a TCP connection; an etcd member down is a warning while others answer."""
    reached, failed = [], []
    for url in config.dcs.endpoints:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        default_port = 2379 if config.dcs.kind == "etcd" else 8500
        host, port = parts.hostname or "", parts.port or default_port
        try:
            with socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT):
                reached.append(url)
        except OSError as exc:
            failed.append(f"{url} ({exc.strerror or type(exc).__name__})")
    if not failed:
        return [ok("dcs_endpoints", f"{len(reached)} of {len(reached)} answer")]
    fix = "start the DCS, or correct dcs.endpoints"
    if reached:
        return [warn("dcs_endpoints", f"{len(reached)} of {len(config.dcs.endpoints)} answer; not: "
                                      f"{', '.join(failed)}", fix)]
    return [fail("dcs_endpoints", f"none answers: {', '.join(failed)}", fix)]


def _secret(path: str) -> str | None:
    return Path(path).read_text().strip() if path else None


@dataclass(frozen=True)
class LockView:
    check: Check
    holder: Holder | None
    reachable: bool
    cluster: ClusterFacts = field(default_factory=ClusterFacts)


def read_lock(config: AgentConfig) -> LockView:
    """One lenient snapshot through the agent's own lock backend: proves the credentials and TLS
    settings work, and names the current holder with the mysqld address it published."""
    dcs = config.dcs
    try:
        lock = open_lock(
            DcsConfig(kind=dcs.kind, endpoints=tuple(dcs.endpoints), ca_cert=dcs.tls_ca or None,
                      cert=dcs.tls_cert or None, key=dcs.tls_key or None, user=dcs.username or None,
                      password=_secret(dcs.password_file), token=_secret(dcs.acl_token_file)),
            config.cluster.name, config.node.name,
            LockSettings(ttl=int(max(dcs.ttl, 2)), margin=max(dcs.margin, 1.0), call_timeout=0.9),
        )
    except (ValueError, OSError) as exc:
        return LockView(fail("dcs_read", f"cannot use the [dcs] settings: {exc}"), None, False)
    try:
        snapshot = lock.snapshot(strict=False)
    except LockError as exc:
        lock.close()
        return LockView(fail("dcs_read", f"cannot read the cluster's keys: {exc}",
                             "check dcs.endpoints, the credentials and TLS files, and the DCS's ACLs"),
                        None, False)
    try:
        new_cluster: bool | None = not lock.read_history(limit=1)
    except LockError:
        new_cluster = None  # the agents' own rule then waits rather than guess
    finally:
        lock.close()
    agents = {(m.record.mysql_host, m.record.mysql_port): (m.record.node, m.record.role)
              for m in snapshot.members if m.record.mysql_host}
    cluster = ClusterFacts(new_cluster, agents)
    holder_info = snapshot.lock.holder if snapshot.lock else None
    if holder_info is None:
        history = {True: ", no history (a new cluster)", False: "", None: ", history unreadable"}[new_cluster]
        return LockView(ok("dcs_read", f"cluster {config.cluster.name!r}: the lock is free, "
                                       f"{len(snapshot.members)} member record(s){history}"),
                        None, True, cluster)
    record = next((m.record for m in snapshot.members if m.record.node == holder_info.node), None)
    holder = Holder(holder_info.node, record.mysql_host if record else "", record.mysql_port if record else 0)
    return LockView(ok("dcs_read", f"cluster {config.cluster.name!r}: {holder_info.node} holds the lock"),
                    holder, True, cluster)


def check_published_address(config: AgentConfig) -> Check:
    """Peers replicate from the mysqld address this agent publishes (mysql.host): 127.0.0.1 is
    right only when every node and the DCS share one host (a lab)."""
    host = config.mysql.host
    remote = [url for url in config.dcs.endpoints
              if not _is_loopback(urlsplit(url if "://" in url else f"http://{url}").hostname or "")]
    if _is_loopback(host) and (remote or not _is_loopback(config.node.address)):
        return fail("mysql.host", f"{host} is published for the other nodes to replicate from, but "
                                  "they run on other hosts",
                    'mysql.host = "<this host\'s address the other database hosts reach>"')
    return ok("mysql.host", f"peers replicate from {host}:{config.mysql.port}")
