"""The checker of the fault matrix: what a run's history says about the guarantees.

Pure module: frozen records in, a :class:`Verdict` out; no I/O and no clock. Reading the servers
at the end of a run lives in :mod:`dbfence.lab.final_state`, recording the attempts in
:mod:`dbfence.lab.workload`.

All times are wall-clock seconds (``time.time()`` in the writers, ``UNIX_TIMESTAMP`` of the
servers' ``NOW(6)`` for tenures): every process of the lab runs on one host, so one clock.

What is checked:

* **Lost writes**: acknowledged ids missing on the final primary (0 in lossless mode).
* **Interleaved writers**: node X acknowledged a write, then (strictly later in real time) node
  Y did, then X again, without X taking a newer token in between. Intervals are compared end to
  start, so a slow client that records its acknowledgement late cannot produce a false alarm:
  each acknowledgement only proves a commit somewhere inside its ``[start, end]``.
* **Stale writes**: a write acknowledged through X whose whole interval lies outside every
  tenure of X, i.e. it started after a newer token (of another node) had taken the lock.
* **Admitted while fenced**: writes that started inside a fault's quiet window (for example
  etcd quorum loss, once the last lease could have run out) and were acknowledged anyway.
* **Admitted without a lease or promises**: while a fault keeps a node from renewing any lease
  (cut off from the DCS, no quorum, its agent stopped), a write acknowledged through it that
  began one TTL after the injection must be kept by live failsafe promises of every other
  member. The promises are the members' own records of them (see :class:`Promise`).
* **Errant transactions** left on any node, as read from the servers.
* **Stale reads**: a read acknowledged through a gate that misses a write acknowledged before
  the read began. Each read covers the ids from its ``low`` mark up (see :class:`Read`); the
  gate's guarantee is that a read admitted by it sees every write acknowledged before it began.
* **Unknown outcomes**: whether each one landed on the final primary.
* **Outages**: per fault, the longest stretch without an acknowledged write between the
  injection and the first write that started after the heal (the application's
  unavailability window, RTO).
"""

from __future__ import annotations

import bisect
import enum
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


class Outcome(enum.Enum):
    ACKNOWLEDGED = "acknowledged"
    REFUSED = "refused"  # no primary, or the gate said no at connect: certainly not written
    UNKNOWN = "unknown"  # the connection broke mid-statement: it may have landed


@dataclass(frozen=True, slots=True)
class Attempt:
    """One INSERT of a unique ``id``; ``node`` is where discovery sent it ("" if nowhere)."""

    id: int
    start: float
    end: float
    node: str
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class Tenure:
    """A node held the lock with ``token`` from ``start`` (when it wrote its fencing token,
    which is after it took the lock and before its gate admitted) until the next tenure."""

    token: int
    node: str
    start: float


@dataclass(frozen=True, slots=True)
class FaultEvent:
    """A fault injected at ``at`` and healed at ``healed_at``. When ``quiet_from`` is set, no
    write that starts between it and ``healed_at`` may be acknowledged."""

    name: str
    at: float
    healed_at: float
    quiet_from: float | None = None
    # When set: ``node`` could hold no lease from ``leaseless_from`` (one TTL after the injection
    # of a fault that cuts it off from the DCS or stops its agent) until ``leaseless_until`` (the
    # first heal of anything, None: ``healed_at``). A write it acknowledges that began in that
    # span must be kept by promises of every other member.
    leaseless_from: float | None = None
    leaseless_until: float | None = None
    node: str = ""


@dataclass(frozen=True, slots=True)
class FinalState:
    """What the servers held after the run: the final primary's ids, and errant GTIDs per node
    (against the final primary), as text."""

    primary: str | None
    rows: frozenset[int]
    errant: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Read:
    """One acknowledged ``SELECT id ... WHERE id >= low`` through ``node``'s gate, over
    ``[start, end]``, and the ids it returned. Reads that failed prove nothing and are not kept."""

    start: float
    end: float
    node: str
    low: int
    ids: frozenset[int]


@dataclass(frozen=True, slots=True)
class StaleRead:
    """A read through ``node`` that began at ``start`` and missed ``missing``, writes
    acknowledged before it began."""

    start: float
    node: str
    missing: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Promise:
    """``giver`` promised ``to`` (holding ``token``) not to race for ``seconds``, as it logged at
    ``at``: after it received the request (when its promise began) and before it answered (the
    requester's deadline from it is ``send time + seconds - margin``), so a write that ``to``
    admitted on this promise has its commit inside ``[at, until]``."""

    giver: str
    to: str
    token: int
    at: float
    seconds: float

    @property
    def until(self) -> float:
        return self.at + self.seconds


