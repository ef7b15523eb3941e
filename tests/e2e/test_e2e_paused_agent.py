"""A primary's agent paused past its lease, then resumed: it must not call itself primary.

Load balancers health-check ``/primary`` (docs/operations.md shows HAProxy doing so). The gate
closes by itself at the lease deadline, but the agent's last report, made before the pause, still
says "primary"; answers must come from the fence word at the moment they are given.
"""

from __future__ import annotations

import signal
import time
import urllib.error
import urllib.request

import pytest

from dbfence.lab.agents import AgentTuning
from dbfence.lab.cluster import LabCluster
from dbfence.lab.wait import wait_until
from tests.conftest import LabFactory
from tests.e2e.e2e_helpers import role

pytestmark = pytest.mark.timeout(240)


def primary_code(lab: LabCluster, name: str) -> int:
    """``GET /primary`` of one agent: its HTTP status, 0 when it does not answer."""
    try:
        with urllib.request.urlopen(f"{lab.agent(name).http_url}/primary", timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return 0


def test_a_resumed_primary_agent_never_answers_primary_after_its_deadline(lab_factory: LabFactory) -> None:
    tuning = AgentTuning()  # TTL 3 s, margin 1 s
    lab = lab_factory(mysql_count=3, dcs="etcd", agents=True, agent_tuning=tuning)
    ttl = tuning.ttl
    primaries = lab.primaries()
    assert len(primaries) == 1, primaries
    old = primaries[0]
    others = [a.name for a in lab.agents if a.name != old]

    lab.kill_agent(old, signal.SIGSTOP)
    paused_at = time.monotonic()
    try:
        new = wait_until(lambda: next((n for n in others if primary_code(lab, n) == 200), None),
                         timeout=30, what="another node to take over")
        # The pause must outlive the lease by far (the lab's TTL is 3 s): the was 8 s.
        while time.monotonic() < paused_at + max(8.0, 2 * ttl):
            assert primary_code(lab, new) == 200
            time.sleep(0.2)
    finally:
        lab.kill_agent(old, signal.SIGCONT)
    resumed_at = time.monotonic()

    # Poll from the moment of SIGCONT, every few milliseconds, until the resumed agent's own loop
    # has caught up (it no longer reports "primary") and a while after.
    answers: list[tuple[float, int]] = []
    caught_up_at = None
    while time.monotonic() - resumed_at < 30:
        code = primary_code(lab, old)
        answers.append((time.monotonic() - resumed_at, code))  # when the answer arrived
        if caught_up_at is None and len(answers) % 20 == 0 and role(lab, old) not in ("primary", None):
            caught_up_at = time.monotonic()
        if caught_up_at is not None and time.monotonic() - caught_up_at > 1.0:
            break
        time.sleep(0.003)
    assert caught_up_at is not None, f"{old} still reports primary 30 s after SIGCONT"
    answered = [(at, code) for at, code in answers if code != 0]
    print(f"\n{old} resumed: {len(answers)} polls of /primary, first answer "
          f"{answered[0][0] * 1000:.1f} ms after SIGCONT, loop caught up after "
          f"{(caught_up_at - resumed_at) * 1000:.0f} ms")
    assert answered and answered[0][0] < 1.0, "the resumed agent's HTTP API did not answer at once"
    wrong = [(round(at, 3), code) for at, code in answers if code == 200]
    assert wrong == [], f"{old} answered /primary 200 after its lease had expired: {wrong[:10]}"
    assert primary_code(lab, new) == 200
