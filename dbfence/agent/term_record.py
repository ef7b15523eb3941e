"""The open term as primary, kept on disk so that an agent restarted before its fence's evidence
was read can still read it ([rejoin]; soak seed 423).

Why: the fencing evidence (:mod:`dbfence.mysql.repair_evidence`) judges the counters of the run of
mysqld that was primary against the term's reference (:class:`CounterBaseline`). Both lived in the
agent's memory until the evidence was read: an agent killed while its fence waited for a stopped
mysqld came back with nothing, and the node stayed FENCED with ``no evidence recorded`` for good.
This file holds what that judgement needs: the term's reference and which run of mysqld it is
(pid and the process's start time), and, once the node fences, when, and what the fence saw (the
ack waits its KILLs ended, whether it could reach mysqld).

Layout: :class:`TermRecord` (the fields), :func:`save_record`, :func:`load_record`,
:func:`clear_record`, and :func:`process_started_at` (the kernel's start time of a pid, which
tells a run of mysqld from a later one that got the same pid).

Invariants: written atomically and fsynced when a term begins (gate still closed) and as its
fence goes on; removed when the node serves again (primary anew or rejoined) or steps down. A
restarted agent reads the evidence only from the same run (same pid, same process start time);
anything it cannot vouch for makes the judgement stricter, never looser: the agent's own ended
token waits and switch-offs are not kept (after a restart they count against the evidence).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from dbfence.durable import write_json_atomically
from dbfence.mysql.repair_evidence import CounterBaseline

RECORD_FILE = "primary-term.json"
#: Process start times are read from the kernel (clock ticks): equal for one process, always.
SAME_PROCESS_SLACK_S = 0.05


@dataclass(frozen=True)
class TermRecord:
    """This node's last term as primary, until it serves again."""

    pid: str  # the mysqld that was primary
    process_started_at: float  # its process's start (0.0: unknown)
    baseline: CounterBaseline | None  # the term's reference (None: judged since mysqld start)
    taint: str = ""  # why the term proves nothing (as it began; later taints: term-taint.json)
    fenced_at: float | None = None  # the fence began (None: the agent died while primary)
    ended_by_fence: int = 0  # ack waits the fence's own KILLs ended
    unreached: bool = False  # a fence could not reach mysqld (stopped, hung)


def process_started_at(pid: str) -> float:
    """The start time of process ``pid`` (0.0 when it is gone or unknown)."""
    try:
        return float(psutil.Process(int(pid)).create_time())
    except (ValueError, psutil.Error):
        return 0.0


def save_record(state_dir: Path, record: TermRecord) -> Path:
    state_dir.mkdir(parents=True, exist_ok=True)
    return write_json_atomically(state_dir / RECORD_FILE, asdict(record))


def load_record(state_dir: Path) -> TermRecord | str | None:
    """The saved record; None when there is none; a string: why it cannot be used."""
    path = state_dir / RECORD_FILE
    try:
        raw: Any = json.loads(path.read_text())
        baseline = raw.pop("baseline")
        return TermRecord(**raw, baseline=None if baseline is None else CounterBaseline(**baseline))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        return f"term record {path} unusable: {exc}"


def clear_record(state_dir: Path) -> str:
    """Forget the record; '' or why it could not be removed."""
    try:
        (state_dir / RECORD_FILE).unlink(missing_ok=True)
    except OSError as exc:
        return f"could not remove {state_dir / RECORD_FILE}: {exc}"
    return ""
