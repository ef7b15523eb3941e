"""Peers the race cannot rank that may hold acknowledged writes this node lacks (soak seed 401).

Why: the race is lossless because every acknowledged write is in some replica's relay log (AFTER_SYNC
semi-sync acknowledges only what a replica received) and a racing node defers to the replica that
holds the most. That needs every such replica ranked. In seed 401 db2 (primary) wrote 18
transactions that db3 received and db1 did not; db2 fenced (lease lost), db3's mysqld was killed
while it promoted (FENCED, position unknown), and db1 raced and promoted past db2's writes, which
db3 may have acknowledged. The race skipped db3 (unknown, and FENCED) and db2 (FENCED; its writes
looked like its own, never received), so nothing stopped it.

Two rules, lossless mode only, judged wherever a race is (the race, the winner's promotion until
mysqld is writable or its token in, the takeover without a primary):

* ``peer_position_unknown``: some member holds writes this node lacks (any role, a FENCED old
  primary too), and some *other* member (not this node, not that holder) has an unknown position:
  it may have received those writes and acknowledged them. This node waits for that position.
* ``peer_more_advanced`` for a member the race does not rank (FENCED, FENCING, a stale PRIMARY
  record, a replica that stays out for writes of its own, e.g. a winner whose mysqld died while it
  promoted and whose agent restarted) that holds writes of *another* server this node lacks: it
  received them, so it may have acknowledged them (db3 once its mysqld is back, FENCED at db2's
  last write). This node leaves the lock to it: the takeover without a primary
  (decide_takeover.py) lets such a member take it.

Refinements that keep the rules to what can be true:

* a member whose mysqld the fence killed publishes ``binlog_state_at_kill``, an upper bound of what
  it holds (nothing is added after a SIGKILL, recovery only removes): if that state lacks the writes
  in question, the member never received them (a mysqld that is merely down publishes none: it
  may hold anything);
* a member known to be the writes' own server (a killed mysqld publishes its server id) did not
  acknowledge them;
* forked histories: when this node holds its last transaction of a domain, another server's,
  and the holder lacks it, a failover already passed the holder's branch by, and that failover
  was lossless (its winner held every acknowledged write), so the holder's writes beyond the fork
  were never acknowledged: a fenced old primary's errant tail, while its successor's mysqld was
  killed, blocks nothing.
* priority-0 members are left out of the second rule: they never race nor take over, so deferring
  to them would leave the cluster without a primary for good.

What it leaves alone: the ordinary failovers. A primary whose mysqld died (kill -9) has an unknown
position but holds nothing *known* beyond the replicas; the replicas are known and the race ranks
them as ever. A fenced old primary with a tail of its own while every replica is known: no member is
unknown and the tail was never acknowledged (no replica has it), so the race goes on.

Layout: :class:`Holding` is what this node knows of one member's data; :func:`ack_holder_concerns`
is the pure judgement over a list of them; :func:`collect_ack_holder_refusals` applies it to a
round; :func:`defers_to_ack_holder` judges a peer as it judges itself (the takeover asks whether
it may race). Writes are compared per (domain, server) stream with binlog states when both sides
publish one (a position keeps one GTID per domain and cannot show a fork below its last
transaction), else per domain with positions (``GtidPosition.diverging_domains``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from dbfence.agent.decide_round import RefusalReason, Round
from dbfence.agent.gtid import BinlogState, Gtid, GtidPosition
from dbfence.agent.observation import MemberInfo, MemberRecord
from dbfence.agent.state import Role

#: Roles whose members may be the most advanced candidate a racing replica defers to (the race
#: ranks them); a member in another role that holds writes it received is judged here.
RIVAL_ROLES = frozenset({Role.STARTING, Role.REPLICA, Role.CANDIDATE, Role.PROMOTING})


@dataclass(frozen=True, slots=True)
class Holding:
    """What this node knows of one member's data: what it holds once its relay log is applied
    (None: unknown), its binlog state with that (None: unknown), its server id (None: unknown),
    for a mysqld the fence killed the binlog state it had at the kill (at most what it holds),
    and whether the race ranks it (``ranked``: a promotable member in a racing role)."""

    name: str
    holds: GtidPosition | None
    history: BinlogState | None = None
    server_id: int | None = None
    at_kill: BinlogState | None = None
    ranked: bool = True
    promotable: bool = True

    @property
    def unknown(self) -> bool:
        return self.holds is None

    @classmethod
    def of(cls, info: MemberInfo, ranked: Collection[str]) -> Holding:
        return cls(info.name, info.holds, info.history, info.server_id, info.binlog_state_at_kill,
                   ranked=info.name in ranked, promotable=info.priority > 0)


@dataclass(frozen=True, slots=True)
class Concern:
    """``holder`` holds ``writes`` this node lacks (the last GTID of each stream or domain
    concerned) that may have been acknowledged: ``unknown`` (position unknown) may hold them, or,
    with ``unknown`` None, the holder itself received them and the race does not rank it."""

    holder: str
    writes: tuple[Gtid, ...]
    unknown: str | None = None

    @property
    def reason(self) -> RefusalReason:
        if self.unknown is None:
            return RefusalReason.PEER_MORE_ADVANCED
        return RefusalReason.PEER_POSITION_UNKNOWN

    def detail(self) -> str:
        writes = ",".join(str(gtid) for gtid in self.writes)
        if self.unknown is None:
            return (f"{self.holder} holds {writes} (received, not its own: maybe acknowledged), which "
                    "this node lacks; it does not race: it may take over without a primary")
        return (f"waiting for {self.unknown}'s position: it may hold writes {self.holder} holds up to "
                f"{writes}, which this node lacks (maybe acknowledged)")


def _state_of(holder: Holding) -> BinlogState | None:
    """Its binlog state, or for a killed mysqld the state at the kill (what it may hold)."""
    return holder.history if holder.history is not None else (holder.at_kill if holder.unknown else None)


def lacked_writes(holder: Holding, me: Holding) -> tuple[Gtid, ...]:
    """What ``holder`` holds (a killed mysqld: may hold) that ``me`` lacks and that a failover has
    not passed by: the last GTID of each stream in which it is further (binlog states), else of
    each diverging domain (positions); domains where our histories forked are left out."""
    theirs = _state_of(holder)
    if theirs is not None and me.history is not None:
        lacked = theirs.beyond(me.history)
    elif holder.holds is None or me.holds is None:
        return ()
    else:
        lacked = tuple(gtid for domain in holder.holds.diverging_domains(me.holds)
                       if (gtid := holder.holds.get(domain)) is not None)
    return tuple(gtid for gtid in lacked if not _forked(holder, me, gtid.domain_id))


def _forked(holder: Holding, me: Holding, domain: int) -> bool:
    """Whether our histories forked in ``domain``: ``me`` holds its last transaction there and
    ``holder`` lacks it (so its writes there beyond the fork were passed by; module docstring)."""
    mine = None if me.holds is None else me.holds.get(domain)
    if mine is None or mine.server_id == me.server_id:
        return False  # our own write proves no failover passed it by (a winner's token, say)
    theirs = _state_of(holder)
    if theirs is not None and me.history is not None:
        return not theirs.holds(mine)
    last = None if holder.holds is None else holder.holds.get(domain)
    return last is not None and last.seq_no == mine.seq_no and last.server_id != mine.server_id


def holds_past_own_write(holder: Holding, me: Holding) -> bool:
    """Whether ``holder`` received writes ``me`` lacks in a domain whose last transaction here is
    our own: a winner's fencing token, written while promoting, sits at the sequence number of a
    write the holder received (a fork), so positions tie while the holder holds what we lack.
    The holder's own writes there do not count: nobody else received them (an errant tail)."""
    if me.holds is None or me.server_id is None or holder.server_id is None:
        return False
    for gtid in lacked_writes(holder, me):
        mine = me.holds.get(gtid.domain_id)
        if gtid.server_id != holder.server_id and mine is not None and mine.server_id == me.server_id:
            return True
    return False


