"""The fault matrix: named faults injected into a lab under write load, and one round's verdict.

Each :class:`Fault` has an ``inject`` that breaks something on the current primary (or the DCS)
and returns its ``heal``. :func:`run_round` starts a writer, injects, holds the fault (until
another node admits, or for a measured time), heals, waits for service to come back, then reads
every server and hands the history to the pure checker in :mod:`dbfence.lab.history`.

Network partitions are built elsewhere (``dbfence.lab.netns``): if that module exists and
exports ``FAULTS`` (an iterable of :class:`Fault`), they join :func:`all_faults` as they are.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pymysql

from dbfence.lab import mariadb_servers
from dbfence.lab.agents import AgentTuning
from dbfence.lab.cluster import DcsKind, LabCluster, LabSpec
from dbfence.lab.errors import LabError
from dbfence.lab.etcd_servers import EtcdMember
from dbfence.lab.final_state import read_final_state, read_tenures
from dbfence.lab.flood import BareFlood, ConnectionWatch
from dbfence.lab.history import Attempt, FaultEvent, History, Outcome, Verdict, check
from dbfence.lab.wait import WaitTimeout, wait_until
from dbfence.lab.workload import DiscoveryWriter
from dbfence.locks.factory import DcsConfig, open_lock
from dbfence.locks.model import Intent
from dbfence.ops_cli import switchover_refusal

Heal = Callable[[], None]


@dataclass
class FaultContext:
    lab: LabCluster
    tuning: AgentTuning
    writer: DiscoveryWriter
    primary: str  # the primary when the fault was injected
    table: str
    notes: list[str] = field(default_factory=list)  # figures the fault measured, for the report
    problems: list[str] = field(default_factory=list)  # what the fault's own checks found wrong

    def others(self) -> list[str]:
        return [a.name for a in self.lab.agents if a.name != self.primary]

    def wait_for_more_writes(self, count: int, *, what: str) -> None:
        """Until ``count`` more writes are acknowledged than now (a lag to build up, say)."""
        marker = len(self.writer.acknowledged)
        wait_until(lambda: len(self.writer.acknowledged) >= marker + count, timeout=30, what=what)


@dataclass(frozen=True)
class Fault:
    name: str
    summary: str
    inject: Callable[[FaultContext], Heal]
    # Hold until another node admits (at most ``hold`` seconds), or for exactly ``hold`` seconds.
    until_failover: bool
    hold: Callable[[AgentTuning], float]
    dcs: frozenset[str] = frozenset({"etcd", "consul"})
    etcd_members: int = 1  # needs at least this many etcd members
    tmpfs: bool = False  # needs the primary's data directory on a small tmpfs of its own
    # From this many seconds after injection until heal, no write may be acknowledged.
    quiet_after: Callable[[AgentTuning], float | None] = lambda tuning: None
    rto_goal: Callable[[AgentTuning], float | None] = lambda tuning: None
    netns: bool = False  # needs a lab in network namespaces (the partition faults)
    # The primary must keep its role through the fault (no failover), and the writers already
    # connected must keep getting acknowledgements while it lasts.
    keeps_primary: bool = False
    failsafe: bool = False  # needs agents with [failover] failsafe = true (docs/failsafe.md)
    long: bool = False  # too long for `make test`: benchmarks/faults.py only


# ---------------------------------------------------------------------------- the faults

def _kill_mysqld(ctx: FaultContext) -> Heal:
    ctx.lab.kill_mysql(ctx.primary, signal.SIGKILL)
    return lambda: _restart_mysqld(ctx.lab, ctx.primary)


def _restart_mysqld(lab: LabCluster, name: str) -> None:
    wait_until(lambda: not lab.node(name).process.alive(), timeout=30, what=f"{name}'s mysqld to exit")
    lab.start_mysql(name)


def _stop_mysqld(ctx: FaultContext) -> Heal:
    ctx.lab.kill_mysql(ctx.primary, signal.SIGSTOP)
    return lambda: ctx.lab.kill_mysql(ctx.primary, signal.SIGCONT)


def _held_connection(ctx: FaultContext, node: str, *statements: str) -> Heal:
    """Run ``statements`` on a connection kept open until heal (locks live as long as it)."""
    conn = ctx.lab.connect(node, read_timeout=5)
    with conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)

    def heal() -> None:
        with contextlib.suppress(pymysql.MySQLError, OSError), conn.cursor() as cur:
            cur.execute("UNLOCK TABLES")
        with contextlib.suppress(Exception):
            conn.close()
    return heal


def _write_stall(ctx: FaultContext) -> Heal:
    return _held_connection(ctx, ctx.primary, "FLUSH TABLES WITH READ LOCK")


def _fill_datadir(ctx: FaultContext) -> Heal:
    datadir = Path(ctx.lab.node(ctx.primary).datadir)
    if not os.path.ismount(datadir):
        raise RuntimeError(f"{datadir} is not a mount of its own; this fault needs a tmpfs lab")
    filler = datadir / "dbfence-filler"
    with open(filler, "wb") as out:
        chunk = b"\0" * (1 << 20)
        with contextlib.suppress(OSError):  # ENOSPC: full, as wanted
            while True:
                out.write(chunk)
                out.flush()
    return lambda: filler.unlink(missing_ok=True)


def _use_up_connections(ctx: FaultContext) -> Heal:
    """Open application connections straight to mysqld until it says "Too many connections"."""
    node = ctx.lab.node(ctx.primary)
    app = ctx.lab.accounts["app"]
    held: list[Any] = []
    for _ in range(1000):
        try:
            held.append(pymysql.connect(host=node.host, port=node.port, user=app.user, password=app.password,
                                        connect_timeout=2, ssl_disabled=True))
        except pymysql.MySQLError as exc:
            if exc.args and exc.args[0] == 1040:  # ER_CON_COUNT_ERROR
                break
            raise
    ctx.notes.append(f"{len(held)} application connections held straight to mysqld")
    _expect_1040_through_the_gate(ctx, "mysqld's slots used up")

    def heal() -> None:
        for conn in held:
            with contextlib.suppress(Exception):
                conn.close()
    return heal


def _expect_1040_through_the_gate(ctx: FaultContext, why: str) -> None:
    """One more application client through the primary's gate must get ERR 1040."""
    agent, app = ctx.lab.agent(ctx.primary), ctx.lab.accounts["app"]
    try:
        pymysql.connect(host=agent.address, port=agent.gate_port, user=app.user, password=app.password,
                        connect_timeout=5, ssl_disabled=True).close()
    except pymysql.MySQLError as exc:
        if exc.args and exc.args[0] == 1040:
            ctx.notes.append(f"a new client through the gate got 1040 ({why}): {exc.args[1]}")
            return
        ctx.problems.append(f"a new client through the gate got {exc!r}, not 1040 ({why})")
        return
    ctx.problems.append(f"a new client through the gate was admitted ({why})")


