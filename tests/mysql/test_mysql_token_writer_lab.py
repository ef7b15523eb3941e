"""The fencing-token writer against a real lossless pair: a wait nobody acknowledges is ended
even when the first attempt to end it fails."""

from __future__ import annotations

from collections.abc import Callable

from dbfence.mysql.errors import MysqlAdapterError
from dbfence.mysql.token_writer import FencingTokenWriter
from tests.conftest import LabFactory
from tests.mysql.mysql_lab_helpers import poll
from tests.mysql.test_mysql_repair_lab import primary_nobody_acknowledges


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
