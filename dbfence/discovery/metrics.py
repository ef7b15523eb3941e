"""The agent's Prometheus metrics, served with ``prometheus_client``.

:class:`Metrics` keeps the small interface the agent loop already used (``inc``, ``set``,
``observe``), creating each metric in its own registry on first use. Two collectors read state at
scrape time instead of copying it on every loop turn:

* :class:`GateCollector`: the gate workers' own counters (accepted, refused, cut, open), one series
  per worker. The workers are separate processes that keep these counts themselves and answer the
  gate's control socket; the collector asks them when Prometheus scrapes. That is the equivalent of
  ``prometheus_client``'s multiprocess mode without its per-pid files (which need a directory
  wiped at every start and a file write on every increment in the workers' event loops); see
  ``benchmarks/metrics_scrape.py`` for the cost of either.
* :class:`ProbeCollector`: the latest result of every health probe, from the monitor's hysteresis
  state (an immutable value the probe thread swaps in).

Metric names are those of the hand-written exposition this replaces (``dbfence_role``,
``dbfence_lease_seconds_left``, ``dbfence_actions_total``, ...): dashboards keep working.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Summary
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from dbfence.breaker import GateStats
    from dbfence.mysql.hysteresis import Health

# The ``_created`` series double every counter and summary, and nothing here reads them.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

# What generate_latest() writes: the text format 0.0.4 (the library's CONTENT_TYPE_LATEST names a
# newer version whose escaping rules need the scraper to negotiate them).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "dbfence_"


class Metrics:
    """The agent's metrics registry. Names get the ``dbfence_`` prefix."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._metrics: dict[str, tuple[str, Any]] = {}  # full name -> (kind, metric)
        self._peaks: dict[str, Gauge] = {}  # summary name -> its _max gauge
        self._peak_values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def _metric(self, name: str, kind: str, help_text: str, labels: dict[str, str] | None) -> Any:
        full = PREFIX + name
        with self._lock:
            known = self._metrics.get(full)
            if known is None:
                names = sorted(labels or {})
                cls = {"counter": Counter, "gauge": Gauge, "summary": Summary}[kind]
                known = self._metrics[full] = (kind, cls(full, help_text, names, registry=self.registry))
                if kind == "summary":  # the worst case, as its own gauge
                    self._peaks[full] = Gauge(f"{full}_max", f"Maximum of {full}.", names,
                                              registry=self.registry)
            elif known[0] != kind:
                raise ValueError(f"{full} is a {known[0]}, not a {kind}")
            return known[1]

    @staticmethod
    def _child(metric: Any, labels: dict[str, str] | None) -> Any:
        return metric.labels(**labels) if labels else metric

    def inc(self, name: str, help_text: str, amount: float = 1.0,
            labels: dict[str, str] | None = None) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self._child(self._metric(name, "counter", help_text, labels), labels).inc(amount)

    def set(self, name: str, help_text: str, value: float, labels: dict[str, str] | None = None) -> None:
        self._child(self._metric(name, "gauge", help_text, labels), labels).set(value)

    def observe(self, name: str, help_text: str, seconds: float,
                labels: dict[str, str] | None = None) -> None:
        """Record a duration: a summary (count, sum) plus a ``<name>_max`` gauge of the worst seen."""
        summary = self._metric(name, "summary", help_text, labels)
        self._child(summary, labels).observe(seconds)
        full = PREFIX + name
        key = (full, tuple(sorted((labels or {}).items())))
        with self._lock:  # read-modify-write of the peak
            if seconds > self._peak_values.get(key, float("-inf")):
                self._peak_values[key] = seconds
                self._child(self._peaks[full], labels).set(seconds)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """A counter's or gauge's current value (a summary's count); None if never set."""
        full = PREFIX + name
        kind = self._metrics.get(full, ("", None))[0]
        sample = f"{full}_count" if kind == "summary" else full
        if kind == "counter" and not full.endswith("_total"):
            sample = f"{full}_total"
        return self.registry.get_sample_value(sample, labels or {})

    def add_collector(self, collector: Collector) -> None:
        self.registry.register(collector)

    def render(self) -> str:
        return prometheus_client.generate_latest(self.registry).decode("utf-8")


class GateStatsSource(Protocol):
    def stats(self) -> GateStats: ...


