"""Whether a FENCED former primary may remove its errant transactions by itself (pure).

A former primary's errant transactions (GTIDs the new primary lacks) were never acknowledged to
any client when the node ran lossless: AFTER_SYNC semi-sync returns OK only once a replica holds
the commit, and the new primary holds everything any replica held. That is only proven when the
evidence recorded at fencing shows semi-sync on, AFTER_SYNC, and no fallback to asynchronous
replication. The transactions must also be this node's own: anything written by another server
id came from elsewhere. One case needs no evidence: every errant transaction is one of this
node's own fencing-token writes (``ErrantCheck.only_own_tokens``, read from their binlog events
by the adapter), which carry no client data: a promotion nobody could acknowledge, or a takeover
without replicas, commits its token unacknowledged, and a kill -9 of mysqld or an agent restart
can leave no evidence at all (soak seeds 421, 423).

* ``truncate``: proven → TruncateErrant (the adapter saves them to a file first); otherwise, or
  once an attempt failed, the node stays FENCED and says why.
* ``rebuild``: proven → truncate first; if that fails (committed in the engine, so crash
  recovery keeps them) → RebuildNode from the primary, by itself: they were never acknowledged
  either way. Not proven (asynchronous, a fallback, no evidence, foreign GTIDs): a rebuild would
  throw away writes a client may have seen, so the node stays FENCED unless an operator approved
  one rebuild (Guarantee 4: "by itself only when it can prove none was ever acknowledged").
  A failed rebuild is not retried by itself.

Donors (:func:`choose_donors`): healthy replicas, the least behind the primary first, never the
switchover target (it is about to take the primary's load); the primary only when
``[rejoin] donor_primary`` allows it, and last: mariadb-backup blocks commits on its source for a
moment (BACKUP STAGE BLOCK_COMMIT), long enough under load for the primary's write probe to trip
and fail it over (seen in the lab). Without a donor the node waits for one.
"""

from __future__ import annotations

import enum

from dbfence.agent.actions import ActionReason, RebuildNode, TruncateErrant
from dbfence.agent.gtid import BinlogState, GtidPosition
from dbfence.agent.observation import ErrantCheck, MemberInfo, RepairView
from dbfence.agent.state import Role


class RepairHold(enum.Enum):
    """Why no repair is started now (the values are refusal reasons of the core)."""

    RUNNING = "repair_running"
    UNSAFE = "repair_unsafe"
    GAVE_UP = "repair_gave_up"


#: Appended to a refusal in rebuild mode, so that `dbfence status` says what would unblock it.
NEEDS_APPROVAL = "; a rebuild needs an operator's approval: dbfence rejoin approve --node {node}"
NO_DONOR = ("no healthy replica to copy from (a copy blocks its donor's commits: the primary only "
            "with [rejoin] donor_primary = true)")


def choose_donors(members: tuple[MemberInfo, ...], me: str, primary: str, switchover_target: str | None,
                  allow_primary: bool) -> tuple[str, ...]:
    """The members a rebuild may copy from, best first (``members``: the fresh records).

    Healthy replicas other than this node and the switchover target, the fewest transactions
    behind the primary first (a copy from a lagging replica starts further back, and lag often
    means load), ties by name; then the primary when ``allow_primary``. A node repairing itself
    is FENCED, never a replica, so it is never chosen."""
    by_name = {m.name: m for m in members}
    head = by_name[primary].position if primary in by_name else None
    replicas = [m for m in members if m.name not in (me, primary, switchover_target)
                and m.role is Role.REPLICA and m.healthy]
    replicas.sort(key=lambda m: (_behind(head, m.position), m.name))
    chosen = tuple(m.name for m in replicas)
    leader = by_name.get(primary)
    if allow_primary and leader is not None and leader.healthy and primary != me:
        chosen += (primary,)
    return chosen


def _behind(head: GtidPosition | None, position: GtidPosition | None) -> float:
    """Transactions ``position`` lacks of ``head`` (unknown: after every known one)."""
    if position is None:
        return float("inf")
    if head is None:
        return 0.0
    return float(sum(max(0, gtid.seq_no - position.seq_no(gtid.domain_id)) for gtid in head.gtids))


def plan_repair(mode: str, repair: RepairView, errant: ErrantCheck, server_id: int | None,
                donors: tuple[str, ...] = (), node: str = "NODE", *, reference: BinlogState | None = None
                ) -> TruncateErrant | RebuildNode | tuple[RepairHold, str] | None:
    """The repair to start for ``errant`` (against the ready primary ``errant.against``), why
    not, or None when ``mode`` leaves errant transactions to an operator. ``donors``: the
    members a rebuild may copy from, in order of preference (:func:`choose_donors`); ``node``:
    this node's name, for the approval command a refusal names. ``reference``: no primary, a
    killed mysqld judged against the other members' binlog states (``TruncateErrant.reference``)."""
    if mode == "manual":
        return None
    if repair.running:
        return RepairHold.RUNNING, repair.saved_file
    if repair.gave_up and (mode != "rebuild" or repair.gave_up_on == "rebuild"):
        return RepairHold.GAVE_UP, repair.gave_up
    problem = _unproven(repair, errant, server_id)
    if problem is None and not repair.gave_up:
        if reference is not None:
            return TruncateErrant("", errant.gtids, ActionReason.REPAIR_WITHOUT_PRIMARY, reference)
        return TruncateErrant(errant.against, errant.gtids, ActionReason.REPAIR_UNACKNOWLEDGED)
    if mode != "rebuild":
        assert problem is not None  # a failed truncation returned GAVE_UP above
        return RepairHold.UNSAFE, problem
    if problem is not None and not repair.rebuild_approved:
        return RepairHold.UNSAFE, problem + NEEDS_APPROVAL.format(node=node)
    if not donors:
        return RepairHold.UNSAFE, NO_DONOR
    # proven never acknowledged (the truncation could not remove them), or approved
    reason = ActionReason.REBUILD_UNACKNOWLEDGED if problem is None else ActionReason.REBUILD_APPROVED
    return RebuildNode(errant.against, donors[0], errant.gtids, reason)


def _unproven(repair: RepairView, errant: ErrantCheck, server_id: int | None) -> str | None:
    """Why the errant transactions are not proven unacknowledged (None: proven)."""
    # No GTIDs: mysqld is down (killed by the fence) and the adapter takes only this server's.
    foreign = [text for text in errant.gtids if server_id is None or _writer(text) != server_id]
    if errant.only_own_tokens and errant.gtids and not foreign:
        return None  # fencing tokens only: no client data, nothing a client was told of
    if repair.evidence_problem is not None:
        return repair.evidence_problem
    if foreign:
        return "not written by this node: " + ",".join(foreign)
    return None


def _writer(text: str) -> int | None:
    """The server id of an errant range as the adapter names it (``0-1-3``, ``0-1-3..0-1-5``,
    ``0-1-*..0-1-5 (...)``: one (domain, server) stream each); None when it cannot be read."""
    parts = text.split("-", 2)
    if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit():
        return int(parts[1])
    return None
