"""The gate's admit/block state machine, with no I/O and no clock of its own.

Two states: :class:`Admitting` (bytes may flow until ``deadline``) and :class:`Blocking` (nothing
flows, for a named reason). Every change goes through :meth:`GateStateMachine.transition`, which
takes the event and the current monotonic time and raises :class:`IllegalTransition` for anything that
would weaken the fence (admitting without a fresh deadline, extending a blocked gate, ...). Such a
refusal leaves the state as it was, except that an expired lease is always noticed first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

LEASE_EXPIRED: Final = "lease expired"


class IllegalTransition(Exception):
    """An event that the gate refuses in its current state; the state is left unchanged."""


@dataclass(frozen=True)
class Admitting:
    """Bytes may be forwarded while ``monotonic_now < deadline``."""

    deadline: float


@dataclass(frozen=True)
class Blocking:
    """Nothing is forwarded; open connections are cut and new ones get an ERR packet."""

    reason: str


GateState = Admitting | Blocking


@dataclass(frozen=True)
class Admit:
    """Start (or restart) admitting with a fresh lease deadline."""

    deadline: float


@dataclass(frozen=True)
class Extend:
    """Move the deadline of an admitting gate (a lease renewal)."""

    deadline: float


@dataclass(frozen=True)
class Block:
    """Stop admitting and cut every connection."""

    reason: str


@dataclass(frozen=True)
class Expire:
    """The clock has been read; block if the deadline has passed (no effect otherwise)."""


GateEvent = Admit | Extend | Block | Expire


class GateStateMachine:
    """Holds the current :data:`GateState`; starts blocked (a gate never admits by default).

    ``epoch`` counts blocks: it increases every time the state becomes :class:`Blocking` from
    :class:`Admitting`, so a connection admitted in one epoch can tell it must not live into the next.
    """

    def __init__(self, initial_reason: str = "not started") -> None:
        if not initial_reason:
            raise ValueError("a blocking reason must not be empty")
        self._state: GateState = Blocking(initial_reason)
        self._epoch = 0

    @property
    def state(self) -> GateState:
        return self._state

    @property
    def epoch(self) -> int:
        return self._epoch

    def transition(self, event: GateEvent, now: float) -> GateState:
        """Apply ``event`` at monotonic time ``now`` and return the new state.

        An expired lease is noticed first, whatever the event: the gate is then blocking
        ("lease expired") even if the event itself is refused.
        """
        state = self._state
        if isinstance(state, Admitting) and now >= state.deadline:
            state = self._enter_blocking(LEASE_EXPIRED)
        if isinstance(event, Expire):
            return state
        if isinstance(event, Block):
            if not event.reason:
                raise IllegalTransition("a block needs a reason")
            if isinstance(state, Blocking):
                # Already fenced: keep the first reason, the one that explains the outage.
                return state
            return self._enter_blocking(event.reason)
        if isinstance(event, Admit):
            self._require_future(event.deadline, now, "admit")
            if isinstance(state, Admitting):
                raise IllegalTransition("already admitting: renew with extend, or block first")
            self._state = Admitting(event.deadline)
            return self._state
        # Extend
        if isinstance(state, Blocking):
            # Includes a renewal that arrives after the lease ran out: the gate is already fenced.
            raise IllegalTransition(
                f"cannot extend a blocked gate ({state.reason}); admit needs a fresh deadline"
            )
        self._require_future(event.deadline, now, "extend")
        self._state = Admitting(event.deadline)
        return self._state

    def _enter_blocking(self, reason: str) -> GateState:
        self._state = Blocking(reason)
        self._epoch += 1
        return self._state

    @staticmethod
    def _require_future(deadline: float, now: float, what: str) -> None:
        if not deadline > now:  # also rejects NaN
            raise IllegalTransition(f"{what} with a deadline not in the future ({deadline:.6f} <= {now:.6f})")
