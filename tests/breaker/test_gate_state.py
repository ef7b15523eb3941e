"""The sans-I/O admit/block state machine on its own."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbfence.breaker.state import (
    LEASE_EXPIRED,
    Admit,
    Admitting,
    Block,
    Blocking,
    Expire,
    Extend,
    GateEvent,
    GateStateMachine,
    IllegalTransition,
)


def admitted(deadline: float = 10.0, now: float = 0.0) -> GateStateMachine:
    machine = GateStateMachine()
    machine.transition(Admit(deadline), now)
    return machine


def test_starts_blocked() -> None:
    machine = GateStateMachine()
    assert machine.state == Blocking("not started")
    assert machine.epoch == 0


def test_admit_with_a_future_deadline() -> None:
    assert admitted(10.0).state == Admitting(10.0)


@pytest.mark.parametrize("deadline", [5.0, 4.999, math.nan, -math.inf])
def test_admit_with_a_deadline_not_in_the_future_raises(deadline: float) -> None:
    machine = GateStateMachine()
    with pytest.raises(IllegalTransition):
        machine.transition(Admit(deadline), 5.0)
    assert isinstance(machine.state, Blocking)


def test_admit_while_admitting_raises() -> None:
    machine = admitted(10.0)
    with pytest.raises(IllegalTransition):
        machine.transition(Admit(20.0), 1.0)
    assert machine.state == Admitting(10.0)


def test_extend_moves_the_deadline() -> None:
    machine = admitted(10.0)
    assert machine.transition(Extend(12.0), 9.0) == Admitting(12.0)
    assert machine.epoch == 0


def test_extend_of_a_blocked_gate_raises() -> None:
    machine = GateStateMachine()
    with pytest.raises(IllegalTransition):
        machine.transition(Extend(10.0), 0.0)
    assert isinstance(machine.state, Blocking)


def test_admit_while_admitting_but_expired_is_a_fresh_admission_in_a_new_epoch() -> None:
    machine = admitted(10.0)
    assert machine.transition(Admit(30.0), 10.0) == Admitting(30.0)
    assert machine.epoch == 1


def test_a_refused_event_still_notices_an_expired_lease() -> None:
    machine = admitted(10.0)
    with pytest.raises(IllegalTransition):
        machine.transition(Admit(5.0), 11.0)
    assert machine.state == Blocking(LEASE_EXPIRED)


def test_extend_after_the_deadline_blocks_and_raises() -> None:
    machine = admitted(10.0)
    with pytest.raises(IllegalTransition):
        machine.transition(Extend(20.0), 10.0)
    assert machine.state == Blocking(LEASE_EXPIRED)
    assert machine.epoch == 1


def test_extend_with_a_past_deadline_raises_and_keeps_the_old_one() -> None:
    machine = admitted(10.0)
    with pytest.raises(IllegalTransition):
        machine.transition(Extend(4.0), 5.0)
    assert machine.state == Admitting(10.0)


def test_expire_blocks_only_once_the_deadline_is_reached() -> None:
    machine = admitted(10.0)
    assert machine.transition(Expire(), 9.999) == Admitting(10.0)
    assert machine.transition(Expire(), 10.0) == Blocking(LEASE_EXPIRED)
    assert machine.epoch == 1


def test_block_keeps_the_first_reason_and_counts_one_epoch() -> None:
    machine = admitted(10.0)
    machine.transition(Block("mysqld down"), 1.0)
    machine.transition(Block("operator"), 2.0)
    assert machine.state == Blocking("mysqld down")
    assert machine.epoch == 1


def test_block_needs_a_reason() -> None:
    with pytest.raises(IllegalTransition):
        admitted().transition(Block(""), 1.0)


def test_admitting_again_needs_a_fresh_deadline() -> None:
    machine = admitted(10.0)
    machine.transition(Block("fenced"), 1.0)
    with pytest.raises(IllegalTransition):
        machine.transition(Admit(10.0), 11.0)  # the old deadline is stale
    assert machine.transition(Admit(20.0), 11.0) == Admitting(20.0)


events = st.one_of(
    st.builds(Admit, st.floats(-10, 110)),
    st.builds(Extend, st.floats(-10, 110)),
    st.builds(Block, st.sampled_from(["a", "b"])),
    st.just(Expire()),
)


@given(st.lists(st.tuples(events, st.floats(0, 1)), max_size=30))
def test_never_admits_at_or_past_its_deadline(steps: list[tuple[GateEvent, float]]) -> None:
    """Whatever the event sequence and however time advances, admitting implies now < deadline
    after any transition (refused or not), and the epoch grows exactly when an admission ends."""
    machine = GateStateMachine()
    now = 0.0
    for event, advance in steps:
        now += advance
        before_state, before_epoch = machine.state, machine.epoch
        try:
            state = machine.transition(event, now)
        except IllegalTransition:
            state = machine.state
        if isinstance(state, Admitting):
            assert now < state.deadline
        left_admitting = isinstance(before_state, Admitting) and (
            isinstance(state, Blocking) or now >= before_state.deadline
        )
        assert machine.epoch == before_epoch + (1 if left_admitting else 0)
