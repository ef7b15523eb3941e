"""An operator's approval of one rebuild the fencing evidence cannot justify ([rejoin] mode =
rebuild): a file in the state directory, written by hand (``touch``) or by ``dbfence rejoin
approve`` through the agent's HTTP API, spent when the rebuild starts."""

from __future__ import annotations

import os
import time
from pathlib import Path

APPROVAL_FILE = "rebuild-approved"
#: What a hold that only an operator's approval can lift contains (dbfence.agent.rejoin).
APPROVE_HINT = "dbfence rejoin approve --node"


def write_approval(state_dir: Path, by: str, wall: float) -> Path:
    """Write the approval file (0600), saying who approved and when; returns its path."""
    path = state_dir / APPROVAL_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(f"approved by {by} at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(wall))}\n")
    return path


def approve_command(node: str, state_dir: Path) -> str:
    """How an operator approves, as status shows it."""
    return f"{APPROVE_HINT} {node}  (or: touch {state_dir / APPROVAL_FILE})"
