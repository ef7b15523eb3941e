"""The settings the decision core needs, as one frozen value passed to ``decide``."""

from __future__ import annotations

import math
from dataclasses import dataclass

#: ``[rejoin] mode`` values the core knows (rebuild is not built yet: issue 15).
REJOIN_MODES = ("manual", "truncate", "rebuild")


class CoreConfigError(ValueError):
    """A decision-core setting is out of range or inconsistent with another."""


@dataclass(frozen=True, slots=True)
class CoreConfig:
    """Decision-core settings. Durations are seconds on the monotonic clock.

    * ``ttl`` / ``safety_margin``: the lock adapter reports ``deadline = send time of
      the last successful renewal + ttl - safety_margin``; the core renews every
      ``renew_interval`` and must be able to renew at least once before the deadline.
    * ``max_lag_seconds``: a replica lagging more than this never races.
    * ``cooldown``: after a failover no other failover starts for this long, unless
      an operator asks (switchover or ``skip_cooldown``).
    * ``priority``: tie-break between equally advanced candidates, higher wins;
      0 means this node never becomes primary.
    * ``lossless``: semi-synchronous replication (AFTER_SYNC). Candidates then also
      defer to more advanced peers whose records are stale (an agent pause cannot
      make us skip the replica that holds the acknowledged writes) and promotion /
      repointing configure semi-sync.
    * ``poll_interval``: wake-up period in steady roles; ``settle_interval``: wake-up
      period in transitional roles (candidate, promoting, fencing, starting).
    * ``member_stale_after``: a peer record older than this is unreachable;
      ``publish_interval``: this node republishes its record at least this often.
    * ``relay_wait_timeout``: upper bound of one WaitRelayLog action.
    * ``drain_timeout``: how long a switchover lets transactions in flight finish
      behind a gate that already refuses new clients, before it cuts them.
    * ``rejoin_mode``: what a FENCED former primary does about errant transactions: ``manual``
      (stay fenced), ``truncate`` (remove them when provably never acknowledged) or ``rebuild``
      (truncate when provably safe, else clone the node from the primary: by itself only when
      they were provably never acknowledged, otherwise on an operator's one-time approval).
      ``rejoin_donor_primary``: a rebuild may copy from the primary when no replica can serve.
    * ``failsafe``: a primary whose DCS cannot be asked keeps admitting on promises from every
      member (docs/failsafe.md); a promise lasts at most ``ttl``.
    """

    node_name: str
    ttl: float = 10.0
    safety_margin: float = 2.0
    renew_interval: float = 2.0
    max_lag_seconds: float = 5.0
    cooldown: float = 300.0
    priority: int = 100
    lossless: bool = True
    poll_interval: float = 1.0
    settle_interval: float = 0.05
    member_stale_after: float = 6.0
    publish_interval: float = 2.0
    relay_wait_timeout: float = 1.0
    drain_timeout: float = 2.0
    rejoin_mode: str = "manual"
    rejoin_donor_primary: bool = False
    failsafe: bool = False

    def __post_init__(self) -> None:
        if not self.node_name or self.node_name.strip() != self.node_name:
            raise CoreConfigError(
                f"node_name must be a non-empty name without surrounding spaces, got {self.node_name!r}"
            )
        for label in ("ttl", "safety_margin", "renew_interval", "max_lag_seconds", "cooldown",
                      "poll_interval", "settle_interval", "member_stale_after", "publish_interval",
                      "relay_wait_timeout", "drain_timeout"):
            value = getattr(self, label)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise CoreConfigError(f"{label} must be a finite number, got {value!r}")
            if value < 0:
                raise CoreConfigError(f"{label} must not be negative, got {value!r}")
        if self.safety_margin <= 0 or self.safety_margin >= self.ttl:
            raise CoreConfigError(f"safety_margin must be in (0, ttl={self.ttl}), got {self.safety_margin}")
        if self.renew_interval <= 0 or self.renew_interval >= self.ttl - self.safety_margin:
            raise CoreConfigError(
                f"renew_interval must be in (0, ttl - safety_margin = {self.ttl - self.safety_margin}), "
                f"got {self.renew_interval}"
            )
        if self.rejoin_mode not in REJOIN_MODES:
            raise CoreConfigError(f"rejoin_mode must be one of {', '.join(REJOIN_MODES)}, "
                                  f"got {self.rejoin_mode!r}")
        if self.poll_interval <= 0:
            raise CoreConfigError("poll_interval must be positive")
        if isinstance(self.priority, bool) or not isinstance(self.priority, int) or self.priority < 0:
            raise CoreConfigError(f"priority must be a non-negative integer, got {self.priority!r}")

    @property
    def lease_span(self) -> float:
        """Time from a renewal's send time to the deadline it grants."""
        return self.ttl - self.safety_margin
