"""Taking over when there is no primary and nobody may race (issue 16's all-fenced cluster).

Why: a REPLICA races for a free lock; a FENCED node (a former primary, or a replica with errant
GTIDs) only rejoins under a PRIMARY. A failover whose winner fences while promoting (its lease
lost while its token write waited for an acknowledgement), after the old primary fenced and with
the third node errant, leaves every node FENCED: no primary to rejoin, and nobody who may race.
Each one refused ``no_primary_to_rejoin`` for ever.

The rule: when the lock is free and no other member may race (its record says FENCED, or it is a
REPLICA that refuses to race for writes of its own nobody else has), a node (in any role) may
take the lock when it can prove that it holds every write another member holds, except a
member's own writes that no other node received. Such writes were never acknowledged in lossless
mode (an acknowledgement needs a replica that received them), the same judgement as the race's
``stays_out_for_own_writes``. The proof compares binlog states (every server's stream, as the
errant-GTID check does), not positions: a position keeps one GTID per domain and cannot show that
a fenced winner's own token sits on top of the old primary's writes rather than on another branch.

Layout and invariants:

* ``collect_takeover_refusals``: every reason this node may not take over; none means it may.
  The race's own guards (pause, health, cooldown, failsafe promises, lag ...) apply unchanged;
  only its ``unreplicated_own_writes`` refusal gives way to the proof above.
* Records without a binlog state (an agent too old to publish one, a down mysqld) prove nothing:
  the node stays where it is and says whose state is missing. One exception: a mysqld the fence
  killed (fence by crash), down until a repair that needs a primary, publishes the binlog state
  it had at the kill (``binlog_state_at_kill``). Without it the killed nodes wait for a primary
  and the takeover waits for them (issue 16's soak, seed 301). A SIGKILLed server adds nothing
  and its recovery only removes its own in-doubt commits, so it holds at most that state: taken
  as what it holds, each of its streams can only be longer than the truth, which can only add
  GTIDs to prove (here, and as "received elsewhere" for a third node's own writes). The killed
  node itself never takes over while down: its own history is unknown (and a repair awaits).
  When no live member can take over and its state at the kill proves the condition, its repair
  runs without a primary (``repair_reference``, soak seed 403); then it proves it live.
* Among the nodes that can prove it, only the one ranking highest by ``candidate_sort_key`` takes
  the lock (the others see it and defer); two that both race are still one writer (the lock).
* Every member this agent process has seen must have a fresh record, and the agent must have read
  the DCS for ``member_stale_after``: records come back one by one after a partition, an outage
  or a restart. A member never seen since is not seen at all, as in the race rule.
"""

from __future__ import annotations

from collections.abc import Sequence

from dbfence.agent.decide_ack_holders import defers_to_ack_holder
from dbfence.agent.decide_race import (
    collect_race_refusals,
    fenced_writes_lacking,
    ranked_by_peers,
    stays_out_for_own_writes,
)
from dbfence.agent.decide_round import (
    Refusal,
    RefusalReason,
    Round,
    absent_members,
    records_not_read_yet,
)
from dbfence.agent.gtid import BinlogState, Gtid, candidate_sort_key, maybe_acknowledged
from dbfence.agent.observation import MemberRecord
from dbfence.agent.state import Role

#: What an operator can do when the proof fails (docs/operations.md, "No primary, all fenced").
OPERATOR_HINT = ("bring back the members that hold it, or rebuild this node from one of them "
                 "(docs/operations.md)")


def takeover_refusals(r: Round) -> list[Refusal]:
    """Why this node may not take the free lock without a primary (empty: it may). Wake-up
    times (a cooldown's end) go to ``r``; the refusals are returned, not added."""
    scratch = Round(r.obs, r.config, r.state)
    collect_takeover_refusals(scratch)
    r.wake_times.extend(scratch.wake_times)
    return scratch.refusals


