"""The executor's wiring of the ``[rejoin]`` repair keeper: the fence, the repair starters, and
the semi-sync term's own doings that the evidence must not hold against the node.

Why a module of its own: :class:`~dbfence.agent.executor.Executor` runs every action; the actions
that reach the repair keeper (a fence, a truncation, a rebuild) and the agent's own semi-sync
steps it counts (a switch-off as the node demotes, an ack wait the token write ends) share only
the executor's adapters, so they are mixed in from here (:class:`RepairWiring`), like
:mod:`repair_rebuild` is into the keeper, and the executor stays one object for the loop.

Layout: the lookups in the DCS snapshot (where a member's mysqld is, who holds the lock), then
the fence, the repair starters, the own semi-sync steps and what status shows of a repair.

Invariants: without a repair keeper every step runs plainly (a repair action then fails with a
clear error); a repair starts in the keeper's thread, never on the loop's; semi-sync's switch-off
as the node demotes is counted for the evidence only while the gate blocks.
"""

from __future__ import annotations

from collections.abc import Callable

from dbfence.agent.actions import ActionReason, RebuildNode, TruncateErrant
from dbfence.agent.observation import MemberInfo
from dbfence.agent.repair_keeper import RepairKeeper
from dbfence.agent.sensors import DcsSensor
from dbfence.breaker import Admitting, Gate
from dbfence.locks.model import MemberRecord
from dbfence.mysql.actions import MysqlActions
from dbfence.mysql.connection import Endpoint
from dbfence.mysql.errors import MysqlUnavailableError
from dbfence.mysql.gtid import GtidState
from dbfence.mysql.monitor import HealthMonitor
from dbfence.mysql.probes import probe_process
from dbfence.mysql.token_writer import FencingTokenWriter
from dbfence.mysql.verdict import Reason


class RepairWiring:
    """The repair keeper's side of the executor, mixed into Executor, which sets every attribute
    declared here."""

    repair: RepairKeeper | None
    gate: Gate
    dcs: DcsSensor
    mysql: MysqlActions
    monitor: HealthMonitor
    token_writer: FencingTokenWriter

    # ------------------------------------------------------------------ the DCS snapshot
    def _holder_record(self, node: str) -> MemberRecord:
        snapshot = self.dcs.latest.snapshot
        if snapshot is not None:
            for entry in snapshot.members:
                if entry.record.node == node:
                    return entry.record
        raise LookupError(f"no member record for {node}: cannot tell where its mysqld is")

    def _lock_holder(self) -> str | None:
        """The lock holder as last read from the DCS ("?" when unread or unknown): a repair
        retrying against one primary stops once another holds the lock (soak seed 405)."""
        snapshot = self.dcs.latest.snapshot
        if snapshot is None:
            return "?"
        if snapshot.lock is None:
            return None
        return "?" if snapshot.lock.holder is None else snapshot.lock.holder.node

    # ------------------------------------------------------------------ fence and repairs
    def _fence(self, reason: ActionReason) -> None:
        self._refuse_if_mysqld_stopped()
        if (self.repair is not None and reason is not ActionReason.SWITCHOVER
                and self.repair.fence_by_crash()):
            raise MysqlUnavailableError(Reason.PROCESS_GONE, "killed by the fence: commits waited "
                                        "for a semi-sync ack ([rejoin] mode = truncate)")
        keep_ids = self.monitor.agent_connection_ids()
        if self.repair is None:
            self.mysql.fence(keep_ids=keep_ids)
        else:  # counts the ack waits its KILLs end, for the evidence
            self.repair.fence(lambda: self.mysql.fence(keep_ids=keep_ids))

    def _refuse_if_mysqld_stopped(self) -> None:
        """A stopped mysqld (SIGSTOP, traced) answers nothing: asking it would only wait for the
        connect timeout, and the release of a complete fence would wait behind it."""
        pid_file = self.monitor.prober.target.pid_file
        if pid_file is None:
            return
        verdict = probe_process(pid_file)
        if verdict.reason is Reason.PROCESS_STOPPED:
            raise MysqlUnavailableError(Reason.PROCESS_STOPPED, f"not asked: {verdict.detail}")

    def _truncate(self, action: TruncateErrant) -> None:
        """Start the repair in its own thread (it kills and restarts mysqld: seconds to minutes)."""
        if self.repair is None:
            raise RuntimeError("no repair keeper: [rejoin] is not configured")
        if action.reference is not None:  # no primary yet: what the other members hold
            reference = GtidState.parse(str(action.reference))
            self.repair.start_truncate(action, lambda: reference, lambda: self._lock_holder() is None)
            return
        record = self._holder_record(action.primary)
        target = MysqlActions(Endpoint(record.mysql_host, record.mysql_port), self.mysql.credentials,
                              name=action.primary)
        self.repair.start_truncate(action, lambda: target.gtid_positions().history,
                                   lambda: self._lock_holder() == action.primary)

    def _rebuild(self, action: RebuildNode) -> None:
        """Start the rebuild from the donor in its own thread (minutes: copy, prepare, restart)."""
        if self.repair is None:
            raise RuntimeError("no repair keeper: [rejoin] is not configured")
        record = self._holder_record(action.donor)
        if not record.api_url:
            raise LookupError(f"{action.donor}'s member record has no HTTP API address to copy from")
        primary = self._holder_record(action.primary)
        target = MysqlActions(Endpoint(primary.mysql_host, primary.mysql_port), self.mysql.credentials,
                              name=action.primary)
        self.repair.start_rebuild(action, record.api_url, lambda: target.gtid_positions().history)

    # ------------------------------------------------------------------ own semi-sync steps
    def _own_switch_off(self, switch_off: Callable[[], None]) -> None:
        """Semi-sync's primary side turned off as the node demotes (the repoint of a former
        primary): MariaDB counts a fallback, which is the agent's own and not held against a
        later term judged since mysqld start. Sound only with the gate closed: a commit the
        switch-off releases with an OK then never reaches its client. A Repoint comes only from
        FENCED or REPLICA (decide_fence.py, decide_replica.py), where the gate blocks; checked
        here too, and an admitting gate leaves the fallback counted."""
        if self.repair is None or isinstance(self.gate.state, Admitting):
            switch_off()
        else:
            self.repair.own_switch_off(switch_off)

    def _end_own_ack_wait(self, end: Callable[[], None]) -> None:
        """The token write waited too long for an ack: end it, counted for the repair evidence."""
        if self.repair is None:
            end()
        else:
            self.repair.end_own_ack_wait(end, self.token_writer.ended_why_text())

    # ------------------------------------------------------------------ status
    def _repair_reasons(self, info: MemberInfo) -> tuple[str, ...]:
        """What `dbfence status` shows of a repair: the saved file, or why it gave up."""
        if self.repair is None or info.role.value != "fenced":
            return ()
        view = self.repair.view()
        reasons = []
        if view.running:
            reasons.append("repair running")
        if view.gave_up:
            reasons.append(f"repair gave up: {view.gave_up}")
        if self.repair.hold and not view.gave_up:
            reasons.append(f"repair waits: {self.repair.hold}")
        if view.saved_file:
            reasons.append(f"errant transactions saved to {view.saved_file}")
        return tuple(reasons)
