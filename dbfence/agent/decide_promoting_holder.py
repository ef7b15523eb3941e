"""A FENCED node repairs against, and rejoins, a lock holder that is still PROMOTING (issue 16).

Why: a lossless winner's fencing token waits for a semi-sync ack (``token_writer``, 6 s). When the
third node is FENCED (an earlier fault) and the old primary's mysqld was killed -9, the only node
that could acknowledge it is the old primary, FENCED too; it repaired (``TruncateErrant``) and
rejoined only against a *ready* primary (record says PRIMARY). So the winner waited its 6 s, the
wait was ended and the token committed unacknowledged (an errant transaction later that no
truncation may remove), and only then the old primary rejoined (soak RTOs 6.45 and 6.51 s).
Replicas already follow a PROMOTING holder (``decide_replica._follow_holder``); this lets a
FENCED node do the same, and repair against it first, when that is proven safe.

The danger: a truncation against a holder removes what the holder lacks. Against a PRIMARY that
is safe because the primary holds every write any replica held (its race and promotion proved
it). A PROMOTING holder may still step down (``decide_promotion._overtaken``, until its token is
in) for a member that holds more; and an ack from us would commit its token, after which it no
longer steps down. So the rule (lossless mode only) asks for the proof itself, judged on binlog
states, as the takeover without a primary does (``gtid.maybe_acknowledged``):

* the holder's fresh record says PROMOTING under the lock's current token, with nothing received
  beyond what it applied (what looks errant against its binlog must not sit in its relay log);
* this agent has read the DCS for ``member_stale_after`` and has a fresh record of every member it
  has seen; every other member's record saw the holder's token (so it stopped receiving from a
  source without the lock, lossless) and shows its binlog state (a mysqld the fence killed: its
  state at the kill, an upper bound) and server id; this node's own state is known (live, or at
  the kill while its mysqld awaits the repair): a member of unknown position may hold
  acknowledged writes the holder lacks (``decide_ack_holders.peer_position_unknown``);
* the holder holds every write any member holds that may have been acknowledged: another
  server's write it received, or its own that a third node received too. What is left beyond
  the holder is each member's own writes nobody else received: never acknowledged (AFTER_SYNC
  answers only once a replica has it). So what this node's truncation removes was never
  acknowledged, and no member holds more than the holder that an ack from us could pass by.

Then ``handle_fenced`` treats the holder as the primary to repair against and rejoin (the
evidence is checked by ``rejoin.plan_repair`` as always). A rebuild (minutes) waits for a ready
primary: it could not beat the ack wait anyway. Otherwise the node waits, as before, and says why.
"""

from __future__ import annotations

from dbfence.agent.decide_round import Round, absent_members, fresh, records_not_read_yet
from dbfence.agent.gtid import BinlogState, maybe_acknowledged
from dbfence.agent.state import Role


def promoting_holder(r: Round) -> tuple[str | None, str]:
    """The lock holder when this FENCED node may repair against and follow it while it is still
    PROMOTING (module docstring); else None and why not ("" when the holder is not promoting)."""
    obs = r.obs
    lock = obs.lock
    holder = lock.holder
    if not r.config.lossless or not lock.reachable or holder is None or holder == r.me:
        return None, ""
    record = obs.member(holder)
    if record is None or record.info.role is not Role.PROMOTING or not fresh(r, record):
        return None, ""
    if record.info.seen_token != lock.token:
        return None, "its record is not of this term yet"
    if record.info.holds != record.info.position:
        return None, "its relay log is not applied yet"
    not_read = records_not_read_yet(r)
    if not_read:
        return None, not_read
    others = [m for m in obs.members if m.name != r.me]
    absent = absent_members(r, others)
    if absent:
        return None, f"no fresh record of {', '.join(absent)}"
    unseen = [m.name for m in others if m.name != holder and m.info.seen_token != lock.token]
    if unseen:
        return None, f"waiting for {', '.join(unseen)} to see its lock"
    mine = obs.db.history
    my_id = obs.db.server_id
    if mine is None and obs.repair.awaiting_restart:
        mine, my_id = obs.repair.binlog_state_at_kill, obs.repair.server_id_at_kill
    everyone: list[tuple[str, BinlogState, int]] = []
    unknown = [] if mine is not None and my_id is not None else [f"{r.me} (this node)"]
    if mine is not None and my_id is not None:
        everyone.append((r.me, mine, my_id))
    for member in others:
        history = member.info.history if member.name == holder else member.info.known_history
        if history is None or member.info.server_id is None:
            unknown.append(member.name)
        else:
            everyone.append((member.name, history, member.info.server_id))
    if unknown:
        return None, f"binlog state of {', '.join(unknown)} unknown"
    theirs = next(history for name, history, _ in everyone if name == holder)
    missing = []
    for name, history, server_id in everyone:
        lacked = () if name == holder else maybe_acknowledged(theirs, name, history, server_id, everyone)
        if lacked:
            missing.append(f"{name}'s {','.join(map(str, lacked))}")
    if missing:
        return None, f"it lacks {'; '.join(missing)} (maybe acknowledged)"
    return holder, ""
