"""Whether a FENCED former primary may remove its errant transactions by itself (pure).

A former primary's errant transactions (GTIDs the new primary lacks) were never acknowledged to
any client when the node ran lossless: AFTER_SYNC semi-sync returns OK only once a replica holds
the commit, and the new primary holds everything any replica held. That is only proven when the
evidence recorded at fencing shows semi-sync on, AFTER_SYNC, and no fallback to asynchronous
replication. Then the node may truncate them (the adapter saves them to a file first); otherwise,
or once an attempt failed, it stays FENCED and says why. The transactions must also be this
node's own: anything written by another server id came from elsewhere and is never removed here.
"""

from __future__ import annotations

import enum

from dbfence.agent.actions import ActionReason, TruncateErrant
from dbfence.agent.observation import ErrantCheck, RepairView


class RepairHold(enum.Enum):
    """Why no repair is started now (the values are refusal reasons of the core)."""

    RUNNING = "repair_running"
    UNSAFE = "repair_unsafe"
    GAVE_UP = "repair_gave_up"


def plan_repair(mode: str, repair: RepairView, errant: ErrantCheck,
                server_id: int | None) -> TruncateErrant | tuple[RepairHold, str] | None:
    """The repair to start for ``errant`` (against the ready primary ``errant.against``), why
    not, or None when ``mode`` leaves errant transactions to an operator."""
    if mode == "manual":
        return None
    if repair.running:
        return RepairHold.RUNNING, repair.saved_file
    if repair.gave_up:
        return RepairHold.GAVE_UP, repair.gave_up
    if repair.evidence_problem is not None:
        return RepairHold.UNSAFE, repair.evidence_problem
    # No GTIDs: mysqld is down (killed by the fence) and the adapter takes only this server's.
    foreign = [text for text in errant.gtids if server_id is None or _writer(text) != server_id]
    if foreign:
        return RepairHold.UNSAFE, "not written by this node: " + ",".join(foreign or errant.gtids)
    return TruncateErrant(errant.against, errant.gtids, ActionReason.REPAIR_UNACKNOWLEDGED)


def _writer(text: str) -> int | None:
    """The server id of an errant range as the adapter names it (``0-1-3``, ``0-1-3..0-1-5``,
    ``0-1-*..0-1-5 (...)``: one (domain, server) stream each); None when it cannot be read."""
    parts = text.split("-", 2)
    if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit():
        return int(parts[1])
    return None