def _flood_the_gate(ctx: FaultContext) -> Heal:
    """5,000 bare TCP connections to the primary's gate, opened at once and kept open (the closed
    ones replaced every second): the gate must keep mysqld under its own limit."""
    agent, node = ctx.lab.agent(ctx.primary), ctx.lab.node(ctx.primary)
    account = ctx.lab.accounts["agent"]
    watch = ConnectionWatch(node.host, node.extra_port, account.user, account.password).start()
    gate = ctx.lab.agent_status(ctx.primary).get("gate", {})
    with ctx.lab.connect(ctx.primary) as conn, conn.cursor() as cur:
        cur.execute("SELECT @@global.max_connections")
        row = cur.fetchone()
    mysqld_max = int(row[0]) if row else 0
    if gate.get("mysqld_max_connections") != mysqld_max or gate.get("backend_cap", 0) >= mysqld_max:
        ctx.problems.append(f"the gate's cap does not follow mysqld's max_connections {mysqld_max}: "
                            f"{ {k: gate.get(k) for k in ('mysqld_max_connections', 'backend_cap')} }")
    flood = BareFlood(agent.address, agent.gate_port, size=5000).start()
    _expect_1040_through_the_gate(ctx, "the gate's backend cap reached")

    def heal() -> None:
        flood.stop()
        watch.stop()
        ctx.notes.append(flood.summary())
        ctx.notes.append(f"mysqld: peak Threads_connected {watch.peak} of max_connections "
                         f"{watch.max_connections} ({watch.samples} samples over extra_port)")
        if watch.samples == 0:
            ctx.problems.append("mysqld's connection count could not be read during the flood")
        elif watch.peak >= watch.max_connections:
            ctx.problems.append(f"mysqld ran out of connections: {watch.peak} of {watch.max_connections}")
        if flood.greeted + sum(flood.refused.values()) == 0:
            ctx.problems.append("the flood got no answer from the gate at all")
        if flood.refused.get(1040, 0) == 0:
            ctx.problems.append("no flooding client was refused with 1040")
    return heal


def _kill_agent(ctx: FaultContext) -> Heal:
    agent = ctx.lab.agent(ctx.primary)
    ctx.lab.kill_agent(ctx.primary, signal.SIGKILL)

    def heal() -> None:
        wait_until(lambda: not agent.process.alive(), timeout=10, what=f"agent {agent.name} to exit")
        ctx.lab.restart_agent(ctx.primary)
    return heal


def _stop_agent(ctx: FaultContext) -> Heal:
    # The agent process only: its gate workers keep running and must stop admitting on their own
    # when the lease deadline passes.
    ctx.lab.kill_agent(ctx.primary, signal.SIGSTOP)
    return lambda: ctx.lab.kill_agent(ctx.primary, signal.SIGCONT)


