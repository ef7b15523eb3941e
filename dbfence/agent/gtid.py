"""MariaDB GTID positions as pure values: parsing, comparison, ranking, divergence.

A MariaDB GTID is ``domain-server-seq``. A *position* (``@@gtid_current_pos``,
``@@gtid_slave_pos``, ``@@gtid_binlog_pos``) holds at most one GTID per replication
domain: the last transaction applied in that domain, e.g. ``"0-1-100,1-2-5"``.
Sequence numbers grow monotonically inside a domain, whichever server wrote them,
so within one domain "more advanced" simply means "higher seq_no".

This module is pure (no I/O, no clock): the decision core ranks candidates with it
and the MySQL adapter may reuse it for its own checks.

Ranking rule (documented contract, used for failover candidates):
  1. the sum of ``seq_no`` over all domains, higher first. If position *a* covers *b*
     (at least as advanced in every domain) then ``sum(a) >= sum(b)``, so a dominating
     position always ranks at least as high;
  2. for equal sums (only possible between equal or incomparable positions) the
     ``(domain, seq_no)`` pairs compared lexicographically, so the order stays total
     and deterministic on every node;
  3. callers rank first by what a node *holds* (applied position merged with what its
     IO thread received, i.e. what it has once its relay log is applied), then by the applied
     position, and break remaining ties by configured priority (higher first) and node name
     (smaller first) - see :func:`candidate_sort_key`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

RankKey = tuple[int, tuple[tuple[int, int], ...]]


class GtidParseError(ValueError):
    """A GTID position string or mapping is malformed."""


@dataclass(frozen=True, slots=True, order=True)
class Gtid:
    """One global transaction id: replication domain, originating server, sequence number."""

    domain_id: int
    server_id: int
    seq_no: int

    def __post_init__(self) -> None:
        for label, value in (("domain_id", self.domain_id), ("server_id", self.server_id),
                             ("seq_no", self.seq_no)):
            # bool is an int subclass; refuse it so a typo cannot pass as 0/1.
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise GtidParseError(f"{label} must be a non-negative integer, got {value!r}")

    def __str__(self) -> str:
        return f"{self.domain_id}-{self.server_id}-{self.seq_no}"


@dataclass(frozen=True, slots=True)
class GtidPosition:
    """The last applied GTID of each domain, sorted by domain id (at most one per domain)."""

    gtids: tuple[Gtid, ...] = ()

    def __post_init__(self) -> None:
        domains = [gtid.domain_id for gtid in self.gtids]
        if len(set(domains)) != len(domains):
            raise GtidParseError(
                "a position holds one GTID per domain; use gtid_current_pos or gtid_binlog_pos, "
                "not gtid_binlog_state"
            )
        if domains != sorted(domains):
            raise GtidParseError("GTIDs of a position must be sorted by domain id")

    @classmethod
    def parse(cls, text: str) -> GtidPosition:
        """Parse MariaDB's comma separated list, e.g. ``"0-1-100,1-2-5"``; ``""`` is empty."""
        return cls.from_gtids(cls.parse_gtids(text))

    @staticmethod
    def parse_gtids(text: str) -> list[Gtid]:
        """The GTIDs of a comma separated list, in order (no check of one per domain)."""
        if not isinstance(text, str):
            raise GtidParseError(f"expected a string, got {type(text).__name__}")
        gtids: list[Gtid] = []
        for raw in text.split(","):
            item = raw.strip()
            if not item:
                if text.strip():
                    raise GtidParseError(f"empty GTID in position {text!r}")
                continue
            parts = item.split("-")
            if len(parts) != 3 or not all(part.isdigit() for part in parts):
                raise GtidParseError(f"malformed GTID {item!r} in position {text!r}")
            gtids.append(Gtid(int(parts[0]), int(parts[1]), int(parts[2])))
        return gtids

    @classmethod
    def from_gtids(cls, gtids: Iterable[Gtid]) -> GtidPosition:
        return cls(tuple(sorted(gtids, key=lambda gtid: gtid.domain_id)))

    @classmethod
    def from_mapping(cls, mapping: Mapping[int, tuple[int, int]]) -> GtidPosition:
        """Build from ``{domain_id: (server_id, seq_no)}`` as the MySQL adapter reports it."""
        return cls.from_gtids(Gtid(domain, server, seq) for domain, (server, seq) in mapping.items())

    def as_mapping(self) -> dict[int, tuple[int, int]]:
        return {gtid.domain_id: (gtid.server_id, gtid.seq_no) for gtid in self.gtids}

    def __str__(self) -> str:
        return ",".join(str(gtid) for gtid in self.gtids)

    def get(self, domain_id: int) -> Gtid | None:
        for gtid in self.gtids:
            if gtid.domain_id == domain_id:
                return gtid
        return None

    def seq_no(self, domain_id: int) -> int:
        """Last sequence number applied in a domain; 0 when the domain was never seen."""
        gtid = self.get(domain_id)
        return 0 if gtid is None else gtid.seq_no

    def covers(self, other: GtidPosition) -> bool:
        """True when this position is at least as advanced as ``other`` in every domain."""
        return all(self.seq_no(gtid.domain_id) >= gtid.seq_no for gtid in other.gtids)

    def furthest_with(self, other: GtidPosition) -> GtidPosition:
        """Per domain, whichever of the two GTIDs is further (a replica's applied position with
        what its IO thread received: what it holds once its relay log is applied)."""
        best = {gtid.domain_id: gtid for gtid in self.gtids}
        for gtid in other.gtids:
            mine = best.get(gtid.domain_id)
            if mine is None or gtid.seq_no > mine.seq_no:
                best[gtid.domain_id] = gtid
        return GtidPosition.from_gtids(best.values())

    def strictly_ahead_of(self, other: GtidPosition) -> bool:
        """Covers ``other`` and is further in at least one domain."""
        return self.covers(other) and not other.covers(self)

    def rank_key(self) -> RankKey:
        """Total order for candidate ranking (see the module docstring for the rule)."""
        return (
            sum(gtid.seq_no for gtid in self.gtids),
            tuple((gtid.domain_id, gtid.seq_no) for gtid in self.gtids),
        )

    def diverging_domains(self, reference: GtidPosition) -> tuple[int, ...]:
        """Domains in which this position holds transactions ``reference`` provably lacks.

        A domain diverges when this position is further than the reference, when the
        reference never saw the domain, or when both stop at the same seq_no written by
        different servers (two histories forked there). Positions alone cannot prove the
        absence of divergence when this node is *behind* the reference: the adapter's
        binlog-based errant check stays authoritative; this is the cheap, sound part.
        """
        diverging: list[int] = []
        for gtid in self.gtids:
            ref = reference.get(gtid.domain_id)
            if gtid.seq_no == 0:
                continue
            if ref is None or gtid.seq_no > ref.seq_no or (
                gtid.seq_no == ref.seq_no and gtid.server_id != ref.server_id
            ):
                diverging.append(gtid.domain_id)
        return tuple(diverging)

    def own_unreplicated_domains(self, server_id: int, peers: Iterable[GtidPosition]) -> tuple[int, ...]:
        """Domains whose last transaction this server wrote and no peer has reached.

        A peer has reached it when it holds the same GTID or a higher seq_no in that
        domain. A node with such domains wrote as a primary and may hold transactions
        the others lack: it must rejoin under a primary before it may race again.
        """
        peer_list = list(peers)
        unreplicated: list[int] = []
        for gtid in self.gtids:
            if gtid.server_id != server_id or gtid.seq_no == 0:
                continue
            reached = False
            for peer in peer_list:
                theirs = peer.get(gtid.domain_id)
                if theirs is not None and (
                    theirs.seq_no > gtid.seq_no or theirs == gtid
                ):
                    reached = True
                    break
            if not reached:
                unreplicated.append(gtid.domain_id)
        return tuple(unreplicated)