@dataclass(frozen=True, slots=True)
class UnleasedWrite:
    """Write ``id`` acknowledged through ``node`` while ``fault`` kept it from renewing its lease,
    with no promise to it from ``unpromised`` over the write's whole interval."""

    id: int
    node: str
    fault: str
    unpromised: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class History:
    attempts: tuple[Attempt, ...]
    tenures: tuple[Tenure, ...]
    faults: tuple[FaultEvent, ...]
    final: FinalState
    reads: tuple[Read, ...] = ()
    promises: tuple[Promise, ...] = ()
    # every member of the cluster (empty: every node the history names)
    members: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Interleaving:
    """``node`` acknowledged ``before``, then ``other`` acknowledged ``between``, then ``node``
    acknowledged ``after``, all strictly ordered in real time, with no newer tenure of ``node``."""

    node: str
    other: str
    before: int
    between: int
    after: int


@dataclass(frozen=True, slots=True)
class StaleWrite:
    """Write ``id`` acknowledged through ``node`` while ``holder`` held the lock with ``token``
    (``None``: before any recorded tenure)."""

    id: int
    node: str
    token: int | None
    holder: str | None


@dataclass(frozen=True, slots=True)
class Outage:
    """The longest stretch without an acknowledged write around a fault: from ``start`` (the
    injection, or the last acknowledgement before the gap) to ``end`` (the next one; ``None`` if
    writes never came back)."""

    fault: str
    start: float
    end: float | None

    @property
    def seconds(self) -> float | None:
        return None if self.end is None else self.end - self.start


@dataclass(frozen=True, slots=True)
class Verdict:
    final_primary: str | None
    acknowledged: int
    refused: int
    lost: tuple[int, ...]
    interleaved: tuple[Interleaving, ...]
    stale: tuple[StaleWrite, ...]
    admitted_while_fenced: tuple[int, ...]
    errant: Mapping[str, tuple[str, ...]]
    unknown_landed: tuple[int, ...]
    unknown_missing: tuple[int, ...]
    outages: tuple[Outage, ...]
    stale_reads: tuple[StaleRead, ...] = ()
    unleased: tuple[UnleasedWrite, ...] = ()

    @property
    def overlapping(self) -> int:
        return len(self.interleaved) + len(self.stale) + len(self.admitted_while_fenced)

    @property
    def unknown(self) -> int:
        return len(self.unknown_landed) + len(self.unknown_missing)

    @property
    def safe(self) -> bool:
        """No acknowledged write lost, never two writers, no write admitted without a lease or
        promises, and no stale read."""
        return not self.lost and self.overlapping == 0 and not self.stale_reads and not self.unleased


def check(history: History) -> Verdict:
    acked = [a for a in history.attempts if a.outcome is Outcome.ACKNOWLEDGED]
    unknown = [a.id for a in history.attempts if a.outcome is Outcome.UNKNOWN]
    rows = history.final.rows
    return Verdict(
        final_primary=history.final.primary,
        acknowledged=len(acked),
        refused=sum(1 for a in history.attempts if a.outcome is Outcome.REFUSED),
        lost=tuple(sorted(a.id for a in acked if a.id not in rows)),
        interleaved=find_interleavings(acked, history.tenures),
        stale=find_stale_writes(acked, history.tenures),
        admitted_while_fenced=admitted_while_fenced(acked, history.faults),
        errant={node: ranges for node, ranges in sorted(history.final.errant.items()) if ranges},
        unknown_landed=tuple(sorted(i for i in unknown if i in rows)),
        unknown_missing=tuple(sorted(i for i in unknown if i not in rows)),
        outages=tuple(outage(acked, fault) for fault in history.faults),
        stale_reads=find_stale_reads(acked, history.reads),
        unleased=find_unleased_writes(acked, history.faults, history.promises, _members(history)),
    )


def _members(history: History) -> tuple[str, ...]:
    if history.members:
        return history.members
    named = {a.node for a in history.attempts if a.node} | {t.node for t in history.tenures}
    return tuple(sorted(named | {p.giver for p in history.promises}))


def find_unleased_writes(acked: Iterable[Attempt], faults: Iterable[FaultEvent], promises: Iterable[Promise],
                         members: Iterable[str]) -> tuple[UnleasedWrite, ...]:
    """Writes that began while a fault kept their node from renewing any lease, and that some
    other member had made no promise to that node for, at any moment of the write. A gate may
    admit without a lease only on every member's promise: one member that never promised
    during the write proves it was admitted on neither."""
    given: dict[tuple[str, str], list[Promise]] = {}
    for promise in promises:
        given.setdefault((promise.giver, promise.to), []).append(promise)
    everyone = tuple(sorted(set(members)))
    found: dict[int, UnleasedWrite] = {}
    writes = sorted(acked, key=lambda a: a.start)
    starts = [w.start for w in writes]
    for fault in faults:
        if fault.leaseless_from is None or not fault.node:
            continue
        until = fault.healed_at if fault.leaseless_until is None else fault.leaseless_until
        span = slice(bisect.bisect_left(starts, fault.leaseless_from), bisect.bisect_left(starts, until))
        for write in writes[span]:
            if write.node != fault.node or write.id in found:
                continue
            unpromised = tuple(m for m in everyone if m != write.node and not any(
                p.at < write.end and write.start < p.until for p in given.get((m, write.node), ())))
            if unpromised:
                found[write.id] = UnleasedWrite(write.id, write.node, fault.name, unpromised)
    return tuple(found[i] for i in sorted(found))