def collect_takeover_refusals(r: Round) -> None:
    obs = r.obs
    others = [record for record in obs.members if record.name != r.me]
    if not _records_complete(r, others):
        return
    if obs.repair.running or obs.repair.awaiting_restart:
        r.refuse(RefusalReason.REPAIR_RUNNING, "no takeover while this node is repaired")
    collect_race_refusals(r, fenced_holders=False)
    # The proof below supersedes it: what it holds of its own stays the cluster's history.
    r.refusals = [refusal for refusal in r.refusals
                  if refusal.reason is not RefusalReason.UNREPLICATED_OWN_WRITES]
    mine = obs.db.history
    unknown = [record.name for record in others
               if record.info.known_history is None or record.info.server_id is None]
    if mine is None or obs.db.server_id is None:
        unknown.insert(0, f"{r.me} (this node)")
    if unknown:
        r.refuse(RefusalReason.TAKEOVER_UNPROVEN,
                 f"binlog state of {', '.join(unknown)} unknown: cannot prove this node holds "
                 "everything; start their agents (or mysqld)")
        return
    assert mine is not None and obs.db.server_id is not None  # checked just above
    holders = [(record.name, _history(record), _server_id(record)) for record in others]
    everyone = [(r.me, mine, obs.db.server_id), *holders]
    if _proven(r, mine, holders, everyone):
        _defer_to_better(r, others, everyone)


def repair_reference(r: Round) -> BinlogState | None:
    """What a node whose mysqld the fence killed is repaired against when there is no primary
    (the other members' binlog states merged), or None after saying why it waits for one.

    Soak seed 403: the new primary's acknowledged writes were on its replica only; both were
    killed by their fences in turn (each had a commit waiting for an ack), and the third node,
    alive, lacked those writes. The repair of a killed mysqld waited for a primary, the takeover
    for a live binlog state: nobody moved. The rule: with the lock free, no member that may race,
    and every member's fresh record, a killed node whose state at the kill proves the takeover's
    condition, while no live member proves it, starts its repair now. Recovery removes only its
    in-doubt commits (never acknowledged), saved first as always; what they were is judged
    against what the others hold. Then its live state decides the takeover as for any node.
    Only a live member that can take over itself makes it wait: it is repaired against that one
    once it is primary. The evidence (lossless) is checked by ``rejoin.plan_repair`` as always.
    """
    others = [record for record in r.obs.members if record.name != r.me]
    if not _records_complete(r, others):
        return None
    mine, server_id = r.obs.repair.binlog_state_at_kill, r.obs.repair.server_id_at_kill
    unknown = [record.name for record in others
               if record.info.known_history is None or record.info.server_id is None]
    if mine is None or server_id is None:
        unknown.insert(0, f"{r.me} (this node, at the kill)")
    if unknown:
        r.refuse(RefusalReason.TAKEOVER_UNPROVEN,
                 f"binlog state of {', '.join(unknown)} unknown: cannot prove this node holds "
                 "everything; start their agents (or mysqld)")
        return None
    assert mine is not None and server_id is not None  # checked just above
    holders = [(record.name, _history(record), _server_id(record)) for record in others]
    everyone = [(r.me, mine, server_id), *holders]
    for record in others:
        info = record.info
        if info.history is not None and info.healthy and info.priority > 0 and not any(
                maybe_acknowledged(info.history, name, history, their_id, everyone)
                for name, history, their_id in everyone if name != record.name):
            r.refuse(RefusalReason.NO_PRIMARY_TO_REJOIN, f"{record.name} may take over (it holds "
                     "everything): this node's mysqld is repaired once it is primary")
            return None
    if not _proven(r, mine, holders, everyone):
        return None
    return BinlogState.merged(*(history.gtids for _, history, _ in holders))