@dataclass(frozen=True, slots=True)
class BinlogState:
    """The last GTID of each (domain, server) stream a node holds, like ``@@gtid_binlog_state``.

    A position keeps one GTID per domain and cannot show whose transactions came before it; a
    binlog state keeps every server's stream, so it shows what a node holds of each server's
    writes. It is what the errant-GTID check compares (``dbfence.mysql.gtid.GtidState``): a node
    lacks nothing of another when it is at least as far in each of the other's streams.
    """

    gtids: tuple[Gtid, ...] = ()

    def __post_init__(self) -> None:
        keys = [(gtid.domain_id, gtid.server_id) for gtid in self.gtids]
        if len(set(keys)) != len(keys):
            raise GtidParseError("a binlog state holds one GTID per (domain, server) stream")
        if keys != sorted(keys):
            raise GtidParseError("GTIDs of a binlog state must be sorted by (domain, server)")

    @classmethod
    def parse(cls, text: str) -> BinlogState:
        """Parse ``@@gtid_binlog_state`` text, e.g. ``"0-1-100,0-2-110"``; ``""`` is empty."""
        return cls.merged(GtidPosition.parse_gtids(text))

    @classmethod
    def merged(cls, *sources: Iterable[Gtid]) -> BinlogState:
        """Per stream, the furthest GTID of all the sources (a binlog state with the applied and
        received positions: everything the node holds once its relay log is applied)."""
        best: dict[tuple[int, int], Gtid] = {}
        for source in sources:
            for gtid in source:
                key = (gtid.domain_id, gtid.server_id)
                if key not in best or gtid.seq_no > best[key].seq_no:
                    best[key] = gtid
        return cls(tuple(best[key] for key in sorted(best)))

    def __str__(self) -> str:
        return ",".join(str(gtid) for gtid in self.gtids)

    def seq_no(self, domain_id: int, server_id: int) -> int:
        """Last sequence number of ``server_id``'s stream in a domain; 0 when never seen."""
        for gtid in self.gtids:
            if (gtid.domain_id, gtid.server_id) == (domain_id, server_id):
                return gtid.seq_no
        return 0

    def holds(self, gtid: Gtid) -> bool:
        """Whether this node holds ``gtid`` (its stream reached that sequence number)."""
        return self.seq_no(gtid.domain_id, gtid.server_id) >= gtid.seq_no

    def beyond(self, other: BinlogState) -> tuple[Gtid, ...]:
        """The last GTID of each stream in which this state is further than ``other``: what
        this node holds that ``other`` lacks (empty: ``other`` holds everything this one does)."""
        return tuple(gtid for gtid in self.gtids if not other.holds(gtid))


