"""A fenced node's log says why it does not rejoin, once per change of reasons (soak seed 305:
100 s of waiting with nothing in the log, only /status said why)."""

from __future__ import annotations

from dataclasses import replace

from dbfence.agent.decide import decide
from dbfence.agent.observation import ErrantCheck, LockView
from dbfence.agent.state import Role, State, Trigger
from dbfence.agent.status_report import fenced_wait
from tests.agent.core_builders import CONFIG, NOW, db, member, observe

PRIMARY_N2 = LockView(reachable=True, holder="n2", token=8)
PEERS = (member("n2", Role.PRIMARY, position="0-2-120"), member("n3", position="0-2-110"))
FENCED = replace(State(role=Role.FENCED, since=NOW - 10), fenced_reason=Trigger.DB_UNHEALTHY)
CUT_OFF = "cannot read n2's binlog state: connect to 10.0.0.2:3306: timed out"


def test_the_reasons_are_logged_when_they_change_and_not_every_round() -> None:
    unhealthy = decide(observe(Role.FENCED, lock=PRIMARY_N2, peers=PEERS,
                               database=db(healthy=False, reasons=("connect tripped",))), FENCED, CONFIG)
    logged, line = fenced_wait((), unhealthy, unhealthy.state)
    assert logged == ("db_unhealthy",) and line == ["db_unhealthy: connect tripped"]
    assert fenced_wait(logged, unhealthy, unhealthy.state) == (logged, None)  # the next round: quiet
    # mysqld is back, but the new primary's mysqld cannot be reached: the new reason, with why.
    cut_off = decide(observe(Role.FENCED, lock=PRIMARY_N2, peers=PEERS, database=db(errant_problem=CUT_OFF)),
                     FENCED, CONFIG)
    logged, line = fenced_wait(logged, cut_off, cut_off.state)
    assert line == [f"errant_unchecked: n2 ({CUT_OFF})"]
    # Rejoined: nothing to log, and a later fence logs its reasons again.
    clean = decide(observe(Role.FENCED, lock=PRIMARY_N2, peers=PEERS,
                           database=db(source=None, errant=ErrantCheck("n2", ()))), FENCED, CONFIG)
    assert clean.state.role is Role.REPLICA
    logged, line = fenced_wait(logged, clean, clean.state)
    assert logged == () and line is None
    assert fenced_wait(logged, cut_off, cut_off.state)[1] == [f"errant_unchecked: n2 ({CUT_OFF})"]


def test_a_replica_that_does_not_race_for_the_free_lock_says_why() -> None:
    """Seed 403: db1's agent restarted as a replica while no node was primary; it lacked a fenced
    member's acknowledged writes and waited (rightly) with nothing in its log."""
    free = LockView(reachable=True, holder=None)
    fenced_peers = (member("n2", Role.FENCED, position="0-2-4", server_id=2, binlog_state="0-1-2,0-2-4"),
                    member("n3", Role.FENCED, position="0-2-4", server_id=3, binlog_state="0-1-2,0-2-4"))
    replica = State(role=Role.REPLICA, since=NOW - 10)
    waiting = decide(observe(Role.REPLICA, lock=free, peers=fenced_peers,
                             database=db(position="0-1-2", server_id=1, source=None, binlog_state="0-1-2")),
                     replica, CONFIG)
    assert waiting.state.role is Role.REPLICA
    logged, line = fenced_wait((), waiting, waiting.state, lock_free=True)
    assert line is not None and any("n2 (fenced) holds 0-2-4" in text for text in line), line
    assert fenced_wait(logged, waiting, waiting.state, lock_free=True) == (logged, None)
    # Following a primary, a replica's refusals are not that story: nothing logged.
    following = decide(observe(Role.REPLICA, lock=PRIMARY_N2, peers=PEERS), replica, CONFIG)
    assert fenced_wait((), following, following.state, lock_free=False)[1] is None
