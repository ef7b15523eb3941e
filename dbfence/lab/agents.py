"""dbfence agents in the lab: one per MariaDB server, each with its own config and gate.

Each agent's gate and HTTP API listen on their own loopback address (127.0.0.11 for db1,
127.0.0.12 for db2, ...) and share one port number, so Consul DNS A records alone tell
applications where the primary is, as they would on real hosts.
"""

from __future__ import annotations

import os
import secrets
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from dbfence.lab.api_certs import CA, api_certificate
from dbfence.lab.errors import LabError
from dbfence.lab.procs import ProcessRef, free_port, spawn, stop
from dbfence.lab.wait import wait_until

if TYPE_CHECKING:
    from dbfence.lab.mariadb_servers import Account, MysqlNode
    from dbfence.lab.netns import NetnsLayout


class AgentHostLab(Protocol):
    """What starting agents reads of a lab (a :class:`dbfence.lab.cluster.LabCluster`), named here
    so that this module does not import the cluster module, which imports it."""

    @property
    def directory(self) -> Path: ...
    @property
    def cluster(self) -> str: ...
    @property
    def dcs_kind(self) -> str: ...
    @property
    def dcs_endpoints(self) -> list[str]: ...
    @property
    def accounts(self) -> dict[str, Account]: ...
    @property
    def mysql(self) -> list[MysqlNode]: ...
    @property
    def netns(self) -> NetnsLayout | None: ...

    def argv_prefix(self, host: str) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class AgentProcess:
    name: str
    address: str
    gate_port: int
    http_port: int
    config: str
    log: str
    pid: int
    create_time: float
    tls_ca: str = ""  # the API speaks TLS, with a certificate from this CA (AgentTuning.api_tls)

    @property
    def process(self) -> ProcessRef:
        return ProcessRef(self.pid, self.create_time)

    @property
    def http_url(self) -> str:
        return f"{'https' if self.tls_ca else 'http'}://{self.address}:{self.http_port}"

    def tls_context(self) -> ssl.SSLContext | None:
        """For requests to its API that need no client certificate (status, health, metrics)."""
        return ssl.create_default_context(cafile=self.tls_ca) if self.tls_ca else None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class AgentTuning:
    """Timings for lab agents: short enough for a demo and tests, same shape as production."""

    ttl: float = 3.0
    margin: float = 1.0
    cooldown: float = 0.0
    lossless: bool = True
    interval: float = 0.1
    trip_after: int = 3
    drain_timeout: float = 2.0
    kernel_forwarding: str = "auto"  # the product's default
    rejoin: str = "manual"  # [rejoin] mode; truncate restarts mysqld with `lab start-mysql --recovery`
    # gate.proxy_protocol and gate.backend_source ("" = the kernel's choice); the lab leaves
    # mysqld's proxy_protocol_networks to whoever turns this on.
    proxy_protocol: bool = False
    backend_source: str = ""
    remote_path: str = "off"  # the product's default (docs/gate-paths.md)
    donor_rate_mib: int = 32  # [rejoin] donor_rate_mib (mode = rebuild)
    failsafe: bool = False  # the product's default (docs/failsafe.md)
    # Mutual TLS between the agents' HTTP APIs instead of the API token (lab certificates).
    api_tls: bool = False
    page_out_libraries: bool = True  # the product's default ([node], dbfence/pageout.py)


