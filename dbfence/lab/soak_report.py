"""The soak's report: the fault timeline, the RTO distribution per fault kind, and the summary
line. Pure module: records in, text and JSON-ready dictionaries out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dbfence.lab.soak_checks import Breach


@dataclass(frozen=True, slots=True)
class RoleChange:
    """An agent's role change, from its log: ``at`` in seconds since the run began."""

    at: float
    node: str
    old: str
    new: str
    why: str | None = None


@dataclass(frozen=True, slots=True)
class FaultRecord:
    """One fault of the run as it happened. Times are seconds since the run began; ``injected``
    is None when the fault could not be injected (``error`` says why)."""

    burst: int
    kind: str
    trigger: str
    target: str | None
    planned_hold: float
    injected: float | None
    healed: float | None
    error: str | None = None
    rto: float | None = None  # the longest stretch without acknowledged writes; None: never back
    rto_known: bool = False  # False when writes never came back after it (rto is then None)
    cluster_did: tuple[str, ...] = ()

    def row(self) -> str:
        def at(value: float | None) -> str:
            return "-" if value is None else f"{value:8.2f}"
        if self.injected is None:
            return (f"{self.burst:>5} {self.kind:<28} {'-':>8} {'-':>8} {'-':>6}  "
                    f"not injected: {self.error}")
        rto = f"{self.rto:6.2f}" if self.rto is not None else "never " if self.rto_known else "     -"
        did = "; ".join(self.cluster_did) or "no role change"
        target = f" on {self.target}" if self.target else ""
        return (f"{self.burst:>5} {self.kind:<28} {at(self.injected)} {at(self.healed)} {rto}  "
                f"[{self.trigger}{target}] {did}")


TIMELINE_HEADER = f"{'burst':>5} {'fault':<28} {'start':>8} {'end':>8} {'RTO':>6}  what the cluster did"


def timeline(records: Iterable[FaultRecord]) -> str:
    lines = [TIMELINE_HEADER, "-" * len(TIMELINE_HEADER)]
    lines += [r.row() for r in records]
    return "\n".join(lines)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` in (0, 1]) of a non-empty sequence."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class KindStats:
    kind: str
    injected: int
    not_injected: int
    recovered: int
    never: int
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None

    def to_json(self) -> dict[str, Any]:
        def r(value: float | None) -> float | None:
            return None if value is None else round(value, 3)
        return {"kind": self.kind, "injected": self.injected, "not_injected": self.not_injected,
                "recovered": self.recovered, "never": self.never, "rto_p50_s": r(self.p50),
                "rto_p95_s": r(self.p95), "rto_p99_s": r(self.p99), "rto_max_s": r(self.max)}


def rto_by_kind(records: Iterable[FaultRecord]) -> list[KindStats]:
    """The RTO distribution of each fault kind, in three groups: faults that struck a whole
    cluster and recovered before any other fault struck (``kind``), such faults whose recovery a
    later fault of the burst interrupted (``kind (+overlap)``: its RTO is the whole burst's
    outage so far), and the overlaps themselves (``kind (overlap)``: from their own start, so they
    carry the outage they struck into). Mixing them said nothing about any."""
    rows = list(records)
    kinds: dict[str, list[FaultRecord]] = {}
    for record in rows:
        if record.trigger != "at-once":
            key = f"{record.kind} (overlap)"
        elif _interrupted(record, rows):
            key = f"{record.kind} (+overlap)"
        else:
            key = record.kind
        kinds.setdefault(key, []).append(record)
    stats = []
    for kind, group in sorted(kinds.items()):
        injected = [r for r in group if r.injected is not None]
        rtos = [r.rto for r in injected if r.rto is not None]
        stats.append(KindStats(
            kind, len(injected), len(group) - len(injected), len(rtos),
            sum(1 for r in injected if r.rto is None and r.rto_known),
            percentile(rtos, 0.5) if rtos else None, percentile(rtos, 0.95) if rtos else None,
            percentile(rtos, 0.99) if rtos else None, max(rtos) if rtos else None))
    return stats


def _interrupted(record: FaultRecord, rows: Sequence[FaultRecord]) -> bool:
    """Whether another fault of its burst struck after it and before writes came back, or before
    it was healed: its RTO is the longest stretch without writes from its start to the first write
    after its heal, so a fault that struck within its hold may be what that figure measures."""
    if record.injected is None:
        return False
    until = math.inf if record.rto is None else max(record.injected + record.rto, record.healed or 0.0)
    return any(other is not record and other.burst == record.burst and other.injected is not None
               and record.injected < other.injected < until for other in rows)


def rto_table(stats: Iterable[KindStats]) -> str:
    def s(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"
    header = (f"{'fault kind':<38} {'injected':>8} {'skipped':>7} {'never back':>10} {'p50':>6} "
              f"{'p95':>6} {'p99':>6} {'max':>6}")
    lines = [header, "-" * len(header)]
    for k in stats:
        lines.append(f"{k.kind:<38} {k.injected:>8} {k.not_injected:>7} {k.never:>10} {s(k.p50):>6} "
                     f"{s(k.p95):>6} {s(k.p99):>6} {s(k.max):>6}")
    return "\n".join(lines)


@dataclass
class Counts:
    acknowledged: int = 0
    refused: int = 0
    unknown: int = 0
    unknown_landed: int = 0
    reads: int = 0
    lost: int = 0
    two_writers: int = 0
    stale_reads: int = 0
    quiet_checks: int = 0
    not_whole: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, int]:
        return {"acknowledged": self.acknowledged, "refused": self.refused, "unknown": self.unknown,
                "unknown_landed": self.unknown_landed, "reads": self.reads, "lost": self.lost,
                "two_writers": self.two_writers, "stale_reads": self.stale_reads,
                "quiet_checks": self.quiet_checks, "not_whole": self.not_whole, **self.extra}


def summary(seed: int, dcs: str, nodes: int, duration: float, counts: Counts,
            stats: Iterable[KindStats], breaches: Sequence[Breach], records: Sequence[FaultRecord],
            replay: str) -> dict[str, Any]:
    return {"seed": seed, "dcs": dcs, "nodes": nodes, "duration_s": round(duration, 1),
            "faults_injected": sum(1 for r in records if r.injected is not None),
            "faults_skipped": sum(1 for r in records if r.injected is None),
            "overlapping": sum(1 for r in records if r.trigger != "at-once" and r.injected is not None),
            **counts.to_json(), "rto": [k.to_json() for k in stats],
            "breaches": [b.to_json() for b in breaches], "ok": not breaches, "replay": replay}
