"""The loop's back-off does not hold up a promotion whose fencing-token write waits for an ack
(soak seed 305: nobody could follow the new primary, its token wait was ended up to 2 s after
the 6 s bound, and the round that saw the token came 2 s after that, the back-off's limit).

A real lossless pair: db2 promoted with semi-sync AFTER_SYNC and nobody following it, so its
token write waits until the executor ends it. The test drives the executor round by round as
the agent's loop does (the same action every round, then the back-off the loop would wait)."""

from __future__ import annotations

import threading
import time

from dbfence.agent.actions import ActionReason, WriteFencingToken
from dbfence.agent.repeats import RepeatBackoff
from dbfence.mysql.token_writer import FencingTokenWriter
from tests.conftest import LabFactory
from tests.mysql.test_executor_repoint_lab import executor_on
from tests.mysql.test_mysql_repair_lab import primary_nobody_acknowledges

ACK_WAIT_S = 1.0


def test_rounds_polling_an_unacknowledged_token_write_are_not_held_by_the_back_off(
        lab_factory: LabFactory) -> None:
    lab, db2 = primary_nobody_acknowledges(lab_factory)
    executor, _ = executor_on(lab, "db2", source_read_budget=0.5)
    write_ended = threading.Event()
    executor.token_writer = FencingTokenWriter(db2, "agent-db2", wait_s=120.0, ack_wait_s=ACK_WAIT_S,
                                               on_done=write_ended.set)
    # Back off from the first repeat: every round below repeats the one before.
    executor.backoff = RepeatBackoff(first=0.1, limit=2.0, after=0)
    action = WriteFencingToken(7, ActionReason.PROMOTION)
    rounds: list[tuple[float, float, bool, int]] = []  # (when, back-off, token in, progress)
    first = time.monotonic()
    try:
        deadline = first + 60
        while time.monotonic() < deadline:
            progress = executor.token_writer.progress
            executor.run(action)
            token = db2.read_fencing_token()
            now = time.monotonic()
            backoff = executor.backoff.after_round((action,))
            rounds.append((now, backoff, token is not None and token.token == 7,
                           executor.token_writer.progress - progress))
            if sum(1 for r in rounds if r[3]) == 2:
                break  # the wait ended, then the token found in: the core moves on now
            time.sleep(backoff)  # what the loop waits (the write's end only cuts it shorter)
    finally:
        executor.lock.close()
    assert rounds and rounds[-1][2], f"the token never got in: {rounds}"
    assert write_ended.is_set(), "the writer's end was not announced (the loop's back-off is cut by it)"
    took_effect = [r for r in rounds if r[3]]
    # The round that ended the wait, and the one that found the token in: neither backs off.
    assert len(took_effect) == 2, rounds
    assert all(r[1] == 0.0 for r in took_effect), rounds
    # While the write waited, no back-off reached past the moment its wait had to be ended.
    waiting = rounds[:rounds.index(took_effect[0])]
    overdue_at = first + ACK_WAIT_S + 0.05  # the write started within the first round
    before_due = [(when, backoff) for when, backoff, _, _ in waiting if when < first + ACK_WAIT_S]
    assert all(when + backoff <= overdue_at for when, backoff in before_due), rounds
