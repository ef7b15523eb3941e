"""The fencing-token writer against a real lossless pair: a wait nobody acknowledges is ended
even when the first attempt to end it fails, at once when no semi-sync replica is connected, and
only at the bound while one is connected (which may yet answer)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

from dbfence.mysql.errors import MysqlAdapterError
from dbfence.mysql.token_writer import FencingTokenWriter
from tests.conftest import LabFactory
from tests.mysql.mysql_lab_helpers import actions, poll
from tests.mysql.test_mysql_repair_lab import lossless_pair, primary_nobody_acknowledges


def test_a_token_wait_whose_end_failed_is_ended_by_a_later_call(lab_factory: LabFactory) -> None:
    """The KILL that ends an unacknowledged token wait can fail (its own connection to mysqld
    does). The writer must try again on the next call, not count the wait as ended: the
    promotion would otherwise wait for the session's read timeout (semi-sync's timeout plus a
    margin, an hour by default), its gate closed."""
    _, db2 = primary_nobody_acknowledges(lab_factory)
    writer = FencingTokenWriter(db2, "agent-db2", wait_s=120.0, ack_wait_s=1.0)
    failures = [MysqlAdapterError("the KILL's connection failed (test)")]
    attempts: list[int] = []

    def release(end: Callable[[], None]) -> None:
        attempts.append(len(attempts))
        if failures:
            raise failures.pop()
        end()

    def committed() -> bool:
        try:
            return writer.ensure(7, release)
        except MysqlAdapterError:
            return False  # the failed end, reported once to the caller (the executor logs it)

    assert not writer.ensure(7, release)
    poll(committed, 40, "the token's wait to be ended after a failed first end")
    assert not failures and len(attempts) == 2
    token = db2.read_fencing_token()
    assert token is not None and token.token == 7


def test_a_newer_token_ends_an_older_tokens_overdue_wait(lab_factory: LabFactory) -> None:
    """The ack-wait bound holds whatever token is asked for: a write of token 7 that nobody
    acknowledges must not hold token 8 back for the session's read timeout (an hour by default)."""
    _, db2 = primary_nobody_acknowledges(lab_factory)
    writer = FencingTokenWriter(db2, "agent-db2", wait_s=120.0, ack_wait_s=1.0)
    assert not writer.ensure(7)
    poll(lambda: writer.ensure(8), 40, "token 8 written after token 7's overdue wait was ended")
    token = db2.read_fencing_token()
    assert token is not None and token.token == 8


def _seconds_to_commit(writer: FencingTokenWriter, token: int, ends: list[str]) -> float:
    """Write ``token`` the way the executor does (a call a round); seconds until it is in."""
    def release(end: Callable[[], None]) -> None:
        ends.append(writer.ended_why or "")
        end()

    started = time.monotonic()
    assert not writer.ensure(token, release)
    poll(lambda: writer.ensure(token, release), 30, f"token {token} to commit")
    return time.monotonic() - started


def test_a_token_wait_with_no_semi_sync_replica_connected_ends_after_the_alone_wait(
        lab_factory: LabFactory) -> None:
    """Soak seed 442 (kill -9 took 6.4 s): the third node fenced and stopped, the killed one
    rejoining only once the winner is primary. Nobody can acknowledge the token; the promotion
    must not wait out the whole bound (here 60 s) for it."""
    _, db2 = primary_nobody_acknowledges(lab_factory)
    assert db2.semi_sync_clients() == 0
    writer = FencingTokenWriter(db2, "agent-db2", wait_s=120.0, ack_wait_s=60.0, alone_wait_s=0.5)
    ends: list[str] = []
    took = _seconds_to_commit(writer, 7, ends)
    assert ends == ["alone"] and took < 20.0
    assert writer.ended_why_text() == "none connected after 0.5 s"
    token = db2.read_fencing_token()
    assert token is not None and token.token == 7


def test_a_token_wait_with_a_connected_replica_waits_for_the_bound(lab_factory: LabFactory) -> None:
    """A connected semi-sync replica may still acknowledge (it is slow, or repointing): only the
    bound ends that wait. Its mysqld is stopped here, so it stays connected and never answers."""
    lab = lossless_pair(lab_factory)
    db1, db2 = actions(lab, "db1"), actions(lab, "db2")
    db1.ensure_schema()
    poll(lambda: db2.gtid_positions().binlog_pos == db1.gtid_positions().binlog_pos, 30,
         "db2 to apply the dbfence schema")
    assert db1.semi_sync_clients() == 1
    writer = FencingTokenWriter(db1, "agent-db1", wait_s=120.0, ack_wait_s=4.0, alone_wait_s=0.3)
    process = lab.node("db2").process
    process.signal(signal.SIGSTOP)
    try:
        ends: list[str] = []
        took = _seconds_to_commit(writer, 7, ends)
    finally:
        process.signal(signal.SIGCONT)
    assert ends == ["bound"] and took >= 4.0
    assert writer.ended_why_text() == "none answered within 4 s"