def _may_hold(peer: Holding, gtid: Gtid, me: Holding) -> bool:
    """Whether ``peer`` (position unknown) may have received, and acknowledged, ``gtid``'s stream
    beyond what ``me`` holds of it."""
    if peer.server_id is not None and peer.server_id == gtid.server_id:
        return False  # its own writes (a killed mysqld's server id is known): it acknowledged none
    if peer.at_kill is None:
        return True
    # Positions only: whatever it had of that stream may be beyond ours.
    mine = 0 if me.history is None else me.history.seq_no(gtid.domain_id, gtid.server_id)
    return peer.at_kill.seq_no(gtid.domain_id, gtid.server_id) > mine


def ack_holder_concerns(me: Holding, others: Sequence[Holding]) -> list[Concern]:
    """Everything that stops ``me`` (position known) from racing under these rules (empty: none)."""
    concerns: list[Concern] = []
    for holder in others:
        lacked = lacked_writes(holder, me)
        if not lacked:
            continue
        if not holder.unknown and not holder.ranked and holder.promotable:
            received = tuple(gtid for gtid in lacked if gtid.server_id != holder.server_id)
            if received:
                concerns.append(Concern(holder.name, received))
        for peer in others:
            if peer.name == holder.name or not peer.unknown:
                continue
            held = tuple(gtid for gtid in lacked if _may_hold(peer, gtid, me))
            if held:
                concerns.append(Concern(holder.name, held, peer.name))
    return concerns


def local_holding(r: Round, ranked: Collection[str] = ()) -> Holding:
    db = r.obs.db
    return Holding(r.me, db.holds, db.history, db.server_id, ranked=r.me in ranked,
                   promotable=r.config.priority > 0)


def round_concerns(r: Round, ranked: Collection[str]) -> list[Concern]:
    """The concerns of this round (lossless mode, this node's position known), else none.
    ``ranked``: the members the race ranks (``decide_race.rivals_of``)."""
    if not r.config.lossless or r.obs.db.holds is None:
        return []
    others = [Holding.of(record.info, ranked) for record in r.obs.members if record.name != r.me]
    return ack_holder_concerns(local_holding(r), others)


def collect_ack_holder_refusals(r: Round, ranked: Collection[str]) -> bool:
    """Refuse for each concern of this round; True when there was one."""
    concerns = round_concerns(r, ranked)
    for concern in concerns:
        r.refuse(concern.reason, concern.detail())
    return bool(concerns)


def defers_to_ack_holder(r: Round, record: MemberRecord, ranked: Collection[str]) -> bool:
    """Whether the peer of ``record`` refuses to race under the second rule, judged from what it
    sees as this node sees it: its own record, ours and the others' (the takeover asks).
    ``ranked``: whom its race ranks, this node too if so."""
    if not r.config.lossless or record.info.holds is None:
        return False
    others = [local_holding(r, ranked)] + [Holding.of(other.info, ranked) for other in r.obs.members
                                   if other.name not in (r.me, record.name)]
    return any(concern.unknown is None
               for concern in ack_holder_concerns(Holding.of(record.info, ranked), others))
