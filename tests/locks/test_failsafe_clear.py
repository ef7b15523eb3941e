"""`dbfence locks clear-failsafe`: an operator deletes a stale failsafe member list, safely, against
real etcd and the Consul stand-in (docs/failsafe.md, the runbook in docs/operations.md)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from click.testing import CliRunner

from dbfence.cli import main
from dbfence.locks import FailsafeList, LockConflict, MemberRecord
from tests.locks.conftest import Dcs
from tests.locks.locks_support import holder


def run(dcs: Dcs, *args: str, input_text: str | None = None) -> Any:
    where = ["--etcd", ",".join(dcs.config.endpoints)] if dcs.kind == "etcd" else \
        ["--consul", dcs.config.endpoints[0]]
    return CliRunner().invoke(main, ["locks", "clear-failsafe", *where, "--cluster", dcs.cluster, *args],
                              input=input_text, catch_exceptions=False)


def record(node: str) -> MemberRecord:
    return MemberRecord(node=node, role="replica", healthy=True, version="test", last_seen=time.time())


def test_clear_refuses_while_held_or_a_listed_node_lives_then_deletes_and_says_what(dcs: Dcs) -> None:
    primary, peer = dcs.lock("db1"), dcs.lock("db2")
    assert run(dcs).exit_code == 0 and "nothing to delete" in run(dcs).output
    primary.open_session()
    token = primary.try_acquire(holder("db1")).token
    assert token is not None
    primary.write_failsafe_list(FailsafeList(token=token, members=("db1", "db2"), written_by="db1",
                                             written_at=time.time()))
    peer.publish_member(record("db2"))

    held = run(dcs)
    assert held.exit_code == 1
    assert "held by db1" in held.output and "not deleted" in held.output
    with pytest.raises(LockConflict):  # the backend refuses by itself too, atomically
        peer.delete_failsafe_list()
    assert peer.snapshot().failsafe is not None

    primary.close_session()  # the holder is gone: the lock is free (its record too)
    alive = run(dcs)
    assert alive.exit_code == 1
    assert "db2 are alive" in alive.output
    assert peer.snapshot().failsafe is not None

    peer.close_session()  # now nobody named in the list is alive: the list is stale
    cleared = run(dcs)
    assert cleared.exit_code == 0, cleared.output
    assert f"members db1, db2, token {token}, written by db1" in cleared.output
    assert peer.snapshot().failsafe is None
    again = run(dcs)
    assert again.exit_code == 0 and "nothing to delete" in again.output


def test_force_deletes_while_held_after_confirmation(dcs: Dcs) -> None:
    primary = dcs.lock("db1")
    primary.open_session()
    token = primary.try_acquire(holder("db1")).token
    assert token is not None
    primary.write_failsafe_list(FailsafeList(token=token, members=("db1",), written_by="db1"))
    declined = run(dcs, "--force", input_text="n\n")
    assert declined.exit_code != 0
    assert primary.snapshot().failsafe is not None
    forced = run(dcs, "--force", "--yes")
    assert forced.exit_code == 0, forced.output
    assert f"members db1, token {token}" in forced.output
    assert primary.snapshot().failsafe is None


def test_an_unreadable_list_is_deleted_and_shown_as_stored(dcs: Dcs) -> None:
    lock = dcs.lock("db1")
    dcs.put_raw(lock.keys.failsafe, b"members=db1")
    cleared = run(dcs)
    assert cleared.exit_code == 0, cleared.output
    assert "an unreadable value (b'members=db1')" in cleared.output
    assert lock.snapshot(strict=False).failsafe is None
    assert not lock.snapshot(strict=False).problems


def test_drop_takes_departed_nodes_out_while_the_primary_runs(dcs: Dcs) -> None:
    primary, peer = dcs.lock("db1"), dcs.lock("db2")
    assert "nothing to drop" in run(dcs, "--drop", "db3").output
    primary.open_session()
    token = primary.try_acquire(holder("db1")).token
    assert token is not None
    primary.write_failsafe_list(FailsafeList(token=token, members=("db1", "db2", "db3", "db4")))
    peer.publish_member(record("db2"))
    living = run(dcs, "--drop", "db2")
    assert living.exit_code == 1 and "db2 still has a live member record" in living.output
    dropped = run(dcs, "--drop", "db3", "--drop", "db4")  # the lock is held: dropping is safe anyway
    assert dropped.exit_code == 0, dropped.output
    assert f"dropped db3, db4 from the failsafe list: members now db1, db2 (token {token})" in dropped.output
    listing = primary.snapshot().failsafe
    assert listing is not None and listing.members == ("db1", "db2") and listing.token == token
    assert "nothing changed" in run(dcs, "--drop", "db9").output