def _host_processes(lab: LabCluster, name: str) -> list[psutil.Process]:
    agent = psutil.Process(lab.agent(name).pid)
    return [psutil.Process(lab.node(name).pid), agent, *agent.children(recursive=True)]


def _freeze_host(ctx: FaultContext) -> Heal:
    frozen = _host_processes(ctx.lab, ctx.primary)
    for proc in frozen:
        proc.send_signal(signal.SIGSTOP)

    def heal() -> None:
        for proc in frozen:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGCONT)
    return heal


def etcd_leader(lab: LabCluster) -> EtcdMember:
    """The member that leads the etcd cluster now (asked through the v3 JSON gateway)."""
    def ask() -> EtcdMember | None:
        ids = {}
        leader = None
        for member in lab.etcd:
            request = urllib.request.Request(f"{member.client_url}/v3/maintenance/status", data=b"{}",
                                             method="POST")
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(request, timeout=1) as resp:
                    body = json.loads(resp.read())
                ids[body["header"]["member_id"]] = member
                leader = body.get("leader", leader)
        return ids.get(leader) if leader is not None else None
    return wait_until(ask, timeout=15, what="an etcd leader")


def _exited(alive: Callable[[], bool]) -> Callable[[], bool]:
    return lambda: not alive()


def _kill_etcd(lab: LabCluster, members: list[EtcdMember]) -> Heal:
    for member in members:
        lab.kill_etcd(member.name, signal.SIGKILL)

    def heal() -> None:
        for member in members:
            wait_until(_exited(member.process.alive), timeout=10, what=f"{member.name} to exit")
            lab.start_etcd(member.name)
    return heal


def _kill_etcd_leader(ctx: FaultContext) -> Heal:
    return _kill_etcd(ctx.lab, [etcd_leader(ctx.lab)])


def _kill_etcd_follower(ctx: FaultContext) -> Heal:
    leader = etcd_leader(ctx.lab)
    return _kill_etcd(ctx.lab, [next(m for m in ctx.lab.etcd if m.name != leader.name)])


def _kill_etcd_quorum(ctx: FaultContext) -> Heal:
    leader = etcd_leader(ctx.lab)
    follower = next(m for m in ctx.lab.etcd if m.name != leader.name)
    return _kill_etcd(ctx.lab, [leader, follower])


def _switchover(ctx: FaultContext) -> Heal:
    lock = open_lock(DcsConfig(kind=ctx.lab.dcs_kind, endpoints=tuple(ctx.lab.dcs_endpoints)),
                     ctx.lab.cluster, "fault-matrix")
    try:
        # Only a target that `dbfence switchover` would accept (a fenced node or one whose lag is
        # unknown counted as lag 0 here once, and its request stayed in the DCS for ever).
        snapshot = lock.snapshot(strict=False)
        suitable = [n for n in ctx.others() if switchover_refusal(snapshot, n, max_lag=5.0) is None]
        if not suitable:
            raise LabError("no replica that a switchover would accept: "
                           + "; ".join(f"{n}: {switchover_refusal(snapshot, n, max_lag=5.0)}"
                                       for n in ctx.others()))
        target = min(suitable, key=lambda n: ctx.lab.agent_status(n).get("database", {}).get("lag_seconds")
                     or 0.0)
        current = lock.read_intent()
        lock.write_intent(Intent(paused=current.paused, pause_reason=current.pause_reason,
                                 switchover_target=target, requested_by="fault-matrix",
                                 requested_at=time.time()))
    finally:
        lock.close()
    return lambda: None


def _lagging_replica_then_kill(ctx: FaultContext) -> Heal:
    """One replica's applier is stuck behind a table lock while the primary's mysqld dies: the
    other, up-to-date replica must win (lossless), not the laggard."""
    laggard = sorted(ctx.others())[0]
    unlock = _held_connection(ctx, laggard, f"LOCK TABLES {ctx.table} READ")
    ctx.wait_for_more_writes(10, what="writes the laggard has not applied")
    heal_mysqld = _kill_mysqld(ctx)

    def heal() -> None:
        unlock()
        heal_mysqld()
    return heal