def agent_address(index: int) -> str:
    return f"127.0.0.{10 + index}"


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def write_agent_files(lab: AgentHostLab, node: MysqlNode, address: str, gate_port: int, http_port: int,
                      tuning: AgentTuning) -> Path:
    """Write the agent's TOML config and its 0600 credentials file; return the config path."""
    agent_dir = lab.directory / "agents"
    agent_dir.mkdir(exist_ok=True)
    agent, repl = lab.accounts["agent"], lab.accounts["repl"]
    credentials = agent_dir / f"{node.name}.cnf"
    _write_private(credentials, f"[client]\nuser = {agent.user}\npassword = {agent.password}\n\n"
                                f"[replication]\nuser = {repl.user}\npassword = {repl.password}\n")
    # Consul refuses session TTLs under 10 s; etcd leases can be as short as the demo wants.
    ttl, margin = (max(tuning.ttl, 10.0), max(tuning.margin, 2.0)) if lab.dcs_kind == "consul" \
        else (tuning.ttl, tuning.margin)
    endpoints = ", ".join(f'"{url}"' for url in lab.dcs_endpoints)
    consul_agent = lab.dcs_endpoints[0] if lab.dcs_kind == "consul" else ""
    # One API token for the whole lab when peers call each other's HTTP API: rebuild copies a
    # donor over it, failsafe asks for promises through it (otherwise the lab keeps the mutating
    # endpoints off, as the default config does).
    token_file = agent_dir / "api-token" if (tuning.rejoin == "rebuild" or tuning.failsafe) \
        and not tuning.api_tls else None
    tls = ""
    if tuning.api_tls:  # instead of the token: peers know each other by their certificates
        certificate = api_certificate(agent_dir / "api-tls", node.name, address)
        tls = (f'tls_cert = "{certificate.cert}"\ntls_key = "{certificate.key}"\n'
               f'tls_ca = "{certificate.ca}"\n')
    if token_file is not None and not token_file.exists():
        _write_private(token_file, secrets.token_hex(16) + "\n")
    # A state directory per agent: the promises it gave, its fencing evidence, rebuild approvals.
    state_dir = agent_dir / f"{node.name}-state"
    state_dir.mkdir(exist_ok=True)
    config = agent_dir / f"{node.name}.toml"
    config.write_text(f"""# Generated by `dbfence lab up --agents` for {node.name}.
[cluster]
name = "{lab.cluster}"

[node]
name = "{node.name}"
address = "{address}"
priority = 100
state_dir = "{state_dir}"
page_out_libraries = {str(tuning.page_out_libraries).lower()}

[gate]
listen = "{address}:{gate_port}"
workers = 2
drain_timeout = {tuning.drain_timeout}
kernel_forwarding = "{tuning.kernel_forwarding}"
proxy_protocol = {"true" if tuning.proxy_protocol else "false"}
backend_source = "{tuning.backend_source}"
remote_path = "{tuning.remote_path}"

[mysql]
host = "{node.host}"
port = {node.port}
extra_port = {node.extra_port}
credentials_file = "{credentials}"
pid_file = "{node.pid_file}"
datadir = "{node.datadir}"
app_users = ["{lab.accounts['app'].user}"]

[dcs]
kind = "{lab.dcs_kind}"
endpoints = [{endpoints}]
ttl = {ttl}
margin = {margin}
lock_delay = 0.0

[detection]
interval = {tuning.interval}
trip_after = {tuning.trip_after}

[failover]
cooldown = {tuning.cooldown}
lossless = {"true" if tuning.lossless else "false"}
failsafe = {"true" if tuning.failsafe else "false"}

[http]
listen = "{address}:{http_port}"
token_file = "{token_file or ''}"
{tls}
[discovery]
consul_agent = "{consul_agent}"

[rejoin]
mode = "{tuning.rejoin}"
start_command = ["{sys.executable}", "-m", "dbfence", "lab", "start-mysql", "--dir", "{lab.directory}",
                 "--recovery", "{node.name}"]
start_timeout = 120.0
donor_rate_mib = {tuning.donor_rate_mib}
free_space_margin_mib = 64
""")
    return config


def start_agent(name: str, address: str, gate_port: int, http_port: int, config: Path,
                argv_prefix: Sequence[str] = (), tls_ca: str = "") -> AgentProcess:
    """Start an agent and wait for its HTTP API; ``argv_prefix`` runs it in a network namespace;
    ``tls_ca``: its API speaks TLS with a certificate from that CA."""
    log = config.with_suffix(".log")
    ref = spawn([*argv_prefix, sys.executable, "-m", "dbfence", "agent", "--config", str(config)], log)
    agent = AgentProcess(name, address, gate_port, http_port, str(config), str(log), ref.pid,
                         ref.create_time, tls_ca)

    def answering() -> bool:
        if not ref.alive():
            tail = Path(log).read_text(errors="replace")[-2000:]
            raise LabError(f"agent {name} exited during start; its log ends:\n{tail}")
        return http_status(agent, "/health", timeout=0.5)[0] != 0

    try:
        wait_until(answering, timeout=30, what=f"agent {name}'s HTTP API")
    except Exception:
        stop(ref)
        raise
    return agent


def http_status(agent: AgentProcess, path: str = "/status", timeout: float = 1.0) -> tuple[int, bytes]:
    """(HTTP status, body) of an agent endpoint; (0, b"") when the agent does not answer."""
    try:
        with urllib.request.urlopen(f"{agent.http_url}{path}", timeout=timeout,
                                    context=agent.tls_context()) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except OSError:
        return 0, b""


def start_all(lab: AgentHostLab, tuning: AgentTuning,
              on_started: Callable[[AgentProcess], None]) -> list[AgentProcess]:
    gate_port, http_port = free_port(), free_port()
    agents = []
    for index, node in enumerate(lab.mysql, start=1):
        # A namespaced host has one address, its mysqld's; otherwise each agent gets a loopback one.
        address = node.host if lab.netns is not None else agent_address(index)
        config = write_agent_files(lab, node, address, gate_port, http_port, tuning)
        agent = start_agent(node.name, address, gate_port, http_port, config,
                            argv_prefix=lab.argv_prefix(node.name),
                            tls_ca=str(lab.directory / "agents" / "api-tls" / f"{CA}.crt") if tuning.api_tls
                            else "")
        on_started(agent)  # recorded at once, so `lab down` stops it whatever happens next
        agents.append(agent)
    return agents


def log_times(agent_log: str, since_wall: float, *marks: str) -> list[float]:
    """Wall-clock times of the agent log lines after ``since_wall`` that contain every mark
    (e.g. ``'"action": "ReleaseLock"', '"ok": true'``), in log order."""
    times = []
    for line in Path(agent_log).read_text(errors="replace").splitlines():
        if not all(mark in line for mark in marks):
            continue
        stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if stamp >= since_wall:
            times.append(stamp)
    return times
