"""Hysteresis over probe verdicts: N failures in a row trip a probe, M successes in a row recover it.

Pure module. Time is not read here: callers feed verdicts in round order. See docs/detection.md
for the defaults and the detection time they imply.

A *saturated* verdict ("too many connections": mysqld answered, it only has no room for another
client) counts as a sign of life, like a pass: it never trips a probe and it helps a tripped one
recover (a server that answers with a protocol error is up). It is kept as the probe's last
verdict, so :attr:`Health.saturated` and the status still say that clients are being refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from dbfence.mysql.verdict import ProbeKind, Reason, Verdict


@dataclass(frozen=True)
class HysteresisConfig:
    trip_after: int = 3  # consecutive failures that trip a probe
    recover_after: int = 3  # consecutive successes that clear a tripped probe

    def __post_init__(self) -> None:
        if self.trip_after < 1 or self.recover_after < 1:
            raise ValueError(
                f"trip_after and recover_after must be >= 1, got {self.trip_after}, {self.recover_after}"
            )


@dataclass(frozen=True)
class ProbeTrack:
    """Running state of one probe kind."""

    kind: ProbeKind
    tripped: bool = False
    failures_in_row: int = 0
    successes_in_row: int = 0
    last: Verdict | None = None
    # the failing verdict that tripped the probe; kept while it stays tripped so status can say why
    trip_verdict: Verdict | None = None

    @property
    def reason(self) -> Reason:
        return self.trip_verdict.reason if self.trip_verdict is not None else Reason.OK


@dataclass(frozen=True)
class Health:
    """Hysteresis state of every probe seen so far."""

    config: HysteresisConfig = field(default_factory=HysteresisConfig)
    tracks: Mapping[ProbeKind, ProbeTrack] = field(default_factory=dict)

    @property
    def tripped(self) -> tuple[ProbeTrack, ...]:
        return tuple(t for t in self.tracks.values() if t.tripped)

    @property
    def healthy(self) -> bool:
        return not self.tripped

    @property
    def saturated(self) -> tuple[ProbeTrack, ...]:
        """Probes whose last verdict says mysqld is refusing clients for lack of slots."""
        return tuple(t for t in self.tracks.values() if t.last is not None and t.last.saturated)

    def describe(self) -> str:
        parts = [
            f"{t.kind.value} tripped: {t.reason.value} ({t.trip_verdict.detail if t.trip_verdict else ''})"
            for t in self.tripped
        ]
        parts += [f"{t.kind.value} saturated ({t.last.detail})" for t in self.saturated if t.last is not None]
        return "; ".join(parts) or "healthy"

    def feed(self, verdicts: Iterable[Verdict]) -> Health:
        """Return the state after one more round of verdicts."""
        tracks = dict(self.tracks)
        for verdict in verdicts:
            track = tracks.get(verdict.kind, ProbeTrack(verdict.kind))
            tracks[verdict.kind] = _step(track, verdict, self.config)
        return replace(self, tracks=tracks)


def _step(track: ProbeTrack, verdict: Verdict, config: HysteresisConfig) -> ProbeTrack:
    if verdict.ok or verdict.saturated:
        successes = track.successes_in_row + 1
        recovered = track.tripped and successes >= config.recover_after
        return replace(
            track,
            tripped=track.tripped and not recovered,
            failures_in_row=0,
            successes_in_row=successes,
            last=verdict,
            trip_verdict=None if recovered or not track.tripped else track.trip_verdict,
        )
    failures = track.failures_in_row + 1
    trips_now = not track.tripped and failures >= config.trip_after
    return replace(
        track,
        tripped=track.tripped or trips_now,
        failures_in_row=failures,
        successes_in_row=0,
        last=verdict,
        trip_verdict=verdict if trips_now else track.trip_verdict,
    )
