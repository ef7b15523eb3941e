"""Actions the decision core asks the agent loop to perform, as plain data.

Execution contract (the loop of the agent daemon):

* Execute the actions of one :class:`~dbfence.agent.decide.Decision` **in order**,
  each with its own timeout, and **attempt every one of them even if an earlier one
  failed** (a failed FailDiscoveryCheck must not stop BlockGate). No action ever
  depends on the success of an earlier action of the same batch: the core emits a
  dependent step only in a later decision, after the observation shows the effect
  of the earlier one (e.g. ReleaseLock only once the fence is observed complete).
* Failures are not reported as exceptions: the next observation simply shows the
  unchanged level (gate still admitting, read_only still False, ...), and the core
  asks again.
* Then observe again and call ``decide`` at the returned ``next_wakeup`` at the
  latest (earlier on an event such as a DCS watch firing).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from dbfence.agent.gtid import BinlogState
from dbfence.agent.observation import DiscoveryTag, MemberInfo


class ActionReason(enum.Enum):
    """Why an action was emitted."""

    # fencing causes (also carried by the fence actions)
    DB_UNHEALTHY = "db_unhealthy"
    LEASE_EXPIRED = "lease_expired"
    LEASE_LOST = "lease_lost"
    SWITCHOVER = "switchover"
    ERRANT_GTIDS = "errant_gtids"
    STARTUP = "startup"
    NOT_PRIMARY = "not_primary"
    # lock
    LOCK_FREE_AND_ELIGIBLE = "lock_free_and_eligible"
    RENEWAL_DUE = "renewal_due"
    FENCE_COMPLETE = "fence_complete"
    UNWANTED_LEASE = "unwanted_lease"
    ADOPT_RUNNING_PRIMARY = "adopt_running_primary"  # a new cluster's writable primary, not fenced
    TAKEOVER_WITHOUT_PRIMARY = "takeover_without_primary"  # nobody else may race: holds it all
    # promotion
    PROMOTION = "promotion"
    FAILOVER_STARTED = "failover_started"
    FIRST_PRIMARY = "first_primary"  # a new cluster's first primary admits: the cluster is managed
    OVERTAKEN = "overtaken"
    PRIMARY_READY = "primary_ready"
    LEASE_EXTENDED = "lease_extended"
    SWITCHOVER_DONE = "switchover_done"
    SWITCHOVER_FAILED = "switchover_failed"
    # replicas
    FOLLOW_PRIMARY = "follow_primary"
    REJOIN = "rejoin"
    SOURCE_LOST_LOCK = "source_lost_lock"
    REPAIR_UNACKNOWLEDGED = "repair_unacknowledged"
    # a mysqld the fence killed holds what nobody live holds: recovered first, to take over
    REPAIR_WITHOUT_PRIMARY = "repair_without_primary"
    REBUILD_UNACKNOWLEDGED = "rebuild_unacknowledged"  # proven never acknowledged, not truncatable
    REBUILD_APPROVED = "rebuild_approved"  # not proven: an operator approved this rebuild
    # failsafe (docs/failsafe.md)
    DCS_UNREACHABLE = "dcs_unreachable"
    FAILSAFE_MEMBERS_CHANGED = "failsafe_members_changed"
    LEASE_RETAKEN = "lease_retaken"
    # member record
    MEMBER_CHANGED = "member_changed"
    MEMBER_HEARTBEAT = "member_heartbeat"


@dataclass(frozen=True, slots=True)
class AcquireLock:
    """Try to create the cluster lock key with this agent's lease (never overwrite)."""

    reason: ActionReason


@dataclass(frozen=True, slots=True)
class RenewLock:
    """Keep the lease alive; on success the adapter moves the deadline to send time + ttl - margin."""

    token: int
    reason: ActionReason


@dataclass(frozen=True, slots=True)
class ReleaseLock:
    """Delete the lock key only if it still carries ``token`` (compare-and-delete)."""

    token: int
    reason: ActionReason


@dataclass(frozen=True, slots=True)
class AdmitGate:
    """Arm the gate: forward traffic while ``now < deadline`` (checked by the gate per chunk)."""

    token: int
    deadline: float
    reason: ActionReason


