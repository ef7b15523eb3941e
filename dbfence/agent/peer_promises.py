"""The agent's failsafe adapter (docs/failsafe.md): remembers the last membership and holder it
saw in the DCS, answers peers' promise requests, asks its own, and reports the episode.

The rules are pure and live in :mod:`dbfence.agent.failsafe`; this module only feeds them and
carries out what they say.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dbfence.agent.core_config import CoreConfig
from dbfence.agent.failsafe import PromiseRequest, PromiserView, answer_promise, promise_deadline
from dbfence.agent.failsafe_view import FailsafeView
from dbfence.agent.lease_keeper import LeaseStatus
from dbfence.agent.observation import LeaseView, LockView, Observation
from dbfence.agent.promise_book import PromiseBook, PromiseBookError
from dbfence.agent.promise_client import PromiseClient
from dbfence.agent.sensors import DcsSensor
from dbfence.agent.state import State
from dbfence.discovery.metrics import Metrics
from dbfence.locks.model import ClusterSnapshot, HistoryEntry

log = logging.getLogger("dbfence.agent")

FAILSAFE_ACTIVE_HELP = "1 while the gate admits on peer promises past the lease (docs/failsafe.md)."


class FailsafeAdapter:
    def __init__(self, *, config: CoreConfig, cluster: str, token: str | None, state_dir: Path,
                 wake: threading.Event, dcs: DcsSensor, state_of: Callable[[], State],
                 lease_of: Callable[[], LeaseView], request_timeout: float,
                 extend_gate: Callable[[int, float], None] = lambda token, deadline: None,
                 unreachable_since: Callable[[], float | None] = lambda: None,
                 tls: ssl.SSLContext | None = None) -> None:
        self._extend_gate = extend_gate
        self._unreachable_since = unreachable_since
        self._config = config
        self._cluster = cluster
        self._dcs = dcs
        self._state_of = state_of
        self._lease_of = lease_of
        self.book = PromiseBook(state_dir, config.ttl)
        self.book.check_writable()  # PromiseBookError: the agent refuses to start
        kept = self.book.load()
        self._addresses: dict[str, str] = {}
        self.client = PromiseClient(cluster=cluster, node=config.node_name, token=token, wake=wake,
                                    timeout=request_timeout, addresses=lambda: dict(self._addresses),
                                    on_complete=self._round_complete, tls=tls)
        # A promise kept across a restart proves this agent saw its primary hold that token: it
        # may promise again while the DCS is still down (a restart alone must not end writes).
        known = kept is not None and kept.token > 0
        self._last_holder: str | None = kept.to if known and kept is not None else None
        self._last_token: int | None = kept.token if known and kept is not None else None
        self._listed: frozenset[str] | None = None
        self._listed_token: int | None = None
        self._membership: frozenset[str] = frozenset()
        self._began_at: float | None = None  # when this primary first admitted on promises
        self._began_wall = 0.0
        self.pending_history: list[HistoryEntry] = []

    # ------------------------------------------------------------------ observation
    def observe(self, snapshot: ClusterSnapshot | None, lease: LeaseStatus) -> FailsafeView:
        if snapshot is not None:
            self._remember(snapshot)
        last, complete, asking = self.client.view()
        return FailsafeView(
            dcs_unreachable_since=lease.unreachable_since if lease.held else None,
            listed=self._listed, listed_token=self._listed_token, membership=self._membership,
            last_round=last, asking=asking, complete_round=complete, given=self.book.given(),
        )

    def _remember(self, snapshot: ClusterSnapshot) -> None:
        lock = snapshot.lock
        self._last_holder = lock.holder.node if lock is not None and lock.holder is not None else None
        self._last_token = lock.token if lock is not None else None
        listing = snapshot.failsafe
        self._listed = None if listing is None else frozenset(listing.members)
        self._listed_token = None if listing is None else listing.token
        live = frozenset(entry.record.node for entry in snapshot.members)
        self._membership = live | (self._listed or frozenset())
        for entry in snapshot.members:
            if entry.record.api_url:  # an older agent's host:port is read as http:// (locks.model)
                self._addresses[entry.record.node] = entry.record.api_url

    def _round_complete(self) -> None:
        """Move the gate's deadline at once when a round grants more, exactly as a renewal does;
        the deadline comes from the core's own rule (:func:`promise_deadline`)."""
        lease = self._lease_of()
        last, complete, asking = self.client.view()
        view = FailsafeView(dcs_unreachable_since=self._unreachable_since(), listed=self._listed,
                            listed_token=self._listed_token, membership=self._membership,
                            last_round=last, asking=asking, complete_round=complete)
        deadline = promise_deadline(view, lease, self._config)
        if deadline is not None and lease.token is not None and deadline > time.monotonic():
            self._extend_gate(lease.token, deadline)

    # ------------------------------------------------------------------ a peer asks us
    def answer(self, payload: Mapping[str, Any]) -> tuple[int, Mapping[str, Any]]:
        received_at = time.monotonic()
        primary, token, duration = payload.get("primary"), payload.get("token"), payload.get("duration")
        if payload.get("cluster") != self._cluster:
            return 409, {"granted": 0, "refusal": "other_cluster"}
        if (not isinstance(primary, str) or not isinstance(token, int) or isinstance(token, bool)
                or not isinstance(duration, (int, float)) or isinstance(duration, bool) or duration <= 0):
            return 400, {"granted": 0, "refusal": "bad_request",
                         "detail": "needs primary (text), token (integer), duration (seconds > 0)"}
        request = PromiseRequest(primary, token, float(duration))

        def decide() -> Any:
            snapshot = self._dcs.latest.snapshot
            if snapshot is None:
                lock = LockView(reachable=False)
            elif snapshot.lock is None:
                lock = LockView(reachable=True)
            else:
                holder = snapshot.lock.holder.node if snapshot.lock.holder is not None else "<unreadable>"
                lock = LockView(reachable=True, holder=holder, token=snapshot.lock.token)
            view = PromiserView(self._state_of().role, self._lease_of(), lock, self._last_holder,
                                self._last_token)
            return answer_promise(request, view, self._config)

        try:
            decision = self.book.grant(primary, token, received_at, decide)
        except PromiseBookError as exc:
            log.warning("promise to %s refused: %s", primary, exc)
            return 503, {"granted": 0, "refusal": "cannot_persist", "detail": str(exc)}
        if decision.granted is None:
            refusal = decision.refusal.value if decision.refusal is not None else "refused"
            return 409, {"granted": 0, "refusal": refusal, "detail": decision.detail}
        log.info(json.dumps({"event": "promise_given", "to": primary, "token": token,
                             "seconds": decision.granted}))
        return 200, {"granted": decision.granted}

    # ------------------------------------------------------------------ reporting
    def report(self, observation: Observation, metrics: Metrics) -> dict[str, Any]:
        """Status details, metrics and the started/ended log and history of an episode."""
        now = observation.now
        view = observation.failsafe
        lease = observation.lease
        extension = promise_deadline(view, lease, self._config)
        active = (extension is not None and lease.deadline is not None and extension > lease.deadline
                  and now < extension)
        self._track(active, now, view)
        required = view.membership | (view.listed or frozenset())
        required -= {self._config.node_name}
        current = view.complete_round if active else view.last_round
        granted = len(current.granted().keys() & required) if current is not None else 0
        unreachable = None if view.dcs_unreachable_since is None else now - view.dcs_unreachable_since
        metrics.set("failsafe_active", FAILSAFE_ACTIVE_HELP, 1 if active else 0)
        metrics.set("failsafe_promises", "Members that promised in the latest round.", granted)
        metrics.set("dcs_unreachable_seconds", "Seconds the lease renewals have failed as unreachable.",
                    unreachable or 0.0)
        given = view.given
        if active:
            line = f"failsafe: writes kept by peer promises ({granted}/{len(required)})"
        elif unreachable is not None:
            line = f"failsafe: asking peers for promises ({granted}/{len(required)} in the last round)"
        elif given is not None and now < given.until:
            line = (f"failsafe: promised {given.to} (token {given.token}) not to race for "
                    f"{given.until - now:.1f} s")
        else:
            line = ""
        if line and unreachable is not None:
            line += f", DCS unreachable for {unreachable:.0f} s"
        return {"active": active, "line": line, "promises": granted, "members": sorted(required),
                "dcs_unreachable_seconds": None if unreachable is None else round(unreachable, 1),
                "deadline_seconds_left": None if extension is None else round(extension - now, 3),
                "promise_given": None if given is None or now >= given.until else
                {"to": given.to, "token": given.token, "seconds_left": round(given.until - now, 3)}}

    def _track(self, active: bool, now: float, view: FailsafeView) -> None:
        if active and self._began_at is None:
            self._began_at, self._began_wall = now, time.time()
            log.warning(json.dumps({"event": "failsafe_started", "node": self._config.node_name,
                                    "dcs_unreachable_since_s": None if view.dcs_unreachable_since is None
                                    else round(now - view.dcs_unreachable_since, 1)}))
        elif not active and self._began_at is not None:
            lasted = now - self._began_at
            log.warning(json.dumps({"event": "failsafe_ended", "node": self._config.node_name,
                                    "seconds": round(lasted, 1)}))
            # The DCS history is written once the DCS answers again (the daemon flushes it).
            self.pending_history.append(HistoryEntry(
                at=self._began_wall, kind="failsafe", node=self._config.node_name,
                detail=f"writes kept by peer promises for {lasted:.1f} s while the DCS could not be asked"))
            self._began_at = None

    def stop(self) -> None:
        self.client.stop()
