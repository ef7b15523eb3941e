"""The errant check's question "only this node's own fencing tokens?" (issue 16) reads the local
binlog once per errant set; when mysqld cannot answer it asks again only after a delay that
doubles (1 s up to 60 s), never on every round of the database sensor."""

from __future__ import annotations

import threading
import time

import pytest

from dbfence.agent import sensors
from dbfence.agent.sensors import DbSensor
from dbfence.mysql.errors import MysqlUnavailableError
from dbfence.mysql.gtid import ErrantRange, GtidState
from dbfence.mysql.probes import Role
from dbfence.mysql.verdict import Reason
from tests.conftest import LabFactory
from tests.mysql.mysql_lab_helpers import actions, creds, monitor


def test_a_failing_token_read_backs_off_and_a_verdict_is_read_once_per_errant_set(
        lab_factory: LabFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    lab = lab_factory(mysql_count=1)
    sensor = DbSensor(monitor(lab, "db1", Role.REPLICA), actions(lab, "db1"), creds(lab), threading.Event())
    ranges = GtidState.parse("0-1-5").errant_against(GtidState.parse("0-2-3"))
    gtids = tuple(map(str, ranges))
    now = [1000.0]
    asked: list[float] = []
    answers: list[str | None] = [None, None, ""]  # mysqld fails twice, then says: only tokens

    def own_token_writes(mysql: object, errant: tuple[ErrantRange, ...]) -> str:
        asked.append(now[0])
        answer = answers.pop(0)
        if answer is None:
            raise MysqlUnavailableError(Reason.CONNECT_REFUSED, "mysqld down")
        return answer

    monkeypatch.setattr(sensors, "only_own_token_writes", own_token_writes)
    monkeypatch.setattr(time, "monotonic", lambda: now[0])  # the sensor's clock (time.monotonic)
    assert not sensor._only_own_tokens(ranges, gtids)  # failed: asked again in 1 s
    now[0] += 0.9
    assert not sensor._only_own_tokens(ranges, gtids) and asked == [1000.0]
    now[0] += 0.1
    assert not sensor._only_own_tokens(ranges, gtids)  # failed again: 2 s now
    now[0] += 1.9
    assert not sensor._only_own_tokens(ranges, gtids) and asked == [1000.0, 1001.0]
    now[0] += 0.1
    assert sensor._only_own_tokens(ranges, gtids)
    for _ in range(5):  # the verdict stands for this errant set and run of mysqld: no more reads
        assert sensor._only_own_tokens(ranges, gtids)
    assert asked == [1000.0, 1001.0, 1003.0]
