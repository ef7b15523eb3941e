"""The lab starts real servers that replicate, enforce read_only, and stop cleanly."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pymysql
import pymysql.cursors
import pytest
from click.testing import CliRunner

from dbfence.cli import main
from dbfence.lab import etcd_servers
from dbfence.lab.binaries import MissingBinary, find_binary
from dbfence.lab.cluster import LabCluster, LabSpec
from dbfence.lab.errors import LabError
from dbfence.lab.partition import delay_replica
from dbfence.lab.wait import wait_until
from tests.conftest import LabFactory


def test_row_written_on_primary_reaches_every_replica(shared_lab: LabCluster) -> None:
    marker = uuid.uuid4().hex
    with shared_lab.connect("db1", account="app") as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS app.lab_probe (marker CHAR(32) PRIMARY KEY)")
        cur.execute("INSERT INTO app.lab_probe VALUES (%s)", (marker,))
    for replica in ("db2", "db3"):
        def seen(name: str = replica) -> bool:
            with shared_lab.connect(name) as conn, conn.cursor() as cur:
                cur.execute("SELECT COUNT(*) FROM app.lab_probe WHERE marker = %s", (marker,))
                row = cur.fetchone()
                return row is not None and row[0] == 1
        wait_until(seen, timeout=10, what=f"the row on {replica}")


def test_application_account_cannot_write_on_a_replica(shared_lab: LabCluster) -> None:
    with shared_lab.connect("db2", account="app") as conn, conn.cursor() as cur, \
            pytest.raises(pymysql.err.OperationalError) as refused:
        cur.execute("CREATE TABLE app.must_not_exist (id INT)")
    assert refused.value.args[0] == 1290  # ER_OPTION_PREVENTS_STATEMENT: --read-only


def test_application_account_has_no_privilege_that_bypasses_read_only(shared_lab: LabCluster) -> None:
    app_user = shared_lab.accounts["app"].user
    with shared_lab.connect("db1") as conn, conn.cursor() as cur:
        cur.execute(f"SHOW GRANTS FOR '{app_user}'@'127.0.0.1'")
        grants = " ".join(row[0] for row in cur.fetchall()).upper()
    assert "SUPER" not in grants and "READ ONLY ADMIN" not in grants and "ALL PRIVILEGES" not in grants


def test_every_etcd_member_is_healthy(shared_lab: LabCluster) -> None:
    assert len(shared_lab.etcd) == 3
    assert all(etcd_servers.healthy(member) for member in shared_lab.etcd)
    out = subprocess.run(
        [find_binary("etcdctl"), "--endpoints", ",".join(shared_lab.dcs_endpoints), "endpoint", "health"],
        capture_output=True, text=True, env={"ETCDCTL_API": "3"}, timeout=20, check=False,
    )
    # etcdctl prints its health lines on stderr.
    assert (out.stdout + out.stderr).count("is healthy") == 3, out.stdout + out.stderr


def test_manifest_has_the_documented_shape(shared_lab: LabCluster) -> None:
    data = json.loads((shared_lab.directory / "lab.json").read_text())
    assert data["cluster"] == "lab"
    assert data["dcs"] == {"kind": "etcd", "endpoints": [m.client_url for m in shared_lab.etcd]}
    for node in data["mysql"]:
        assert {"name", "host", "port", "socket", "pid", "datadir"} <= node.keys()
    for member in data["etcd"]:
        assert {"name", "client_url", "pid", "datadir"} <= member.keys()
    assert set(data["accounts"]) == {"app", "agent", "repl"}
    assert (shared_lab.directory / "lab.json").stat().st_mode & 0o077 == 0, "passwords inside"


def test_status_reports_roles_and_replication(shared_lab: LabCluster) -> None:
    result = CliRunner().invoke(main, ["lab", "status", "--dir", str(shared_lab.directory), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    roles = {node["name"]: node["role"] for node in report["mysql"]}
    assert roles == {"db1": "primary", "db2": "replica", "db3": "replica"}
    assert all(node["io_running"] == "Yes" for node in report["mysql"] if node["role"] == "replica")
    assert [m["healthy"] for m in report["etcd"]] == [True, True, True]


def test_down_stops_everything_and_is_safe_twice(tmp_path: Path) -> None:
    directory = tmp_path / "lab"
    lab = LabCluster.up(LabSpec(directory=directory, mysql_count=2, etcd_members=1))
    refs = [n.process for n in lab.mysql] + [m.process for m in lab.etcd]
    assert all(ref.alive() for ref in refs)
    runner = CliRunner()
    first = runner.invoke(main, ["lab", "down", "--dir", str(directory)])
    assert first.exit_code == 0 and "stopped db1, db2, etcd1" in first.output
    assert not any(ref.alive() for ref in refs)
    second = runner.invoke(main, ["lab", "down", "--dir", str(directory)])
    assert second.exit_code == 0 and "nothing was running" in second.output


def test_up_refuses_a_directory_in_use(lab_factory: LabFactory, tmp_path: Path) -> None:
    lab = lab_factory(mysql_count=1, etcd_members=1)
    result = CliRunner().invoke(main, ["lab", "up", "--dir", str(lab.directory)])
    assert result.exit_code == 2
    assert "in use by a running lab" in result.output and "lab down" in result.output
    assert lab.mysql[0].process.alive(), "the running lab must be left alone"


def test_up_refuses_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="--mysql must be between 1 and 9"):
        LabCluster.up(LabSpec(directory=tmp_path / "x", mysql_count=0))


def test_missing_binary_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(MissingBinary) as missing:
        find_binary("etcd-does-not-exist")
    assert str(missing.value).startswith("etcd-does-not-exist not found: install")
    # The whole command, with no server binaries to be found anywhere: one line, no traceback.
    hide_binaries = (
        "import dbfence.lab.binaries as b; b._EXTRA_DIRS = (); "
        "from dbfence.cli import main; main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", hide_binaries, "lab", "up", "--dir", str(tmp_path / "lab")],
        capture_output=True, text=True, env={"PATH": str(tmp_path)}, timeout=60, check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not found: install Debian's" in lines[0], result.stderr


def test_restarted_replica_catches_up(lab_factory: LabFactory) -> None:
    lab = lab_factory(mysql_count=2, etcd_members=1)
    lab.kill_mysql("db2")
    wait_until(lambda: not lab.node("db2").process.alive(), timeout=10, what="db2 to die")
    with lab.connect("db1", account="app") as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE app.t (id INT PRIMARY KEY)")
        cur.execute("INSERT INTO app.t VALUES (1)")
    lab.start_mysql("db2")

    def replicated() -> bool:
        with lab.connect("db2") as conn, conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM app.t")
            row = cur.fetchone()
            return row is not None and row[0] == 1
    wait_until(replicated, timeout=20, what="db2 to catch up after restart")
    assert json.loads((lab.directory / "lab.json").read_text())["mysql"][1]["pid"] == lab.node("db2").pid


def test_a_mysqld_restarted_through_another_copy_of_the_lab_is_the_one_killed_and_never_doubled(
        lab_factory: LabFactory) -> None:
    # An agent's [rejoin] repair restarts its mysqld with `dbfence lab start-mysql`, through a
    # copy of the lab loaded from the manifest: the lab object that started it names a dead pid
    # (seed 101 of the soak: its mysqld-kill signalled that one, and its heal started a second
    # server that failed on the data directory's locks and removed the live one's pid file).
    lab = lab_factory(mysql_count=1, etcd_members=1)
    lab.kill_mysql("db1")
    wait_until(lambda: not lab.node("db1").process.alive(), timeout=10, what="db1 to die")
    restarted = LabCluster.load(lab.directory).start_mysql("db1")
    pid_file = Path(restarted.pid_file)
    with pytest.raises(LabError, match="still running"):
        lab.start_mysql("db1")
    assert pid_file.read_text().strip() == str(restarted.pid)
    assert lab.kill_mysql("db1")
    wait_until(lambda: not restarted.process.alive(), timeout=10, what="the restarted db1 to die")
    assert not lab.kill_mysql("db1")


def test_lifting_a_replicas_delay_keeps_what_it_received_when_its_source_is_gone(
        lab_factory: LabFactory) -> None:
    # The lagging-replica faults' heal (seed 102 of the soak: the laggard held the only other copy
    # of 12 acknowledged writes, and a CHANGE MASTER in GTID mode discarded its relay log).
    lab = lab_factory(mysql_count=2, etcd_members=1)
    delay_replica(lab, "db2", 30)
    with lab.connect("db1", account="app") as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE app.delayed (id INT PRIMARY KEY)")
        cur.execute("INSERT INTO app.delayed VALUES (1), (2), (3)")
        cur.execute("SELECT @@global.gtid_binlog_pos")
        written = cur.fetchone()
    assert written is not None

    def received() -> bool:
        with lab.connect("db2") as conn, conn.cursor(pymysql.cursors.DictCursor) as cur:
            cur.execute("SHOW SLAVE STATUS")
            row = cur.fetchone()
            return row is not None and row["Gtid_IO_Pos"] == written[0]
    wait_until(received, timeout=10, what="db2 to receive every write")
    lab.kill_mysql("db1")
    wait_until(lambda: not lab.node("db1").process.alive(), timeout=10, what="db1 to die")
    delay_replica(lab, "db2", 0)

    def applied() -> bool:
        with lab.connect("db2") as conn, conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'delayed'")
            table = cur.fetchone()
            if table is None or table[0] == 0:
                return False
            cur.execute("SELECT COUNT(*) FROM app.delayed")
            row = cur.fetchone()
            return row is not None and row[0] == 3
    wait_until(applied, timeout=20, what="db2 to apply what it had received")


def test_consul_lab_runs_the_standin(lab_factory: LabFactory) -> None:
    lab = lab_factory(mysql_count=1, dcs="consul")
    data = json.loads((lab.directory / "lab.json").read_text())
    assert data["dcs"]["kind"] == "consul" and data["etcd"] == []
    assert lab.consul is not None and lab.consul.process.alive()
    import consul  # noqa: PLC0415 - the client is only needed here

    host, port = lab.consul.http_address.rsplit(":", 1)
    assert consul.Consul(host=host, port=int(port)).status.leader()
    stopped = lab.down()
    assert "consul-standin" in stopped and not lab.consul.process.alive()
