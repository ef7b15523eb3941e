"""Build a lock backend from a small DCS description (CLI flags or the agent's TOML ``[dcs]``)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dbfence.locks.base import LeaseLock, LockSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

KINDS = ("etcd", "consul")


@dataclass(frozen=True)
class DcsConfig:
    """Where the DCS is and how to authenticate. ``endpoints``: etcd URLs, or one Consul address."""

    kind: str
    endpoints: tuple[str, ...]
    ca_cert: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password: str | None = None
    token: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"DCS kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not self.endpoints:
            raise ValueError("the DCS needs at least one endpoint")


@dataclass(frozen=True)
class LoadedConfig:
    dcs: DcsConfig
    cluster: str | None
    node: str | None


def _optional_text(table: Mapping[str, Any], name: str, where: str) -> str | None:
    value = table.get(name)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{where}: {name} must be a string")
    return value


def load_config(path: str | Path) -> LoadedConfig:
    """Read ``[dcs]`` (kind, endpoints, TLS/auth) plus top-level ``cluster``/``node`` from a TOML file.

    Raises ``ValueError`` with the file name on any problem (missing file included).
    """
    where = str(path)
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ValueError(f"{where}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{where}: not valid TOML: {exc}") from None
    dcs = data.get("dcs")
    if not isinstance(dcs, dict):
        raise ValueError(f"{where}: no [dcs] table")
    kind = dcs.get("kind")
    endpoints = dcs.get("endpoints")
    if isinstance(endpoints, str):
        endpoints = [endpoints]
    if (
        not isinstance(kind, str)
        or not isinstance(endpoints, list)
        or not all(isinstance(e, str) for e in endpoints)
    ):
        raise ValueError(f'{where}: [dcs] needs kind = "etcd"|"consul" and endpoints = ["..."]')
    section = f"{where} [dcs]"
    try:
        config = DcsConfig(
            kind=kind,
            endpoints=tuple(endpoints),
            # The agent's own configuration (docs/configuration.md) names these tls_*/username.
            ca_cert=_optional_text(dcs, "ca_cert", section) or _optional_text(dcs, "tls_ca", section),
            cert=_optional_text(dcs, "cert", section) or _optional_text(dcs, "tls_cert", section),
            key=_optional_text(dcs, "key", section) or _optional_text(dcs, "tls_key", section),
            user=_optional_text(dcs, "user", section) or _optional_text(dcs, "username", section),
            password=_optional_text(dcs, "password", section),
            token=_optional_text(dcs, "token", section),
        )
    except ValueError as exc:
        raise ValueError(f"{section}: {exc}") from None
    cluster = data.get("cluster")
    node = data.get("node")
    # The agent's configuration has [cluster] name = ... and [node] name = ... tables.
    if isinstance(cluster, dict):
        cluster = cluster.get("name")
    if isinstance(node, dict):
        node = node.get("name")
    return LoadedConfig(
        dcs=config,
        cluster=cluster if isinstance(cluster, str) else None,
        node=node if isinstance(node, str) else None,
    )


def open_lock(config: DcsConfig, cluster: str, node: str, settings: LockSettings | None = None) -> LeaseLock:
    """A backend for ``config``; no network traffic happens until the first call."""
    settings = settings or LockSettings()
    if config.kind == "etcd":
        # Imported here so that a Consul-only host never loads grpc.
        from dbfence.locks.etcd import EtcdLeaseLock, EtcdOptions  # noqa: PLC0415

        return EtcdLeaseLock(
            EtcdOptions(
                endpoints=config.endpoints,
                ca_cert=config.ca_cert,
                cert=config.cert,
                key=config.key,
                user=config.user,
                password=config.password,
            ),
            cluster,
            node,
            settings,
        )
    from dbfence.locks.consul import ConsulLeaseLock, ConsulOptions  # noqa: PLC0415

    if len(config.endpoints) != 1:
        raise ValueError("Consul is reached through one (local) agent address")
    return ConsulLeaseLock(
        ConsulOptions(
            address=config.endpoints[0],
            token=config.token,
            ca_cert=config.ca_cert,
            cert=config.cert,
            key=config.key,
        ),
        cluster,
        node,
        settings,
    )
