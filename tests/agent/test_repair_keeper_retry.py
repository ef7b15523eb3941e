"""The repair keeper's retries that need no server: a truncation that could not save its copy yet
(RepairDeferred: a binlog or a state directory on a full disk) waits and tries again with back-off,
says why in status, never gives up for good, and stops once its fence is spent; a failure for good
while the fence's kill keeps mysqld down is tried again for a bounded time only. The real thing,
a binlog cut short by a full disk: tests/mysql/test_mysql_repair_full_disk_lab.py."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dbfence.agent import repair_keeper
from dbfence.agent.actions import ActionReason, TruncateErrant
from dbfence.agent.repair_keeper import RepairKeeper
from dbfence.mysql.actions import MysqlActions
from dbfence.mysql.connection import Endpoint
from dbfence.mysql.credentials import Credentials
from dbfence.mysql.errors import MysqlAdapterError
from dbfence.mysql.gtid import GtidState
from dbfence.mysql.repair import MysqldControl, RepairResult
from dbfence.mysql.repair_errors import RepairDeferred, RepairError

FULL = "no space left in /var/lib/dbfence for the excerpt (4096 bytes); nothing removed"


def keeper(tmp_path: Path, outcomes: list[Exception | RepairResult],
           history: list[tuple[str, str]]) -> RepairKeeper:
    """A truncate-mode keeper whose attempts end as ``outcomes`` say, one each (the last again)."""
    mysql = MysqlActions(Endpoint("127.0.0.1", 9), Credentials("u", "p"), name="db1")
    control = MysqldControl(pid_file=tmp_path / "none.pid", start_command=["true"])
    k = RepairKeeper(mode="truncate", state_dir=tmp_path, node="db1", mysql=mysql, control=control,
                     on_done=lambda kind, detail: history.append((kind, detail)), retry_max=0.05)

    def attempt(*_: object) -> RepairResult:
        outcome = outcomes.pop(0) if len(outcomes) > 1 else outcomes[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome
    k._attempt = attempt  # type: ignore[method-assign,assignment]  # the adapter's I/O is the lab test's
    return k


def start(k: RepairKeeper) -> None:
    k.start_truncate(TruncateErrant("db2", ("0-1-3",), ActionReason.REPAIR_UNACKNOWLEDGED),
                     lambda: GtidState.parse(""))


def wait(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(repair_keeper, "RETRY_FIRST", 0.01)


def test_a_deferred_truncation_tries_again_says_why_and_succeeds_once_the_disk_is_freed(
        tmp_path: Path) -> None:
    history: list[tuple[str, str]] = []
    done = RepairResult(tmp_path / "errant.sql", "0-1-3", "", "0-1-3", "0-2-4", 0.5)
    seen: list[str] = []
    outcomes: list[Exception | RepairResult] = [RepairDeferred(FULL)] * 4
    k = keeper(tmp_path, [*outcomes, done], history)
    k.on_fencing()
    start(k)

    def ended() -> bool:
        seen.append(k.status()["retrying"])
        return not k.view().running
    wait(ended, "the repair to end")
    assert any(f"nothing removed until the errant transactions are saved whole; attempt 3 failed: {FULL}"
               in s for s in seen), seen
    status = k.status()
    assert status["gave_up"] == "" and status["retrying"] == "" and status["last"]["errant_before"] == "0-1-3"
    assert [kind for kind, _ in history] == ["repair"]


def test_a_deferred_truncation_never_gives_up_and_stops_when_its_fence_is_spent(tmp_path: Path) -> None:
    history: list[tuple[str, str]] = []
    k = keeper(tmp_path, [RepairDeferred(FULL)], history)
    k.on_fencing()
    start(k)
    wait(lambda: "attempt 5 failed" in k.status()["retrying"], "five attempts")
    assert k.view().running and k.view().gave_up == ""  # the core holds: repair_running
    k.on_serving()  # rejoined some other way (an operator): that fence's repair is spent
    wait(lambda: not k.view().running, "the repair to stop")
    assert k.status()["retrying"] == "" and k.view().gave_up == "" and history == []


def test_a_real_mismatch_still_gives_up_for_good(tmp_path: Path) -> None:
    history: list[tuple[str, str]] = []
    k = keeper(tmp_path, [RepairError("the binlog excerpt does not match the errant set 0-1-3: found 0-1-9")],
               history)
    k.on_fencing()
    start(k)
    wait(lambda: not k.view().running, "the repair to end")
    assert k.view().gave_up.startswith("repair failed: the binlog excerpt does not match")
    assert k.view().gave_up_on == "truncate" and [kind for kind, _ in history] == ["repair_failed"]


def test_an_unexpected_error_ends_the_repair_with_its_reason_not_a_silent_thread(tmp_path: Path) -> None:
    history: list[tuple[str, str]] = []
    k = keeper(tmp_path, [ValueError("zip() argument 2 is longer than argument 1")], history)
    k.on_fencing()
    start(k)
    wait(lambda: not k.view().running, "the repair to end")
    assert k.view().gave_up == ("repair failed: unexpected error: ValueError('zip() argument 2 is longer "
                                "than argument 1'); mysqld is not running")
    assert [kind for kind, _ in history] == ["repair_failed"]  # the core holds: repair_gave_up


SEED_305 = "the binlog holds only the start of 0-1-129572, and whole transactions after it"


def test_a_killed_mysqlds_repair_failing_for_good_gives_up_after_a_bounded_time_mysqld_left_down(
        tmp_path: Path) -> None:
    """Soak seed 305: a repair of a mysqld the fence killed retried a mismatch for ever, silently,
    mysqld down. It tries again for ``give_up_after`` seconds (a start command that flaked, a
    failover under way), then gives up saying why; mysqld stays down (awaiting_restart)."""
    history: list[tuple[str, str]] = []
    k = keeper(tmp_path, [RepairError(SEED_305)], history)
    k.give_up_after = 0.3
    k.on_fencing()
    k._killed = True  # the fence crashed mysqld (no pid file here: it is down)
    started = time.monotonic()
    start(k)
    wait(lambda: "attempt 2 failed" in k.status()["retrying"], "a second attempt")
    assert k.view().running and k.view().gave_up == ""
    wait(lambda: not k.view().running, "the repair to give up")
    assert time.monotonic() - started >= 0.3
    view = k.view()
    assert view.gave_up.startswith(f"repair failed: {SEED_305}; the same after "), view.gave_up
    assert "mysqld left down (killed by the fence" in view.gave_up and view.gave_up_on == "truncate"
    assert view.awaiting_restart  # nothing starts it: no copy of what its recovery would remove
    assert [kind for kind, _ in history] == ["repair_failed"]  # the core holds: repair_gave_up


def test_a_killed_mysqlds_repair_waits_out_an_unreachable_primary_without_giving_up(tmp_path: Path) -> None:
    history: list[tuple[str, str]] = []
    done = RepairResult(tmp_path / "errant.sql", "0-1-3", "", "0-1-3", "0-2-4", 0.5)
    unreachable = MysqlAdapterError("connect_refused: connect to 10.213.0.13:29253")
    k = keeper(tmp_path, [RepairError(SEED_305), *[unreachable] * 8, done], history)
    k.give_up_after = 0.05
    k.on_fencing()
    k._killed = True
    start(k)
    wait(lambda: not k.view().running, "the repair to end")
    assert k.view().gave_up == "" and [kind for kind, _ in history] == ["repair"], k.status()


def test_a_killed_mysqlds_repair_stops_retrying_once_its_primary_no_longer_holds_the_lock(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Seed 405: db3's repair retried against db1 (down) for ever after db1 lost the lock; db3's
    mysqld, which the fence killed, stayed down, and nobody could become primary."""
    history: list[tuple[str, str]] = []
    unreachable = MysqlAdapterError("connect_refused: connect to 10.213.0.11:40343")
    k = keeper(tmp_path, [unreachable], history)
    k.on_fencing()
    k._killed = True
    holder = ["db2"]
    k.start_truncate(TruncateErrant("db2", ("0-1-3",), ActionReason.REPAIR_UNACKNOWLEDGED),
                     lambda: GtidState.parse(""), lambda: holder[0] == "db2")
    wait(lambda: "attempt 3 failed" in k.status()["retrying"], "three attempts")
    assert k.view().running  # the core holds (repair_running) while its primary stands
    holder[0] = "db3"  # db2 lost the lock; another node took it
    with caplog.at_level("INFO", logger="dbfence.agent"):
        wait(lambda: not k.view().running, "the repair to stop")
    assert k.status()["retrying"] == "" and k.view().gave_up == "" and history == []
    assert any("repair_retargeted" in r.getMessage() and "db2 no longer holds the lock" in r.getMessage()
               for r in caplog.records)
    assert k.view().awaiting_restart  # still the fence's kill: the core plans the repair again
