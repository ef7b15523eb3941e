"""The repair keeper's rebuild bookkeeping that needs no server: approvals (file, command, HTTP)
and refusals."""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dbfence.agent.actions import ActionReason, RebuildNode
from dbfence.agent.operator_commands import approve_rebuild
from dbfence.agent.rebuild_approval import APPROVAL_FILE
from dbfence.agent.repair_keeper import RepairKeeper
from dbfence.discovery.http_api import APPROVE_REBUILD, CommandResult, HttpApi, StatusBoard
from dbfence.discovery.metrics import Metrics
from dbfence.mysql.actions import MysqlActions
from dbfence.mysql.connection import Endpoint
from dbfence.mysql.credentials import Credentials
from dbfence.mysql.gtid import GtidState
from dbfence.mysql.repair import MysqldControl


def keeper(tmp_path: Path, mode: str = "rebuild", token: str | None = "t") -> RepairKeeper:
    # Port 9 on loopback: nothing listens; these tests never get as far as mysqld.
    mysql = MysqlActions(Endpoint("127.0.0.1", 9), Credentials("u", "p"), name="db1")
    control = MysqldControl(pid_file=tmp_path / "none.pid", start_command=["true"])
    return RepairKeeper(mode=mode, state_dir=tmp_path, node="db1", mysql=mysql, control=control,
                        api_token=token)


def test_the_approval_is_a_file_the_operator_creates_and_only_rebuild_reads(tmp_path: Path) -> None:
    assert not keeper(tmp_path).view().rebuild_approved
    (tmp_path / APPROVAL_FILE).touch()
    assert keeper(tmp_path).view().rebuild_approved
    assert not keeper(tmp_path, mode="truncate").view().rebuild_approved


def test_without_the_api_token_the_rebuild_gives_up_saying_why(tmp_path: Path) -> None:
    (tmp_path / APPROVAL_FILE).touch()
    k = keeper(tmp_path, token=None)
    k.start_rebuild(RebuildNode("db2", "db3", ("0-1-5",), ActionReason.REBUILD_APPROVED),
                    "http://127.0.0.1:9", lambda: GtidState.parse(""))
    view = k.view()
    assert view.gave_up_on == "rebuild" and "http.token_file" in view.gave_up
    assert (tmp_path / APPROVAL_FILE).exists()  # not spent: nothing was tried


def test_a_rebuild_that_fails_spends_the_approval_and_is_reported(tmp_path: Path) -> None:
    (tmp_path / APPROVAL_FILE).touch()
    history: list[tuple[str, str]] = []
    k = keeper(tmp_path)
    k.on_done = lambda kind, detail: history.append((kind, detail))
    k.start_rebuild(RebuildNode("db2", "db3", ("0-1-5",), ActionReason.REBUILD_APPROVED),
                    "http://127.0.0.1:9", lambda: GtidState.parse(""))
    assert not (tmp_path / APPROVAL_FILE).exists()  # one approval, one attempt
    assert k._worker is not None
    k._worker.join(30)
    view = k.view()
    assert not view.running and view.gave_up_on == "rebuild"
    assert view.gave_up.startswith("rebuild failed: ")
    assert history and history[0][0] == "repair_failed" and "rebuild from db3 failed" in history[0][1]
    assert k.status()["rebuild"] is None  # nothing was copied


def test_the_approval_command_writes_the_same_file_and_only_rebuild_accepts_it(tmp_path: Path) -> None:
    k = keeper(tmp_path)
    k.note_hold("semi-sync is off; a rebuild needs an operator's approval: dbfence rejoin approve --node db1")
    assert k.status()["approve_command"] == (f"dbfence rejoin approve --node db1  "
                                             f"(or: touch {tmp_path / APPROVAL_FILE})")
    result = approve_rebuild(k, {"by": "alice"})
    assert result.status == 200 and "one rebuild of db1 approved" in result.message
    approval = tmp_path / APPROVAL_FILE
    assert k.view().rebuild_approved and approval.stat().st_mode & 0o077 == 0
    assert approval.read_text().startswith("approved by alice at ")
    k.note_hold("")
    assert k.status()["approve_command"] is None and k.status()["waiting"] == ""

    other = tmp_path / "truncate"
    refused = approve_rebuild(keeper(other, mode="truncate"), {})
    assert refused.status == 409 and "never rebuilds" in refused.message
    assert not (other / APPROVAL_FILE).exists()


