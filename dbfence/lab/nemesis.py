"""The soak's nemesis plan: which faults strike, when, and for how long, all derived from a seed.

Pure module (no I/O, no clock): :func:`plan` turns a seed and the fault kinds a lab can take
into a :class:`Schedule` before the run begins, so that the same seed replays the same schedule
and the schedule can be printed up front.

A schedule is a sequence of **bursts**. A burst waits ``gap`` seconds, then injects one to a few
faults; each fault is held for its own ``hold`` (some longer than the TTL) and then healed. The
first fault of a burst strikes at once; each later one is an **overlap**, aimed at the cluster
while it is still recovering from the fault before it:

* ``Trigger.RECOVERING``: ``delay`` seconds after the previous fault was injected, which may be
  before that fault is healed (two faults at once) or after (during the repair);
* ``Trigger.PROMOTION``: ``delay`` seconds after the first node is seen promoting once the
  previous fault was injected (at a random moment of a failover or a switchover), or when the
  runner gives up waiting for a promotion.

After every burst the runner waits until every fault of the burst is healed, lets the cluster
alone for the quiet period, and checks it (:mod:`dbfence.lab.soak_checks`).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable
from dataclasses import dataclass


class Trigger(enum.Enum):
    AT_ONCE = "at-once"  # the burst's first fault
    RECOVERING = "recovering"  # delay after the previous fault's injection
    PROMOTION = "promotion"  # delay after the next promotion seen


@dataclass(frozen=True, slots=True)
class PlannedFault:
    kind: str
    trigger: Trigger
    delay: float  # seconds after the trigger
    hold: float  # seconds from injection to heal

    def describe(self) -> str:
        when = "at once" if self.trigger is Trigger.AT_ONCE else f"{self.trigger.value}+{self.delay:.2f}s"
        return f"{self.kind} ({when}, held {self.hold:.1f}s)"


@dataclass(frozen=True, slots=True)
class Burst:
    index: int
    gap: float  # quiet seconds before the burst, on top of the previous quiet period
    faults: tuple[PlannedFault, ...]

    @property
    def overlapping(self) -> bool:
        return len(self.faults) > 1

    def estimate(self) -> float:
        """A rough length of the burst (promotions taken as one TTL away): for planning only."""
        at, end = 0.0, 0.0
        for fault in self.faults:
            at += fault.delay
            end = max(end, at + fault.hold)
        return self.gap + end


@dataclass(frozen=True, slots=True)
class Schedule:
    seed: int
    duration: float
    quiet: float
    ttl: float
    kinds: tuple[str, ...]
    bursts: tuple[Burst, ...]

    @property
    def faults(self) -> int:
        return sum(len(b.faults) for b in self.bursts)

    def describe(self) -> str:
        lines = [f"nemesis schedule: seed {self.seed}, {self.duration:g}s, quiet {self.quiet:g}s, "
                 f"ttl {self.ttl:g}s, {len(self.bursts)} bursts, {self.faults} faults planned "
                 f"(the run stops starting bursts once its duration is over)",
                 f"kinds: {', '.join(self.kinds)}"]
        for burst in self.bursts:
            faults = "; then ".join(f.describe() for f in burst.faults)
            lines.append(f"  burst {burst.index:>3}: after {burst.gap:.1f}s: {faults}")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class NemesisTuning:
    """The shape of the random schedule; the defaults suit a TTL of a few seconds."""

    max_faults_per_burst: int = 3
    overlap_chance: float = 0.6  # chance that a burst has more than one fault
    promotion_chance: float = 0.5  # an overlap waits for a promotion rather than a delay
    long_hold_chance: float = 0.35  # a hold longer than the TTL
    max_gap: float = 5.0
    min_hold: float = 0.5
    long_hold_ttls: float = 4.0  # long holds last up to this many TTLs
    promotion_delay: float = 0.5  # at most this long after the promotion is seen
    overhead: float = 10.0  # per burst, for planning: heals, restarts, checks
    # Share of bursts that open with this kind (0: every kind as likely as any other). A p99 of
    # one kind's RTO needs dozens of samples of it struck at a whole cluster, not two or three.
    opening_kind: str = "mysqld-kill"
    opening_share: float = 0.0

    def __post_init__(self) -> None:
        if self.max_faults_per_burst < 1:
            raise ValueError(f"a burst needs at least one fault (got {self.max_faults_per_burst})")
        for name in ("overlap_chance", "promotion_chance", "long_hold_chance", "opening_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} is a chance between 0 and 1 (got {value})")

    def flags(self) -> str:
        """The soak's command-line flags that give this tuning (empty for the defaults)."""
        default = NemesisTuning()
        parts = []
        if self.max_faults_per_burst != default.max_faults_per_burst:
            parts.append(f"--max-faults-per-burst {self.max_faults_per_burst}")
        if self.overlap_chance != default.overlap_chance:
            parts.append(f"--overlap-chance {self.overlap_chance:g}")
        if self.opening_share != default.opening_share:
            parts.append(f"--opening-share {self.opening_share:g}")
            if self.opening_kind != default.opening_kind:
                parts.append(f"--opening-kind {self.opening_kind}")
        return " ".join(parts)


