"""The fault registry: every named fault the matrix and the soak inject, in one ordered list.

A fault is a :class:`~dbfence.lab.fault_model.Fault` row whose ``inject`` breaks something on the
current primary (or the DCS) and returns its heal. Each act of an injector is registered as a step
of its context with its undo, so that an injection that fails half-way is undone at once
(:func:`~dbfence.lab.fault_model.inject`, which the matrix and the soak call). The injectors live
with their family:

* :mod:`dbfence.lab.faults_process`: signals to mysqld, the agent, the whole host;
* :mod:`dbfence.lab.faults_database`: mysqld stalled, its disk full, its connections used up, the
  gate flooded, a lagging replica;
* :mod:`dbfence.lab.faults_dcs`: etcd members killed, Consul failing, the failsafe combinations,
  the switchover request;
* :mod:`dbfence.lab.partition`: network partitions (labs in network namespaces).

:func:`all_faults` is the single list: to add a fault kind, write its injector in its family's
module and add one row to ``FAULTS`` here (or to ``partition.FAULTS``). The order matters: it lets
consecutive rows share a lab (see the comment on ``FAULTS``).

How a round runs (:mod:`dbfence.lab.fault_round`), the labs it runs in
(:mod:`dbfence.lab.fault_labs`) and the matrix over many rounds (:mod:`dbfence.lab.fault_matrix`)
are re-exported here, under the names the tests, the benchmarks and the soak import.
"""

from __future__ import annotations

from dbfence.lab import netns, partition
from dbfence.lab.agents import AgentTuning
from dbfence.lab.cluster import DcsKind
from dbfence.lab.fault_labs import FaultLab, scratch_space, start_lab
from dbfence.lab.fault_matrix import LabPool, run_matrix
from dbfence.lab.fault_model import Fault, FaultContext, Heal
from dbfence.lab.fault_round import RoundResult, longest_gap, run_round
from dbfence.lab.faults_database import (
    fill_datadir,
    flood_the_gate,
    lagging_replica_then_kill,
    use_up_connections,
    write_stall,
)
from dbfence.lab.faults_dcs import (
    fail_serf_health,
    freeze_consul,
    kill_etcd_follower,
    kill_etcd_leader,
    kill_etcd_quorum,
    quorum_loss_restarting_a_promiser,
    quorum_loss_then_mysqld_kill,
    quorum_loss_with_a_frozen_peer,
    restart_consul_agent,
    switchover,
)
from dbfence.lab.faults_process import freeze_host, kill_agent, kill_mysqld, stop_agent, stop_mysqld

__all__ = [
    "FAULTS",
    "Fault",
    "FaultContext",
    "FaultLab",
    "Heal",
    "LabPool",
    "RoundResult",
    "all_faults",
    "applicable",
    "longest_gap",
    "run_matrix",
    "run_round",
    "scratch_space",
    "start_lab",
    "unavailable",
]


def _ttl(tuning: AgentTuning) -> float:
    return tuning.ttl


def _ttl_without_failsafe(tuning: AgentTuning) -> float | None:
    """With failsafe on, peers' promises may keep the writes on: the lease check judges them."""
    return None if tuning.failsafe else tuning.ttl


