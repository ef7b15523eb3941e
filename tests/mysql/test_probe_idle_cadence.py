"""When a probe round is calm (``calm_round``): the rule that lets the connect and disk probes run
every ``idle_probe_every`` rounds instead of every round (issue 18, the agent's idle cost).

Pure: verdicts and hysteresis states in, one bool out. The cadence itself, against a real mysqld,
is in ``test_probe_idle_cadence_lab.py``.
"""

from __future__ import annotations

import pytest

from dbfence.mysql.connection import Endpoint
from dbfence.mysql.credentials import Credentials
from dbfence.mysql.hysteresis import Health, HysteresisConfig
from dbfence.mysql.monitor import calm_round
from dbfence.mysql.probes import Prober, ProbeSettings, Target
from dbfence.mysql.verdict import ProbeKind, Reason, Verdict

SELECT_TIMEOUT = 0.3


def ok(kind: ProbeKind, elapsed: float = 0.001) -> Verdict:
    return Verdict.passed(kind, "fine", elapsed)


def bad(kind: ProbeKind, reason: Reason = Reason.CONNECT_REFUSED) -> Verdict:
    return Verdict.failed(kind, reason, "not fine", 0.001)


ROUND = (ok(ProbeKind.SELECT), ok(ProbeKind.CONNECTIONS), ok(ProbeKind.READ_ONLY), ok(ProbeKind.PROCESS))
SETTLED = Health().feed([ok(ProbeKind.CONNECT), ok(ProbeKind.DISK), *ROUND])


def test_a_round_where_every_probe_passed_in_good_time_is_calm() -> None:
    assert calm_round(ROUND, SETTLED.feed(ROUND), frozenset(), False, SELECT_TIMEOUT)


@pytest.mark.parametrize(
    ("case", "verdicts", "health", "unconfirmed", "pending"),
    [
        ("a probe failed this round", (*ROUND, bad(ProbeKind.PROCESS, Reason.PROCESS_GONE)), None,
         frozenset(), False),
        ("too many connections (saturated, never trips)",
         (*ROUND, bad(ProbeKind.CONNECT, Reason.TOO_MANY_CONNECTIONS)), None, frozenset(), False),
        ("a probe is still running (no verdict yet, or late)", ROUND, None, frozenset(), True),
        ("a probe of the role has not passed yet (start, role change)", ROUND, None,
         frozenset({ProbeKind.CONNECT}), False),
        ("the select hesitates: half its timeout",
         (ok(ProbeKind.SELECT, SELECT_TIMEOUT / 2), *ROUND[1:]), None, frozenset(), False),
        ("a probe that did not run this round failed last time (the connect probe)", ROUND,
         SETTLED.feed([bad(ProbeKind.CONNECT)]), frozenset(), False),
        ("a tripped probe recovering (its passes are not enough yet)", ROUND,
         Health(HysteresisConfig(trip_after=1, recover_after=3)).feed([bad(ProbeKind.DISK, Reason.DISK_LOW)])
         .feed([ok(ProbeKind.DISK)]), frozenset(), False),
    ],
)
def test_anything_amiss_makes_the_next_round_run_every_probe(
    case: str, verdicts: tuple[Verdict, ...], health: Health | None, unconfirmed: frozenset[ProbeKind],
    pending: bool,
) -> None:
    state = (health or SETTLED).feed(verdicts)
    assert not calm_round(verdicts, state, unconfirmed, pending, SELECT_TIMEOUT), case


def test_a_select_just_under_half_its_timeout_is_still_calm() -> None:
    verdicts = (ok(ProbeKind.SELECT, SELECT_TIMEOUT / 2 - 0.01), *ROUND[1:])
    assert calm_round(verdicts, SETTLED.feed(verdicts), frozenset(), False, SELECT_TIMEOUT)


def test_the_cadence_must_be_at_least_one_round() -> None:
    with pytest.raises(ValueError, match="idle_probe_every"):
        Prober(Target(Endpoint(), Credentials("u", "p")), ProbeSettings(idle_probe_every=0))
