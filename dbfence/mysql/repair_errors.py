"""The errors of a repair of a fenced former primary, apart so that every step can raise them.

Why a module of their own: the repair (:mod:`repair`), the excerpt of its errant transactions
(:mod:`binlog_excerpt`), the raw copy of a crashed mysqld's binlog (:mod:`binlog_tail`) and the
rebuild (:mod:`rebuild`) all raise them, and the agent tells them apart by class alone.

Invariant: :class:`RepairDeferred` (and its :class:`BinlogCutShort`) means nothing was removed and
the same repair may succeed later; any other :class:`RepairError` is for good until the facts change.
"""

from __future__ import annotations

from dbfence.mysql.errors import MysqlAdapterError


class RepairError(MysqlAdapterError):
    """A repair step failed; the message says which and what was left as it was."""


class RepairDeferred(RepairError):
    """Nothing was removed and the same repair may succeed later: the binlog's last errant
    transaction is not wholly on disk yet (mysqld waits for space to write it), or the excerpt
    found no room in the state directory. Tried again with back-off, never given up for good."""


class BinlogCutShort(RepairDeferred):
    """The binlog files end inside or before an errant transaction: its write waits for disk
    space (wait), or was abandoned, its session or mysqld killed (``tail_abandoned``)."""


class NothingErrant(RepairError):
    """Nothing is errant against the primary (any more): the request came from facts read before
    an earlier repair finished. Nothing was done, and nothing failed."""