def _consul_api(lab: LabCluster, method: str, path: str, body: Any = None) -> Any:
    """One call to the lab's Consul agent (the stand-in)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{lab.dcs_endpoints[0]}{path}", data=data, method=method)
    with urllib.request.urlopen(request, timeout=5) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def _fail_serf_health(ctx: FaultContext) -> Heal:
    """The primary host's Consul agent misses gossip: the leader marks its node's serfHealth critical.
    A session bound to serfHealth (Consul's default) would end at once. The lab's agents share the
    stand-in's node, so every instance leaves DNS for the fault: writes stop, and must not overlap."""
    _consul_api(ctx.lab, "PUT", "/v1/agent/check/fail/serfHealth?note=fault-matrix")
    return lambda: _consul_api(ctx.lab, "PUT", "/v1/agent/check/pass/serfHealth")


def _restart_consul_agent(ctx: FaultContext) -> Heal:
    """The primary host's Consul agent restarts: a client agent leaves on SIGTERM, which deregisters its
    node and ends every session on it, checks or not. Meanwhile the primary's dbfence agent cannot reach
    it (modelled by pausing the agent process, not its gate workers): it can neither renew nor see the
    lock go, and its gate admits until its own deadline. Only the lock-delay keeps a rival out until
    then. The lab's agents all share the stand-in's node, whereas in production each host is a node of
    its own: so only the primary's sessions (lock and member record) are ended here, as its node's
    deregistration would."""
    ctx.lab.kill_agent(ctx.primary, signal.SIGSTOP)
    try:
        node = _consul_api(ctx.lab, "GET", "/v1/agent/self")["Config"]["NodeName"]
        ours = f"dbfence-{ctx.lab.cluster}-{ctx.primary}"
        names = {ours, f"{ours}-member"}
        for session in _consul_api(ctx.lab, "GET", f"/v1/session/node/{node}"):
            if session["Name"] in names:
                _consul_api(ctx.lab, "PUT", f"/v1/session/destroy/{session['ID']}")
    except BaseException:
        ctx.lab.kill_agent(ctx.primary, signal.SIGCONT)
        raise
    return lambda: ctx.lab.kill_agent(ctx.primary, signal.SIGCONT)


def _ttl(tuning: AgentTuning) -> float:
    return tuning.ttl


def _failsafe_active(ctx: FaultContext) -> None:
    """Until the primary admits on its peers' promises (its lease deadline has passed)."""
    wait_until(lambda: (ctx.lab.agent_status(ctx.primary).get("failsafe") or {}).get("active") or None,
               timeout=3 * ctx.tuning.ttl + 5, what=f"{ctx.primary} writing on peer promises")


def _quorum_loss_restarting_a_promiser(ctx: FaultContext) -> Heal:
    """etcd quorum lost; once the primary runs on promises, kill -9 and restart a replica's agent:
    it keeps the promise it gave (persisted) and never races while it is live. A restart that
    outlasts the primary's deadline (seconds with the lab's 3 s TTL) ends the writes until the
    DCS is back: a member that does not answer is a no."""
    heal_etcd = _kill_etcd_quorum(ctx)
    _failsafe_active(ctx)
    replica = sorted(ctx.others())[0]
    agent = ctx.lab.agent(replica)
    ctx.lab.kill_agent(replica, signal.SIGKILL)
    wait_until(_exited(agent.process.alive), timeout=10, what=f"agent {replica} to exit")
    ctx.lab.restart_agent(replica)
    return heal_etcd


def _quorum_loss_then_mysqld_kill(ctx: FaultContext) -> Heal:
    """etcd quorum lost; once the primary runs on promises, kill -9 of its mysqld: no failover is
    possible without a DCS, writes are refused until it returns, then the ordinary failover runs."""
    heal_etcd = _kill_etcd_quorum(ctx)
    _failsafe_active(ctx)
    heal_mysqld = _kill_mysqld(ctx)

    def heal() -> None:
        heal_etcd()
        heal_mysqld()
    return heal


def _freeze_consul(ctx: FaultContext) -> Heal:
    """The Consul stand-in frozen (SIGSTOP): every agent's DCS stops answering at once. On its
    return it invalidates the sessions whose TTL passed meanwhile (the primary's too), and the
    primary takes the lock again while its peers' promises still hold."""
    consul = ctx.lab.consul
    if consul is None:
        raise RuntimeError("this fault needs a lab with the Consul stand-in")
    consul.process.signal(signal.SIGSTOP)

    def heal() -> None:
        consul.process.signal(signal.SIGCONT)
    return heal


def _quorum_loss_with_a_frozen_peer(ctx: FaultContext) -> Heal:
    """A replica's agent is frozen (SIGSTOP), then etcd loses quorum: not every member can
    promise, so the primary fences at its lease deadline, as without failsafe."""
    replica = sorted(ctx.others())[0]
    ctx.lab.kill_agent(replica, signal.SIGSTOP)
    heal_etcd = _kill_etcd_quorum(ctx)

    def heal() -> None:
        ctx.lab.kill_agent(replica, signal.SIGCONT)
        heal_etcd()
    return heal


# In an order that needs few labs: the first needs a fresh lab's primary (db1, on its own tmpfs);
# the last three usually leave an errant transaction on the old primary, which ends their lab.
FAULTS: tuple[Fault, ...] = (
    Fault("datadir-full", "the primary's data directory (a small tmpfs) fills up", _fill_datadir, True,
          lambda t: 30, tmpfs=True),
    Fault("mysqld-kill", "kill -9 of the primary's mysqld", _kill_mysqld, True, lambda t: 60,
          rto_goal=lambda t: 1.5),
    Fault("write-stall", "FLUSH TABLES WITH READ LOCK held on the primary", _write_stall, True,
          lambda t: 30),
    # Clients that use up mysqld's slots are not a failing mysqld (docs/detection.md): the
    # primary keeps its role, new clients get 1040, the connected writers keep writing.
    Fault("too-many-connections", "max_connections used up on the primary", _use_up_connections, False,
          lambda t: 2 * t.ttl, keeps_primary=True),
    Fault("gate-connection-flood", "5,000 bare TCP connections to the primary's gate, kept open",
          _flood_the_gate, False, lambda t: max(2 * t.ttl, 12.0), keeps_primary=True),
    Fault("agent-kill", "kill -9 of the primary's agent", _kill_agent, True, lambda t: 60,
          rto_goal=lambda t: t.ttl + 2),
    Fault("etcd-leader-kill", "kill -9 of the etcd leader", _kill_etcd_leader, False, lambda t: t.ttl,
          dcs=frozenset({"etcd"}), etcd_members=3),
    Fault("etcd-follower-kill", "kill -9 of one etcd follower", _kill_etcd_follower, False,
          lambda t: t.ttl, dcs=frozenset({"etcd"}), etcd_members=3),
    # The lease may have been renewed just before the fault: it can admit for one TTL at most.
    Fault("etcd-quorum-loss", "kill -9 of two of three etcd members", _kill_etcd_quorum, False,
          lambda t: 2 * t.ttl + 2, dcs=frozenset({"etcd"}), etcd_members=3, quiet_after=_ttl),
    Fault("switchover", "planned switchover under load", _switchover, True, lambda t: 60,
          rto_goal=lambda t: 1.0),
    Fault("lagging-replica+mysqld-kill", "a replica lags (applier locked out), then kill -9 of the "
          "primary's mysqld", _lagging_replica_then_kill, True, lambda t: 60),
    Fault("mysqld-stop", "SIGSTOP of the primary's mysqld past detection, then SIGCONT", _stop_mysqld,
          True, lambda t: 60),
    Fault("agent-stop", "SIGSTOP of the primary's agent (not its gate workers) past the TTL",
          _stop_agent, True, lambda t: 60, rto_goal=lambda t: t.ttl + 2),
    Fault("host-freeze", "SIGSTOP of the primary's mysqld, agent and gate workers (host loss)",
          _freeze_host, True, lambda t: 60, rto_goal=lambda t: t.ttl + 2),
    Fault("consul-serf-fail", "the primary node's serfHealth critical for 5 s (a gossip failure)",
          _fail_serf_health, False, lambda t: 5.0, dcs=frozenset({"consul"})),
    Fault("consul-agent-restart", "the primary host's Consul agent restarts (its node deregistered, "
          "every session on it ended) while the primary's agent cannot reach it",
          _restart_consul_agent, True, lambda t: 60, dcs=frozenset({"consul"})),
    # Failsafe (last: these rows share a lab whose agents run with failsafe on).
    Fault("etcd-quorum-loss+failsafe", "kill -9 of two of three etcd members, failsafe on (12 s)",
          _kill_etcd_quorum, False, lambda t: 4 * t.ttl, dcs=frozenset({"etcd"}), etcd_members=3,
          failsafe=True, rto_goal=lambda t: 0.5),
    Fault("etcd-quorum-loss-60s+failsafe", "kill -9 of two of three etcd members for 60 s, failsafe on",
          _kill_etcd_quorum, False, lambda t: 60, dcs=frozenset({"etcd"}), etcd_members=3,
          failsafe=True, rto_goal=lambda t: 0.5, long=True),
    Fault("etcd-quorum-loss+promiser-restart+failsafe", "etcd quorum lost, failsafe on; a replica's "
          "agent is killed and restarted while the primary runs on promises",
          _quorum_loss_restarting_a_promiser, False, lambda t: 2 * t.ttl, dcs=frozenset({"etcd"}),
          etcd_members=3, failsafe=True),
    Fault("etcd-quorum-loss+mysqld-kill+failsafe", "etcd quorum lost, failsafe on; then kill -9 of "
          "the primary's mysqld while it runs on promises", _quorum_loss_then_mysqld_kill, False,
          lambda t: 2 * t.ttl, dcs=frozenset({"etcd"}), etcd_members=3, quiet_after=lambda t: 0.0,
          failsafe=True, long=True),
    Fault("consul-down+failsafe", "the Consul stand-in frozen for 30 s, failsafe on (its session is "
          "invalidated when it returns: the primary takes the lock again)", _freeze_consul, False,
          lambda t: 30, dcs=frozenset({"consul"}), failsafe=True, rto_goal=lambda t: 0.5, long=True),
    Fault("etcd-quorum-loss+frozen-peer+failsafe", "a replica's agent SIGSTOPped, then etcd quorum "
          "lost, failsafe on: the primary fences at its deadline", _quorum_loss_with_a_frozen_peer, False,
          lambda t: 2 * t.ttl + 2, dcs=frozenset({"etcd"}), etcd_members=3, quiet_after=_ttl, failsafe=True),
)


def all_faults() -> tuple[Fault, ...]:
    """The faults here plus any the network-namespace lab exports (``partition``...)."""
    try:
        netns = importlib.import_module("dbfence.lab.netns")
    except ImportError:
        return FAULTS
    return FAULTS + tuple(getattr(netns, "FAULTS", ()))


# ---------------------------------------------------------------------------- labs

@dataclass
class FaultLab:
    """A lab for the matrix; ``mounts`` are tmpfs mounts to remove after ``lab.down()``."""

    lab: LabCluster
    tuning: AgentTuning
    mounts: list[Path] = field(default_factory=list)
    rounds: int = 0

    def supports(self, fault: Fault) -> bool:
        if self.lab.dcs_kind not in fault.dcs or len(self.lab.etcd) < fault.etcd_members:
            return False
        if fault.netns != (self.lab.netns is not None) or fault.failsafe != self.tuning.failsafe:
            return False
        return not fault.tmpfs or any(str(m) == self.lab.node(p).datadir
                                      for m in self.mounts for p in self.lab.primaries())

    def down(self) -> None:
        """Stop the lab, unmount its tmpfs and remove its files: labs are large and disks are not."""
        try:
            LabCluster.load(self.lab.directory).down()
        finally:
            for mount in self.mounts:
                subprocess.run(["umount", str(mount)], check=False, capture_output=True)
            shutil.rmtree(self.lab.directory, ignore_errors=True)


@contextlib.contextmanager
def scratch_space(directory: Path, size: str = "3g") -> Iterator[Path]:
    """A tmpfs for the matrix's labs when we may mount one (root), so that no lab fills the
    shared disk; otherwise the directory as it is. Removed afterwards either way."""
    directory.mkdir(parents=True, exist_ok=True)
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
        check=False, capture_output=True).returncode == 0
    try:
        yield directory
    finally:
        if mounted:
            subprocess.run(["umount", str(directory)], check=False, capture_output=True)
        shutil.rmtree(directory, ignore_errors=True)


