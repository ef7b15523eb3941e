"""The DCS's member records as the decision core sees them: ``last_seen`` on our own clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dbfence.agent.gtid import BinlogState, GtidPosition
from dbfence.agent.observation import MemberInfo, MemberRecord
from dbfence.agent.state import Role
from dbfence.locks.model import ClusterSnapshot


@dataclass
class MemberTracker:
    """Turns DCS member records into the core's records, with ``last_seen`` on our clock.

    A peer's record that vanishes is still reported, unchanged (and so soon stale), for
    ``keep_vanished`` seconds after it was last read. A record can vanish before its node is
    gone: a Consul session ended early, a stopping agent that closed its session. Until the
    node publishes again, a lossless race must still count what it held (the core counts stale
    records as rivals then); once it has surely been gone that long, it stops counting.
    """

    node: str = ""
    keep_vanished: float = 0.0
    seen: dict[str, tuple[Any, float]] = field(default_factory=dict)
    last_read: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def records(self, snapshot: ClusterSnapshot, now: float) -> tuple[MemberRecord, ...]:
        out = []
        self.problems = [str(p) for p in snapshot.problems]
        present = set()
        for entry in snapshot.members:
            raw = entry.record
            present.add(raw.node)
            previous = self.seen.get(raw.node)
            changed_at = now if previous is None or previous[0] != raw else previous[1]
            self.seen[raw.node] = (raw, changed_at)
            self.last_read[raw.node] = now
            record = self._record(raw, changed_at)
            if record is not None:
                out.append(record)
        for name in sorted(set(self.seen) - present):
            raw, changed_at = self.seen[name]
            if name == self.node or now - self.last_read.get(name, now) > self.keep_vanished:
                del self.seen[name]  # our own record is written anew; theirs has surely gone
                self.last_read.pop(name, None)
                continue
            record = self._record(raw, changed_at)
            if record is not None:
                out.append(record)
        return tuple(out)

    def _record(self, raw: Any, changed_at: float) -> MemberRecord | None:
        try:
            role = Role(raw.role)
            position = GtidPosition.parse(raw.gtid_position) if raw.gtid_position else None
            received = GtidPosition.parse(raw.gtid_received) if raw.gtid_received else None
        except ValueError as exc:
            self.problems.append(f"member {raw.node}: {exc}")
            return None
        binlog_state = None  # unknown: a takeover without a primary then proves nothing with it
        try:
            # Known with the position it was read with ("" is then an empty binlog).
            binlog_state = BinlogState.parse(raw.gtid_binlog_state) if raw.gtid_position else None
        except ValueError as exc:
            self.problems.append(f"member {raw.node}: binlog state: {exc}")
        at_kill = None  # published only while the fence's kill keeps its mysqld down ("": none)
        try:
            killed_text = raw.gtid_binlog_state_at_kill
            at_kill = BinlogState.parse(killed_text) if killed_text else None
        except ValueError as exc:
            self.problems.append(f"member {raw.node}: binlog state at the kill: {exc}")
        info = MemberInfo(name=raw.node, role=role, healthy=raw.healthy, position=position,
                          gate_admitting=raw.gate_state == "admitting", priority=raw.priority,
                          received=received, seen_token=raw.seen_token, server_id=raw.server_id,
                          binlog_state=binlog_state, binlog_state_at_kill=at_kill)
        return MemberRecord(info=info, last_seen=changed_at)
