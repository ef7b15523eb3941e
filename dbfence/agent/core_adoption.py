"""Adopting a running cluster (issue 17): the rules, pure, over one observation.

A *new cluster* is one whose DCS holds no history at all (``Observation.new_cluster``): no agent
ever led it. Its mysqld servers may already run as a primary that takes writes from clients
connected straight to it, and replicas that replicate from that primary. Two rules let agents
start there in any order without moving anything (docs/decision-core.md, "Adopting a running
cluster"):

(a) **A replica does not race past its unmanaged source.** While the lock is free and its IO
    thread runs (connected, or retrying) from a source that no agent manages yet (no member
    record, or a record that still says STARTING: that agent has neither fenced nor adopted it),
    a replica neither races nor stops receiving. The source may be taking writes: a replica that
    promoted itself would make two writers, one that detached would stop acknowledging its
    lossless commits. A *retrying* IO thread counts too: the source may be alive behind a broken
    link, and if it is dead, the replicas still without an agent may hold acknowledged commits
    that no record shows (the model checker found that loss with "connected" only). A replica
    whose replication an operator stopped (``STOP SLAVE``) races as usual.

(b) **The primary's first agent adopts it without fencing.** A STARTING agent whose mysqld is
    writable and has no source takes the free lock *without* setting read-only or cutting anyone,
    then promotes as any lock holder does (its fencing token is written before its gate admits),
    when nothing shows another writer: no member record of a node that raced, holds or held the
    lock (CANDIDATE, PROMOTING, PRIMARY, FENCING, FENCED, or a gate admitting), no record of a
    node that holds more than it, no switchover to another node, no failsafe promise binding it.
    Until the facts are in (the DCS read, its history read, the probes passed once) it waits, for
    at most :data:`ADOPTION_WAIT_TTLS` TTLs; anything else and it starts as usual (fenced). A DCS
    read that *failed* before the history was ever read is not waited for: that is also what a
    managed primary's agent restarted during a DCS outage sees, and it must fence at once.

Why (b) cannot make a second writer: the node is already the one writer of its cluster (its
clients write to it directly), and it takes the lock only while the lock is free and nothing in
the DCS shows that any other node ever raced or held it. Any other node promotes only as the lock
holder, and a replica of it waits by (a) until it is PROMOTING or gave up (fenced: read-only). The
cluster stays *new* until its first primary admits (``RecordFailover`` then), so (a) keeps holding
while an adoption can still be retried. ``tests/agent/test_core_model_check_adopt.py`` checks both
rules in every interleaving of agent starts and faults of a 3-node model with the direct client.
"""

from __future__ import annotations

from dataclasses import dataclass

from dbfence.agent import failsafe
from dbfence.agent.core_config import CoreConfig
from dbfence.agent.gtid import GtidPosition
from dbfence.agent.observation import Observation
from dbfence.agent.state import Role, State

#: How long a STARTING agent waits for the facts an adoption needs, in TTLs from its start.
ADOPTION_WAIT_TTLS = 2.0

#: Roles of a member record that show a node which raced for the lock, holds it or held it.
_ELECTION_ROLES = frozenset({Role.CANDIDATE, Role.PROMOTING, Role.PRIMARY, Role.FENCING, Role.FENCED})


def unmanaged_source(obs: Observation) -> str | None:
    """Rule (a): the replication source, when it is a running primary no agent manages yet."""
    replication = obs.db.replication
    source = replication.source
    if source is None or obs.new_cluster is False or not replication.receiving:
        return None
    if not obs.lock.reachable or obs.lock.holder is not None:
        return None  # unreadable: nobody races anyway; held: the holder is followed
    record = obs.member(source)
    if record is not None and record.info.role is not Role.STARTING:
        return None
    return source


def unmanaged_source_detail(obs: Observation, source: str) -> str:
    link = "" if obs.db.replication.source_connected else " (IO thread not connected: retrying)"
    return f"replicating from an unmanaged source {source}{link}; start its agent first"


@dataclass(frozen=True, slots=True)
class Adopt:
    """Take the lock (or, holding it, promote) without fencing."""


@dataclass(frozen=True, slots=True)
class AwaitFacts:
    """Not known yet whether this node may adopt: wait (unfenced) until ``until`` at the latest."""

    missing: str
    until: float