def start_lab(directory: Path, dcs: DcsKind, tuning: AgentTuning, *, tmpfs: bool = False,
              tmpfs_size: str = "1g", netns: bool = False) -> FaultLab:
    """3 MariaDB + 3 etcd (or the Consul stand-in) + agents. With ``tmpfs``, db1's data directory
    (the first primary's) is moved onto a tmpfs of its own before the agents start, so that it
    can be filled without touching the disk (the agents want 512 MiB free: hence 1 GiB)."""
    lab = LabCluster.up(LabSpec(directory=directory, mysql_count=3, dcs=dcs,
                                etcd_members=3 if dcs == "etcd" else 1, agents=not tmpfs,
                                agent_tuning=tuning, netns=netns))
    fault_lab = FaultLab(lab, tuning)
    if not tmpfs:
        return fault_lab
    try:
        node = lab.mysql[0]
        lab.kill_mysql(node.name, signal.SIGTERM)
        wait_until(_exited(node.process.alive), timeout=60, what=f"{node.name} to stop")
        datadir = Path(node.datadir)
        on_disk = datadir.with_name("data.disk")
        datadir.rename(on_disk)
        datadir.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={tmpfs_size}", "tmpfs", str(datadir)],
                       check=True, capture_output=True)
        fault_lab.mounts.append(datadir)
        shutil.copytree(on_disk, datadir, dirs_exist_ok=True)
        shutil.rmtree(on_disk)
        lab.start_mysql(node.name)
        # Every mysqld starts read-only: open db1 again, as the lab left it for the agents.
        mariadb_servers.open_for_writes(lab.mysql[0], lab.accounts["agent"])
        lab.start_agents(tuning)
    except BaseException:
        fault_lab.down()
        raise
    return fault_lab