def maybe_acknowledged(mine: BinlogState, name: str, history: BinlogState, server_id: int,
                       everyone: Sequence[tuple[str, BinlogState, int | None]]) -> tuple[Gtid, ...]:
    """What ``name`` (server ``server_id``, holding ``history``) holds beyond ``mine`` that may
    have been acknowledged in lossless mode: another server's writes (it received them), or its
    own writes that some third node of ``everyone`` (name, state, server id) received too. Its own
    writes that nobody else received were never acknowledged (an ack needs a replica's copy)."""
    missing = []
    for gtid in history.beyond(mine):
        own = gtid.server_id == server_id
        received_elsewhere = any(
            other != name and theirs.seq_no(gtid.domain_id, gtid.server_id)
            > mine.seq_no(gtid.domain_id, gtid.server_id)
            for other, theirs, _ in everyone)
        if not own or received_elsewhere:
            missing.append(gtid)
    return tuple(missing)


def candidate_sort_key(
    holds: GtidPosition, applied: GtidPosition, priority: int, name: str
) -> tuple[RankKey, RankKey, int, tuple[int, ...]]:
    """Key whose maximum is the preferred candidate: what it holds, then what it has applied
    (it can promote sooner), then priority, then smaller name.

    The name is encoded as negated code points so that a *smaller* name sorts higher
    while the whole key keeps a single "bigger wins" direction. A name that is a
    prefix of another ranks higher (shorter wins), consistent with string ordering.
    """
    return (holds.rank_key(), applied.rank_key(), priority, (*(-ord(char) for char in name), 1))
