"""What the adapters tell the decision core about failsafe promises (rules: failsafe.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PromiseAnswer:
    """One member's answer in a round: the seconds it promised (None: refused, or no answer)."""

    member: str
    granted: float | None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class PromiseRound:
    """The latest round this primary asked: for ``token``, first request sent at ``sent_at``
    (this host's monotonic clock), and the answers that have arrived so far."""

    token: int
    sent_at: float
    asked: frozenset[str]
    answers: tuple[PromiseAnswer, ...] = ()

    def granted(self) -> dict[str, float]:
        return {a.member: a.granted for a in self.answers if a.granted is not None and a.granted > 0}


@dataclass(frozen=True, slots=True)
class GivenPromise:
    """A promise this node gave: not to race, promote or detach from ``to`` before ``until``."""

    to: str
    token: int
    until: float


@dataclass(frozen=True, slots=True)
class FailsafeView:
    """What the adapters know about the failsafe, all times on this host's monotonic clock.

    * ``dcs_unreachable_since``: the lease keeper's renewals have been failing because the DCS
      cannot be asked (unreachable, no quorum, access refused) since then; None otherwise.
    * ``listed``: the failsafe member list last read from the DCS (None: none there, or never
      read) and ``listed_token`` the token it was written under.
    * ``membership``: the last membership seen: the last list read, the member records of the
      last good snapshot and the names of list writes not yet read back.
    * ``last_round``: the latest promise round this node asked; ``asking``: one is in flight;
      ``complete_round``: the latest round in which every member asked promised (a new round
      in flight must not hide the deadline an earlier one granted).
    * ``given``: the latest-ending promise this node gave (persisted across restarts).
    """

    dcs_unreachable_since: float | None = None
    listed: frozenset[str] | None = None
    listed_token: int | None = None
    membership: frozenset[str] = frozenset()
    last_round: PromiseRound | None = None
    asking: bool = False
    complete_round: PromiseRound | None = None
    given: GivenPromise | None = None

    def promise_live(self, now: float) -> bool:
        return self.given is not None and now < self.given.until
