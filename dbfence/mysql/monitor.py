"""Probes plus hysteresis: what the agent loop calls once per interval."""

from __future__ import annotations

import time
from dataclasses import dataclass

from dbfence.mysql.hysteresis import Health, HysteresisConfig
from dbfence.mysql.probes import Prober, ProbeSettings, Role, Target
from dbfence.mysql.verdict import ProbeKind, Verdict


@dataclass(frozen=True)
class HealthObservation:
    """One round: the raw verdicts, and the hysteresis state after them."""

    at_monotonic: float
    role: Role
    verdicts: tuple[Verdict, ...]
    health: Health
    # probe kinds expected for the role that have not passed yet (startup, or after a role change)
    unconfirmed: frozenset[ProbeKind]

    @property
    def healthy(self) -> bool:
        """No probe is tripped. Says nothing about probes that have not answered yet."""
        return self.health.healthy

    @property
    def confirmed_healthy(self) -> bool:
        """No probe tripped and every probe of the role has passed at least once."""
        return self.health.healthy and not self.unconfirmed

    def describe(self) -> str:
        return self.health.describe()


class HealthMonitor:
    """Owns a Prober and the hysteresis state. Not thread-safe: call from one thread.

    ``observe()`` returns within the longest probe timeout (0.5 s by default) whatever mysqld
    does; call it every ``settings.interval_s`` (see :meth:`sleep_until_next_round`).
    """

    def __init__(
        self,
        target: Target,
        settings: ProbeSettings | None = None,
        hysteresis: HysteresisConfig | None = None,
        role: Role = Role.REPLICA,
    ) -> None:
        self.settings = settings or ProbeSettings()
        self.prober = Prober(target, self.settings, role)
        self.health = Health(hysteresis or HysteresisConfig())
        self._next_round = time.monotonic()

    def set_role(self, role: Role) -> None:
        """Change the expected role; hysteresis restarts so old-role trips do not linger."""
        if role is not self.prober.role:
            self.prober.set_role(role)
            self.health = Health(self.health.config)

    def observe(self) -> HealthObservation:
        started = time.monotonic()
        self._next_round = started + self.settings.interval_s
        verdicts = tuple(self.prober.run_round())
        self.health = self.health.feed(verdicts)
        unconfirmed = frozenset(
            kind
            for kind in self.prober.expected_kinds()
            # a saturated verdict (too many connections) confirms a live server, like a pass
            if (track := self.health.tracks.get(kind)) is None or track.last is None
            or not (track.last.ok or track.last.saturated)
        )
        return HealthObservation(started, self.prober.role, verdicts, self.health, unconfirmed)

    def sleep_until_next_round(self) -> None:
        delay = self._next_round - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def agent_connection_ids(self) -> frozenset[int]:
        return self.prober.agent_connection_ids()

    def close(self) -> None:
        self.prober.close()

    def __enter__(self) -> HealthMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
