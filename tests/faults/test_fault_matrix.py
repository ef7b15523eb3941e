"""The short fault matrix: every fault once, under a small write load, on real servers.

Each round must lose no acknowledged write, never have two writers, and end with one primary
that takes writes again; for etcd quorum loss, no write may be acknowledged once the last lease
could have run out, until quorum is back. Labs are shared between rounds while they stay clean
(:class:`dbfence.lab.faults.LabPool`). The full matrix, with repeated runs and timings, is
``benchmarks/faults.py``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbfence.lab.agents import AgentTuning
from dbfence.lab.faults import Fault, LabPool, RoundResult, all_faults, applicable, scratch_space, unavailable
from tests.conftest import _lab_root

pytestmark = pytest.mark.timeout(300)

FAULTS = [pytest.param(f, id=f.name) for f in all_faults() if applicable(f, "etcd") and not f.long]


LOGS = Path(tempfile.gettempdir()) / "dbfence-fault-logs"  # of rounds that left their lab unsettled
LOGS.mkdir(exist_ok=True)


@pytest.fixture(scope="module")
def pool(request: pytest.FixtureRequest) -> Iterator[LabPool]:
    scratch = Path(tempfile.mkdtemp(prefix="faults-", dir=_lab_root()))
    logs = Path(tempfile.mkdtemp(prefix="run-", dir=LOGS))
    failed_before = request.session.testsfailed
    with scratch_space(scratch) as root:
        labs = LabPool(root, "etcd", AgentTuning(), keep_logs=logs)
        try:
            yield labs
        finally:
            labs.close()
    # The faults that freeze or cut off a primary always leave it fenced ("unsettled"), so
    # logs are kept every run: worth keeping only if a test here failed.
    if request.session.testsfailed == failed_before:
        shutil.rmtree(logs, ignore_errors=True)


def safety_problems(result: RoundResult) -> list[str]:
    verdict = result.verdict
    found = []
    if verdict.final_primary is None:
        found.append("no primary after the heal")
    elif verdict.lost:
        found.append(f"lost acknowledged writes {list(verdict.lost)[:10]}")
    if verdict.interleaved or verdict.stale:
        found.append(f"two writers: {list(verdict.interleaved)[:3]} {list(verdict.stale)[:3]}")
    if verdict.admitted_while_fenced:
        found.append(f"writes acknowledged without quorum {list(verdict.admitted_while_fenced)[:10]}")
    return found


@pytest.mark.parametrize("fault", FAULTS)
def test_the_fault_loses_nothing_and_never_has_two_writers(pool: LabPool, fault: Fault) -> None:
    if (why := unavailable(fault)) is not None:
        pytest.skip(why)
    result = pool.run(fault, clients=2, recover_timeout=25.0)
    notes = [*result.notes, f"agent logs under {pool.keep_logs}"]
    assert result.verdict.acknowledged > 0
    found = safety_problems(result)
    assert not found, "\n".join([*found, *notes])
    # The faults that must keep the primary (too many connections, a flood through the gate)
    # check that, and what the clients saw, themselves.
    assert not result.problems, "\n".join([*result.problems, *notes])
    # mysqld-stop and host-freeze used to stall here: the other replica took the thawed old
    # primary's unacknowledged commits, went errant, and left the lossless primary without a
    # semi-sync replica. Replicas now stop receiving from a source without the lock (DetachSource).
    resumed = bool(result.verdict.outages) and result.verdict.outages[0].end is not None
    assert resumed, "writes never resumed\n" + "\n".join(notes)
    if fault.failsafe and fault.rto_goal(AgentTuning()) is not None:
        # Failsafe: the primary kept writing past its lease on its peers' promises, and nothing moved.
        assert result.beyond_lease > 0 and not result.failed_over, "\n".join(notes)
