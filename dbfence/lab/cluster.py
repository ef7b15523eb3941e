"""A local cluster of real servers (MariaDB, etcd or the Consul stand-in) described by ``lab.json``.

The lab is for the demo, the tests and the benchmarks. Everything it starts is recorded in the
manifest by pid and start time, so ``down`` stops exactly those processes and nothing else.
Each kind of server is started by a module of its own (:mod:`dbfence.lab.mariadb_servers`,
:mod:`dbfence.lab.etcd_servers`, :mod:`dbfence.lab.consul_servers`, :mod:`dbfence.lab.agents`);
this one composes them into a cluster, wires replication, and keeps the manifest.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import secrets
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar, cast

import pymysql

from dbfence.lab import agents as agents_mod
from dbfence.lab import etcd_servers, mariadb_servers
from dbfence.lab import netns as lab_netns
from dbfence.lab.agents import AgentProcess, AgentTuning
from dbfence.lab.consul_servers import ConsulStandinProcess, start_consul_standin
from dbfence.lab.errors import LabError
from dbfence.lab.etcd_servers import EtcdMember
from dbfence.lab.mariadb_servers import Account, MysqlNode
from dbfence.lab.netns import NamespaceRunner, NetnsLayout
from dbfence.lab.procs import ProcessRef, free_port, port_open, stop
from dbfence.lab.wait import wait_until

MANIFEST = "lab.json"
DcsKind = Literal["etcd", "consul"]
P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class LabSpec:
    directory: Path
    mysql_count: int = 3
    dcs: DcsKind = "etcd"
    etcd_members: int = 1
    cluster: str = "lab"
    agents: bool = False
    agent_tuning: AgentTuning = field(default_factory=AgentTuning)
    # Each host (mysqld + agent), the DCS and the client in network namespaces of their own, so
    # faults can partition the network (needs root; see dbfence.lab.netns).
    netns: bool = False
    netns_subnet: str = lab_netns.DEFAULT_SUBNET

    def validate(self) -> None:
        if not 1 <= self.mysql_count <= 9:
            raise LabError(f"--mysql must be between 1 and 9, not {self.mysql_count}")
        if self.dcs not in ("etcd", "consul"):
            raise LabError(f"--dcs must be etcd or consul, not {self.dcs!r}")
        if self.etcd_members not in (1, 3):
            raise LabError(f"--etcd-members must be 1 or 3, not {self.etcd_members}")
        if self.netns and (reason := lab_netns.unavailable_reason()) is not None:
            raise LabError(f"a namespaced lab cannot run here: {reason}")


def _in_client_namespace(method: F) -> F:
    """Run a method that talks to the lab's servers from the client namespace when the lab has one."""
    @functools.wraps(method)
    def wrapper(self: LabCluster, *args: Any, **kwargs: Any) -> Any:
        return self.in_client(method, self, *args, **kwargs)
    return cast(F, wrapper)


