"""``dbfence demo``: a newcomer's first look, on real servers, finishing on its own.

Until the agents exist, the demo shows the lab they will run on: a MariaDB primary with two
replicas and an etcd cluster, a row replicated end to end, and a clean teardown.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from pathlib import Path

import click

from dbfence.lab.cli import print_status
from dbfence.lab.cluster import LabCluster, LabSpec
from dbfence.lab.errors import LabError
from dbfence.lab.wait import wait_until


@click.command("demo")
@click.option("--keep", is_flag=True, help="Leave the lab running and print how to stop it.")
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=None,
              help="Where to put the lab (default: a new temporary directory).")
def demo_command(keep: bool, directory: Path | None) -> None:
    """Bring up a local cluster of real servers, show it working, and tear it down."""
    root = directory or Path(tempfile.mkdtemp(prefix="dbfence-demo-"))
    click.echo(f"[demo] starting 3 MariaDB servers and a 3-member etcd cluster in {root}")
    try:
        lab = LabCluster.up(LabSpec(directory=root / "lab", mysql_count=3, etcd_members=3))
    except LabError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        click.echo(f"[demo] lab up in {lab.extra['up_seconds']:.1f}s")
        print_status(lab.status())
        marker = uuid.uuid4().hex[:12]
        started = time.monotonic()
        with lab.connect("db1", account="app") as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS app.demo (marker VARCHAR(32) PRIMARY KEY)")
            cur.execute("INSERT INTO app.demo VALUES (%s)", (marker,))
        for replica in lab.mysql[1:]:
            def arrived(name: str = replica.name) -> bool:
                with lab.connect(name) as conn, conn.cursor() as cur:
                    cur.execute("SELECT 1 FROM app.demo WHERE marker = %s", (marker,))
                    return cur.fetchone() is not None
            wait_until(arrived, timeout=10, what=f"the demo row on {replica.name}")
        click.echo(f"[demo] a row written on db1 reached every replica in "
                   f"{(time.monotonic() - started) * 1000:.0f} ms")
        print_status(lab.status())
    finally:
        if keep:
            click.echo(f"[demo] left running; connection details in {lab.directory / 'lab.json'}")
            click.echo(f"[demo] stop it with: dbfence lab down --dir {lab.directory} --purge")
        else:
            stopped = lab.down()
            click.echo(f"[demo] stopped {', '.join(stopped)}")
            if directory is None:
                shutil.rmtree(root, ignore_errors=True)
