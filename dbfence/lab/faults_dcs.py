"""DCS faults: etcd members killed (leader, follower, quorum), the Consul agent failing or
restarting, the Consul stand-in frozen, the failsafe rows that combine quorum loss with another
fault, and the planned switchover (a request written to the DCS).

Each injector takes a :class:`~dbfence.lab.fault_model.FaultContext` and returns its heal; the
rows that use them are in the registry, :mod:`dbfence.lab.faults`. Every act is registered as a
step of the context as it is taken: an injection that fails half-way (no primary writing on
promises, say) has its first half undone by :func:`dbfence.lab.fault_model.inject`, as the soak
goes on after a fault it could not inject and an etcd left without quorum would end the run.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
import urllib.request
from typing import Any

from dbfence.lab.cluster import LabCluster
from dbfence.lab.errors import LabError
from dbfence.lab.etcd_servers import EtcdMember
from dbfence.lab.fault_model import FaultContext, Heal, exited
from dbfence.lab.faults_process import kill_mysqld
from dbfence.lab.wait import WaitTimeout, wait_until
from dbfence.locks.factory import DcsConfig, open_lock
from dbfence.locks.model import Intent
from dbfence.locks.switchover import switchover_refusal


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


def _kill_etcd(ctx: FaultContext, members: list[EtcdMember]) -> Heal:
    lab, killed = ctx.lab, list[EtcdMember]()

    def heal() -> None:
        for member in killed:
            wait_until(exited(member.process.alive), timeout=10, what=f"{member.name} to exit")
            lab.start_etcd(member.name)
    # registered first: a kill that fails half-way restarts the members already killed
    restart = ctx.step(f"killed etcd {' and '.join(m.name for m in members)}", heal)
    for member in members:
        lab.kill_etcd(member.name, signal.SIGKILL)
        killed.append(member)
    return restart


def kill_etcd_leader(ctx: FaultContext) -> Heal:
    return _kill_etcd(ctx, [etcd_leader(ctx.lab)])


def kill_etcd_follower(ctx: FaultContext) -> Heal:
    leader = etcd_leader(ctx.lab)
    return _kill_etcd(ctx, [next(m for m in ctx.lab.etcd if m.name != leader.name)])


def kill_etcd_quorum(ctx: FaultContext) -> Heal:
    leader = etcd_leader(ctx.lab)
    follower = next((m for m in ctx.lab.etcd if m.name != leader.name), None)
    if follower is None:
        raise LabError("etcd quorum loss needs a lab with three etcd members")
    return _kill_etcd(ctx, [leader, follower])


def switchover(ctx: FaultContext) -> Heal:
    lock = open_lock(DcsConfig(kind=ctx.lab.dcs_kind, endpoints=tuple(ctx.lab.dcs_endpoints)),
                     ctx.lab.cluster, "fault-matrix")
    try:
        # Only a target that `dbfence switchover` would accept (a fenced node or one whose lag is
        # unknown counted as lag 0 here once, and its request stayed in the DCS for ever).
        # A replica of a lab reused from the previous row may still be reconnecting to its source
        # (lag unknown): give them a few seconds, as an operator would, before calling it a failure.
        def suitable_now() -> list[str]:
            snapshot = lock.snapshot(strict=False)
            return [n for n in ctx.others() if switchover_refusal(snapshot, n, max_lag=5.0) is None]
        try:
            suitable = wait_until(suitable_now, timeout=15, what="a replica a switchover would accept",
                                  interval=0.2)
        except WaitTimeout:
            snapshot = lock.snapshot(strict=False)
            raise LabError("no replica that a switchover would accept: "
                           + "; ".join(f"{n}: {switchover_refusal(snapshot, n, max_lag=5.0)}"
                                       for n in ctx.others())) from None
        target = min(suitable, key=lambda n: ctx.lab.agent_status(n).get("database", {}).get("lag_seconds")
                     or 0.0)
        current = lock.read_intent()
        lock.write_intent(Intent(paused=current.paused, pause_reason=current.pause_reason,
                                 switchover_target=target, requested_by="fault-matrix",
                                 requested_at=time.time()))
    finally:
        lock.close()
    return lambda: None


def _consul_api(lab: LabCluster, method: str, path: str, body: Any = None) -> Any:
    """One call to the lab's Consul agent (the stand-in)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{lab.dcs_endpoints[0]}{path}", data=data, method=method)
    with urllib.request.urlopen(request, timeout=5) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def fail_serf_health(ctx: FaultContext) -> Heal:
    """The primary host's Consul agent misses gossip: the leader marks its node's serfHealth critical.
    A session bound to serfHealth (Consul's default) would end at once. The lab's agents share the
    stand-in's node, so every instance leaves DNS for the fault: writes stop, and must not overlap."""
    _consul_api(ctx.lab, "PUT", "/v1/agent/check/fail/serfHealth?note=fault-matrix")
    return ctx.step("failed the Consul node's serfHealth",
                    lambda: _consul_api(ctx.lab, "PUT", "/v1/agent/check/pass/serfHealth"))


