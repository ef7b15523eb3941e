"""A small Prometheus text-format registry: counters, gauges and latency summaries.

The agent needs a dozen series, not a client library: names, help, labels, and the exposition
format (https://prometheus.io/docs/instrumenting/exposition_formats/) written out by hand.
Thread-safe, because the HTTP API reads while the loop writes.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

LabelSet = tuple[tuple[str, str], ...]


def _labels(labels: dict[str, str] | None) -> LabelSet:
    return tuple(sorted((labels or {}).items()))


def _format_labels(labels: LabelSet) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in labels) + "}"


def _escape(value: str) -> str:
    """Label values escape backslash, double quote and newline (the exposition format's rule)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


@dataclass
class _Family:
    name: str
    kind: str  # counter | gauge | summary
    help: str
    samples: dict[LabelSet, list[float]] = field(default_factory=dict)


class Metrics:
    """The agent's metrics. Names get the ``dbfence_`` prefix."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._families: dict[str, _Family] = {}

    def _family(self, name: str, kind: str, help_text: str) -> _Family:
        full = f"dbfence_{name}"
        family = self._families.get(full)
        if family is None:
            family = self._families[full] = _Family(full, kind, help_text)
        elif family.kind != kind:
            raise ValueError(f"{full} is a {family.kind}, not a {kind}")
        return family

    def inc(self, name: str, help_text: str, amount: float = 1.0,
            labels: dict[str, str] | None = None) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        with self._lock:
            samples = self._family(name, "counter", help_text).samples
            key = _labels(labels)
            samples[key] = [samples.get(key, [0.0])[0] + amount]

    def set(self, name: str, help_text: str, value: float, labels: dict[str, str] | None = None) -> None:
        with self._lock:
            self._family(name, "gauge", help_text).samples[_labels(labels)] = [value]

    def observe(self, name: str, help_text: str, seconds: float,
                labels: dict[str, str] | None = None) -> None:
        """Record a duration: a summary (count, sum) plus a ``<name>_max`` gauge of the worst seen."""
        with self._lock:
            samples = self._family(name, "summary", help_text).samples
            count, total, peak = samples.get(_labels(labels), [0.0, 0.0, 0.0])
            samples[_labels(labels)] = [count + 1, total + seconds, max(peak, seconds)]

    def value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        with self._lock:
            family = self._families.get(f"dbfence_{name}")
            if family is None or _labels(labels) not in family.samples:
                return None
            return family.samples[_labels(labels)][0]

    def render(self) -> str:
        with self._lock:
            families = [(f.name, f.kind, f.help, dict(f.samples)) for f in self._families.values()]
        lines: list[str] = []
        for name, kind, help_text, samples in sorted(families):
            lines += _render_family(name, kind, help_text, samples.items())
            if kind == "summary":  # the worst case, as its own gauge family
                peaks = [(labels, [values[2]]) for labels, values in samples.items()]
                lines += _render_family(f"{name}_max", "gauge", f"Maximum of {name}.", peaks)
        return "\n".join(lines) + "\n"


def _render_family(name: str, kind: str, help_text: str,
                   samples: Iterable[tuple[LabelSet, list[float]]]) -> list[str]:
    out = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, values in sorted(samples):
        if kind == "summary":
            out.append(f"{name}_count{_format_labels(labels)} {_format_value(values[0])}")
            out.append(f"{name}_sum{_format_labels(labels)} {_format_value(values[1])}")
        else:
            out.append(f"{name}{_format_labels(labels)} {_format_value(values[0])}")
    return out
