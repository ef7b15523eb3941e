"""The "partition" faults: cut the primary's host off the DCS and its peers under an application
writer, check the outcome, heal, and see whether the old primary rejoins.

The lab must run with ``netns=True`` (see :mod:`dbfence.lab.netns`). Variants:

* ``partition``: the primary's host loses the DCS and both peers; the application in the client
  namespace still reaches its gate, which is the hard case for fencing.
* ``partition-lagging-replica``: the same while one replica applies with a delay (it has
  received and acknowledged every write, but not applied them); nothing acknowledged may be
  lost, whichever replica wins (the up-to-date one, unless the laggard received more).
* ``partition-laggard-holds-more``: the same, but the up-to-date replica was cut off from the
  primary first, so the last acknowledged commits are only in the laggard's relay log: the
  laggard must win and apply them at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import pymysql

from dbfence.lab.agents import AgentTuning, log_times
from dbfence.lab.cluster import LabCluster
from dbfence.lab.errors import LabError
from dbfence.lab.fault_model import Fault, FaultContext, Heal
from dbfence.lab.netns import CLIENT, DCS
from dbfence.lab.wait import WaitTimeout, wait_until
from dbfence.lab.workload import DiscoveryWriter

FAULT_NAMES = ("partition", "partition-lagging-replica", "partition-laggard-holds-more")
LAGGING_VARIANTS = frozenset(FAULT_NAMES[1:])


def inject_partition(ctx: FaultContext) -> Heal:
    """Cut the primary's host off the DCS and its peers (the client still reaches its gate)."""
    ctx.lab.isolate(ctx.primary)
    return ctx.step(f"cut {ctx.primary} off from the DCS and its peers", lambda: ctx.lab.heal(ctx.primary))


def delay_applier(ctx: FaultContext, laggard: str, delay: int) -> Heal:
    """:func:`delay_replica` as a step of the fault: registered once it begins to change the
    replica (a laggard that is down, or not a replica, is left as it was and registers nothing)."""
    taken: list[Heal] = []

    def changing() -> None:
        taken.append(ctx.step(f"delayed {laggard}'s applier by {delay} s",
                              lambda: delay_replica(ctx.lab, laggard, 0)))
    delay_replica(ctx.lab, laggard, delay, changing=changing)
    return taken[0] if taken else lambda: None


def inject_partition_lagging_replica(ctx: FaultContext, delay: int = 30) -> Heal:
    """One replica applies ``delay`` s behind (it has received and acknowledged everything), then
    the primary's host is partitioned: the up-to-date replica must win, and nothing may be lost."""
    ctx.wait_until_writing(before="delaying a replica")
    laggard = sorted(ctx.others())[-1]
    undelay = delay_applier(ctx, laggard, delay)
    ctx.wait_for_more_writes(10, what="writes the laggard has received but not applied")
    heal_partition = inject_partition(ctx)

    def heal() -> None:
        heal_partition()
        undelay()
    return heal


def cut_from_primary(ctx: FaultContext, replica: str) -> Heal:
    """``replica`` no longer reaches the primary (it keeps the DCS and its other peers), so the
    other replica alone receives and acknowledges what follows."""
    ctx.lab.isolate(replica, from_hosts=[ctx.primary])
    heal = ctx.step(f"cut {replica} off from {ctx.primary}", lambda: ctx.lab.heal(replica))
    ctx.wait_for_more_writes(10, what=f"writes acknowledged without {replica}")
    return heal


def inject_partition_laggard_holds_more(ctx: FaultContext, delay: int = 30) -> Heal:
    """One replica applies ``delay`` s behind, the other is cut off from the primary, then the
    primary's host is partitioned: only the laggard holds the last acknowledged commits."""
    ctx.wait_until_writing(before="delaying a replica")
    up_to_date, laggard = sorted(ctx.others())
    undelay = delay_applier(ctx, laggard, delay)
    heal_cut = cut_from_primary(ctx, up_to_date)
    heal_partition = inject_partition(ctx)

    def heal() -> None:
        heal_partition()
        heal_cut()
        undelay()
    return heal


