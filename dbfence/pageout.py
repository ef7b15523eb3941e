"""Giving back the library pages the agent touched only while it started (issue 18).

Why: loading a large extension library touches far more of it than an idle agent uses again —
its static initialisers, symbol resolution, and the kernel's fault-around, which maps the
neighbours of every page touched at load. gRPC's ``cygrpc`` alone is ~13 MB of such resident,
clean, file-backed pages in the agent (~6 MB of them in use at idle). Once the agent has started,
one ``madvise`` per mapping takes them out of its page tables; the pages the agent does use
fault back in on their next touch and then stay.

What this is and is not: resident memory handed back to the page cache, not code removed. The
library stays mapped and whole; the pages leave the agent's page tables (its RSS and PSS) and stay
in the kernel's page cache, where they are the first to go when memory is short (nobody maps
them). Nothing the agent can observe changes except the cost of a page fault (a minor fault, about
a microsecond, while the page is still cached; a read from disk if the kernel has dropped it).

Layout: :func:`parse_smaps` (pure: ``/proc/PID/smaps`` text to :class:`Mapping` rows),
:func:`releasable` (the rule below, pure), :func:`page_out_libraries` (the I/O: read, advise,
read again, report).

Invariants — which pages may be advised, and why nothing can be lost:

* only **file-backed** mappings (a path, not ``[heap]``, ``[stack]``, anonymous memory or a
  deleted file), **without write permission**, whose pages are **all clean and none anonymous**
  (``Anonymous``, ``Private_Dirty`` and ``Shared_Dirty`` all zero). Such a page is byte for byte
  the file's page in the page cache, which is what the next touch maps again. A private copy made
  by a write (relocations, a debugger's breakpoint) is anonymous: ``MADV_DONTNEED`` would discard
  it, so its whole mapping is left alone. Without write permission no new copy can appear
  between the look and the advice (nothing in the agent calls ``mprotect`` on a library);
* the advice is ``MADV_DONTNEED``, not ``MADV_PAGEOUT``: measured (benchmarks/README-footprint.md),
  the kernel pages out a file's pages only for a process that could write the file, and only the
  pages no other process maps; the documented install (``User=dbfence``, a root-owned
  ``/opt/dbfence``, ``ProtectSystem=strict``) is neither, so ``MADV_PAGEOUT`` did nothing there;
* a library replaced in place while the agent runs would be read back changed; that is already
  so for every page the kernel reclaims under memory pressure and for the ~half of each library
  never touched, which is why installers replace files by rename (the old mapping then shows as
  deleted, and is left alone here);
* any error (a locked mapping: ``EINVAL``) is logged once and the agent goes on as before.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

log = logging.getLogger("dbfence.pageout")

MADV_DONTNEED: Final = 4  # linux/mman.h
_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \d+\s*(.*)$")
_KIB_FIELDS: Final = ("Rss", "Pss", "Private_Clean", "Private_Dirty", "Shared_Dirty", "Anonymous")


@dataclass(frozen=True, slots=True)
class Mapping:
    """One line of ``/proc/PID/maps`` with the sizes ``smaps`` gives it (KiB)."""

    start: int
    end: int
    perms: str
    path: str
    rss_kib: int = 0
    pss_kib: int = 0
    private_clean_kib: int = 0
    private_dirty_kib: int = 0
    shared_dirty_kib: int = 0
    anonymous_kib: int = 0


def parse_smaps(text: str) -> list[Mapping]:
    """``/proc/PID/smaps`` as rows; fields it does not know are ignored."""
    rows: list[Mapping] = []
    header: tuple[int, int, str, str] | None = None
    sizes: dict[str, int] = {}

    def flush() -> None:
        if header is not None:
            start, end, perms, path = header
            rows.append(Mapping(start, end, perms, path, *(sizes.get(name, 0) for name in _KIB_FIELDS)))

    for line in text.splitlines():
        match = _HEADER.match(line)
        if match:
            flush()
            header = (int(match[1], 16), int(match[2], 16), match[3], match[4].strip())
            sizes = {}
            continue
        name, _, rest = line.partition(":")
        if name in _KIB_FIELDS:
            sizes[name] = int(rest.split()[0])
    flush()
    return rows


def releasable(mapping: Mapping) -> bool:
    """Whether every resident page of this mapping is a clean, unmodified page of its file."""
    return (mapping.path.startswith("/") and not mapping.path.endswith(" (deleted)")
            and mapping.perms[0] == "r" and "w" not in mapping.perms
            and mapping.rss_kib > 0 and mapping.anonymous_kib == 0
            and mapping.private_dirty_kib == 0 and mapping.shared_dirty_kib == 0)


@dataclass(frozen=True, slots=True)
class PageOutResult:
    """What one call did: resident KiB of the mappings it advised, before and just after."""

    mappings: int
    rss_before_kib: int
    rss_after_kib: int
    error: str | None = None

    @property
    def released_kib(self) -> int:
        return max(0, self.rss_before_kib - self.rss_after_kib)


def _resident(rows: Iterable[Mapping], keys: set[tuple[int, int, str]]) -> int:
    return sum(row.rss_kib for row in rows if (row.start, row.end, row.path) in keys)


def page_out_libraries(smaps: Path = Path("/proc/self/smaps")) -> PageOutResult:
    """Take this process's clean library pages out of its page tables; never raises.

    Only for the calling process (``madvise`` acts on its own address space)."""
    try:
        before = [row for row in parse_smaps(smaps.read_text()) if releasable(row)]
    except (OSError, ValueError) as exc:
        return _failed(f"cannot read {smaps}: {exc}")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.madvise.restype = ctypes.c_int
    error: str | None = None
    advised: set[tuple[int, int, str]] = set()
    for row in before:
        if libc.madvise(row.start, row.end - row.start, MADV_DONTNEED) != 0:
            errno = ctypes.get_errno()
            if error is None:  # EINVAL: a locked mapping; ENOMEM: the mapping went away
                error = f"madvise(MADV_DONTNEED) on {row.path}: {os.strerror(errno)}"
            continue
        advised.add((row.start, row.end, row.path))
    try:
        after = parse_smaps(smaps.read_text())
    except (OSError, ValueError):
        after = []
    result = PageOutResult(len(advised), _resident(before, advised), _resident(after, advised), error)
    if error is not None:
        log.warning("library pages not all given back (%s); the agent goes on without", error)
    return result


def _failed(error: str) -> PageOutResult:
    log.warning("library pages not given back (%s); the agent goes on without", error)
    return PageOutResult(0, 0, 0, error)
