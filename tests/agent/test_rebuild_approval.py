"""The rule of an operator's rebuild approval: who gave it, when, and when it stops counting."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dbfence.agent.rebuild_approval import APPROVAL_FILE, BY_HAND, Approval, read_approval, write_approval


@pytest.mark.parametrize(
    ("ttl", "age", "expired"),
    [
        (3600.0, 0.0, False),
        (3600.0, 3599.0, False),
        (3600.0, 3600.0, True),  # the ttl is how long it counts: at its end it no longer does
        (3600.0, 86_400.0, True),
        (0.0, 10**9, False),  # 0: until spent
        (60.0, -30.0, False),  # dated ahead of this clock: counts, and expires ttl after its date
    ],
)
def test_an_approval_counts_for_ttl_seconds_after_it_was_given(ttl: float, age: float, expired: bool) -> None:
    approval = Approval(by="alice", at=1_000_000.0)
    assert approval.expired(ttl, 1_000_000.0 + age) is expired
    assert approval.expires_at(ttl) == (None if ttl == 0 else 1_000_000.0 + ttl)


def test_the_written_approval_reads_back_who_and_when(tmp_path: Path) -> None:
    assert read_approval(tmp_path) is None
    write_approval(tmp_path, "alice at the console", 1_800_000_000.9)
    assert read_approval(tmp_path) == Approval(by="alice at the console", at=1_800_000_000.0)
    write_approval(tmp_path, "mallory\napproved by nobody", 1_800_000_000.0)  # stays one line
    assert read_approval(tmp_path) == Approval(by="mallory approved by nobody", at=1_800_000_000.0)


def test_a_hand_made_approval_is_dated_by_its_file(tmp_path: Path) -> None:
    path = tmp_path / APPROVAL_FILE
    path.write_text("ok, rebuild it -- bob\n")
    os.utime(path, (1_700_000_000.0, 1_700_000_000.0))
    assert read_approval(tmp_path) == Approval(by=BY_HAND, at=1_700_000_000.0)
