"""The steps an injector registers: undone once, latest first, when its injection fails (the
soak's seed 305 left a replica cut off from the primary after a preparation that timed out), and
reported with how long they acted. No servers: the steps here are plain functions."""

from __future__ import annotations

import re
from typing import Any, cast

import pytest

from dbfence.lab.agents import AgentTuning
from dbfence.lab.fault_model import Fault, FaultContext, Heal, inject, not_injected
from dbfence.lab.faults import all_faults
from dbfence.lab.soak_report import FaultRecord
from dbfence.lab.wait import WaitTimeout
from dbfence.lab.workload import DiscoveryWriter


def _context() -> FaultContext:
    # the step bookkeeping touches neither the lab nor the writer
    return FaultContext(cast(Any, None), AgentTuning(), cast(Any, None), "db1", "app.t")


def _fault(injector: Any) -> Fault:
    return Fault("test", "a test fault", injector, False, lambda t: 1.0)


def test_an_injection_that_fails_undoes_its_steps_latest_first_and_says_what_acted() -> None:
    undone: list[str] = []

    def injector(ctx: FaultContext) -> Heal:
        ctx.step("delayed db3's applier by 30 s", lambda: undone.append("delay"))
        ctx.step("", lambda: undone.append("watcher"))  # not an act: undone, never reported
        ctx.step("cut db2 off from db1", lambda: undone.append("cut"))
        raise TimeoutError("no writes")

    ctx = _context()
    with pytest.raises(TimeoutError) as failed:
        inject(_fault(injector), ctx)
    assert undone == ["cut", "watcher", "delay"]
    acted = ctx.acted()
    assert acted is not None and re.fullmatch(
        r"its preparation delayed db3's applier by 30 s for \d+\.\d s; then cut db2 off from db1 "
        r"for \d+\.\d s", acted), acted
    # the soak's timeline says it, not only "not injected"
    record = FaultRecord(30, "test", "recovering", "db1", 1.5, None, None, not_injected(failed.value, ctx))
    assert record.row().endswith(f"not injected: TimeoutError: no writes; {acted}")


def test_a_failing_undo_does_not_stop_the_others_and_is_reported() -> None:
    undone: list[str] = []

    def broken() -> None:
        raise OSError("mysqld gone")

    def injector(ctx: FaultContext) -> Heal:
        ctx.step("held db2's applier", lambda: undone.append("lock"))
        ctx.step("killed db1's mysqld", broken)
        raise RuntimeError("half-way")

    ctx = _context()
    with pytest.raises(RuntimeError):
        inject(_fault(injector), ctx)
    assert undone == ["lock"]
    acted = ctx.acted()
    assert acted is not None and "killed db1's mysqld for" in acted
    assert "(its undo failed: OSError: mysqld gone)" in acted


def test_an_injection_that_succeeds_leaves_its_steps_to_the_heal_and_each_undo_runs_once() -> None:
    undone: list[str] = []

    def injector(ctx: FaultContext) -> Heal:
        return ctx.step("stopped db1's agent (SIGSTOP)", lambda: undone.append("resume"))

    ctx = _context()
    heal = inject(_fault(injector), ctx)
    assert undone == []
    heal()
    heal()
    ctx.undo_steps()  # the soak's sweep after a heal
    assert undone == ["resume"]


def test_an_injection_that_took_no_step_reports_nothing() -> None:
    def injector(ctx: FaultContext) -> Heal:
        raise LookupError("no primary")

    ctx = _context()
    with pytest.raises(LookupError):
        inject(_fault(injector), ctx)
    assert ctx.acted() is None


@pytest.mark.parametrize("kind", ["lagging-replica+mysqld-kill", "partition-lagging-replica",
                                  "partition-laggard-holds-more"])
def test_a_preparation_that_waits_for_writes_does_not_act_while_none_flow(kind: str) -> None:
    # Mid-failover (seed 305's burst 30) its act would only hold the cluster for the whole wait.
    # No lab: had the injector gone on to act, it would fail on it otherwise than with WaitTimeout.
    writer = DiscoveryWriter(cast(Any, None), "app.t")  # never started: nothing acknowledged
    ctx = FaultContext(cast(Any, None), AgentTuning(), writer, "db1", "app.t", preparation_wait=0.3)
    with pytest.raises(WaitTimeout, match="writes acknowledged before"):
        inject(next(f for f in all_faults() if f.name == kind), ctx)
    assert ctx.steps == [] and ctx.acted() is None