class GateCollector(Collector):
    """The gate's state and its workers' counters, asked of the workers at scrape time."""

    def __init__(self, gate: GateStatsSource) -> None:
        self._gate = gate

    def describe(self) -> Iterable[Metric]:
        return []  # dynamic: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(f"{PREFIX}gate_stats_up",
                               "1 when the gate's workers answered the last scrape.")
        try:
            stats = self._gate.stats()
        except Exception:  # a gate not started yet, or stopping: no counters, never a failed scrape
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        state = GaugeMetricFamily(f"{PREFIX}gate_state", "1 for the gate's current state.", labels=["state"])
        for name in ("admitting", "draining", "blocking"):
            state.add_metric([name], 1 if stats.state == name else 0)
        yield state
        families = {
            "accepted": CounterMetricFamily(f"{PREFIX}gate_connections_accepted",
                                            "Client connections a gate worker accepted (admitted or "
                                            "refused after).",
                                            labels=["worker"]),
            "refused": CounterMetricFamily(f"{PREFIX}gate_connections_refused",
                                           "Client connections a gate worker refused (gate blocked, "
                                           "or the backend cap reached).", labels=["worker"]),
            "cut": CounterMetricFamily(f"{PREFIX}gate_connections_cut",
                                       "Admitted connections a gate worker cut (fence, drain).",
                                       labels=["worker"]),
            "refused_full": CounterMetricFamily(f"{PREFIX}gate_connections_refused_full",
                                                "Of the refused: at the gate's backend cap (ERR 1040, "
                                                "no connection to mysqld opened).", labels=["worker"]),
            "login_timeouts": CounterMetricFamily(f"{PREFIX}gate_login_timeouts",
                                                  "Clients dropped for not logging in within "
                                                  "gate.login_timeout.", labels=["worker"]),
            "spoofed_headers": CounterMetricFamily(f"{PREFIX}gate_spoofed_headers",
                                                   "Clients cut for sending a PROXY protocol header "
                                                   "of their own (claiming another address).",
                                                   labels=["worker"]),
        }
        relayed = CounterMetricFamily(f"{PREFIX}gate_bytes",
                                      "Bytes a gate worker's links moved (relayed, or joined in the "
                                      "kernel): client_to_server and server_to_client. Flows of the "
                                      "remote path are not counted.", labels=["worker", "direction"])
        cap = GaugeMetricFamily(f"{PREFIX}gate_backend_cap",
                                "Connections to mysqld the gate's workers may hold together.")
        cap.add_metric([], stats.backend_cap)
        held = GaugeMetricFamily(f"{PREFIX}gate_backend_connections",
                                 "Connections to mysqld the gate's workers hold now.")
        held.add_metric([], stats.backend_connections)
        yield cap
        yield held
        open_now = GaugeMetricFamily(f"{PREFIX}gate_worker_open_connections",
                                     "Client connections open in a gate worker.", labels=["worker"])
        responding = GaugeMetricFamily(f"{PREFIX}gate_worker_up", "1 when the gate worker answered.",
                                       labels=["worker"])
        for worker in stats.workers:
            label = [str(worker.index)]
            responding.add_metric(label, 1 if worker.responding else 0)
            open_now.add_metric(label, worker.open_connections)
            if worker.responding:  # a silent worker's totals are unknown, not zero
                families["accepted"].add_metric(label, worker.accepted)
                families["refused"].add_metric(label, worker.refused)
                families["cut"].add_metric(label, worker.cut)
                families["refused_full"].add_metric(label, worker.refused_full)
                families["login_timeouts"].add_metric(label, worker.login_timeouts)
                families["spoofed_headers"].add_metric(label, worker.spoofed_headers)
                relayed.add_metric([*label, "client_to_server"], worker.bytes_in)
                relayed.add_metric([*label, "server_to_client"], worker.bytes_out)
        yield responding
        yield open_now
        yield from families.values()
        yield relayed


class ProbeCollector(Collector):
    """The latest verdict of every health probe, from the monitor's hysteresis state."""

    def __init__(self, health: Callable[[], Health]) -> None:
        self._health = health

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        tracks = self._health().tracks
        passed = GaugeMetricFamily(f"{PREFIX}probe_ok", "1 when the probe's last round passed.",
                                   labels=["probe"])
        tripped = GaugeMetricFamily(f"{PREFIX}probe_tripped", "1 while the probe counts as failed "
                                                              "(after trip_after failures in a row).",
                                    labels=["probe"])
        failures = GaugeMetricFamily(f"{PREFIX}probe_failures_in_row", "Consecutive failed rounds.",
                                     labels=["probe"])
        seconds = GaugeMetricFamily(f"{PREFIX}probe_seconds", "How long the probe's last round took.",
                                    labels=["probe"])
        saturated = GaugeMetricFamily(f"{PREFIX}probe_saturated", "1 when the probe's last round found "
                                                                  "mysqld refusing clients: too many "
                                                                  "connections (never trips).",
                                      labels=["probe"])
        for kind, track in sorted(tracks.items(), key=lambda item: item[0].value):
            label = [kind.value]
            passed.add_metric(label, 1 if track.last is not None and track.last.ok else 0)
            tripped.add_metric(label, 1 if track.tripped else 0)
            failures.add_metric(label, track.failures_in_row)
            seconds.add_metric(label, track.last.elapsed_s if track.last is not None else 0.0)
            saturated.add_metric(label, 1 if track.last is not None and track.last.saturated else 0)
        yield from (passed, tripped, failures, seconds, saturated)