# ---------------------------------------------------------------------------- one round

@dataclass(frozen=True)
class RoundResult:
    fault: str
    verdict: Verdict
    old_primary: str
    failed_over: bool
    settled: bool  # every node follows one primary again: the lab can take the next fault
    notes: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()  # what the fault's own checks found wrong (keeps_primary...)
    # the longest stretch without an acknowledged write while the fault was held (s)
    longest_gap_during_fault: float | None = None
    # Writes acknowledged that started once the primary's last lease could have run out (one TTL
    # after the fault) and before the heal: with failsafe on, the peers' promises kept them.
    beyond_lease: int = 0

    @property
    def rto(self) -> float | None:
        return self.verdict.outages[0].seconds if self.verdict.outages else None


def _settle(lab: LabCluster, timeout: float) -> tuple[str | None, bool]:
    """(the primary, whether every other node follows it). Gives up early once a node is
    fenced for errant transactions: that one never follows again by design."""
    def settled_or_stuck() -> str | None:
        primaries = lab.primaries()
        if len(primaries) != 1:
            return None
        statuses = [lab.agent_status(a.name) for a in lab.agents if a.name != primaries[0]]
        if any((s.get("fenced_reason") == "errant_gtids" or s.get("database", {}).get("errant"))
               and not _repair_pending(s) for s in statuses):
            return "stuck"
        following = all(s.get("role") == "replica" and
                        s.get("database", {}).get("replication_source") == primaries[0] for s in statuses)
        return "settled" if following else None
    try:
        outcome = wait_until(settled_or_stuck, timeout=timeout, what="every replica following one primary")
    except WaitTimeout:
        outcome = "late"
    primaries = lab.primaries()
    primary = primaries[0] if len(primaries) == 1 else None
    return primary, outcome == "settled" and primary is not None


