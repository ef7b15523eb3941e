"""`dbfence locks` against a live lab: real MariaDB GTID positions in member records, real etcd."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dbfence.cli import main
from dbfence.lab.cluster import LabCluster
from dbfence.locks import DcsConfig, LeaseLock, LockLost, LockSettings, MemberRecord, open_lock
from tests.locks.conftest import ETCD_SETTINGS
from tests.locks.locks_support import holder, put_raw


class LabAgents:
    """Stand-ins for three agents of the lab: each holds a lease and publishes its real GTID position."""

    def __init__(self, lab: LabCluster, settings: LockSettings) -> None:
        self.lab = lab
        self.config = DcsConfig(kind=lab.dcs_kind, endpoints=tuple(lab.dcs_endpoints))
        # Our own cluster name: the shared lab's "lab" keys stay untouched for other areas.
        self.cluster = f"cli-{uuid.uuid4().hex[:8]}"
        self.locks: dict[str, LeaseLock] = {}
        for node in lab.mysql:
            lock = open_lock(self.config, self.cluster, node.name, settings)
            self.locks[node.name] = lock
            role = "primary" if node.name == lab.mysql[0].name else "replica"
            lock.publish_member(
                MemberRecord(
                    node=node.name,
                    role=role,
                    healthy=True,
                    gtid_position=self.gtid(node.name),
                    gate_state="open" if role == "primary" else "closed",
                    version="test",
                    last_seen=time.time(),
                )
            )
        self.token = self.locks[lab.mysql[0].name].try_acquire(holder(lab.mysql[0].name)).token

    def gtid(self, name: str) -> str:
        connection = self.lab.connect(name)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT @@gtid_current_pos")
                row = cursor.fetchone()
        finally:
            connection.close()
        return str(row[0]) if row else ""

    @property
    def flags(self) -> list[str]:
        kind_flag = "--etcd" if self.config.kind == "etcd" else "--consul"
        return [kind_flag, ",".join(self.config.endpoints), "--cluster", self.cluster]

    def close(self) -> None:
        for lock in self.locks.values():
            try:
                lock.close_session()
            finally:
                lock.close()


@pytest.fixture
def agents(shared_lab: LabCluster) -> Iterator[LabAgents]:
    lab_agents = LabAgents(shared_lab, ETCD_SETTINGS)
    try:
        yield lab_agents
    finally:
        lab_agents.close()


def run(args: list[str], input_text: str | None = None) -> Any:
    return CliRunner().invoke(main, args, input=input_text, catch_exceptions=False)


def test_text_view_shows_holder_token_lease_ttl_and_every_member(agents: LabAgents) -> None:
    result = run(["locks", *agents.flags])
    assert result.exit_code == 0, result.output
    out = result.output
    primary = agents.lab.mysql[0].name
    lease = agents.locks[primary].session_id
    assert f"holder      {primary} (127.0.0.1:3307)" in out
    assert f"token       {agents.token}" in out
    assert f"lease       {lease}" in out
    assert "ttl left    " in out and "acquired    " in out
    for node in agents.lab.mysql:
        row = next(line for line in out.splitlines() if line.strip().startswith(node.name))
        assert agents.gtid(node.name) in row
        assert ("primary" if node.name == primary else "replica") in row
        assert agents.locks[node.name].session_id in row
    assert f"{primary}*" in out  # the holder is marked in the member table


def test_json_view_for_scripts(agents: LabAgents) -> None:
    result = run(["locks", *agents.flags, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    primary = agents.lab.mysql[0].name
    assert data["cluster"] == agents.cluster
    assert data["lock"]["holder"]["node"] == primary
    assert data["lock"]["token"] == agents.token
    assert data["lock"]["session_id"] == agents.locks[primary].session_id
    assert 0 < data["lock"]["ttl_left"] <= ETCD_SETTINGS.ttl
    assert [m["node"] for m in data["members"]] == [node.name for node in agents.lab.mysql]
    assert data["problems"] == []


def test_config_file_form(agents: LabAgents, tmp_path: Path) -> None:
    config = tmp_path / "dbfence.toml"
    endpoints = ", ".join(f'"{url}"' for url in agents.config.endpoints)
    config.write_text(
        f'cluster = "{agents.cluster}"\n[dcs]\nkind = "{agents.config.kind}"\nendpoints = [{endpoints}]\n'
    )
    result = run(["locks", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["lock"]["token"] == agents.token


def test_garbage_member_key_is_shown_as_a_problem_not_a_crash(agents: LabAgents) -> None:
    bad_key = f"dbfence/{agents.cluster}/members/ghost"
    put_raw(agents.config, bad_key, b"{oops")
    result = run(["locks", *agents.flags])
    assert result.exit_code == 0, result.output
    assert "problems" in result.output and bad_key in result.output
    assert agents.lab.mysql[1].name in result.output  # the good records are still shown


def test_release_force_asks_then_deletes(agents: LabAgents) -> None:
    primary = agents.locks[agents.lab.mysql[0].name]
    refused = run(["locks", *agents.flags, "release"])
    assert refused.exit_code == 2 and "--force" in refused.output
    declined = run(["locks", *agents.flags, "release", "--force"], input_text="n\n")
    assert declined.exit_code == 1
    assert primary.renew().token == agents.token  # still held
    result = run(["locks", "release", "--force", "--yes", *agents.flags])
    assert result.exit_code == 0, result.output
    assert f"token {agents.token}" in result.output
    with pytest.raises(LockLost):
        primary.renew()
    again = run(["locks", *agents.flags, "release", "--force", "--yes"])
    assert again.exit_code == 0 and "free" in again.output


def test_unreachable_dcs_is_one_line_error(agents: LabAgents) -> None:
    result = CliRunner().invoke(main, ["locks", "--etcd", "http://127.0.0.1:1", "--cluster", "x"])
    assert result.exit_code == 2
    assert "DCS unreachable" in result.output and "Traceback" not in result.output
    usage = CliRunner().invoke(main, ["locks", "--cluster", "x"])
    assert usage.exit_code == 2 and "--etcd" in usage.output


def test_watch_redraws_on_change(agents: LabAgents) -> None:
    command = [sys.executable, "-c", "from dbfence.cli import main; main()", "locks", *agents.flags,
               "--json", "--watch", "--refresh", "30"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout

    def pump() -> None:
        for line in stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        first = json.loads(lines.get(timeout=20))
        assert first["lock"]["token"] == agents.token
        released_at = time.monotonic()
        agents.locks[agents.lab.mysql[0].name].release()
        second = json.loads(lines.get(timeout=10))
        redraw_latency = time.monotonic() - released_at
        assert second["lock"] is None
        assert redraw_latency < 2.0
    finally:
        process.kill()  # our own child, by its handle
        process.wait(timeout=10)
