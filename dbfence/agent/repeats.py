"""Once, then a count: identical log lines folded into one, and the loop's back-off on rounds
that achieved nothing (the house rule: any loop that can fail repeatedly backs off; repeated
identical log lines are logged once with a count)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from dbfence.agent.actions import Action, PublishMember, RenewLock

log = logging.getLogger("dbfence.agent")  # the agent's one logger

#: Actions that repeat every round by design (their own pacing): never a sign of a stuck loop.
ROUTINE_ACTIONS = (PublishMember, RenewLock)


class RepeatedLines:
    """Logs a line once, then counts identical repeats instead of writing them.

    Keyed by a *topic* (one per action kind); lines are compared by ``same_as`` (the line
    without what always differs, such as its duration). A different line on the topic, or
    ``every`` seconds, ends the run with a line that says how many times it repeated.
    """

    def __init__(self, clock: Callable[[], float], every: float = 60.0) -> None:
        self._clock = clock
        self._every = every
        self._runs: dict[str, tuple[str, str, float, int]] = {}  # topic -> (key, line, at, repeats)

    def log(self, topic: str, line: str, level: int = logging.INFO, *, same_as: str | None = None) -> None:
        now = self._clock()
        key = line if same_as is None else same_as
        run = self._runs.get(topic)
        if run is not None and run[0] == key:
            repeats = run[3] + 1
            if now - run[2] < self._every:
                self._runs[topic] = (key, line, run[2], repeats)
                return
            self._summary(topic, line, repeats, now - run[2], level)
            self._runs[topic] = (key, line, now, 0)
            return
        if run is not None and run[3] > 0:
            self._summary(topic, run[1], run[3], now - run[2], logging.INFO)
        log.log(level, line)
        self._runs[topic] = (key, line, now, 0)

    @staticmethod
    def _summary(topic: str, line: str, times: int, seconds: float, level: int) -> None:
        log.log(level, json.dumps({"event": "repeated", "topic": topic, "times": times,
                                   "seconds": round(seconds, 1), "last": json.loads(line)}))


class RepeatBackoff:
    """How long the loop waits before deciding again when a round achieved nothing.

    A round achieved nothing when the core asks for exactly the actions of the round before
    (routine renewals and record heartbeats aside): had they worked, the observation would have
    changed and so would the decision. From the ``after``-th such round on the wait doubles from
    ``first`` up to ``limit``; the limit stays well inside a lease, and the gate enforces the
    deadline by itself whatever the loop does.
    """

    def __init__(self, *, first: float = 0.1, limit: float = 2.0, after: int = 3) -> None:
        self.first, self.limit, self.after = first, limit, after
        self._last: tuple[Action, ...] = ()
        self.repeats = 0
        self._paced = False
        self._progressed = False
        self._due: float | None = None

    def progressed(self) -> None:
        """This round's repeated action took effect (a fencing token now in, or its write's ack
        wait ended): the next observation differs, so the round is no repeat and the count
        starts again. Never called twice for one effect, so it cannot make the loop spin."""
        self._progressed = True

    def due_within(self, seconds: float | None) -> None:
        """Work in flight needs the loop back within ``seconds`` (a fencing-token write that must
        be ended when its ack wait is over): the next back-off is no longer."""
        if seconds is not None:
            self._due = seconds if self._due is None else min(self._due, seconds)

    def paced_by_wait(self) -> None:
        """This round already waited out an I/O budget on a peer that did not answer (a repoint's
        read of its new source): it cannot spin, and a back-off would only delay noticing that
        peer's lease lapse (and racing) by up to ``limit``."""
        self._paced = True

    def after_round(self, actions: tuple[Action, ...]) -> float:
        significant = tuple(action for action in actions if not isinstance(action, ROUTINE_ACTIONS))
        progressed, self._progressed = self._progressed, False
        due, self._due = self._due, None
        if significant and significant == self._last and not progressed:
            self.repeats += 1
        else:
            self.repeats = 0
        self._last = significant
        paced, self._paced = self._paced, False
        if paced or progressed or self.repeats < self.after:
            return 0.0
        wait = min(self.limit, self.first * 2.0 ** (self.repeats - self.after))
        return float(wait if due is None else max(0.0, min(wait, due)))