def _repair_pending(status: dict[str, Any]) -> bool:
    """A fenced node with errant transactions that its agent may still repair ([rejoin])."""
    repair = status.get("repair") or {}
    rebuild_next = repair.get("mode") == "rebuild" and repair.get("gave_up_on") == "truncate"
    if repair.get("mode", "manual") == "manual" or (repair.get("gave_up") and not rebuild_next):
        return False
    return not any(str(refusal).startswith("repair_unsafe") for refusal in status.get("refusals", []))


def _repair_note(lab: LabCluster, old_primary: str, healed_at: float) -> str:
    """What the old primary's agent did about its errant transactions ([rejoin] not manual)."""
    status = lab.agent_status(old_primary)
    repair = status.get("repair") or {}
    last = repair.get("last") or {}
    role = status.get("role")
    back = f"old primary {role} {time.time() - healed_at:.1f} s after the heal"
    if repair.get("gave_up"):
        return f"{back}; repair gave up: {repair['gave_up']}"
    rebuilt = (repair.get("rebuild") or {}).get("last")
    if rebuilt:
        return (f"{back}; rebuilt in {rebuilt['seconds']} s, removed {rebuilt['removed']} "
                f"(saved to {repair['saved_file']}, old data in {rebuilt['old_datadir']})")
    if repair.get("saved_file"):
        return (f"{back}; removed {last.get('errant_before') or 'nothing'} in {last.get('seconds')} s "
                f"(saved to {repair['saved_file']})")
    return f"{back}; nothing removed"


def _new_primary(lab: LabCluster, old: str) -> str | None:
    primaries = lab.primaries()
    return primaries[0] if len(primaries) == 1 and primaries[0] != old else None


@contextlib.contextmanager
def _writing(lab: LabCluster, writer: DiscoveryWriter) -> Iterator[DiscoveryWriter]:
    # In a namespaced lab the writer's threads must live in the client namespace (a plain call
    # otherwise): they inherit it from the thread that starts them.
    lab.in_client(writer.start)
    try:
        yield writer
    finally:
        writer.finish()


def run_round(fault_lab: FaultLab, fault: Fault, table: str, *, clients: int = 2,
              recover_timeout: float = 90.0) -> RoundResult:
    lab, tuning = fault_lab.lab, fault_lab.tuning
    primary = lab.wait_settled(timeout=60)
    writer = DiscoveryWriter(lab, table, timeout=2.0, clients=clients)
    writer.create_table(primary)
    notes: list[str] = []
    with _writing(lab, writer):
        begun = time.time()
        wait_until(lambda: writer.acknowledged_since(begun) >= 5, timeout=30, what="writes before the fault")
        ctx = FaultContext(lab, tuning, writer, primary, table)
        heal = fault.inject(ctx)
        at = time.time()  # when the fault is in full effect (filling a disk takes a moment)
        failed_over = False
        try:
            if fault.until_failover:
                try:
                    wait_until(lambda: _new_primary(lab, primary), timeout=fault.hold(tuning),
                               what=f"another primary than {primary}")
                    failed_over = True
                except WaitTimeout:
                    notes.append(f"no other primary within {fault.hold(tuning):g}s")
            else:
                time.sleep(fault.hold(tuning))  # the fault's duration, not a synchronisation
                failed_over = _new_primary(lab, primary) is not None
        finally:
            healed_at = time.time()
            heal()
        try:
            wait_until(lambda: writer.acknowledged_since(healed_at) >= 5, timeout=recover_timeout,
                       what="writes acknowledged after the heal")
        except WaitTimeout:
            notes.append(f"no writes within {recover_timeout:g}s of the heal")
    beyond_lease = writer.acknowledged_since(at + tuning.ttl) - writer.acknowledged_since(healed_at)
    quiet = fault.quiet_after(tuning)
    event = FaultEvent(fault.name, at, healed_at, None if quiet is None else at + quiet)
    final_primary, settled = _settle(lab, timeout=30)
    if not settled:
        notes.append(f"not settled after the heal (primary: {final_primary})")
    if tuning.rejoin != "manual" and final_primary != primary:
        notes.append(_repair_note(lab, primary, healed_at))
    history = History(tuple(writer.attempts), read_tenures(lab), (event,),
                      read_final_state(lab, final_primary, table))
    verdict = check(history)
    if verdict.errant:
        settled = False  # a node with errant transactions stays fenced: start the next fault afresh
    fault_lab.rounds += 1
    gap = longest_gap(writer.attempts, at, healed_at)
    problems = list(ctx.problems)
    if fault.keeps_primary:
        if failed_over or final_primary != primary:
            problems.append(f"the primary did not keep its role: {primary} -> {final_primary}")
        # The writers' connections were open before the fault: they must not have stopped.
        if gap > max(2.0, 0.5 * (healed_at - at)):
            problems.append(f"the connected writers stalled for {gap:.2f}s during the fault")
    return RoundResult(fault.name, verdict, primary, failed_over, settled, (*notes, *ctx.notes),
                       tuple(problems), round(gap, 3), beyond_lease)