def _records_complete(r: Round, others: list[MemberRecord]) -> bool:
    """No other member may race, and this agent has every member's fresh record (else refused)."""
    racing = [record.name for record in others if not _never_races(r, record)]
    if racing:
        r.refuse(RefusalReason.NO_PRIMARY_TO_REJOIN, f"waiting for {', '.join(racing)} (may race)")
        return False
    not_read = records_not_read_yet(r)
    if not_read:
        r.refuse(RefusalReason.TAKEOVER_UNPROVEN, not_read)
        return False
    absent = absent_members(r, others)
    if not others or absent:
        # Records come back one by one (a partition healed, a DCS outage over): the one not back
        # yet may hold acknowledged writes. A node that saw no peer has nothing to prove against.
        r.refuse(RefusalReason.TAKEOVER_UNPROVEN,
                 f"no fresh record of {', '.join(absent)} (seen since this agent started): start "
                 "their agents, or restart this one if they left for good" if absent
                 else "no record of another member")
        return False
    return True


def _proven(r: Round, mine: BinlogState, holders: Sequence[tuple[str, BinlogState, int]],
            everyone: Sequence[tuple[str, BinlogState, int]]) -> bool:
    """Whether ``mine`` holds every write a holder holds that may have been acknowledged (else
    one refusal per holder, naming what is missing)."""
    proven = True
    for name, history, server_id in holders:
        missing = maybe_acknowledged(mine, name, history, server_id, everyone)
        if missing:
            proven = False
            r.refuse(RefusalReason.TAKEOVER_UNPROVEN,
                     f"{name} holds {_listed(missing)} this node lacks, maybe acknowledged: {OPERATOR_HINT}")
    return proven


def _never_races(r: Round, record: MemberRecord) -> bool:
    """FENCED, or a REPLICA that refuses to race for writes of its own nobody else has, for a
    fenced member's writes it lacks (judged as it judges itself: ``stays_out_for_own_writes``,
    ``fenced_writes_lacking``), e.g. a fenced node whose agent restarted, or for writes that a
    member the race does not rank received and it lacks (``defers_to_ack_holder``: this node, say,
    FENCED after its mysqld died while it promoted, holding the old primary's acknowledged writes;
    soak seed 401). Nor does a REPLICA whose mysqld is down and has not run since (its record
    carries the state its binlog files hold, and no live history: soak seed 443, its crash
    recovery failing for good, its agent restarted): it races only once mysqld answers, and its
    record then says what it holds."""
    role = record.info.role
    down = record.info.history is None and record.info.binlog_state_at_kill is not None
    return role is Role.FENCED or (role is Role.REPLICA and (
        down or stays_out_for_own_writes(r, record)
        or bool(fenced_writes_lacking(r, record.name, record.info.history))
        or defers_to_ack_holder(r, record, ranked_by_peers(r))))


def _defer_to_better(r: Round, others: list[MemberRecord],
                     everyone: Sequence[tuple[str, BinlogState, int]]) -> None:
    """Leave the lock to a fenced peer that can prove the same and ranks higher (holds more)."""
    db = r.obs.db
    assert db.holds is not None and db.position is not None  # a known history has them
    mine = candidate_sort_key(db.holds, db.position, r.config.priority, r.me)
    for record in others:
        info = record.info
        theirs = info.history
        if not (info.healthy and info.priority > 0) or theirs is None:
            continue  # it does not race (or cannot prove anything: its mysqld's state is unknown)
        if any(maybe_acknowledged(theirs, name, history, server_id, everyone)
               for name, history, server_id in everyone if name != record.name):
            continue  # it cannot prove it
        assert info.holds is not None and info.position is not None  # a known history has them
        if candidate_sort_key(info.holds, info.position, info.priority, info.name) > mine:
            r.refuse(RefusalReason.PEER_MORE_ADVANCED, f"{record.name} may take over too and ranks higher")


def _history(record: MemberRecord) -> BinlogState:
    history = record.info.known_history
    assert history is not None  # checked by the caller
    return history


def _server_id(record: MemberRecord) -> int:
    server_id = record.info.server_id
    assert server_id is not None  # checked by the caller
    return server_id


def _listed(gtids: tuple[Gtid, ...]) -> str:
    return ",".join(str(gtid) for gtid in gtids)
