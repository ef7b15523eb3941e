"""What is left of a token discard that stopped half way (issue 16), judged from its intent file and
what mysqld shows (``next_step``), and the file itself: written, read back, refused when damaged."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from dbfence.mysql.discard_intent import (
    DiscardIntent,
    DiscardRefused,
    ServerNow,
    Step,
    clear_intent,
    intent_path,
    load_intent,
    next_step,
    write_intent,
)
from dbfence.mysql.gtid import GtidState

INTENT = DiscardIntent(server_id=2, mysqld_started="2026-12-07 21:00:00", binlog_state="0-1-5,0-2-9",
                       slave_pos_before="0-1-5", target="0-2-8", target_state="0-1-5,0-2-8",
                       gtids="0-2-9 (fencing token(s) 8)",
                       history_tokens=(8,), delete_fencing_row=False)
# As the discard began: the token 0-2-9 still in the binlog, fenced, replication stopped.
BEGAN = ServerNow(server_id=2, read_only=True, replication_stopped=True, binlog_state="0-1-5,0-2-9",
                  slave_pos="0-1-5")
RESET = replace(BEGAN, binlog_state="")  # RESET MASTER done, neither SET
STATE_SET = replace(BEGAN, binlog_state="0-2-8,0-1-5")  # the binlog state set again, the position not
PRIMARY = GtidState.parse("0-1-10,0-2-8")


@pytest.mark.parametrize(("now", "primary", "expected"), [
    (BEGAN, PRIMARY, Step.REDO),
    (RESET, PRIMARY, Step.SET_STATE),
    (STATE_SET, PRIMARY, Step.SET_POSITION),
    (replace(STATE_SET, slave_pos="0-2-8"), PRIMARY, Step.DONE),
    # Done, then replication started by someone: nothing left to do but the file.
    (replace(STATE_SET, slave_pos="0-2-8", replication_stopped=False), PRIMARY, Step.DONE),
    # The primary is not needed to finish the SETs: they only make the binlog state and position
    # say the truth.
    (RESET, GtidState.parse("0-1-10"), Step.SET_STATE),
    (replace(BEGAN, binlog_state="0-1-5,0-2-10"), PRIMARY,
     "gtid_binlog_state is 0-1-5,0-2-10, neither empty or 0-1-5,0-2-8 (reset by the discard) nor "
     "0-1-5,0-2-9 (as the discard began): something wrote since"),
    (replace(RESET, binlog_state="0-2-10"), PRIMARY,
     "gtid_binlog_state is 0-2-10, neither empty or 0-1-5,0-2-8 (reset by the discard) nor 0-1-5,0-2-9 "
     "(as the discard began): something wrote since"),
    (replace(RESET, slave_pos="0-1-7"), PRIMARY,
     "the binlog was reset but gtid_slave_pos is 0-1-7, neither the discard's target 0-2-8 nor 0-1-5 "
     "(before it)"),
    (replace(STATE_SET, slave_pos=""), PRIMARY,
     "the binlog was reset but gtid_slave_pos is empty, neither the discard's target 0-2-8 nor 0-1-5 "
     "(before it)"),
    # The position set without the state: not a state this discard leaves.
    (replace(RESET, slave_pos="0-2-8"), PRIMARY,
     "the binlog was reset but gtid_slave_pos is 0-2-8, neither the discard's target 0-2-8 nor 0-1-5 "
     "(before it)"),
    (replace(RESET, server_id=3), PRIMARY, "the server's server_id is 3, the discard's 2 (rebuilt since?)"),
    (replace(RESET, read_only=False), PRIMARY, "the server is writable (not fenced)"),
    (replace(RESET, replication_stopped=False), PRIMARY, "replication is running"),
    (replace(BEGAN, read_only=False), PRIMARY, "the server is writable (not fenced)"),
    # Redone from the start, the reset position must still be the primary's.
    (BEGAN, GtidState.parse("0-1-10"), "the primary lacks 0-2-8 of the target position 0-2-8"),
], ids=["redo", "set-state", "set-position", "done", "done-replicating", "set-any-primary", "written-since",
        "written-after-reset", "slave-pos-moved", "slave-pos-cleared", "position-without-state",
        "other-server", "writable", "replicating", "redo-writable", "redo-primary-lacks"])
def test_next_step(now: ServerNow, primary: GtidState, expected: Step | str) -> None:
    assert next_step(INTENT, now, primary) == expected


def test_the_intent_file_round_trips_and_is_removed(tmp_path: Path) -> None:
    assert load_intent(tmp_path) is None
    path = write_intent(tmp_path, INTENT)
    assert path == intent_path(tmp_path) and path.stat().st_mode & 0o777 == 0o600
    assert load_intent(tmp_path) == INTENT
    clear_intent(tmp_path)
    assert load_intent(tmp_path) is None and not path.exists()
    clear_intent(tmp_path)  # twice: nothing to do


@pytest.mark.parametrize("text", ["{not json", "[]", json.dumps({"server_id": 2}),
                                  json.dumps({**asdict(INTENT), "history_tokens": ["x"]})])
def test_a_damaged_intent_file_is_refused_with_its_name(tmp_path: Path, text: str) -> None:
    intent_path(tmp_path).write_text(text)
    with pytest.raises(DiscardRefused, match=str(intent_path(tmp_path))):
        load_intent(tmp_path)
