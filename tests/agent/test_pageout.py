"""Giving back clean library pages (dbfence.pageout, issue 18): what is advised, what is never
advised, and that a process's memory does drop while its content stays the file's.

The real-kernel tests map a file of their own in this process: ``page_out_libraries`` acts on
every releasable mapping of the calling process, which for the test process means its libraries
too (harmless: they fault back in)."""

from __future__ import annotations

import ctypes
import mmap
import os
import zlib
from pathlib import Path

import pytest

from dbfence.pageout import Mapping, PageOutResult, page_out_libraries, parse_smaps, releasable

SMAPS = """\
7f0000000000-7f0000400000 r-xp 00010000 fd:01 123    /opt/dbfence/lib/cygrpc.so
Size:               4096 kB
Rss:                3000 kB
Pss:                1000 kB
Private_Clean:      1000 kB
Private_Dirty:         0 kB
Shared_Dirty:          0 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me
7f0000400000-7f0000410000 r--p 00400000 fd:01 123    /opt/dbfence/lib/cygrpc.so
Rss:                  64 kB
Private_Dirty:        64 kB
Anonymous:            64 kB
55d000000000-55d000100000 rw-p 00000000 00:00 0      [heap]
Rss:                 900 kB
Anonymous:           900 kB
7f0000500000-7f0000600000 rw-p 00000000 00:00 0
Rss:                 100 kB
"""

PAGE = mmap.PAGESIZE
PROT_READ = 1


def _row(**changes: object) -> Mapping:
    base = {"start": 0, "end": 4096, "perms": "r-xp", "path": "/usr/lib/libx.so", "rss_kib": 4}
    base.update(changes)
    return Mapping(**base)  # type: ignore[arg-type]


def test_smaps_are_read_with_their_sizes_and_paths() -> None:
    rows = parse_smaps(SMAPS)
    assert [(r.perms, r.path) for r in rows] == [
        ("r-xp", "/opt/dbfence/lib/cygrpc.so"), ("r--p", "/opt/dbfence/lib/cygrpc.so"),
        ("rw-p", "[heap]"), ("rw-p", "")]
    assert (rows[0].start, rows[0].end) == (0x7F0000000000, 0x7F0000400000)
    assert (rows[0].rss_kib, rows[0].pss_kib, rows[0].private_clean_kib) == (3000, 1000, 1000)
    assert (rows[1].private_dirty_kib, rows[1].anonymous_kib) == (64, 64)
    assert [releasable(r) for r in rows] == [True, False, False, False]


@pytest.mark.parametrize(("changes", "why"), [
    ({"perms": "rw-p"}, "writable: a copy could appear between the look and the advice"),
    ({"anonymous_kib": 4}, "a private copy (relocated, or a breakpoint): the advice would drop it"),
    ({"private_dirty_kib": 4}, "dirty"),
    ({"shared_dirty_kib": 4}, "dirty in a shared mapping"),
    ({"path": "[heap]"}, "not a file"),
    ({"path": ""}, "anonymous memory"),
    ({"path": "/usr/lib/libx.so (deleted)"}, "a replaced library"),
    ({"perms": "---p"}, "a guard region"),
    ({"rss_kib": 0}, "nothing resident"),
])
def test_only_clean_read_only_file_pages_are_released(changes: dict[str, object], why: str) -> None:
    assert releasable(_row())
    assert not releasable(_row(**changes)), why


def _mapping_of(path: Path) -> list[Mapping]:
    return [r for r in parse_smaps(Path("/proc/self/smaps").read_text()) if r.path == str(path)]


def _clean_file(tmp_path: Path, pages: int) -> Path:
    path = tmp_path / "library.bin"
    data = bytes((i * 7 + 3) % 251 for i in range(pages * PAGE))
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())  # clean in the page cache, as an installed library is
    return path


def test_a_clean_read_only_file_mapping_leaves_the_process_and_reads_back_the_same(tmp_path: Path) -> None:
    pages = 64
    path = _clean_file(tmp_path, pages)
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), pages * PAGE, flags=mmap.MAP_PRIVATE,
                                                prot=PROT_READ) as mapped:
        checksum = zlib.crc32(mapped[:])  # touches every page
        (before,) = _mapping_of(path)
        assert before.rss_kib == pages * PAGE // 1024 and releasable(before)

        result = page_out_libraries()

        (after,) = _mapping_of(path)
        assert after.rss_kib == 0  # out of this process's memory (and its PSS)
        assert result.error is None and result.released_kib >= before.rss_kib
        assert zlib.crc32(mapped[:]) == checksum  # faulted back in from the page cache, unchanged
        assert _mapping_of(path)[0].rss_kib == pages * PAGE // 1024


def test_a_private_copy_in_a_read_only_mapping_is_never_dropped(tmp_path: Path) -> None:
    """What relocations leave behind: a written private page, then the mapping made read-only.
    MADV_DONTNEED would replace the written byte with the file's: the mapping must be left alone."""
    pages = 4
    path = _clean_file(tmp_path, pages)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    with path.open("r+b") as handle, mmap.mmap(handle.fileno(), pages * PAGE,
                                                 flags=mmap.MAP_PRIVATE) as mapped:
        original = mapped[0]
        mapped[0] = (original + 1) % 256  # a private copy of the first page; the file is unchanged
        anchor = ctypes.c_char.from_buffer(mapped)
        address = ctypes.addressof(anchor)
        del anchor
        assert libc.mprotect(address, pages * PAGE, PROT_READ) == 0, os.strerror(ctypes.get_errno())
        (row,) = _mapping_of(path)
        assert row.perms.startswith("r-") and row.anonymous_kib > 0 and not releasable(row)

        page_out_libraries()

        assert mapped[0] == (original + 1) % 256  # the write survived
        assert path.read_bytes()[0] == original
        assert libc.mprotect(address, pages * PAGE, PROT_READ | 2) == 0  # PROT_WRITE, for close


def test_a_writable_private_mapping_keeps_its_writes(tmp_path: Path) -> None:
    path = _clean_file(tmp_path, 4)
    with path.open("r+b") as handle, mmap.mmap(handle.fileno(), 4 * PAGE, flags=mmap.MAP_PRIVATE) as mapped:
        mapped[PAGE:PAGE + 5] = b"kept!"
        page_out_libraries()
        assert mapped[PAGE:PAGE + 5] == b"kept!"


def test_an_unreadable_smaps_is_one_error_and_no_advice(tmp_path: Path) -> None:
    result = page_out_libraries(tmp_path / "missing")
    assert result == PageOutResult(0, 0, 0, result.error)
    assert result.error is not None and "missing" in result.error


def test_libraries_still_run_after_their_pages_are_given_back() -> None:
    """The agent's own libraries: gRPC and protobuf's C code run again after the advice."""
    grpc = pytest.importorskip("grpc")
    from pyetcd import etcdrpc  # noqa: PLC0415 (after the skip)

    assert any("cygrpc" in r.path for r in parse_smaps(Path("/proc/self/smaps").read_text()))
    result = page_out_libraries()
    assert result.error is None and result.mappings > 0
    request = etcdrpc.RangeRequest(key=b"dbfence/x", range_end=b"dbfence/y")
    assert etcdrpc.RangeRequest.FromString(request.SerializeToString()) == request
    channel = grpc.insecure_channel("127.0.0.1:9")  # discard: nothing listens
    try:
        with pytest.raises(grpc.RpcError) as raised:
            etcdrpc.KVStub(channel).Range(request, timeout=2)
        assert raised.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    finally:
        channel.close()
