"""From the agent's TOML configuration to what its parts need: the core's settings, secrets, the lock.

Everything here runs once, at start; a problem is an :class:`AgentStartError` whose message says
what to fix, so the agent never starts half-configured.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from dbfence.agent.core_config import CoreConfig
from dbfence.breaker import GateConfig
from dbfence.config import AgentConfig, parse_host_port
from dbfence.discovery.api_tls import ApiTls, ApiTlsError
from dbfence.locks.base import LeaseLock, LockSettings
from dbfence.locks.factory import DcsConfig, open_lock
from dbfence.mysql.connection import Endpoint
from dbfence.mysql.credentials import Credentials
from dbfence.mysql.hysteresis import HysteresisConfig
from dbfence.mysql.monitor import HealthMonitor
from dbfence.mysql.probes import ProbeSettings, Target


class AgentStartError(RuntimeError):
    """The agent cannot start safely; the message says what to fix."""


def read_secret(path: str, what: str) -> str | None:
    if not path:
        return None
    file = Path(path)
    try:
        mode = file.stat().st_mode & 0o777
        if mode & 0o077:
            raise AgentStartError(f"{what} file {file} has mode {mode:04o}; chmod 0600 {file}")
        return file.read_text().strip()
    except OSError as exc:
        raise AgentStartError(f"cannot read {what} file {file}: {exc.strerror}") from None


def core_config_of(config: AgentConfig) -> CoreConfig:
    ttl = float(int(config.dcs.ttl))
    return CoreConfig(
        node_name=config.node.name,
        ttl=ttl,
        safety_margin=config.dcs.margin,
        renew_interval=config.renew_interval,
        max_lag_seconds=config.failover.max_lag,
        cooldown=config.failover.cooldown,
        priority=config.node.priority,
        lossless=config.failover.lossless,
        poll_interval=min(1.0, config.renew_interval),
        settle_interval=0.05,
        member_stale_after=max(3.0 * config.renew_interval, ttl),
        publish_interval=config.renew_interval,
        relay_wait_timeout=min(1.0, config.failover.relay_wait_timeout),
        drain_timeout=config.gate.drain_timeout,
        rejoin_mode=config.rejoin.mode,
        rejoin_donor_primary=config.rejoin.donor_primary,
        failsafe=config.failover.failsafe,
    )


@dataclass(frozen=True)
class ApiTlsContexts:
    """TLS of the agents' HTTP API (``[http] tls_*``): the server's context (None: plain HTTP),
    the client's for peers' ``https://`` APIs, and whether callers need a client certificate."""

    server: ssl.SSLContext | None
    client: ssl.SSLContext
    mutual: bool


def api_tls_of(config: AgentConfig) -> ApiTlsContexts:
    http = config.http
    tls = ApiTls(cert=http.tls_cert, key=http.tls_key, ca=http.tls_ca, client_cert=http.tls_client_cert,
                 client_key=http.tls_client_key)
    try:
        return ApiTlsContexts(tls.server_context(), tls.client_context(), tls.mutual)
    except ApiTlsError as exc:
        raise AgentStartError(str(exc)) from None


def open_lock_of(config: AgentConfig) -> LeaseLock:
    """The DCS lock this agent uses, from ``[dcs]`` (its secrets read from their files)."""
    dcs = config.dcs
    try:
        return open_lock(
            DcsConfig(kind=dcs.kind, endpoints=tuple(dcs.endpoints), ca_cert=dcs.tls_ca or None,
                      cert=dcs.tls_cert or None, key=dcs.tls_key or None, user=dcs.username or None,
                      password=read_secret(dcs.password_file, "dcs.password_file"),
                      token=read_secret(dcs.acl_token_file, "dcs.acl_token_file")),
            config.cluster.name, config.node.name,
            # Every DCS call gives up well inside the margin it protects.
            LockSettings(ttl=int(dcs.ttl), margin=dcs.margin, call_timeout=min(2.0, dcs.margin * 0.6),
                         lock_delay=int(dcs.lock_delay)),
        )
    except ValueError as exc:
        raise AgentStartError(f"cannot use the DCS settings: {exc}") from None


def monitor_of(config: AgentConfig, endpoint: Endpoint, credentials: Credentials) -> HealthMonitor:
    """The local mysqld's probes, from ``[detection]`` and ``[mysql]``."""
    detection = config.detection
    reserved = Endpoint(config.mysql.host, config.mysql.extra_port) if config.mysql.extra_port else None
    target = Target(endpoint=endpoint, credentials=credentials,
                    pid_file=Path(config.mysql.pid_file) if config.mysql.pid_file else None,
                    datadir=Path(config.mysql.datadir) if config.mysql.datadir else None,
                    reserved_endpoint=reserved)
    settings = ProbeSettings(interval_s=detection.interval, connect_timeout_s=detection.connect_timeout,
                             select_timeout_s=detection.select_timeout,
                             write_timeout_s=detection.write_timeout,
                             disk_min_free_bytes=detection.min_free_disk_mb * 1024 * 1024,
                             idle_probe_every=detection.idle_probe_every,
                             max_replica_lag_s=max(30.0, config.failover.max_lag * 3),
                             replica_status=False)  # the database sensor judges its facts' read
    hysteresis = HysteresisConfig(trip_after=detection.trip_after, recover_after=detection.recover_after)
    return HealthMonitor(target, settings, hysteresis)


def gate_config_of(config: AgentConfig) -> GateConfig:
    """The gate's settings, from ``[gate]`` and ``[mysql]``."""
    gate_host, gate_port = parse_host_port("gate.listen", config.gate.listen)
    return GateConfig(
        listen_host=gate_host, listen_port=gate_port,
        backend_host=config.mysql.host, backend_port=config.mysql.port,
        backend_socket=config.mysql.socket or None, workers=config.gate.workers,
        max_connections=config.gate.max_connections or None,
        reserved_connections=config.gate.reserved_connections,
        login_timeout=config.gate.login_timeout,
        idle_timeout=config.gate.idle_timeout or None,
        kernel_forwarding=config.gate.kernel_forwarding,
        proxy_protocol=config.gate.proxy_protocol,
        backend_source=config.gate.backend_source or None,
        remote_path=config.gate.remote_path, remote_interfaces=",".join(config.gate.remote_interfaces),
    )