def restart_consul_agent(ctx: FaultContext) -> Heal:
    """The primary host's Consul agent restarts: a client agent leaves on SIGTERM, which deregisters its
    node and ends every session on it, checks or not. Meanwhile the primary's dbfence agent cannot reach
    it (modelled by pausing the agent process, not its gate workers): it can neither renew nor see the
    lock go, and its gate admits until its own deadline. Only the lock-delay keeps a rival out until
    then. The lab's agents all share the stand-in's node, whereas in production each host is a node of
    its own: so only the primary's sessions (lock and member record) are ended here, as its node's
    deregistration would."""
    ctx.lab.kill_agent(ctx.primary, signal.SIGSTOP)
    resume = ctx.step(f"stopped {ctx.primary}'s agent (SIGSTOP)",
                      lambda: ctx.lab.kill_agent(ctx.primary, signal.SIGCONT))
    node = _consul_api(ctx.lab, "GET", "/v1/agent/self")["Config"]["NodeName"]
    ours = f"dbfence-{ctx.lab.cluster}-{ctx.primary}"
    names = {ours, f"{ours}-member"}
    for session in _consul_api(ctx.lab, "GET", f"/v1/session/node/{node}"):
        if session["Name"] in names:
            _consul_api(ctx.lab, "PUT", f"/v1/session/destroy/{session['ID']}")
    return resume


def _failsafe_active(ctx: FaultContext) -> None:
    """Until the primary admits on its peers' promises (its lease deadline has passed)."""
    wait_until(lambda: (ctx.lab.agent_status(ctx.primary).get("failsafe") or {}).get("active") or None,
               timeout=3 * ctx.tuning.ttl + 5, what=f"{ctx.primary} writing on peer promises")


def quorum_loss_restarting_a_promiser(ctx: FaultContext) -> Heal:
    """etcd quorum lost; once the primary runs on promises, kill -9 and restart a replica's agent:
    it keeps the promise it gave (persisted) and never races while it is live. A restart that
    outlasts the primary's deadline (seconds with the lab's 3 s TTL) ends the writes until the
    DCS is back: a member that does not answer is a no."""
    heal_etcd = kill_etcd_quorum(ctx)
    _failsafe_active(ctx)
    replica = sorted(ctx.others())[0]
    agent = ctx.lab.agent(replica)

    def restart_if_dead() -> None:
        if not ctx.lab.agent(replica).process.alive():  # the manifest names the restarted one
            wait_until(exited(agent.process.alive), timeout=10, what=f"agent {replica} to exit")
            ctx.lab.restart_agent(replica)
    ctx.lab.kill_agent(replica, signal.SIGKILL)
    restarted = ctx.step(f"killed {replica}'s agent", restart_if_dead)
    wait_until(exited(agent.process.alive), timeout=10, what=f"agent {replica} to exit")
    ctx.lab.restart_agent(replica)
    restarted()  # back: the step is over (its undo finds the agent alive)
    return heal_etcd


def quorum_loss_then_mysqld_kill(ctx: FaultContext) -> Heal:
    """etcd quorum lost; once the primary runs on promises, kill -9 of its mysqld: no failover is
    possible without a DCS, writes are refused until it returns, then the ordinary failover runs."""
    heal_etcd = kill_etcd_quorum(ctx)
    _failsafe_active(ctx)
    heal_mysqld = kill_mysqld(ctx)
    # No write may be acknowledged from the injection on (quiet_after 0): the injection ends
    # once mysqld is gone, not when the signal is sent (seed 203: two writes acknowledged
    # 3 ms after the kill had been sent).
    server = ctx.lab.node(ctx.primary).process
    wait_until(exited(server.alive), timeout=10, what=f"{ctx.primary}'s mysqld to exit")

    def heal() -> None:
        heal_etcd()
        heal_mysqld()
    return heal


def freeze_consul(ctx: FaultContext) -> Heal:
    """The Consul stand-in frozen (SIGSTOP): every agent's DCS stops answering at once. On its
    return it invalidates the sessions whose TTL passed meanwhile (the primary's too), and the
    primary takes the lock again while its peers' promises still hold."""
    consul = ctx.lab.consul
    if consul is None:
        raise RuntimeError("this fault needs a lab with the Consul stand-in")
    consul.process.signal(signal.SIGSTOP)

    def heal() -> None:
        consul.process.signal(signal.SIGCONT)
    return ctx.step("stopped the Consul stand-in (SIGSTOP)", heal)


def quorum_loss_with_a_frozen_peer(ctx: FaultContext) -> Heal:
    """A replica's agent is frozen (SIGSTOP), then etcd loses quorum: not every member can
    promise, so the primary fences at its lease deadline, as without failsafe."""
    replica = sorted(ctx.others())[0]
    ctx.lab.kill_agent(replica, signal.SIGSTOP)
    resume = ctx.step(f"stopped {replica}'s agent (SIGSTOP)",
                      lambda: ctx.lab.kill_agent(replica, signal.SIGCONT))
    heal_etcd = kill_etcd_quorum(ctx)

    def heal() -> None:
        resume()
        heal_etcd()
    return heal