def longest_gap(attempts: Sequence[Attempt], start: float, end: float) -> float:
    """The longest stretch of wall time in [start, end] without an acknowledged write."""
    acks = sorted(a.end for a in attempts if a.outcome is Outcome.ACKNOWLEDGED and start <= a.end <= end)
    edges = [start, *acks, end]
    return max(later - earlier for earlier, later in itertools.pairwise(edges))


# ---------------------------------------------------------------------------- the matrix

class LabPool:
    """Labs for consecutive rounds: one is reused while the last round left it settled and clean
    and it suits the next fault; otherwise it goes and a fresh one comes. The logs of a round that
    left the lab unsettled are copied to ``keep_logs`` (when given) before its files go."""

    def __init__(self, root: Path, dcs: DcsKind, tuning: AgentTuning, keep_logs: Path | None = None) -> None:
        self.root, self.dcs, self.tuning, self.keep_logs = root, dcs, tuning, keep_logs
        self.current: FaultLab | None = None
        self.started = 0
        self.rounds = 0

    def run(self, fault: Fault, clients: int = 2, recover_timeout: float = 90.0) -> RoundResult:
        current = self.current
        if current is not None and not current.supports(fault):
            self._drop()
        if self.current is None:
            self.started += 1
            # Every lab can take the disk fault when this process may mount a tmpfs (root);
            # a namespaced lab (for partitions) keeps its data on the lab's own scratch space.
            netns = fault.netns
            tuning = dataclasses.replace(self.tuning, failsafe=fault.failsafe)
            self.current = start_lab(self.root / f"lab{self.started}", self.dcs, tuning,
                                     tmpfs=os.geteuid() == 0 and not netns, netns=netns)
        self.rounds += 1
        try:
            result = run_round(self.current, fault, f"app.round{self.rounds}", clients=clients,
                               recover_timeout=recover_timeout)
        except BaseException:
            self._drop(f"round{self.rounds}-{fault.name}")
            raise
        if not result.settled:
            self._drop(f"round{self.rounds}-{fault.name}")
        return result

    def _drop(self, logs_name: str | None = None) -> None:
        if self.current is None:
            return
        if logs_name is not None and self.keep_logs is not None:
            target = self.keep_logs / logs_name
            directory = self.current.lab.directory
            for log in [*directory.glob("agents/*.log"), *directory.glob("db*/error.log")]:
                (target / log.parent.name).mkdir(parents=True, exist_ok=True)
                shutil.copy(log, target / log.parent.name / log.name)
        self.current.down()
        self.current = None

    def close(self) -> None:
        self._drop()


def run_matrix(faults: list[Fault], runs: int, root: Path, dcs: DcsKind, tuning: AgentTuning, *,
               clients: int = 2, keep_logs: Path | None = None,
               report: Callable[[RoundResult], None] = lambda result: None) -> list[RoundResult]:
    """Each fault ``runs`` times, reusing labs as :class:`LabPool` allows."""
    pool = LabPool(root, dcs, tuning, keep_logs)
    results: list[RoundResult] = []
    try:
        for fault in faults:
            for _ in range(runs):
                results.append(pool.run(fault, clients))
                report(results[-1])
    finally:
        pool.close()
    return results


def applicable(fault: Fault, dcs: DcsKind) -> bool:
    return dcs in fault.dcs


def unavailable(fault: Fault) -> str | None:
    """Why this fault cannot run on this machine (partitions need root, ip and nft), or None."""
    if not fault.netns:
        return None
    from dbfence.lab import netns  # noqa: PLC0415

    reason = netns.unavailable_reason()
    return None if reason is None else f"network partitions skipped: {reason}"
