"""Labs for the fault matrix: a :class:`FaultLab` (a lab plus the tmpfs mounts it needs),
started by :func:`start_lab` on :func:`scratch_space`, and removed whole afterwards.
:func:`move_datadir_to_tmpfs` (the disk-full fault's small disk) serves the soak's labs too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dbfence.lab import mariadb_servers
from dbfence.lab.agents import AgentTuning
from dbfence.lab.cluster import DcsKind, LabCluster, LabSpec
from dbfence.lab.fault_model import Fault, exited
from dbfence.lab.wait import wait_until


@dataclass
class FaultLab:
    """A lab for the matrix; ``mounts`` are tmpfs mounts to remove after ``lab.down()``."""

    lab: LabCluster
    tuning: AgentTuning
    mounts: list[Path] = field(default_factory=list)
    rounds: int = 0

    def supports(self, fault: Fault) -> bool:
        if self.lab.dcs_kind not in fault.dcs or len(self.lab.etcd) < fault.etcd_members:
            return False
        if fault.netns != (self.lab.netns is not None) or fault.failsafe != self.tuning.failsafe:
            return False
        return not fault.tmpfs or any(str(m) == self.lab.node(p).datadir
                                      for m in self.mounts for p in self.lab.primaries())

    def down(self) -> None:
        """Stop the lab, unmount its tmpfs and remove its files: labs are large and disks are not."""
        try:
            LabCluster.load(self.lab.directory).down()
        finally:
            for mount in self.mounts:
                subprocess.run(["umount", str(mount)], check=False, capture_output=True)
            shutil.rmtree(self.lab.directory, ignore_errors=True)


@contextlib.contextmanager
def scratch_space(directory: Path, size: str = "3g") -> Iterator[Path]:
    """A tmpfs for the matrix's labs when we may mount one (root), so that no lab fills the
    shared disk; otherwise the directory as it is. Removed afterwards either way."""
    directory.mkdir(parents=True, exist_ok=True)
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
        check=False, capture_output=True).returncode == 0
    try:
        yield directory
    finally:
        if mounted:
            subprocess.run(["umount", str(directory)], check=False, capture_output=True)
        shutil.rmtree(directory, ignore_errors=True)


def start_lab(directory: Path, dcs: DcsKind, tuning: AgentTuning, *, tmpfs: bool = False,
              tmpfs_size: str = "1g", netns: bool = False) -> FaultLab:
    """3 MariaDB + 3 etcd (or the Consul stand-in) + agents. With ``tmpfs``, db1's data directory
    (the first primary's) is moved onto a tmpfs of its own before the agents start, so that it
    can be filled without touching the disk (the agents want 512 MiB free: hence 1 GiB)."""
    lab = LabCluster.up(LabSpec(directory=directory, mysql_count=3, dcs=dcs,
                                etcd_members=3 if dcs == "etcd" else 1, agents=not tmpfs,
                                agent_tuning=tuning, netns=netns))
    fault_lab = FaultLab(lab, tuning)
    if not tmpfs:
        return fault_lab
    try:
        move_datadir_to_tmpfs(lab, lab.mysql[0].name, tmpfs_size, fault_lab.mounts)
        # Every mysqld starts read-only: open db1 again, as the lab left it for the agents.
        mariadb_servers.open_for_writes(lab.mysql[0], lab.accounts["agent"])
        lab.start_agents(tuning)
    except BaseException:
        fault_lab.down()
        raise
    return fault_lab


def move_datadir_to_tmpfs(lab: LabCluster, name: str, size: str, mounts: list[Path]) -> None:
    """Stop ``name``'s mysqld, move its data directory onto a tmpfs of its own (root only) and
    start it again (read-only, as every mysqld starts). The mount joins ``mounts`` as soon as it
    exists, so that whoever cleans up after a failure unmounts it (after ``lab.down()``)."""
    node = lab.node(name)
    lab.kill_mysql(name, signal.SIGTERM)
    wait_until(exited(node.process.alive), timeout=60, what=f"{name} to stop")
    datadir = Path(node.datadir)
    on_disk = datadir.with_name("data.disk")
    datadir.rename(on_disk)
    datadir.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(datadir)],
                   check=True, capture_output=True)
    mounts.append(datadir)
    shutil.copytree(on_disk, datadir, dirs_exist_ok=True)
    shutil.rmtree(on_disk)
    lab.start_mysql(name)
