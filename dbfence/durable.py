"""Durable state files: what the agent must find again after a crash or power loss.

Why: fencing evidence, a term's taint and failsafe promises decide whether data may be thrown
away or a write admitted after a restart, so a half-written or lost file would be worse than none.
Each is written to a temporary name in the same directory, flushed and fsynced, renamed over the
old one, and the directory fsynced so the rename itself survives.

Invariants: a reader sees either the old file or the whole new one, never a mix; the file's mode is
0600 (it can name hosts and positions). Errors are OSError, left to the caller to word.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def fsync_directory(directory: Path) -> None:
    """Make a rename or link in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomically(path: Path, document: Any, *, indent: int | None = 2) -> Path:
    """Replace ``path`` with ``document`` as JSON, atomically and durably; returns ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(document, out, indent=indent)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    fsync_directory(path.parent)
    return path