def inject_dcs_cut(ctx: FaultContext) -> Heal:
    """Failsafe: the primary's host loses the DCS only; its peers still reach it and the DCS. They
    promise while the lock names it, refuse once its lease has expired there; it fences within
    one promise period, and a peer races once its own promise has ended."""
    ctx.lab.isolate(ctx.primary, from_hosts=[DCS])
    return ctx.step(f"cut {ctx.primary} off from the DCS", lambda: ctx.lab.heal(ctx.primary))


def inject_dcs_and_peer_cut(ctx: FaultContext) -> Heal:
    """Failsafe: the primary's host loses the DCS and one peer: that peer cannot promise, so the
    primary fences at its lease deadline, as without failsafe."""
    peer = sorted(ctx.others())[0]
    ctx.lab.isolate(ctx.primary, from_hosts=[DCS, peer])
    return ctx.step(f"cut {ctx.primary} off from the DCS and {peer}", lambda: ctx.lab.heal(ctx.primary))


FAULTS: tuple[Fault, ...] = (
    Fault("partition", "the primary's host cut off from the DCS and its peers (network namespaces)",
          inject_partition, True, lambda t: 60, rto_goal=lambda t: t.ttl + 2, netns=True,
          leaseless=True),
    Fault("partition-lagging-replica", "a replica applies 30 s behind, then the primary's host "
          "is cut off from the DCS and its peers", inject_partition_lagging_replica, True,
          lambda t: 60, rto_goal=lambda t: t.ttl + 2, netns=True, leaseless=True),
    Fault("partition-laggard-holds-more", "a replica applies 30 s behind, the other loses the "
          "primary, then the primary's host is cut off: only the laggard has the last commits",
          inject_partition_laggard_holds_more, True, lambda t: 60, rto_goal=lambda t: t.ttl + 2,
          netns=True, leaseless=True),
    Fault("dcs-cut+failsafe", "failsafe on: the primary's host cut off from the DCS only (its peers "
          "still reach it and the DCS)", inject_dcs_cut, True, lambda t: 60, netns=True, failsafe=True,
          leaseless=True),
    Fault("dcs-and-peer-cut+failsafe", "failsafe on: the primary's host cut off from the DCS and one "
          "peer", inject_dcs_and_peer_cut, True, lambda t: 60, netns=True, failsafe=True, long=True,
          leaseless=True),
)


