"""Operator commands the agent's HTTP API accepts, turned into the cluster's intent in the DCS."""

from __future__ import annotations

import time

from dbfence.agent.repair_keeper import RepairKeeper
from dbfence.discovery.http_api import CommandResult
from dbfence.locks.base import LeaseLock
from dbfence.locks.errors import LockError
from dbfence.locks.model import Intent
from dbfence.locks.switchover import switchover_refusal


def answer_command(lock: LeaseLock, node: str, max_lag: float, command: str,
                   args: dict[str, str]) -> CommandResult:
    """``pause``, ``resume`` or ``switchover?to=NODE``, written as the cluster's intent in the DCS
    (a switchover only when ``switchover_refusal`` finds nothing against its target)."""
    try:
        current = lock.read_intent()
        if command == "pause":
            lock.write_intent(Intent(paused=True, pause_reason=args.get("reason", "operator"),
                                     requested_by=node, requested_at=time.time()))
            return CommandResult(200, "cluster paused")
        if command == "resume":
            lock.write_intent(Intent(switchover_target=current.switchover_target))
            return CommandResult(200, "cluster resumed")
        target = args.get("to", "")
        if not target:
            return CommandResult(400, "switchover needs ?to=NODE")
        refusal = switchover_refusal(lock.snapshot(strict=False), target, max_lag)
        if refusal:
            return CommandResult(409, f"refused: {refusal}")
        lock.write_intent(Intent(paused=current.paused, pause_reason=current.pause_reason,
                                 switchover_target=target, requested_by=node, requested_at=time.time()))
        return CommandResult(202, f"switchover to {target} requested")
    except LockError as exc:
        return CommandResult(503, f"DCS unavailable: {exc}")


def approve_rebuild(repair: RepairKeeper, args: dict[str, str]) -> CommandResult:
    """``POST /rejoin/approve``: this node may be rebuilt once (``[rejoin] mode = rebuild``)."""
    try:
        return CommandResult(200, repair.approve_rebuild(args.get("by", "operator")))
    except ValueError as exc:
        return CommandResult(409, f"refused: {exc}")
    except OSError as exc:
        return CommandResult(500, f"cannot record the approval: {exc}")