@dataclass(frozen=True, slots=True)
class NotAdopted:
    """This writable node is not adopted: it starts as usual (fenced), for this reason."""

    why: str


Verdict = Adopt | AwaitFacts | NotAdopted | None


def adoption(obs: Observation, state: State, config: CoreConfig) -> Verdict:
    """Rule (b), for a STARTING agent. None: not a running primary of a new cluster (a read-only
    or replicating mysqld, or a cluster with a history): nothing to adopt.

    A mysqld not read yet (``read_only`` None: the agent's first round comes before its first
    probe, or mysqld is down) may be a running primary: on a new cluster, or one whose history is
    not read yet, the agent waits for it too rather than set read-only on a guess."""
    db = obs.db
    if db.read_only is True or db.replication.source is not None or obs.new_cluster is False:
        return None
    refused = _refused(obs, config)
    if refused is not None:
        return NotAdopted(refused) if db.read_only is False else None
    if not obs.lock.reachable and obs.lock.read_yet and obs.new_cluster is None and not obs.lease.held:
        # A DCS that fails to answer cannot show that the cluster is new: this may be a managed
        # primary's agent restarted during an outage, and after one TTL another node may hold the
        # lock. It starts fenced, as it always did; an adoption needs the DCS read once.
        return NotAdopted("the DCS cannot be read") if db.read_only is False else None
    missing = _missing(obs)
    if missing is None or obs.lease.held:
        # Holding the lease it took to adopt, a fact gone missing meanwhile (a probe round that
        # timed out) is the promotion's business: it writes its token before admitting anyway.
        return Adopt()
    until = state.since + ADOPTION_WAIT_TTLS * config.ttl
    if obs.now >= until:
        return NotAdopted(f"{missing} after {ADOPTION_WAIT_TTLS * config.ttl:g}s")
    return AwaitFacts(missing, until)


def _refused(obs: Observation, config: CoreConfig) -> str | None:
    """What shows that adopting could make a second writer, or that an operator wants otherwise."""
    me = config.node_name
    if obs.intents.paused:
        return "paused"
    if config.priority <= 0:
        return "priority 0: this node never becomes primary"
    holder = obs.lock.holder
    if holder is not None and not obs.lease.held:
        return f"{holder} holds the lock"
    target = obs.intents.switchover_target
    if target is not None and target != me:
        return f"a switchover to {target} is requested"
    blocked = failsafe.race_blocked(obs.failsafe, me, obs.now)
    if blocked is not None:
        return f"{blocked[0]}: {blocked[1]}"
    holds, server_id = obs.db.holds, obs.db.server_id
    for record in obs.members:
        info = record.info
        if record.name == me:
            continue
        if info.role in _ELECTION_ROLES or info.gate_admitting:
            return f"{record.name} is {info.role.value}"
        if (holds is not None and server_id is not None and info.holds is not None
                and holds_what_it_lacks(info.holds, holds, server_id)):
            return f"{record.name} holds {info.holds}, more than this node"
    return None


def running_primary(obs: Observation) -> bool:
    """This node is a new cluster's running primary (being adopted): writable, no source."""
    db = obs.db
    return (db.read_only is False and db.replication.source is None and obs.new_cluster is not False
            and db.server_id is not None)


def holds_what_it_lacks(theirs: GtidPosition, ours: GtidPosition, server_id: int) -> bool:
    """Whether a peer holds a transaction that a running primary lacks: one written by another
    server. Its own transactions that a replica shows beyond the primary's last read of itself
    are its own writes, read a moment later (its clients keep writing, hundreds a second, while
    its facts are read on the probe interval: seen in the e2e test as a step-down)."""
    for gtid in theirs.gtids:
        mine = ours.get(gtid.domain_id)
        if (mine is None or gtid.seq_no > mine.seq_no) and gtid.server_id != server_id:
            return True
    return False


def _missing(obs: Observation) -> str | None:
    """A fact the adoption needs that is not in yet."""
    if obs.db.read_only is None:
        return "mysqld not read yet"
    if not obs.lock.reachable:
        return "the DCS cannot be read" if obs.lock.read_yet else "the DCS not read yet"
    if obs.new_cluster is None:
        return "the cluster's history in the DCS is not read yet"
    db = obs.db
    if not db.health.healthy:
        return "database not healthy: " + ", ".join(db.health.reasons)
    if db.position is None or db.server_id is None:
        return "GTID position unknown"
    return None