@dataclass
class LabCluster:
    """A running (or stopped) lab; mutating methods rewrite ``lab.json``."""

    directory: Path
    cluster: str
    dcs_kind: DcsKind
    mysql: list[MysqlNode]
    etcd: list[EtcdMember]
    accounts: dict[str, Account]
    consul: ConsulStandinProcess | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    _client_runner: NamespaceRunner | None = field(default=None, repr=False, compare=False)

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def up(cls, spec: LabSpec) -> LabCluster:
        """Start every server, wire replication, and return once the cluster is usable."""
        spec.validate()
        directory = spec.directory.resolve()
        _refuse_if_in_use(directory)
        directory.mkdir(parents=True, exist_ok=True)
        accounts = {
            "app": Account("app", secrets.token_hex(8)),
            "agent": Account("dbfence_agent", secrets.token_hex(12)),
            "repl": Account("dbfence_repl", secrets.token_hex(12)),
        }
        lab = cls(directory=directory, cluster=spec.cluster, dcs_kind=spec.dcs, mysql=[], etcd=[],
                  accounts=accounts)
        started = time.monotonic()
        try:
            if spec.netns:
                db_hosts = [f"db{i}" for i in range(1, spec.mysql_count + 1)]
                layout = lab_netns.plan(secrets.token_hex(3), db_hosts, spec.netns_subnet)
                lab.extra["netns"] = layout.to_json()
                lab._write_manifest()  # recorded first, so `down` removes the namespaces whatever happens
                lab_netns.create(layout)
            lab.in_client(lab._bring_up, spec)
        except BaseException:
            lab._write_manifest()
            lab.down()
            raise
        lab.extra["up_seconds"] = round(time.monotonic() - started, 2)
        lab._write_manifest()
        return lab

    def _bring_up(self, spec: LabSpec) -> None:
        with ThreadPoolExecutor(max_workers=2) as pool:
            dcs_future = pool.submit(self._start_dcs, spec)
            self.mysql = self._start_mysql(spec.mysql_count)
            dcs_future.result()
        self._write_manifest()
        self._wire_replication()
        self._wait_dcs_healthy()
        if spec.agents:
            self.start_agents(spec.agent_tuning)

    @classmethod
    def load(cls, directory: Path) -> LabCluster:
        path = Path(directory).resolve() / MANIFEST
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise LabError(f"no lab in {directory}: {MANIFEST} is missing") from None
        except ValueError as exc:
            raise LabError(f"{path} is not valid JSON: {exc}") from None
        consul = data.get("consul")
        return cls(
            directory=path.parent,
            cluster=data["cluster"],
            dcs_kind=data["dcs"]["kind"],
            mysql=[MysqlNode(**{k: n[k] for k in MysqlNode.__dataclass_fields__}) for n in data["mysql"]],
            etcd=[EtcdMember(**{k: m[k] for k in EtcdMember.__dataclass_fields__}) for m in data["etcd"]],
            accounts={k: Account(v["user"], v["password"]) for k, v in data["accounts"].items()},
            consul=ConsulStandinProcess(**consul) if consul else None,
            extra=data.get("extra", {}),
        )

    def down(self) -> list[str]:
        """Stop every process the lab started, by pid; return the names that were running."""
        # Agents first: an agent that watches its mysqld stop would only fence and log about it.
        agents = [(f"agent-{a.name}", a.process) for a in self.agents]
        self._stop_all(agents)
        refs: list[tuple[str, ProcessRef]] = [(n.name, n.process) for n in self.mysql]
        refs += [(n.name, ref) for n in self.mysql
                 if (ref := mariadb_servers.restarted_elsewhere(n)) is not None]
        refs += [(m.name, m.process) for m in self.etcd]
        if self.consul is not None:
            refs.append(("consul-standin", self.consul.process))
        stopped = self._stop_all(agents) + self._stop_all(refs)
        if self._client_runner is not None:
            self._client_runner.close()
            self._client_runner = None
        if self.netns is not None:
            lab_netns.remove(self.netns)
        if self.directory.exists():
            self._write_manifest(state="down")
        return stopped

    # ------------------------------------------------------------------ network namespaces
    @property
    def netns(self) -> NetnsLayout | None:
        """The lab's network namespaces, or None when every server is on loopback."""
        data = self.extra.get("netns")
        return None if data is None else NetnsLayout.from_json(data)

    def argv_prefix(self, host: str) -> list[str]:
        """What to put before a server's argv to run it on ``host`` (db1, dcs...): nothing on loopback."""
        layout = self.netns
        return [] if layout is None else layout.exec_argv(host, [])

    def in_client(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call ``fn`` where the lab's servers are reachable: in the client namespace when there is one.

        Threads that ``fn`` starts stay in that namespace, e.g. ``lab.in_client(writer.start)``
        runs an application writer as a client of the namespaced lab.
        """
        layout = self.netns
        if layout is None:
            return fn(*args, **kwargs)
        if self._client_runner is None:
            self._client_runner = NamespaceRunner(layout.namespace(lab_netns.CLIENT))
        return self._client_runner.call(fn, *args, **kwargs)

    def isolate(self, host: str, *, from_clients: bool = False,
                from_hosts: Iterable[str] | None = None) -> list[str]:
        """Partition ``host`` (db1...) from the DCS and its peers (and the clients if asked), or
        from ``from_hosts`` only."""
        return lab_netns.isolate(self._require_netns("partition"), host, from_clients=from_clients,
                                 from_hosts=from_hosts)

    def heal(self, host: str) -> None:
        lab_netns.heal(self._require_netns("heal"), host)

    def _require_netns(self, what: str) -> NetnsLayout:
        layout = self.netns
        if layout is None:
            raise LabError(f"cannot {what}: this lab was started without network namespaces (netns=True)")
        return layout

    @staticmethod
    def _stop_all(refs: list[tuple[str, ProcessRef]]) -> list[str]:
        alive = [(name, ref) for name, ref in refs if ref.alive()]
        with ThreadPoolExecutor(max_workers=max(1, len(alive))) as pool:
            list(pool.map(lambda item: stop(item[1], grace=30.0), alive))
        return [name for name, _ in alive]

    # ------------------------------------------------------------------ agents
    @property
    def agents(self) -> list[AgentProcess]:
        return [AgentProcess(**a) for a in self.extra.get("agents", [])]

    def agent(self, name: str) -> AgentProcess:
        for agent in self.agents:
            if agent.name == name:
                return agent
        raise LabError(f"no agent named {name!r}")

    @_in_client_namespace
    def start_agents(self, tuning: AgentTuning) -> list[AgentProcess]:
        """One agent per MariaDB server; returns once exactly one of them is an admitting primary."""
        self.extra["agent_tuning"] = asdict(tuning)
        started = agents_mod.start_all(self, tuning, on_started=self._record_agent)
        self.wait_settled()
        return started

    @_in_client_namespace
    def wait_settled(self, timeout: float = 60) -> str:
        """Wait until one agent admits as primary and every other one replicates from it (so
        lossless commits are acknowledged); return the primary's name."""
        def settled() -> str | None:
            primaries = self.primaries()
            if len(primaries) != 1:
                return None
            for agent in self.agents:
                if agent.name == primaries[0]:
                    continue
                status = self.agent_status(agent.name)
                if status.get("role") != "replica" or \
                        status.get("database", {}).get("replication_source") != primaries[0]:
                    return None
            return primaries[0]
        return wait_until(settled, timeout=timeout, what="one primary with every replica following it")

    @_in_client_namespace
    def agent_status(self, name: str, timeout: float = 1.0) -> dict[str, Any]:
        """An agent's ``/status`` document; empty when the agent does not answer."""
        code, body = agents_mod.http_status(self.agent(name), "/status", timeout=timeout)
        if code != 200:
            return {}
        parsed: dict[str, Any] = json.loads(body)
        return parsed

    def _record_agent(self, agent: AgentProcess) -> None:
        others = [a for a in self.extra.get("agents", []) if a["name"] != agent.name]
        self.extra["agents"] = [*others, agent.to_json()]
        self._write_manifest()

    @_in_client_namespace
    def restart_agent(self, name: str) -> AgentProcess:
        old = self.agent(name)
        if old.process.alive():
            raise LabError(f"agent {name} is still running (pid {old.pid})")
        new = agents_mod.start_agent(old.name, old.address, old.gate_port, old.http_port, Path(old.config),
                                     argv_prefix=self.argv_prefix(name), tls_ca=old.tls_ca)
        self._record_agent(new)
        return new

    def kill_agent(self, name: str, sig: int = signal.SIGKILL) -> None:
        self.agent(name).process.signal(sig)

    @_in_client_namespace
    def primaries(self) -> list[str]:
        """Agents whose /primary answers 200 right now."""
        return [a.name for a in self.agents if agents_mod.http_status(a, "/primary")[0] == 200]

    # ------------------------------------------------------------------ faults and restarts
    def node(self, name: str) -> MysqlNode:
        for node in self.mysql:
            if node.name == name:
                return node
        raise LabError(f"no MariaDB node named {name!r} (have {', '.join(n.name for n in self.mysql)})")

    def kill_mysql(self, name: str, sig: int = signal.SIGKILL) -> bool:
        """Signal the node's live mysqld; False when none runs."""
        return self.live_node(name).process.signal(sig)

    def live_node(self, name: str) -> MysqlNode:
        """The node, with the mysqld that runs now: an agent's repair restarts it through its own
        copy of the lab (``dbfence lab start-mysql``), and a manifest written since by this one
        may name the server it replaced. The pid file names the live one."""
        node = self.node(name)
        if node.process.alive():
            return node
        running = mariadb_servers.running_server(Path(node.pid_file))
        if running is None:
            return node
        node = dataclasses.replace(node, pid=running.pid, create_time=running.create_time)
        self.mysql = [node if n.name == name else n for n in self.mysql]
        self._write_manifest()
        return node

    @_in_client_namespace
    def start_mysql(self, name: str, extra_args: Sequence[str] = ()) -> MysqlNode:
        old = self.live_node(name)
        if old.process.alive():
            raise LabError(f"{name} is still running (pid {old.pid})")
        node_dir = Path(old.datadir).parent
        new = mariadb_servers.start_node(node_dir, name, old.server_id, old.port, old.extra_port,
                                         socket_path=Path(old.socket), host=old.host,
                                         argv_prefix=self.argv_prefix(name), extra_args=extra_args)
        self.mysql = [new if n.name == name else n for n in self.mysql]
        self._write_manifest()
        return new

    def etcd_member(self, name: str) -> EtcdMember:
        for member in self.etcd:
            if member.name == name:
                return member
        raise LabError(f"no etcd member named {name!r}")

    def kill_etcd(self, name: str, sig: int = signal.SIGKILL) -> None:
        self.etcd_member(name).process.signal(sig)

    def start_etcd(self, name: str) -> EtcdMember:
        old = self.etcd_member(name)
        if old.process.alive():
            raise LabError(f"{name} is still running (pid {old.pid})")
        new = etcd_servers.restart_member(old, argv_prefix=self.argv_prefix(lab_netns.DCS))
        self.etcd = [new if m.name == name else m for m in self.etcd]
        self._write_manifest()
        return new

    @_in_client_namespace
    def connect(self, name: str, account: str = "agent",
                **kwargs: Any) -> pymysql.connections.Connection[Any]:
        return mariadb_servers.connect(self.node(name), self.accounts[account], **kwargs)

    @_in_client_namespace
    def status(self) -> dict[str, Any]:
        agent = self.accounts["agent"]
        with ThreadPoolExecutor(max_workers=max(1, len(self.mysql))) as pool:
            mysql = list(pool.map(lambda n: mariadb_servers.describe(n, agent), self.mysql))
        etcd = [{"name": m.name, "client_url": m.client_url, "pid": m.pid,
                 "alive": m.process.alive(), "healthy": etcd_servers.healthy(m)} for m in self.etcd]
        consul = None
        if self.consul is not None:
            host, port = self.consul.http_address.rsplit(":", 1)
            consul = {"http_address": self.consul.http_address, "dns_address": self.consul.dns_address,
                      "pid": self.consul.pid, "alive": self.consul.process.alive(),
                      "healthy": port_open(host, int(port))}
        return {"cluster": self.cluster, "directory": str(self.directory), "dcs": self.dcs_kind,
                "mysql": mysql, "etcd": etcd, "consul": consul}

    # ------------------------------------------------------------------ manifest
    @property
    def dcs_endpoints(self) -> list[str]:
        if self.dcs_kind == "etcd":
            return [m.client_url for m in self.etcd]
        if self.consul is None:
            return []  # not started yet: the manifest is written before the DCS, too
        return [f"http://{self.consul.http_address}"]

    @property
    def manifest(self) -> dict[str, Any]:
        dcs: dict[str, Any] = {"kind": self.dcs_kind, "endpoints": self.dcs_endpoints}
        if self.consul is not None:
            dcs["dns"] = self.consul.dns_address
        return {
            "cluster": self.cluster,
            "dcs": dcs,
            "mysql": [n.to_json() for n in self.mysql],
            "etcd": [m.to_json() for m in self.etcd],
            "consul": None if self.consul is None else {
                "http_address": self.consul.http_address, "dns_address": self.consul.dns_address,
                "pid": self.consul.pid, "create_time": self.consul.create_time},
            "accounts": {k: {"user": v.user, "password": v.password} for k, v in self.accounts.items()},
            "extra": self.extra,
        }

    def _write_manifest(self, state: str = "up") -> None:
        data = self.manifest
        data["state"] = state
        path = self.directory / MANIFEST
        tmp = path.with_suffix(".tmp")
        # The manifest holds passwords: readable by its owner only.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=2)
        os.replace(tmp, path)

    # ------------------------------------------------------------------ bring-up steps
    def _start_mysql(self, count: int) -> list[MysqlNode]:
        template = self.directory / "template"
        layout = self.netns
        # In namespaces, agents, replicas and gates reach mysqld from the subnet, not loopback.
        client_hosts = [] if layout is None else [mariadb_servers.account_host_pattern(layout.subnet)]
        mariadb_servers.bootstrap_template(template, self.accounts, self.directory / "bootstrap.log",
                                           client_hosts=client_hosts)
        plans = []
        for i in range(1, count + 1):
            node_dir = self.directory / f"db{i}"
            mariadb_servers.copy_template(template, node_dir)
            plans.append((node_dir, f"db{i}", i, free_port(), free_port()))
        with ThreadPoolExecutor(max_workers=count) as pool:
            futures = [pool.submit(mariadb_servers.start_node, d, name, sid, port, extra,
                                   socket_path=mariadb_servers.short_socket_path(d),
                                   host=self._host_address(name), argv_prefix=self.argv_prefix(name))
                       for d, name, sid, port, extra in plans]
            nodes = []
            errors = []
            for future in futures:
                try:
                    nodes.append(future.result())
                except Exception as exc:  # collect all, so every started node is recorded and stopped
                    errors.append(exc)
        self.mysql = nodes
        if errors:
            raise LabError(f"MariaDB failed to start: {errors[0]}") from errors[0]
        return nodes

    def _wire_replication(self) -> None:
        primary, *replicas = self.mysql
        agent, repl = self.accounts["agent"], self.accounts["repl"]
        mariadb_servers.open_for_writes(primary, agent)
        for replica in replicas:
            mariadb_servers.start_replication(replica, primary, agent, repl)
        for replica in replicas:
            def connected(node: MysqlNode = replica) -> bool:
                return mariadb_servers.describe(node, agent).get("io_running") == "Yes"
            wait_until(connected, timeout=30, what=f"{replica.name} to connect to {primary.name}")

    def _start_dcs(self, spec: LabSpec) -> None:
        host, prefix = self._host_address(lab_netns.DCS), self.argv_prefix(lab_netns.DCS)
        if spec.dcs == "etcd":
            self.etcd = etcd_servers.start_cluster(self.directory, spec.etcd_members, host, prefix)
        else:
            self.consul = start_consul_standin(self.directory, host, prefix)

    def _host_address(self, host: str) -> str:
        layout = self.netns
        return "127.0.0.1" if layout is None else layout.address(host)

    def _wait_dcs_healthy(self) -> None:
        for member in self.etcd:
            def member_healthy(m: EtcdMember = member) -> bool:
                return etcd_servers.healthy(m)
            wait_until(member_healthy, timeout=30, what=f"etcd member {member.name} to be healthy")
        if self.consul is not None:
            host, port = self.consul.http_address.rsplit(":", 1)
            wait_until(lambda: port_open(host, int(port)), timeout=15, what="the Consul stand-in")


def _refuse_if_in_use(directory: Path) -> None:
    if not directory.exists() or not any(directory.iterdir()):
        return
    manifest = directory / MANIFEST
    if manifest.exists():
        try:
            running = [n for n in _running_names(LabCluster.load(directory))]
        except (LabError, KeyError, TypeError):
            running = []
        if running:
            raise LabError(f"{directory} is in use by a running lab ({', '.join(running)}); "
                           f"run `dbfence lab down --dir {directory}` first, or pick another directory")
        raise LabError(f"{directory} holds a stopped lab; remove it (`dbfence lab down --dir {directory} "
                       f"--purge`) or pick another directory")
    raise LabError(f"{directory} is not empty; the lab needs a new or empty directory")


def _running_names(lab: LabCluster) -> list[str]:
    names = [n.name for n in lab.mysql if n.process.alive()]
    names += [m.name for m in lab.etcd if m.process.alive()]
    if lab.consul is not None and lab.consul.process.alive():
        names.append("consul-standin")
    return names

