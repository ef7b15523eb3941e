"""Pure hysteresis and verdict types."""

from __future__ import annotations

import pytest

from dbfence.mysql.hysteresis import Health, HysteresisConfig
from dbfence.mysql.verdict import ProbeKind, Reason, Verdict

OK = Verdict.passed(ProbeKind.SELECT, "1", 0.001)
FAIL = Verdict.failed(ProbeKind.SELECT, Reason.QUERY_TIMEOUT, "no answer in 0.3 s", 0.3)


FULL = Verdict.failed(ProbeKind.SELECT, Reason.TOO_MANY_CONNECTIONS, "(1040) Too many connections", 0.01)


def run(config: HysteresisConfig, seq: str) -> list[bool]:
    """"." a pass, "x" a failure, "s" a saturated verdict (too many connections)."""
    health = Health(config)
    out = []
    for ch in seq:
        health = health.feed([{".": OK, "s": FULL}.get(ch, FAIL)])
        out.append(health.healthy)
    return out


def test_too_many_connections_never_trips_and_counts_as_a_sign_of_life() -> None:
    cfg = HysteresisConfig(trip_after=2, recover_after=2)
    assert FULL.saturated and not FAIL.saturated and not OK.saturated
    assert run(cfg, "ssssssss") == [True] * 8
    assert run(cfg, "xsxsxs") == [True] * 6  # a refusal with 1040 breaks a run of failures
    assert run(cfg, "xxss") == [True, False, False, True]  # mysqld answers again: it recovers
    health = Health(cfg).feed([FULL])
    assert [t.kind for t in health.saturated] == [ProbeKind.SELECT]
    assert health.healthy and "select saturated" in health.describe()
    assert "SATURATED too_many_connections" in str(FULL)
    assert not health.feed([OK]).saturated


def test_trips_after_n_failures_in_a_row_only() -> None:
    cfg = HysteresisConfig(trip_after=3, recover_after=2)
    assert run(cfg, "xx.xx.") == [True] * 6  # isolated slow probes never trip
    assert run(cfg, "xxx") == [True, True, False]


def test_recovers_after_m_successes_in_a_row() -> None:
    cfg = HysteresisConfig(trip_after=2, recover_after=3)
    assert run(cfg, "xx..x...") == [True, False, False, False, False, False, False, True]


def test_trip_reason_is_kept_while_tripped_and_cleared_on_recovery() -> None:
    cfg = HysteresisConfig(trip_after=1, recover_after=2)
    health = Health(cfg).feed([FAIL])
    assert health.tripped[0].reason is Reason.QUERY_TIMEOUT
    assert "select tripped: query_timeout" in health.describe()
    health = health.feed([OK])
    assert health.tripped[0].reason is Reason.QUERY_TIMEOUT
    health = health.feed([OK])
    assert health.healthy and health.describe() == "healthy"
    assert health.tracks[ProbeKind.SELECT].reason is Reason.OK


def test_probes_are_tracked_independently() -> None:
    cfg = HysteresisConfig(trip_after=2, recover_after=1)
    disk = Verdict.failed(ProbeKind.DISK, Reason.DISK_LOW, "10 MiB free", 0.0)
    health = Health(cfg).feed([FAIL, disk]).feed([OK, disk])
    assert [t.kind for t in health.tripped] == [ProbeKind.DISK]


def test_bad_config_and_bad_verdict_are_refused() -> None:
    with pytest.raises(ValueError, match="trip_after"):
        HysteresisConfig(trip_after=0)
    with pytest.raises(ValueError, match="failure reason"):
        Verdict.failed(ProbeKind.DISK, Reason.OK, "", 0.0)
