"""The soak's nemesis plan: the same seed gives the same schedule, and a schedule overlaps faults."""

from __future__ import annotations

import pytest

from dbfence.lab.nemesis import NemesisTuning, Trigger, plan

KINDS = ("mysqld-kill", "agent-stop", "switchover", "host-freeze", "etcd-quorum-loss")


def test_the_same_seed_gives_the_same_schedule_whatever_order_the_kinds_come_in() -> None:
    first = plan(42, 600, KINDS, ttl=3.0, quiet=20)
    again = plan(42, 600, tuple(reversed(KINDS)), ttl=3.0, quiet=20)
    assert first == again
    assert first.describe() == again.describe()


def test_another_seed_gives_another_schedule() -> None:
    assert plan(1, 600, KINDS, ttl=3.0, quiet=20).bursts != plan(2, 600, KINDS, ttl=3.0, quiet=20).bursts


def test_a_long_schedule_uses_every_kind_overlaps_faults_and_holds_some_past_the_ttl() -> None:
    schedule = plan(7, 1800, KINDS, ttl=3.0, quiet=30)
    faults = [f for b in schedule.bursts for f in b.faults]
    assert {f.kind for f in faults} == set(KINDS)
    triggers = {f.trigger for f in faults}
    assert triggers == {Trigger.AT_ONCE, Trigger.RECOVERING, Trigger.PROMOTION}
    assert all(b.faults[0].trigger is Trigger.AT_ONCE for b in schedule.bursts)
    assert all(f.trigger is not Trigger.AT_ONCE for b in schedule.bursts for f in b.faults[1:])
    assert any(b.overlapping for b in schedule.bursts)
    assert any(f.hold > 3.0 for f in faults) and any(f.hold < 3.0 for f in faults)
    # an overlap "while recovering" can strike before the previous fault is healed
    assert any(b.faults[i].trigger is Trigger.RECOVERING and b.faults[i].delay < b.faults[i - 1].hold
               for b in schedule.bursts for i in range(1, len(b.faults)))


def test_the_schedule_fills_the_duration() -> None:
    schedule = plan(3, 600, KINDS, ttl=3.0, quiet=20)
    planned = sum(b.estimate() + 3.0 + 20 + NemesisTuning().overhead for b in schedule.bursts)
    assert planned >= 600
    assert str(schedule.seed) in schedule.describe().splitlines()[0]
    assert schedule.faults == sum(len(b.faults) for b in schedule.bursts)


def test_no_overlap_when_the_tuning_forbids_it() -> None:
    schedule = plan(5, 300, KINDS, ttl=3.0, quiet=10, tuning=NemesisTuning(overlap_chance=0.0))
    assert not any(b.overlapping for b in schedule.bursts)


def test_a_plan_without_fault_kinds_or_with_nonsense_times_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one fault kind"):
        plan(1, 60, (), ttl=3.0, quiet=10)
    with pytest.raises(ValueError, match="positive"):
        plan(1, 0, KINDS, ttl=3.0, quiet=10)


def test_the_soak_takes_every_fault_kind_its_lab_can_take() -> None:
    from dbfence.lab.faults import all_faults  # noqa: PLC0415
    from dbfence.lab.soak import usable_faults  # noqa: PLC0415

    everything = {f.name for f in all_faults()}
    etcd = {f.name for f in usable_faults("etcd", 3, netns=True, tmpfs=True, failsafe=True)}
    assert etcd == {f.name for f in all_faults() if "etcd" in f.dcs}
    consul = {f.name for f in usable_faults("consul", 0, netns=True, tmpfs=True, failsafe=True)}
    assert consul and not any(name.startswith("etcd") for name in consul)
    assert consul | {n for n in everything if n.startswith("etcd")} == everything
    plain = {f.name for f in usable_faults("etcd", 3, netns=False, tmpfs=False)}
    assert not any(f.netns or f.tmpfs for f in all_faults() if f.name in plain)
    assert "mysqld-kill" in plain
    # Rows that need agents with failsafe on (some wait for the primary to write on promises,
    # and seed 201 left etcd without quorum when that wait failed) only with --failsafe.
    without = {f.name for f in usable_faults("etcd", 3, netns=True, tmpfs=True)}
    assert without == {f.name for f in all_faults() if "etcd" in f.dcs and not f.failsafe}
    assert "etcd-quorum-loss+mysqld-kill+failsafe" in etcd - without


def test_an_opening_share_makes_that_kind_open_about_that_share_of_bursts() -> None:
    tuning = NemesisTuning(opening_share=0.5)
    schedule = plan(9, 7200, KINDS, ttl=3.0, quiet=20, tuning=tuning)
    openings = [b.faults[0].kind for b in schedule.bursts]
    share = openings.count("mysqld-kill") / len(openings)
    # half by the share, plus a fifth of the other half by the uniform draw
    assert 0.5 <= share <= 0.7, share
    assert plan(9, 7200, KINDS, ttl=3.0, quiet=20, tuning=tuning) == schedule
    assert tuning.flags() == "--opening-share 0.5"


def test_without_an_opening_share_the_schedules_of_earlier_seeds_are_unchanged() -> None:
    # seed 303's first bursts as planned before the share existed: the default must not draw
    schedule = plan(303, 120, KINDS, ttl=3.0, quiet=30, tuning=NemesisTuning(opening_kind="switchover"))
    assert schedule.describe().splitlines()[2:] == [
        "  burst   1: after 2.9s: agent-stop (at once, held 3.0s); then host-freeze (promotion+0.24s, "
        "held 1.9s)",
        "  burst   2: after 1.4s: switchover (at once, held 2.5s); then etcd-quorum-loss (recovering+4.11s, "
        "held 1.7s)",
        "  burst   3: after 1.5s: etcd-quorum-loss (at once, held 4.9s)",
        "  burst   4: after 3.5s: switchover (at once, held 11.6s); then agent-stop (recovering+4.91s, "
        "held 2.7s)"]
    assert NemesisTuning().flags() == ""


def test_more_faults_per_burst_give_a_denser_schedule() -> None:
    plain = plan(4, 1800, KINDS, ttl=3.0, quiet=30)
    dense = plan(4, 1800, KINDS, ttl=3.0, quiet=30,
                 tuning=NemesisTuning(max_faults_per_burst=5, overlap_chance=0.8))
    assert dense.faults / len(dense.bursts) > plain.faults / len(plain.bursts)
    assert max(len(b.faults) for b in dense.bursts) == 5


def test_a_tuning_with_nonsense_chances_or_an_unknown_opening_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        NemesisTuning(overlap_chance=1.5)
    with pytest.raises(ValueError, match="at least one fault"):
        NemesisTuning(max_faults_per_burst=0)
    with pytest.raises(ValueError, match="not among the kinds"):
        plan(1, 600, ("switchover",), ttl=3.0, quiet=10, tuning=NemesisTuning(opening_share=0.3))