@dataclass
class PartitionOutcome:
    """What happened, with times in seconds from the moment the partition was applied."""

    fault: str
    isolated: str
    cut_from: list[str]
    lagging: str | None
    cut_from_primary_first: str | None = None  # partition-laggard-holds-more
    new_primary: str | None = None
    lock_taken_after: float | None = None  # the new holder's AcquireLock, from its log
    # When each step of the takeover finished, from the new primary's log (AcquireLock, Promote,
    # AdmitGate, RegisterDiscovery), and when the old primary's agent began to fence, from its
    # own log (its gate stops forwarding at the lease deadline by itself, before that if late).
    new_primary_steps: dict[str, float] = field(default_factory=dict)
    old_fencing_after: float | None = None
    first_new_ack_after: float | None = None
    last_old_ack_after: float | None = None  # the old primary's last acknowledged write
    old_gate_deadline_after: float = 0.0  # TTL - margin: no old ack may come later than this
    acknowledged: int = 0
    refused: int = 0
    unknown: int = 0
    lost: list[int] = field(default_factory=list)
    overlapping: int = 0  # old-primary acks at or after the new primary's first ack
    after_heal: str = ""  # "replica" or "fenced: <reason>"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def delay_replica(lab: LabCluster, name: str, seconds: int,
                  changing: Callable[[], None] = lambda: None) -> None:
    """Make ``name`` apply ``seconds`` behind its source (MASTER_DELAY). It still receives and
    acknowledges every event at once, so lossless commits keep flowing. Nothing to do on a node
    without replication (a laggard that was promoted meanwhile).

    A replica whose agent stopped its IO thread (its source lost the lock) only has its applier
    changed, keeping the relay log: restarting the IO thread would fetch the fenced old primary's
    unacknowledged commits and make the replica errant, which no operator would do either.

    Lifting the delay (``seconds`` 0) keeps the relay log too: it may hold the only copy of
    acknowledged commits (their source gone), and CHANGE MASTER in GTID mode would discard it
    (seed 102 of the soak lost 12 that way). Receiving stops, the applier catches up, and the
    agent restarts the IO thread as for any replica that stopped receiving.

    ``changing`` is called once it is about to change something (a fault registers its undo).
    """
    with lab.connect(name) as conn, conn.cursor(pymysql.cursors.DictCursor) as cur:
        cur.execute("SHOW SLAVE STATUS")
        status = cur.fetchone()
        if status is None or status.get("SQL_Delay") == seconds:
            return
        changing()
        if status["Slave_IO_Running"] != "No" and seconds == 0:
            cur.execute("STOP SLAVE IO_THREAD")
        elif status["Slave_IO_Running"] != "No":
            cur.execute("STOP SLAVE")
            cur.execute("CHANGE MASTER TO MASTER_DELAY = %s", (seconds,))
            cur.execute("START SLAVE")
            # Until it reconnects it acknowledges nothing: a fault that cuts the other replica
            # right after this would stall the primary's commits instead of testing the race.
            wait_until(lambda: _io_thread_connected(cur), timeout=10, what=f"{name} to reconnect")
            return
        cur.execute("STOP SLAVE SQL_THREAD")
        cur.execute("SHOW SLAVE STATUS")
        applier = cur.fetchone()
        assert applier is not None  # stopping a thread keeps the replication configured
        cur.execute("CHANGE MASTER TO MASTER_DELAY = %s, RELAY_LOG_FILE = %s, RELAY_LOG_POS = %s",
                    (seconds, applier["Relay_Log_File"], applier["Relay_Log_Pos"]))
        cur.execute("START SLAVE SQL_THREAD")


def _io_thread_connected(cur: Any) -> bool:
    cur.execute("SHOW SLAVE STATUS")
    row = cur.fetchone()
    return row is not None and row["Slave_IO_Running"] == "Yes"


