"""MariaDB GTID positions: parsing, comparison, errant-transaction detection, candidate ranking.

Pure module: no I/O, no clock, no logging, so the decision core can import it.

MariaDB terms (10.11):

* A GTID is ``domain-server-seq``. Sequence numbers are allocated per *domain*: within one
  domain they increase across every server that writes to it.
* A *position* (``gtid_binlog_pos``, ``gtid_slave_pos``, ``gtid_current_pos``) holds at most one
  GTID per domain: the last one.
* A *binlog state* (``gtid_binlog_state``) holds the last GTID per (domain, server) pair. It is
  what makes errant transactions visible: a former primary that wrote ``0-1-101`` after the
  cluster moved on to ``0-2-101`` looks *behind* by position (101 < 110) but its state shows a
  server-1 sequence the new primary never saw.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_MAX_U32 = 2**32 - 1
_MAX_U64 = 2**64 - 1


class GtidParseError(ValueError):
    """A GTID text that is not a valid MariaDB GTID list."""


@dataclass(frozen=True, order=True)
class Gtid:
    """One MariaDB GTID, ``domain-server-seq``."""

    domain: int
    server_id: int
    seq: int

    def __post_init__(self) -> None:
        if not 0 <= self.domain <= _MAX_U32:
            raise GtidParseError(f"domain {self.domain} is outside 0..{_MAX_U32}")
        if not 0 <= self.server_id <= _MAX_U32:
            raise GtidParseError(f"server_id {self.server_id} is outside 0..{_MAX_U32}")
        if not 0 <= self.seq <= _MAX_U64:
            raise GtidParseError(f"seq {self.seq} is outside 0..{_MAX_U64}")

    @classmethod
    def parse(cls, text: str) -> Gtid:
        parts = text.strip().split("-")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise GtidParseError(f"not a MariaDB GTID (want domain-server-seq): {text!r}")
        return cls(int(parts[0]), int(parts[1]), int(parts[2]))

    def __str__(self) -> str:
        return f"{self.domain}-{self.server_id}-{self.seq}"


def _parse_list(text: str) -> list[Gtid]:
    stripped = text.strip()
    if not stripped:
        return []
    return [Gtid.parse(item) for item in stripped.split(",")]


class Comparison(enum.Enum):
    """How one position relates to another, domain by domain."""

    EQUAL = "equal"
    AHEAD = "ahead"  # at least as far in every domain, further in one
    BEHIND = "behind"
    DIVERGED = "diverged"  # ahead in one domain and behind in another, or same seq from two servers


@dataclass(frozen=True)
class GtidPosition:
    """A MariaDB GTID position: the last GTID of each domain.

    ``gtids`` is sorted by domain and holds one GTID per domain; build it with
    :meth:`parse` or :meth:`of`.
    """

    gtids: tuple[Gtid, ...] = ()

    def __post_init__(self) -> None:
        domains = [g.domain for g in self.gtids]
        if len(set(domains)) != len(domains):
            raise GtidParseError(f"a position holds one GTID per domain, got {self}")
        if list(self.gtids) != sorted(self.gtids):
            object.__setattr__(self, "gtids", tuple(sorted(self.gtids)))

    @classmethod
    def parse(cls, text: str | None) -> GtidPosition:
        """Parse ``gtid_*_pos`` text such as ``"0-1-100,1-2-7"`` (empty or NULL = nothing)."""
        return cls(tuple(_parse_list(text or "")))

    @classmethod
    def of(cls, gtids: Iterable[Gtid]) -> GtidPosition:
        return cls(tuple(gtids))

    def __str__(self) -> str:
        return ",".join(str(g) for g in self.gtids)

    @property
    def by_domain(self) -> Mapping[int, Gtid]:
        return {g.domain: g for g in self.gtids}

    def seq(self, domain: int) -> int:
        """Sequence reached in ``domain`` (0 when the domain is absent)."""
        gtid = self.by_domain.get(domain)
        return gtid.seq if gtid is not None else 0

    def compare(self, other: GtidPosition) -> Comparison:
        """Compare domain by domain.

        Same sequence from two different servers in one domain means two histories wrote the same
        slot: that is DIVERGED, never EQUAL.
        """
        mine, theirs = self.by_domain, other.by_domain
        ahead = behind = False
        for domain in set(mine) | set(theirs):
            a, b = mine.get(domain), theirs.get(domain)
            a_seq = a.seq if a else 0
            b_seq = b.seq if b else 0
            if a_seq > b_seq:
                ahead = True
            elif a_seq < b_seq:
                behind = True
            elif a is not None and b is not None and a.server_id != b.server_id:
                return Comparison.DIVERGED
        if ahead and behind:
            return Comparison.DIVERGED
        if ahead:
            return Comparison.AHEAD
        if behind:
            return Comparison.BEHIND
        return Comparison.EQUAL

    def covers(self, other: GtidPosition) -> bool:
        """True when this position has reached ``other`` in every domain (EQUAL or AHEAD)."""
        return self.compare(other) in (Comparison.EQUAL, Comparison.AHEAD)

    def merged_latest(self, other: GtidPosition) -> GtidPosition:
        """Per domain, the GTID with the higher sequence (ties keep ``self``).

        Used to build a former primary's ``gtid_slave_pos`` from its binlog and slave positions.
        """
        merged = dict(other.by_domain)
        for domain, gtid in self.by_domain.items():
            if domain not in merged or gtid.seq >= merged[domain].seq:
                merged[domain] = gtid
        return GtidPosition.of(merged.values())


@dataclass(frozen=True)
class ErrantRange:
    """GTIDs a node has in one (domain, server) stream that the reference primary lacks.

    The node has GTIDs ``domain-server_id-s`` with ``after_seq < s <= last_seq``; MariaDB keeps
    only the last sequence per stream, so the first errant one is known exactly only when the
    primary has seen that stream at all (``primary_has_stream``); otherwise every GTID of that
    server in that domain, up to ``last_seq``, is errant.
    """

    domain: int
    server_id: int
    after_seq: int
    last_seq: int
    primary_has_stream: bool

    @property
    def first(self) -> Gtid:
        return Gtid(self.domain, self.server_id, self.after_seq + 1)

    @property
    def last(self) -> Gtid:
        return Gtid(self.domain, self.server_id, self.last_seq)

    def __str__(self) -> str:
        if self.after_seq + 1 == self.last_seq:
            return str(self.last)
        if not self.primary_has_stream:
            return (
                f"{self.domain}-{self.server_id}-*..{self.last} (server {self.server_id} never "
                f"replicated to the primary in domain {self.domain})"
            )
        return f"{self.first}..{self.last}"


@dataclass(frozen=True)
class GtidState:
    """A MariaDB binlog state: the last GTID of each (domain, server) stream."""

    gtids: tuple[Gtid, ...] = ()

    def __post_init__(self) -> None:
        keys = [(g.domain, g.server_id) for g in self.gtids]
        if len(set(keys)) != len(keys):
            raise GtidParseError(f"a binlog state holds one GTID per (domain, server), got {self}")
        if list(self.gtids) != sorted(self.gtids):
            object.__setattr__(self, "gtids", tuple(sorted(self.gtids)))

    @classmethod
    def parse(cls, text: str | None) -> GtidState:
        """Parse ``gtid_binlog_state`` text such as ``"0-1-100,0-2-110"``."""
        return cls(tuple(_parse_list(text or "")))

    @classmethod
    def of(cls, gtids: Iterable[Gtid]) -> GtidState:
        return cls(tuple(gtids))

    @classmethod
    def from_sources(cls, *sources: GtidState | GtidPosition) -> GtidState:
        """Union of several states/positions keeping the highest seq per stream.

        A node's full history is its binlog state plus its slave position (the latter matters when
        ``log_slave_updates`` is off and replicated events never reached the node's binlog).
        """
        best: dict[tuple[int, int], Gtid] = {}
        for source in sources:
            for gtid in source.gtids:
                key = (gtid.domain, gtid.server_id)
                if key not in best or gtid.seq > best[key].seq:
                    best[key] = gtid
        return cls.of(best.values())

    def __str__(self) -> str:
        return ",".join(str(g) for g in self.gtids)

    @property
    def streams(self) -> Mapping[tuple[int, int], int]:
        return {(g.domain, g.server_id): g.seq for g in self.gtids}

    def errant_against(self, primary: GtidState) -> tuple[ErrantRange, ...]:
        """GTIDs this node has that ``primary`` lacks, one range per (domain, server) stream.

        Empty result = the node can safely replicate from ``primary``.
        """
        primary_streams = primary.streams
        errant: list[ErrantRange] = []
        for (domain, server_id), seq in sorted(self.streams.items()):
            primary_seq = primary_streams.get((domain, server_id))
            if primary_seq is None:
                errant.append(ErrantRange(domain, server_id, 0, seq, primary_has_stream=False))
            elif seq > primary_seq:
                errant.append(ErrantRange(domain, server_id, primary_seq, seq, primary_has_stream=True))
        return tuple(errant)


def describe_errant(ranges: Iterable[ErrantRange]) -> str:
    """One line naming every errant range, for errors and ``dbfence status``."""
    return ", ".join(str(r) for r in ranges)


@dataclass(frozen=True)
class CandidateRanking:
    """Candidates grouped into tiers, most advanced first; names in one tier are not ordered.

    ``leaders`` are the candidates whose position covers every other candidate: the ones allowed
    to take the lock in lossless mode. It is empty when the best positions are incomparable
    (``conflict`` then explains why), which the decision core must treat as "nobody promotes by
    itself".
    """

    tiers: tuple[tuple[str, ...], ...]
    leaders: tuple[str, ...]
    conflict: str | None


def rank_candidates(positions: Mapping[str, GtidPosition]) -> CandidateRanking:
    """Rank candidates by GTID position, ties and multiple domains included.

    Tier 0 holds the candidates no other candidate is strictly ahead of; tier 1 those left after
    removing tier 0, and so on. Two candidates with the same position share a tier.

    Positions only show the last GTID per domain: a history that diverged *below* it is invisible
    here. That is what :meth:`GtidState.errant_against` checks before a node replicates.
    """
    remaining = dict(sorted(positions.items()))
    tiers: list[tuple[str, ...]] = []
    while remaining:
        tier = tuple(
            name
            for name, pos in remaining.items()
            if not any(
                other.compare(pos) is Comparison.AHEAD
                for other_name, other in remaining.items()
                if other_name != name
            )
        )
        if not tier:  # cannot happen with a partial order; guard against an endless loop
            tier = tuple(remaining)
        tiers.append(tier)
        for name in tier:
            del remaining[name]

    leaders = tuple(
        name
        for name, pos in sorted(positions.items())
        if all(pos.covers(other) for other_name, other in positions.items() if other_name != name)
    )
    conflict = None
    if positions and not leaders:
        top = tiers[0]
        conflict = "no candidate has reached every other one: " + "; ".join(
            f"{name} at {positions[name] or '(empty)'}" for name in top
        )
    return CandidateRanking(tiers=tuple(tiers), leaders=leaders, conflict=conflict)


_BINLOG_GTID = re.compile(r"\bGTID (\d+-\d+-\d+)\b")


def parse_binlog_gtid_event(info: str) -> Gtid | None:
    """The GTID of a ``Gtid`` event's Info column (``BEGIN GTID 0-1-3``, ``GTID 0-1-1``)."""
    match = _BINLOG_GTID.search(info)
    return Gtid.parse(match[1]) if match else None


def parse_binlog_gtid_list(info: str) -> GtidState:
    """A ``Gtid_list`` event's Info (``[0-1-3,0-2-7]``): the binlog state when the file began.
    ``mariadb-binlog`` wraps a list of several streams over comment lines (``[0-2-5,\n# 0-3-7,\n#
    0-1-9]``, seen on 10.11 with three servers): the line breaks and their ``#`` are dropped."""
    return GtidState.parse(re.sub(r"\s*\n#\s*", "", info).strip().strip("[]"))


def in_errant_ranges(gtid: Gtid, ranges: Iterable[ErrantRange]) -> bool:
    return any(
        gtid.domain == r.domain and gtid.server_id == r.server_id and r.after_seq < gtid.seq <= r.last_seq
        for r in ranges
    )


def ranges_predate(state: GtidState, ranges: Iterable[ErrantRange]) -> bool:
    """True when a binlog that began at ``state`` holds no GTID of ``ranges`` before that point,
    i.e. no older binlog file can contain one of them."""
    streams = state.streams
    return all(streams.get((r.domain, r.server_id), 0) <= r.after_seq for r in ranges)