def test_the_http_api_takes_the_approval_only_with_the_token(tmp_path: Path) -> None:
    k = keeper(tmp_path)
    api = HttpApi("127.0.0.1", 0, StatusBoard(), Metrics(), token="s3cret",
                  on_command=lambda command, args: approve_rebuild(k, args)
                  if command == APPROVE_REBUILD else CommandResult(404, "no")).start()
    host, port = api.address
    try:
        def post(token: str) -> int:
            request = urllib.request.Request(f"http://{host}:{port}/{APPROVE_REBUILD}?by=bob", data=b"",
                                             method="POST", headers={"Authorization": f"Bearer {token}"})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return int(response.status)
            except urllib.error.HTTPError as exc:
                return exc.code

        assert post("wrong") == 401 and not k.view().rebuild_approved
        assert post("s3cret") == 200 and k.view().rebuild_approved
    finally:
        api.stop()


class Wall:
    """A settable wall clock for the keeper (approvals are dated with it)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_an_approval_is_spent_when_the_node_serves_again(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    k = keeper(tmp_path)
    k.on_fencing()
    assert approve_rebuild(k, {"by": "alice"}).status == 200 and k.view().rebuild_approved
    with caplog.at_level(logging.WARNING, logger="dbfence.agent"):
        k.on_serving()  # rejoined another way (truncated, primary again, fixed by hand)
    assert not (tmp_path / APPROVAL_FILE).exists() and not k.view().rebuild_approved
    assert k.status()["rebuild_approval"] is None
    removed = [json.loads(r.getMessage()) for r in caplog.records
               if "rebuild_approval_removed" in r.getMessage()]
    assert removed and removed[0]["why"] == "the node serves again" and removed[0]["by"] == "alice"
    # The next fence finds no approval: its rebuild waits for an operator again.
    k.on_fencing()
    assert not k.view().rebuild_approved


def test_an_approval_given_before_a_fence_does_not_count_for_it(tmp_path: Path) -> None:
    k = keeper(tmp_path)
    (tmp_path / APPROVAL_FILE).touch()  # left from long ago, or written while the node served
    assert k.view().rebuild_approved
    k.on_fencing()
    assert not k.view().rebuild_approved and not (tmp_path / APPROVAL_FILE).exists()


def test_an_approval_expires_after_the_ttl_and_status_says_until_when(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    wall = Wall(1_800_000_000.0)  # 2027-01-15T08:00:00Z
    k = keeper(tmp_path)
    k.wall = wall
    k.approval_ttl = 600.0
    k.on_fencing()
    message = approve_rebuild(k, {"by": "alice"}).message
    assert "valid until 2027-01-15T08:10:00Z" in message
    assert k.status()["rebuild_approval"] == {"by": "alice", "approved_at": "2027-01-15T08:00:00Z",
                                              "expires_at": "2027-01-15T08:10:00Z"}
    wall.now += 599
    assert k.view().rebuild_approved
    wall.now += 1
    with caplog.at_level(logging.WARNING, logger="dbfence.agent"):
        assert not k.view().rebuild_approved
    assert not (tmp_path / APPROVAL_FILE).exists() and k.status()["rebuild_approval"] is None
    assert any("rebuild_approval_removed" in r.getMessage() and "expired" in r.getMessage()
               for r in caplog.records)


def test_a_hand_made_approval_expires_by_its_file_time_and_ttl_zero_never_expires(tmp_path: Path) -> None:
    k = keeper(tmp_path)
    approval = tmp_path / APPROVAL_FILE
    approval.touch()
    two_hours_ago = time.time() - 7200
    os.utime(approval, (two_hours_ago, two_hours_ago))
    k.approval_ttl = 0.0
    status = k.status()["rebuild_approval"]
    assert k.view().rebuild_approved and status is not None and status["expires_at"] is None
    k.approval_ttl = 3600.0  # the default
    assert not k.view().rebuild_approved and not approval.exists()
