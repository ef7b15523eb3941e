"""Why mysqld's last start failed, read from its error log.

Why: a start command that fails says little (the lab's says "exited during start"; systemd's
``start`` says "see the journal"). mysqld itself writes the cause to its error log, the last
``[ERROR]`` lines after the last ``Starting MariaDB`` (MySQL: ``starting as process``). The agent
names that cause in its log event, ``dbfence status`` and its member record, so an operator sees
at once that, say, crash recovery fails (soak seed 443, MariaDB 10.11: ``InnoDB: Missing
FILE_CREATE, FILE_DELETE or FILE_MODIFY before FILE_CHECKPOINT`` then ``Data structure
corruption``): that datadir needs a rebuild, no start will mend it.

Layout: :func:`start_failure` reads the file's tail (never the whole: error logs grow large) and
:func:`describe_start_failure` turns its lines into one sentence (pure, table-tested).

Invariants: reading never raises (an unreadable or missing log is "cause unknown": None); only the
lines of the last start are read, never an older run's errors.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

#: How much of the error log's end is read: a failed start writes a few dozen lines.
TAIL_BYTES = 64 << 10
#: How many of the last start's first ``[ERROR]`` lines are named (the first say why; the rest
#: are the consequences: "Plugin 'InnoDB' registration ... failed", "Aborting").
NAMED_ERRORS = 2

_START = re.compile(r"\] Starting MariaDB\b|\bstarting as process\b")
_ERROR = re.compile(r"\[ERROR\](?: \[[^\]]*\])* ?(.*)$")
# Lines that only follow from the cause, never name it.
_CONSEQUENCES = re.compile(r"^(Aborting|Plugin '.*' registration as a STORAGE ENGINE failed\.|"
                           r"Unknown/unsupported storage engine: .*|Failed to initialize plugins\.)$")
_CRASH_RECOVERY = re.compile(r"crash recovery", re.IGNORECASE)
_INNODB = re.compile(r"^InnoDB: ")
_CORRUPT = re.compile(r"corrupt", re.IGNORECASE)


def error_log_path(log_error: str, datadir: str) -> Path | None:
    """Where ``@@global.log_error`` writes (relative to the datadir when not absolute); None: to
    stderr (the journal), where the agent cannot read it."""
    if not log_error or log_error == "stderr":
        return None
    path = Path(log_error)
    return path if path.is_absolute() else Path(datadir) / path


def start_failure(error_log: Path | None) -> str | None:
    """The cause of the last start's failure named by ``error_log`` (None: no log, unreadable, or
    no ``[ERROR]`` line since the last start)."""
    if error_log is None:
        return None
    try:
        with error_log.open("rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - TAIL_BYTES))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    return describe_start_failure(text.splitlines())


def describe_start_failure(lines: Sequence[str]) -> str | None:
    """One sentence from the error log's lines: its last start's first errors, and what they mean."""
    starts = [i for i, line in enumerate(lines) if _START.search(line)]
    if not starts:
        return None
    since = lines[starts[-1]:]
    errors = [m.group(1).strip() for line in since if (m := _ERROR.search(line)) is not None]
    causes = [e for e in errors if e and not _CONSEQUENCES.match(e)] or errors
    if not causes:
        return None
    named = "; ".join(causes[:NAMED_ERRORS])
    recovering = any(_CRASH_RECOVERY.search(line) for line in since)
    innodb = any(_INNODB.match(c) for c in causes)
    rebuild = "(no start mends this: the datadir needs a rebuild from a healthy member)"
    if recovering and innodb:
        return f"crash recovery failed: {named} {rebuild}"
    if innodb and any(_CORRUPT.search(c) for c in causes):
        return f"InnoDB finds its files corrupt: {named} {rebuild}"
    return f"mysqld's start failed: {named}"
