"""The executor's side of a repair without a primary (soak seed 403): no member record to reach.

A killed mysqld repaired before any node is primary is judged against the reference state the
core computed (the other members' binlog states merged): the executor hands that state to the
repair keeper instead of connecting to a primary's mysqld.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

from dbfence.agent.actions import ActionReason, TruncateErrant
from dbfence.agent.executor import Executor
from dbfence.agent.gtid import BinlogState
from dbfence.mysql.gtid import GtidState


class RecordingKeeper:
    """Stands in for the repair keeper's thread: keeps what the executor passed it."""

    def __init__(self) -> None:
        self.started: list[tuple[TruncateErrant, GtidState]] = []
        self.still_wanted: Callable[[], bool] = lambda: False

    def start_truncate(self, action: TruncateErrant, primary_state: Callable[[], GtidState],
                       still_wanted: Callable[[], bool]) -> None:
        self.started.append((action, primary_state()))
        self.still_wanted = still_wanted


def test_a_repair_without_a_primary_is_judged_against_the_reference() -> None:
    keeper = RecordingKeeper()

    def no_record(name: str) -> None:
        raise AssertionError(f"looked up {name!r}: there is no primary to reach")
    holder: list[str | None] = [None]
    executor = SimpleNamespace(repair=keeper, _holder_record=no_record, _lock_holder=lambda: holder[0])
    action = TruncateErrant("", (), ActionReason.REPAIR_WITHOUT_PRIMARY, BinlogState.parse("0-1-2,0-2-5"))
    Executor._truncate(executor, action)  # type: ignore[arg-type]
    assert keeper.started == [(action, GtidState.parse("0-1-2,0-2-5"))]
    assert keeper.still_wanted()  # the lock is still free: the reference stands
    holder[0] = "db2"
    assert not keeper.still_wanted()  # a node took the lock: the repair is planned again
