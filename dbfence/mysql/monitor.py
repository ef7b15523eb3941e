"""Probes plus hysteresis: what the agent loop calls once per interval.

Also whether a round was *calm* (:func:`calm_round`): every probe answered within the round and
passed, nothing is tripped or unconfirmed, and the select answered in under half its timeout.
After a calm round the prober runs its occasional probes (connect, disk) only every
``ProbeSettings.idle_probe_every`` rounds; after any other round, every round (docs/detection.md).
"""

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

    def latest_verdicts(self) -> tuple[Verdict, ...]:
        """This round's verdicts, then the last one of each probe that gave none this round (while
        calm the connect and disk probes run every few rounds, and a slow probe answers in a later
        round): for a status with a line per probe instead of lines that come and go."""
        reported = {verdict.kind for verdict in self.verdicts}
        earlier = tuple(track.last for track in self.health.tracks.values()
                        if track.kind not in reported and track.last is not None)
        return self.verdicts + earlier


def calm_round(verdicts: tuple[Verdict, ...], health: Health, unconfirmed: frozenset[ProbeKind],
               pending: bool, select_timeout_s: float) -> bool:
    """Nothing in this round calls for every probe next round. Not calm: a probe still running
    (late or not yet answered), a failing or saturated verdict, a tripped probe, a probe of the
    role that has not passed yet, a probe whose last verdict failed, or a select that took half
    its timeout or more (a server slowing down: the fresh login may be the first to fail)."""
    if pending or unconfirmed or not health.healthy:
        return False
    if any(not v.ok for v in verdicts):
        return False
    if any(t.last is not None and not t.last.ok for t in health.tracks.values()):
        return False
    return not any(v.kind is ProbeKind.SELECT and v.elapsed_s >= select_timeout_s / 2 for v in verdicts)


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
        self._calm = False  # the last round was calm (calm_round): occasional probes may wait

    def set_role(self, role: Role) -> None:
        """Change the expected role; hysteresis restarts so old-role trips do not linger."""
        if role is not self.prober.role:
            self.prober.set_role(role)
            self.health = Health(self.health.config)
            self._calm = False

    def observe(self) -> HealthObservation:
        started = time.monotonic()
        self._next_round = started + self.settings.interval_s
        verdicts = tuple(self.prober.run_round(calm=self._calm))
        self.health = self.health.feed(verdicts)
        unconfirmed = frozenset(
            kind
            for kind in self.prober.expected_kinds()
            # a saturated verdict (too many connections) confirms a live server, like a pass
            if (track := self.health.tracks.get(kind)) is None or track.last is None
            or not (track.last.ok or track.last.saturated)
        )
        self._calm = calm_round(verdicts, self.health, unconfirmed, self.prober.pending(),
                                self.settings.select_timeout_s)
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
