"""One round of the fault matrix: a writer, the fault injected and held, the heal, the
settling, and the verdict of the pure history checker (:mod:`dbfence.lab.history`).
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from dbfence.lab.cluster import LabCluster
from dbfence.lab.fault_labs import FaultLab
from dbfence.lab.fault_model import Fault, FaultContext, inject
from dbfence.lab.final_state import read_final_state, read_tenures
from dbfence.lab.history import Attempt, FaultEvent, History, Outcome, Verdict, check
from dbfence.lab.wait import WaitTimeout, wait_until
from dbfence.lab.workload import DiscoveryWriter


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
        heal = inject(fault, ctx)
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
            try:
                heal()
            finally:
                ctx.undo_steps()  # whatever a heal that failed half-way left behind
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

