"""An operator's approval of one rebuild the fencing evidence cannot justify ([rejoin] mode =
rebuild): a file in the state directory, written by hand (``touch``) or by ``dbfence rejoin
approve`` through the agent's HTTP API.

Why it must not outlive its fence: a rebuild throws away the node's errant transactions, and the
operator approved throwing away the ones of *this* fence, after reviewing them. A file that
lingered after the node rejoined another way (truncation, primary again, fixed by hand) would
authorise a later, unrelated rebuild of transactions nobody reviewed.

Invariants (kept by :class:`~dbfence.agent.repair_rebuild.RebuildRunner`): an approval is spent
(the file removed) when the rebuild starts (one approval, one attempt), when a new fence begins
(it was given before it), and when the node serves again; and it expires ``[rejoin]
approval_ttl`` seconds after it was given (0 = never), removed with a log line. When it was given
is the time the command wrote into the file, or the file's modification time for one made by hand.
"""

from __future__ import annotations

import calendar
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

APPROVAL_FILE = "rebuild-approved"
#: What a hold that only an operator's approval can lift contains (dbfence.agent.rejoin).
APPROVE_HINT = "dbfence rejoin approve --node"
#: How long an approval stays valid unless ``[rejoin] approval_ttl`` says otherwise.
DEFAULT_APPROVAL_TTL = 3600.0

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_WRITTEN = re.compile(r"^approved by (.*) at (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)$")
#: Who approved, for a file made by hand (``touch``): its content names nobody.
BY_HAND = "the file's owner (made by hand)"


@dataclass(frozen=True)
class Approval:
    """One approval as read from its file: who gave it and when (wall-clock seconds)."""

    by: str
    at: float

    def expires_at(self, ttl: float) -> float | None:
        """When it stops counting; None when it never expires (``ttl`` 0)."""
        return None if ttl <= 0 else self.at + ttl

    def expired(self, ttl: float, now: float) -> bool:
        expires = self.expires_at(ttl)
        return expires is not None and now >= expires


def write_approval(state_dir: Path, by: str, wall: float) -> Path:
    """Write the approval file (0600), saying who approved and when; returns its path."""
    path = state_dir / APPROVAL_FILE
    by = " ".join(by.split()) or "unknown"  # one line, so that read_approval reads it back
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(f"approved by {by} at {format_time(wall)}\n")
    return path


def read_approval(state_dir: Path) -> Approval | None:
    """The approval in the state directory; None when there is none."""
    path = state_dir / APPROVAL_FILE
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return None
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:  # there but unreadable (made by hand as another user): its time still counts
        text = ""
    match = _WRITTEN.match(text)
    if match is None:
        return Approval(by=BY_HAND, at=mtime)
    return Approval(by=match.group(1), at=float(calendar.timegm(time.strptime(match.group(2), _TIME_FORMAT))))


def format_time(wall: float) -> str:
    return time.strftime(_TIME_FORMAT, time.gmtime(wall))


def approve_command(node: str, state_dir: Path) -> str:
    """How an operator approves, as status shows it."""
    return f"{APPROVE_HINT} {node}  (or: touch {state_dir / APPROVAL_FILE})"