def find_stale_reads(acked: Iterable[Attempt], reads: Iterable[Read]) -> tuple[StaleRead, ...]:
    """Reads that miss a write with an id at or above their ``low`` mark that was acknowledged
    (ended) before the read started."""
    by_id = sorted(acked, key=lambda a: a.id)
    ids = [a.id for a in by_id]
    stale: list[StaleRead] = []
    for read in reads:
        required = (a.id for a in by_id[bisect.bisect_left(ids, read.low):] if a.end < read.start)
        missing = tuple(i for i in required if i not in read.ids)
        if missing:
            stale.append(StaleRead(read.start, read.node, missing))
    return tuple(sorted(stale, key=lambda s: s.start))


def find_interleavings(acked: Iterable[Attempt], tenures: Iterable[Tenure]) -> tuple[Interleaving, ...]:
    """Every write ``after`` on X preceded by a write on Y that followed a write on X.

    For each such ``after`` the witness is the latest-starting write of another node that ended
    before it: that leaves the smallest window in which a new tenure of X would excuse it.
    """
    writes = sorted(acked, key=lambda a: a.end)
    tenure_starts: dict[str, list[float]] = {}
    for tenure in tenures:
        tenure_starts.setdefault(tenure.node, []).append(tenure.start)
    for starts in tenure_starts.values():
        starts.sort()
    found: list[Interleaving] = []
    for node in sorted({w.node for w in writes}):
        mine = [w for w in writes if w.node == node]
        others = [w for w in writes if w.node != node]
        if not others:
            continue
        first_of_mine = mine[0]  # earliest end: the best "before" witness
        other_ends = [w.end for w in others]
        # latest-starting other write among those ending before a given time
        best: list[Attempt] = []
        for w in others:
            best.append(w if not best or w.start > best[-1].start else best[-1])
        starts = tenure_starts.get(node, [])
        for after in mine:
            count = bisect.bisect_left(other_ends, after.start)
            if count == 0:
                continue
            between = best[count - 1]
            if not first_of_mine.end < between.start:
                continue
            i = bisect.bisect_right(starts, between.start)
            if i < len(starts) and starts[i] < after.end:
                continue  # X took the lock again in between: a legitimate return
            found.append(Interleaving(node, between.node, first_of_mine.id, between.id, after.id))
    return tuple(sorted(found, key=lambda f: f.after))


def find_stale_writes(acked: Iterable[Attempt], tenures: Iterable[Tenure]) -> tuple[StaleWrite, ...]:
    """Acknowledged writes that no tenure of their own node can account for."""
    ordered = sorted(tenures, key=lambda t: t.token)
    if not ordered:
        return ()  # nothing to attribute writes to (a history without tenure records)
    spans = [(t, ordered[i + 1].start if i + 1 < len(ordered) else float("inf"))
             for i, t in enumerate(ordered)]
    stale: list[StaleWrite] = []
    for write in acked:
        if any(t.node == write.node and t.start <= write.end and write.start < until for t, until in spans):
            continue
        covering = [t for t, _ in spans if t.start <= write.start]
        holder = covering[-1] if covering else None
        stale.append(StaleWrite(write.id, write.node, None if holder is None else holder.token,
                                None if holder is None else holder.node))
    return tuple(sorted(stale, key=lambda s: s.id))


def admitted_while_fenced(acked: Iterable[Attempt], faults: Iterable[FaultEvent]) -> tuple[int, ...]:
    windows = [(f.quiet_from, f.healed_at) for f in faults if f.quiet_from is not None]
    return tuple(sorted(a.id for a in acked if any(lo <= a.start < hi for lo, hi in windows)))


def outage(acked: Iterable[Attempt], fault: FaultEvent) -> Outage:
    """Gaps between acknowledgements from the injection up to the first write that started
    after the heal, so the old primary's last writes (a paused agent's gate admits until its
    lease deadline) and the refusals of a switchover both count."""
    ends = sorted(a.end for a in acked if a.end > fault.at)
    resumed = [a.end for a in acked if a.start >= fault.healed_at]
    last = min(resumed) if resumed else None
    marks = [fault.at, *(e for e in ends if last is None or e <= last)]
    if last is None:
        return Outage(fault.name, marks[-1], None)
    start, end = max(itertools.pairwise(marks), key=lambda gap: gap[1] - gap[0])
    return Outage(fault.name, start, end)