def plan(seed: int, duration: float, kinds: Iterable[str], *, ttl: float, quiet: float,
         tuning: NemesisTuning | None = None) -> Schedule:
    """The whole schedule for a run of ``duration`` seconds, from ``seed`` alone.

    Bursts are planned until their estimated lengths (plus the quiet periods and an overhead for
    each) fill the duration, and a few more, since real bursts may be shorter than planned.
    """
    tune = tuning or NemesisTuning()
    names = tuple(sorted(set(kinds)))  # sorted: the order they were found in must not matter
    if not names:
        raise ValueError("the nemesis needs at least one fault kind")
    if duration <= 0 or quiet < 0 or ttl <= 0:
        raise ValueError(f"duration and ttl must be positive and quiet not negative "
                         f"(got {duration}, {ttl}, {quiet})")
    if tune.opening_share > 0 and tune.opening_kind not in names:
        raise ValueError(f"the opening kind {tune.opening_kind} is not among the kinds of this run")
    rng = random.Random(seed)
    bursts: list[Burst] = []
    planned = 0.0
    while planned < duration * 1.5 or len(bursts) < 2:
        burst = _burst(rng, len(bursts) + 1, names, ttl, tune)
        bursts.append(burst)
        planned += burst.estimate() + ttl + quiet + tune.overhead
    return Schedule(seed, duration, quiet, ttl, names, tuple(bursts))


def _burst(rng: random.Random, index: int, kinds: tuple[str, ...], ttl: float,
           tune: NemesisTuning) -> Burst:
    count = 1
    if rng.random() < tune.overlap_chance:
        count = rng.randint(2, max(2, tune.max_faults_per_burst))
    faults = []
    for number in range(count):
        kind = rng.choice(kinds)
        # drawn only when asked for, so that the schedules of earlier seeds replay unchanged
        if number == 0 and tune.opening_share > 0 and tune.opening_kind in kinds \
                and rng.random() < tune.opening_share:
            kind = tune.opening_kind
        hold = rng.uniform(tune.min_hold, ttl)
        if rng.random() < tune.long_hold_chance:
            hold = rng.uniform(ttl, tune.long_hold_ttls * ttl)
        if number == 0:
            faults.append(PlannedFault(kind, Trigger.AT_ONCE, 0.0, round(hold, 2)))
        elif rng.random() < tune.promotion_chance:
            delay = rng.uniform(0.0, tune.promotion_delay)
            faults.append(PlannedFault(kind, Trigger.PROMOTION, round(delay, 2), round(hold, 2)))
        else:
            # up to two TTLs after the previous one: often before its heal, else during the repair
            faults.append(PlannedFault(kind, Trigger.RECOVERING, round(rng.uniform(0.2, 2 * ttl), 2),
                                       round(hold, 2)))
    return Burst(index, round(rng.uniform(0.0, tune.max_gap), 2), tuple(faults))
