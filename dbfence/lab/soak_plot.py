"""The soak's picture: acknowledged writes per second over the run, each fault's span shaded
(one colour per kind), and every promotion and fence marked. matplotlib draws it off screen
(the Agg backend); it is a test extra, imported only here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dbfence.lab.history import Attempt, Outcome
from dbfence.lab.soak_report import FaultRecord, RoleChange


def per_second(attempts: Sequence[Attempt], started: float, seconds: int,
               outcome: Outcome) -> list[int]:
    counts = [0] * max(1, seconds)
    for attempt in attempts:
        if attempt.outcome is outcome:
            index = int(attempt.end - started)
            if 0 <= index < len(counts):
                counts[index] += 1
    return counts


def draw(path: Path, attempts: Sequence[Attempt], started: float, duration: float,
         records: Sequence[FaultRecord], changes: Sequence[RoleChange], title: str,
         checks: Sequence[tuple[float, bool]] = ()) -> Path:
    """Save the picture to ``path``; ``checks`` are the quiet checks (seconds, whole or not)."""
    import matplotlib  # noqa: PLC0415  (a test extra: only the soak needs it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    seconds = int(duration) + 1
    acked = per_second(attempts, started, seconds, Outcome.ACKNOWLEDGED)
    failed = [r + u for r, u in zip(per_second(attempts, started, seconds, Outcome.REFUSED),
                                    per_second(attempts, started, seconds, Outcome.UNKNOWN), strict=True)]
    width = min(40.0, max(12.0, seconds / 30))
    fig, ax = plt.subplots(figsize=(width, 5.5))
    ax.plot(range(seconds), acked, color="black", linewidth=0.8, label="acknowledged writes/s")
    ax.plot(range(seconds), failed, color="grey", linewidth=0.6, linestyle=":", label="refused or unknown/s")
    top = max([*acked, 1]) * 1.25
    kinds = sorted({r.kind for r in records})
    # tab10 first (ten distinct colours), then the light halves of tab20 for any further kinds
    palette = [plt.get_cmap("tab10")(i) for i in range(10)]
    palette += [plt.get_cmap("tab20")(2 * i + 1) for i in range(10)]
    colour = {kind: palette[i % len(palette)] for i, kind in enumerate(kinds)}
    shown: set[str] = set()
    for record in records:
        if record.injected is None or record.healed is None:
            continue
        label = record.kind if record.kind not in shown else None
        shown.add(record.kind)
        ax.axvspan(record.injected, max(record.healed, record.injected + 0.3), color=colour[record.kind],
                   alpha=0.35, label=label, linewidth=0)
    for change in changes:
        if change.new == "primary":
            ax.axvline(change.at, color="tab:green", linewidth=1.0)
            ax.text(change.at, top * 0.97, f"{change.node} primary", rotation=90, fontsize=7,
                    va="top", ha="right", color="tab:green")
        elif change.new == "fenced":
            ax.axvline(change.at, color="tab:red", linewidth=0.8, linestyle="--")
            why = f" ({change.why})" if change.why else ""
            ax.text(change.at, top * 0.03, f"{change.node} fenced{why}",
                    rotation=90, fontsize=6, va="bottom", ha="right", color="tab:red")
    for at, whole in checks:
        ax.plot([at], [top * 0.99], marker="v", color="black" if whole else "red", markersize=6,
                linestyle="none")
    ax.set_xlim(0, seconds)
    ax.set_ylim(0, top)
    ax.set_xlabel("seconds since the soak began")
    ax.set_ylabel("writes per second")
    ax.set_title(title + "\ngreen: a node becomes primary; red dashed: a node is fenced; "
                 "triangles: quiet checks (red: not whole)", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
