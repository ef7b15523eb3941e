"""Repeated actions: logged once with a count, and the loop backs off when they achieve nothing."""

from __future__ import annotations

import json
import logging

import pytest

from dbfence.agent.actions import (
    ActionReason,
    PublishMember,
    ReleaseLock,
    RenewLock,
    Repoint,
    SetReadOnly,
    WriteFencingToken,
)
from dbfence.agent.observation import MemberInfo
from dbfence.agent.repeats import RepeatBackoff, RepeatedLines
from dbfence.agent.state import Role


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def lines_of(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [json.loads(record.getMessage()) for record in caplog.records]


def test_identical_lines_are_logged_once_then_counted(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    repeated = RepeatedLines(clock, every=60.0)
    caplog.set_level(logging.INFO, logger="dbfence.agent")
    line = json.dumps({"action": "ReleaseLock", "ok": False, "error": "unreachable"})
    for _ in range(2500):
        repeated.log("ReleaseLock", line, logging.WARNING)
        clock.now += 0.0004
    assert lines_of(caplog) == [json.loads(line)]
    # A different outcome ends the run: how many repeats, then the new line.
    repeated.log("ReleaseLock", json.dumps({"action": "ReleaseLock", "ok": True}))
    summary, new = lines_of(caplog)[1:]
    assert summary["event"] == "repeated" and summary["times"] == 2499
    assert summary["last"] == json.loads(line)
    assert new == {"action": "ReleaseLock", "ok": True}


def test_a_long_run_of_repeats_is_summarised_every_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    repeated = RepeatedLines(clock, every=60.0)
    caplog.set_level(logging.INFO, logger="dbfence.agent")
    for _ in range(600):  # ten minutes at one line a second
        repeated.log("SetReadOnly", '{"ok": false}', logging.WARNING, same_as='{"ok": false}')
        clock.now += 1.0
    logged = lines_of(caplog)
    assert 10 <= len(logged) <= 11
    assert all(entry["event"] == "repeated" for entry in logged[1:])
    assert sum(int(str(entry["times"])) for entry in logged[1:]) == 60 * (len(logged) - 1)


def test_lines_compare_without_what_always_differs(caplog: pytest.LogCaptureFixture) -> None:
    repeated = RepeatedLines(FakeClock())
    caplog.set_level(logging.INFO, logger="dbfence.agent")
    repeated.log("Promote", '{"ok": true, "ms": 1.0}', same_as='{"ok": true}')
    repeated.log("Promote", '{"ok": true, "ms": 2.5}', same_as='{"ok": true}')
    repeated.log("Repoint", '{"ok": true, "ms": 2.5}', same_as='{"ok": true}')  # another topic
    assert lines_of(caplog) == [{"ok": True, "ms": 1.0}, {"ok": True, "ms": 2.5}]


def test_backoff_grows_while_the_same_actions_are_asked_for() -> None:
    backoff = RepeatBackoff(first=0.1, limit=2.0, after=3)
    release = (ReleaseLock(7, ActionReason.UNWANTED_LEASE),)
    waits = [backoff.after_round(release) for _ in range(12)]
    assert waits[:3] == [0.0, 0.0, 0.0]  # the first rounds may simply be slow to take effect
    assert waits[3:8] == [0.1, 0.2, 0.4, 0.8, 1.6]
    assert waits[8:] == [2.0] * 4
    # Something else is asked for: progress, no wait.
    assert backoff.after_round((SetReadOnly(True, ActionReason.NOT_PRIMARY),)) == 0.0
    assert backoff.after_round(release) == 0.0


def test_routine_actions_and_quiet_rounds_never_back_off() -> None:
    backoff = RepeatBackoff()
    info = MemberInfo("n1", Role.REPLICA, True, None, False, 100)
    routine = (PublishMember(info, ActionReason.MEMBER_HEARTBEAT), RenewLock(7, ActionReason.RENEWAL_DUE))
    assert all(backoff.after_round(routine) == 0.0 for _ in range(20))
    assert all(backoff.after_round(()) == 0.0 for _ in range(20))


def test_a_round_that_waited_out_a_silent_peer_does_not_back_off() -> None:
    backoff = RepeatBackoff(first=0.1, limit=2.0, after=3)
    repoint = (Repoint("db3", False, ActionReason.FOLLOW_PRIMARY),)
    waits = []
    for _ in range(8):
        backoff.paced_by_wait()  # each round's Repoint waited its budget for the new source
        waits.append(backoff.after_round(repoint))
    assert waits == [0.0] * 8
    # A round whose failure came at once (the peer refused) backs off as before: no spin.
    assert backoff.after_round(repoint) > 0.0


def test_a_repeat_that_took_effect_starts_the_count_again() -> None:
    """Soak seed 305: the round that ended a fencing-token write's ack wait repeated the rounds
    before it, and the loop waited the limit (2 s) before the round that saw the token."""
    backoff = RepeatBackoff(first=0.1, limit=2.0, after=3)
    token = (WriteFencingToken(7, ActionReason.PROMOTION),)
    assert [backoff.after_round(token) for _ in range(10)][-1] == 2.0
    backoff.progressed()  # this round's WriteFencingToken ended the wait: the token is in
    assert backoff.after_round(token) == 0.0
    # The count starts again, as after a different action: back-off from the ``after``-th repeat.
    assert [backoff.after_round(token) for _ in range(4)] == [0.0, 0.0, 0.1, 0.2]


def test_work_in_flight_bounds_only_the_next_back_off() -> None:
    backoff = RepeatBackoff(first=0.1, limit=2.0, after=3)
    token = (WriteFencingToken(7, ActionReason.PROMOTION),)
    assert [backoff.after_round(token) for _ in range(10)][-1] == 2.0
    backoff.due_within(0.3)  # the write's ack wait must be ended in 0.3 s
    backoff.due_within(None)  # another call with nothing due changes nothing
    assert backoff.after_round(token) == 0.3
    backoff.due_within(-1.0)  # overdue already: decide again at once
    assert backoff.after_round(token) == 0.0
    assert backoff.after_round(token) == 2.0  # the bound was for one round only
