"""A short seeded soak on real servers: a few overlapping faults (a kill -9 of mysqld after an
etcd quorum loss, an etcd leader killed at the moment of the promotion a partition started),
writers and readers through discovery and the gates, and every check of the long soak after each
quiet period.

The long runs are ``benchmarks/soak.py``; this one replays seed 1's first two bursts in about 80 s.
On a failure the agents' logs and the history are kept, and the message says where. (Seed 3 is
the harder test: a partition strikes the node that a host freeze's failover has just promoted.
On 2026-12-07 it passed 3 runs, then failed the next 2 on main with that day's merges. In the
failure whose logs I read, the replica that had lost the first race tried to repoint to the
winner just as the winner was partitioned. The repoint hung 10 s on a connect timeout, and the
replica could not race meanwhile. Its promotion then waited 9 s for a semi-sync ack, until the
thawed old primary rejoined. That is past the 8 s quiet period.)"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from dbfence.lab import netns
from dbfence.lab.agents import AgentTuning
from dbfence.lab.faults import scratch_space
from dbfence.lab.nemesis import Trigger
from dbfence.lab.soak import Soak, SoakConfig
from dbfence.lab.soak_plot import draw
from tests.conftest import _lab_root

pytestmark = pytest.mark.timeout(420)

SEED = 1
# The schedule depends on the seed and the kinds: pinned, so new fault rows do not change it.
KINDS = ("agent-kill", "agent-stop", "etcd-follower-kill", "etcd-leader-kill", "etcd-quorum-loss",
         "host-freeze", "lagging-replica+mysqld-kill", "mysqld-kill", "mysqld-stop", "partition",
         "partition-laggard-holds-more", "partition-lagging-replica", "switchover",
         "too-many-connections", "write-stall")


def test_a_short_seeded_soak_loses_nothing_never_has_two_writers_and_is_whole_after_each_quiet_period(
        tmp_path: Path) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="soak-", dir=_lab_root()))
    lines: list[str] = []
    with scratch_space(scratch) as root:
        # without root (no namespaces) the partitions drop out, and the schedule differs
        kinds = KINDS if netns.unavailable_reason() is None else \
            tuple(k for k in KINDS if "partition" not in k)
        config = SoakConfig(seed=SEED, duration=45, root=root, quiet=8, tuning=AgentTuning(), kinds=kinds)
        result = Soak(config, say=lines.append).run()
    story = "\n".join(lines)
    assert result.ok, f"{story}\nkept: {result.kept}\nreplay: {config.replay_command()}"
    injected = [r for r in result.records if r.injected is not None]
    overlaps = [r for r in injected if r.trigger != Trigger.AT_ONCE.value]
    assert len(injected) >= 3 and overlaps, story
    assert result.counts.acknowledged > 100 and result.counts.reads > 10, story
    assert result.counts.quiet_checks >= 2 and result.counts.not_whole == 0, story
    assert any(c.new == "primary" for c in result.role_changes), story  # a failover happened
    picture = draw(tmp_path / "soak.png", result.attempts, result.started, result.ended - result.started,
                   result.records, result.role_changes, f"seed {SEED}",
                   [(at, whole.whole) for at, whole in result.checks])
    assert picture.stat().st_size > 10_000
