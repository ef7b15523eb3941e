"""Is there room for a relay log? Asked before a repoint (re)starts replication.

Why: when mysqld cannot write its relay log (ENOSPC), the IO thread does not fail; mysys waits
for free space in a plain ``sleep(60)`` and tries again (error log: "Disk is full writing
'./relay-bin.000002' ... Retry in 60 secs"). Freeing the disk does not wake it, so a repoint made
on a full disk follows its primary up to a minute after the disk is freed (issue 16, soak seed 432
burst 8). Refusing the repoint while the disk is full, before it changes anything, lets the
agent's loop ask again (its back-off stays within ~2 s) and repoint once there is room.

The check reads the local file system, as the free-space probe does: the agent runs on
mysqld's host. A relay log directory the agent cannot see (another mount namespace) is not
checked rather than refused: the repoint then behaves as before.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from dbfence.mysql.connection import DbConnection, query_one
from dbfence.mysql.errors import RelayLogDiskFullError

# Room a relay log needs to start: its first file's headers and the first events fetched, with
# margin for a backlog. Far below any disk probe's limit (a healthy node never meets it), and far
# above the last pages a filled disk leaves (the IO thread would fill those at once and sleep).
RELAY_LOG_MIN_FREE_BYTES = 16 << 20


def relay_log_directory(basename: str, datadir: str) -> Path:
    """The directory of the relay log files: ``@@relay_log_basename`` is an absolute path in
    MariaDB 10.11 ("<datadir>/relay-bin"); a relative or empty one lies in the data directory."""
    if not basename:
        return Path(datadir)
    return Path(os.path.join(datadir, basename)).parent  # join keeps an absolute basename as it is


def require_relay_log_room(conn: DbConnection, node: str,
                           min_free: int = RELAY_LOG_MIN_FREE_BYTES) -> None:
    """Raise RelayLogDiskFullError if the relay log's file system has less than ``min_free``
    bytes free; a directory that cannot be read here is not checked (see the module)."""
    row = query_one(conn, "SELECT @@global.relay_log_basename AS base, @@global.datadir AS datadir")
    directory = relay_log_directory(str(row["base"] or ""), str(row["datadir"] or ""))
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return
    if free < min_free:
        raise RelayLogDiskFullError(node, str(directory), free, min_free)