@dataclass(frozen=True, slots=True)
class BlockGate:
    """Refuse new clients; with ``cut_connections`` also close every open client connection.

    ``drain`` > 0 (switchover): an admitting gate first refuses new clients and closes each
    connection between transactions, for up to ``drain`` seconds, then blocks and cuts the rest.
    """

    cut_connections: bool
    reason: ActionReason
    drain: float = 0.0


@dataclass(frozen=True, slots=True)
class SetReadOnly:
    """``SET GLOBAL read_only`` (True also kills writing client sessions in the adapter)."""

    read_only: bool
    reason: ActionReason


@dataclass(frozen=True, slots=True)
class WaitRelayLog:
    """Wait up to ``timeout`` seconds for the SQL thread to apply the received relay log."""

    timeout: float
    reason: ActionReason


@dataclass(frozen=True, slots=True)
class Promote:
    """Stop replication and forget the source (no more replicated writes arrive)."""

    semi_sync: bool
    reason: ActionReason


@dataclass(frozen=True, slots=True)
class Repoint:
    """Replicate from ``primary`` using GTID (MASTER_USE_GTID=slave_pos)."""

    primary: str
    semi_sync: bool
    reason: ActionReason


@dataclass(frozen=True, slots=True)
class TruncateErrant:
    """Remove errant transactions that were provably never acknowledged: save them to a file,
    SIGKILL mysqld, start it so that crash recovery truncates the in-doubt binlog tail, and check
    that what remains is contained in ``primary``'s GTID set (docs/operations.md, repair).

    ``reference`` (with ``primary`` empty): no primary yet, a mysqld the fence killed is repaired
    against what the other members hold (their binlog states merged), so that it can take over
    (``dbfence.agent.decide_takeover.repair_reference``)."""

    primary: str
    gtids: tuple[str, ...]
    reason: ActionReason
    reference: BinlogState | None = None


@dataclass(frozen=True, slots=True)
class RebuildNode:
    """Clone this node from ``donor`` (a healthy replica) with mariadb-backup: save the errant
    transactions against ``primary``, keep the old data directory aside, start mysqld on the copy
    and replicate from its GTID position (docs/operations.md, repair)."""

    primary: str
    donor: str
    gtids: tuple[str, ...]
    reason: ActionReason


@dataclass(frozen=True, slots=True)
class DetachSource:
    """Stop receiving the source's binlog (IO thread only): the SQL thread keeps applying
    what the relay log already holds, and the source stays configured for a later restart."""

    reason: ActionReason


@dataclass(frozen=True, slots=True)
class WriteFencingToken:
    """Write the lock's fencing token into the epoch table of the local mysqld."""

    token: int
    reason: ActionReason


@dataclass(frozen=True, slots=True)
class RecordFailover:
    """Store the observation time of this failover in the DCS (starts the cooldown)."""

    reason: ActionReason


@dataclass(frozen=True, slots=True)
class ClearSwitchover:
    """Remove the switchover intent from the DCS once it has been carried out."""

    reason: ActionReason


@dataclass(frozen=True, slots=True)
class PublishMember:
    """Write this agent's member record (attached to its own lease/session)."""

    info: MemberInfo
    reason: ActionReason


@dataclass(frozen=True, slots=True)
class RegisterDiscovery:
    """Advertise this node under ``tag`` and keep its discovery check passing."""

    tag: DiscoveryTag
    reason: ActionReason


@dataclass(frozen=True, slots=True)
class FailDiscoveryCheck:
    """Make the discovery check fail so clients stop resolving to this node."""

    reason: ActionReason


@dataclass(frozen=True, slots=True)
class AskPromises:
    """Ask every one of ``members`` to promise not to race for ``duration`` seconds, since we hold
    ``token``; the answers arrive in later observations (``FailsafeView.last_round``)."""

    token: int
    members: tuple[str, ...]
    duration: float
    reason: ActionReason


@dataclass(frozen=True, slots=True)
class PublishFailsafeMembers:
    """Write the failsafe member list (not attached to any lease) while we hold ``token``."""

    token: int
    members: tuple[str, ...]
    reason: ActionReason


Action = (
    AcquireLock | RenewLock | ReleaseLock | AdmitGate | BlockGate | SetReadOnly | WaitRelayLog
    | Promote | Repoint | TruncateErrant | RebuildNode | DetachSource | WriteFencingToken | RecordFailover
    | ClearSwitchover
    | PublishMember
    | RegisterDiscovery | FailDiscoveryCheck
    | AskPromises | PublishFailsafeMembers
)