def run_partition(lab: LabCluster, *, fault: str = "partition", table: str = "app.partition_probe",
                  warmup_acks: int = 20, replica_delay: int = 30, election_timeout: float = 30.0,
                  rejoin_timeout: float = 30.0, writer_timeout: float = 2.0) -> PartitionOutcome:
    """Run one partition fault against a settled, namespaced lab with agents; return the outcome.

    The caller asserts on the outcome (tests) or aggregates it (benchmarks). The lab is healed
    before this returns, also on failure.
    """
    if fault not in FAULT_NAMES:
        raise LabError(f"unknown fault {fault!r} (have {', '.join(FAULT_NAMES)})")
    if lab.netns is None:
        raise LabError(f"the {fault} fault needs a lab started with netns=True")
    old = lab.wait_settled()
    replicas = [a.name for a in lab.agents if a.name != old]
    lagging = replicas[-1] if fault in LAGGING_VARIANTS else None
    cut_first = replicas[0] if fault == "partition-laggard-holds-more" else None
    tuning = lab.extra.get("agent_tuning", {})
    old_address = lab.agent(old).address

    writer = DiscoveryWriter(lab, table, timeout=writer_timeout)
    writer.create_table(old)
    if lagging is not None:
        delay_replica(lab, lagging, replica_delay)
    lab.in_client(writer.start)  # the writer's thread and sockets live in the client namespace
    outcome = PartitionOutcome(fault=fault, isolated=old, cut_from=[], lagging=lagging,
                               cut_from_primary_first=cut_first)
    heal: Heal = lambda: lab.heal(old)  # noqa: E731  (replaced by the injector's own heal)
    heal_cut: Heal = lambda: None  # noqa: E731
    context = FaultContext(lab, AgentTuning(**tuning), writer, old, table)
    try:
        wait_until(lambda: len(writer.acknowledged) >= warmup_acks, timeout=30,
                   what=f"{warmup_acks} acknowledged writes before the partition")
        if cut_first is not None:
            heal_cut = cut_from_primary(context, cut_first)
        partitioned_wall, partitioned = time.time(), time.monotonic()
        # The delay (lagging variants) and the first cut are already in place: the matrix's
        # injector for the plain partition is the one to use here, as the matrix runs it.
        heal = inject_partition(context)
        outcome.cut_from = [h for h in lab.netns.hosts if h not in (old, CLIENT)]
        outcome.old_gate_deadline_after = float(tuning.get("ttl", 0.0)) - float(tuning.get("margin", 0.0))

        def new_primary() -> str | None:
            return next((p for p in lab.primaries() if p != old), None)
        try:
            outcome.new_primary = wait_until(new_primary, timeout=election_timeout,
                                             what=f"a primary other than the isolated {old}")
            first = wait_until(lambda: writer.first_ack_after(partitioned, not_via=old_address),
                               timeout=election_timeout, what="the new primary's first acknowledged write")
            outcome.first_new_ack_after = first - partitioned
        except WaitTimeout:
            pass  # reported as None; the caller decides whether that fails
        if outcome.new_primary is not None:
            new_log = lab.agent(outcome.new_primary).log
            for step in ("AcquireLock", "Promote", "AdmitGate", "RegisterDiscovery"):
                if times := log_times(new_log, partitioned_wall, f'"action": "{step}"', '"ok": true'):
                    outcome.new_primary_steps[step] = round(min(times) - partitioned_wall, 3)
            outcome.lock_taken_after = outcome.new_primary_steps.get("AcquireLock")
        if fencing := log_times(lab.agent(old).log, partitioned_wall, '"event": "role"', '"to": "fencing"'):
            outcome.old_fencing_after = round(min(fencing) - partitioned_wall, 3)
    finally:
        heal()
        heal_cut()
        context.undo_steps()  # a cut whose wait for writes failed is undone too
        writer.finish()
    old_acks = [t for t, via in writer.acknowledged.values() if via == old_address]
    if old_acks:
        outcome.last_old_ack_after = max(old_acks) - partitioned
    if outcome.first_new_ack_after is not None:
        first_new = partitioned + outcome.first_new_ack_after
        outcome.overlapping = sum(1 for t in old_acks if t >= first_new)
    outcome.acknowledged = len(writer.acknowledged)
    outcome.refused = writer.refused
    outcome.unknown = len(writer.unknown)
    if outcome.new_primary is not None:
        outcome.lost = sorted(set(writer.acknowledged) - _row_ids(lab, outcome.new_primary, table))
    outcome.after_heal = _after_heal(lab, old, rejoin_timeout)
    return outcome


def _row_ids(lab: LabCluster, node: str, table: str) -> set[int]:
    with lab.connect(node) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT id FROM {table}")
        return {int(row[0]) for row in cur.fetchall()}


def _after_heal(lab: LabCluster, old: str, timeout: float) -> str:
    """Wait for the healed node to rejoin as a replica or to refuse for errant GTIDs (the only
    reason that lasts); on timeout, say where it is stuck."""
    def settled() -> str | None:
        status = lab.agent_status(old)
        if status.get("role") == "replica" and status.get("database", {}).get("replication_source"):
            return "replica"
        if status.get("role") == "fenced" and status.get("fenced_reason") == "errant_gtids":
            errant = status.get("database", {}).get("errant") or []
            return f"fenced: errant_gtids {','.join(errant)}".rstrip()
        return None
    try:
        return wait_until(settled, timeout=timeout, what=f"{old} to rejoin or refuse for errant GTIDs")
    except WaitTimeout:
        status = lab.agent_status(old)
        return (f"unsettled: role={status.get('role')} fenced_reason={status.get('fenced_reason')} "
                f"refusals={json.dumps(status.get('refusals'))}")