# In an order that needs few labs: the first needs a fresh lab's primary (db1, on its own tmpfs);
# the last three usually leave an errant transaction on the old primary, which ends their lab.
FAULTS: tuple[Fault, ...] = (
    Fault("datadir-full", "the primary's data directory (a small tmpfs) fills up", fill_datadir, True,
          lambda t: 30, tmpfs=True),
    Fault("mysqld-kill", "kill -9 of the primary's mysqld", kill_mysqld, True, lambda t: 60,
          rto_goal=lambda t: 1.5),
    Fault("write-stall", "FLUSH TABLES WITH READ LOCK held on the primary", write_stall, True,
          lambda t: 30),
    # Clients that use up mysqld's slots are not a failing mysqld (docs/detection.md): the
    # primary keeps its role, new clients get 1040, the connected writers keep writing.
    Fault("too-many-connections", "max_connections used up on the primary", use_up_connections, False,
          lambda t: 2 * t.ttl, keeps_primary=True),
    Fault("gate-connection-flood", "5,000 bare TCP connections to the primary's gate, kept open",
          flood_the_gate, False, lambda t: max(2 * t.ttl, 12.0), keeps_primary=True),
    Fault("agent-kill", "kill -9 of the primary's agent", kill_agent, True, lambda t: 60,
          rto_goal=lambda t: t.ttl + 2, leaseless=True),
    Fault("etcd-leader-kill", "kill -9 of the etcd leader", kill_etcd_leader, False, lambda t: t.ttl,
          dcs=frozenset({"etcd"}), etcd_members=3),
    Fault("etcd-follower-kill", "kill -9 of one etcd follower", kill_etcd_follower, False,
          lambda t: t.ttl, dcs=frozenset({"etcd"}), etcd_members=3),
    # The lease may have been renewed just before the fault: it can admit for one TTL at most.
    Fault("etcd-quorum-loss", "kill -9 of two of three etcd members", kill_etcd_quorum, False,
          lambda t: 2 * t.ttl + 2, dcs=frozenset({"etcd"}), etcd_members=3,
          quiet_after=_ttl_without_failsafe, leaseless=True),
    Fault("switchover", "planned switchover under load", switchover, True, lambda t: 60,
          rto_goal=lambda t: 1.0),
    Fault("lagging-replica+mysqld-kill", "a replica lags (applier locked out), then kill -9 of the "
          "primary's mysqld", lagging_replica_then_kill, True, lambda t: 60),
    Fault("mysqld-stop", "SIGSTOP of the primary's mysqld past detection, then SIGCONT", stop_mysqld,
          True, lambda t: 60),
    Fault("agent-stop", "SIGSTOP of the primary's agent (not its gate workers) past the TTL",
          stop_agent, True, lambda t: 60, rto_goal=lambda t: t.ttl + 2, leaseless=True),
    Fault("host-freeze", "SIGSTOP of the primary's mysqld, agent and gate workers (host loss)",
          freeze_host, True, lambda t: 60, rto_goal=lambda t: t.ttl + 2, leaseless=True),
    Fault("consul-serf-fail", "the primary node's serfHealth critical for 5 s (a gossip failure)",
          fail_serf_health, False, lambda t: 5.0, dcs=frozenset({"consul"})),
    Fault("consul-agent-restart", "the primary host's Consul agent restarts (its node deregistered, "
          "every session on it ended) while the primary's agent cannot reach it",
          restart_consul_agent, True, lambda t: 60, dcs=frozenset({"consul"})),
    # Failsafe (last: these rows share a lab whose agents run with failsafe on).
    Fault("etcd-quorum-loss+failsafe", "kill -9 of two of three etcd members, failsafe on (12 s)",
          kill_etcd_quorum, False, lambda t: 4 * t.ttl, dcs=frozenset({"etcd"}), etcd_members=3,
          failsafe=True, rto_goal=lambda t: 0.5, leaseless=True),
    Fault("etcd-quorum-loss-60s+failsafe", "kill -9 of two of three etcd members for 60 s, failsafe on",
          kill_etcd_quorum, False, lambda t: 60, dcs=frozenset({"etcd"}), etcd_members=3,
          failsafe=True, rto_goal=lambda t: 0.5, long=True, leaseless=True),
    Fault("etcd-quorum-loss+promiser-restart+failsafe", "etcd quorum lost, failsafe on; a replica's "
          "agent is killed and restarted while the primary runs on promises",
          quorum_loss_restarting_a_promiser, False, lambda t: 2 * t.ttl, dcs=frozenset({"etcd"}),
          etcd_members=3, failsafe=True, leaseless=True),
    Fault("etcd-quorum-loss+mysqld-kill+failsafe", "etcd quorum lost, failsafe on; then kill -9 of "
          "the primary's mysqld while it runs on promises", quorum_loss_then_mysqld_kill, False,
          lambda t: 2 * t.ttl, dcs=frozenset({"etcd"}), etcd_members=3, quiet_after=lambda t: 0.0,
          failsafe=True, long=True, leaseless=True),
    Fault("consul-down+failsafe", "the Consul stand-in frozen for 30 s, failsafe on (its session is "
          "invalidated when it returns: the primary takes the lock again)", freeze_consul, False,
          lambda t: 30, dcs=frozenset({"consul"}), failsafe=True, rto_goal=lambda t: 0.5, long=True,
          leaseless=True),
    Fault("etcd-quorum-loss+frozen-peer+failsafe", "a replica's agent SIGSTOPped, then etcd quorum "
          "lost, failsafe on: the primary fences at its deadline", quorum_loss_with_a_frozen_peer, False,
          lambda t: 2 * t.ttl + 2, dcs=frozenset({"etcd"}), etcd_members=3, quiet_after=_ttl, failsafe=True,
          leaseless=True),
)


def all_faults() -> tuple[Fault, ...]:
    """Every fault kind, in the matrix's order: the rows above, then the network partitions."""
    return FAULTS + partition.FAULTS


def applicable(fault: Fault, dcs: DcsKind) -> bool:
    return dcs in fault.dcs


def unavailable(fault: Fault) -> str | None:
    """Why this fault cannot run on this machine (partitions need root, ip and nft), or None."""
    if not fault.netns:
        return None
    reason = netns.unavailable_reason()
    return None if reason is None else f"network partitions skipped: {reason}"
