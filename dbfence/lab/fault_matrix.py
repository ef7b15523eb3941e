"""The fault matrix over many rounds: :class:`LabPool` reuses a lab while it stays settled and
suits the next fault, :func:`run_matrix` runs each fault a number of times.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from dbfence.lab.agents import AgentTuning
from dbfence.lab.cluster import DcsKind
from dbfence.lab.fault_labs import FaultLab, start_lab
from dbfence.lab.fault_model import Fault
from dbfence.lab.fault_round import RoundResult, run_round


class LabPool:
    """Labs for consecutive rounds: one is reused while the last round left it settled and clean
    and it suits the next fault; otherwise it goes and a fresh one comes. The logs of a round that
    left the lab unsettled are copied to ``keep_logs`` (when given) before its files go."""

    def __init__(self, root: Path, dcs: DcsKind, tuning: AgentTuning, keep_logs: Path | None = None) -> None:
        self.root, self.dcs, self.tuning, self.keep_logs = root, dcs, tuning, keep_logs
        self.current: FaultLab | None = None
        self.started = 0
        self.rounds = 0

    def run(self, fault: Fault, clients: int = 2, recover_timeout: float = 90.0) -> RoundResult:
        current = self.current
        if current is not None and not current.supports(fault):
            self._drop()
        if self.current is None:
            self.started += 1
            # Every lab can take the disk fault when this process may mount a tmpfs (root);
            # a namespaced lab (for partitions) keeps its data on the lab's own scratch space.
            netns = fault.netns
            tuning = dataclasses.replace(self.tuning, failsafe=fault.failsafe)
            self.current = start_lab(self.root / f"lab{self.started}", self.dcs, tuning,
                                     tmpfs=os.geteuid() == 0 and not netns, netns=netns)
        self.rounds += 1
        try:
            result = run_round(self.current, fault, f"app.round{self.rounds}", clients=clients,
                               recover_timeout=recover_timeout)
        except BaseException:
            self._drop(f"round{self.rounds}-{fault.name}")
            raise
        if not result.settled:
            self._drop(f"round{self.rounds}-{fault.name}")
        return result

    def _drop(self, logs_name: str | None = None) -> None:
        if self.current is None:
            return
        if logs_name is not None and self.keep_logs is not None:
            target = self.keep_logs / logs_name
            directory = self.current.lab.directory
            for log in [*directory.glob("agents/*.log"), *directory.glob("db*/error.log")]:
                (target / log.parent.name).mkdir(parents=True, exist_ok=True)
                shutil.copy(log, target / log.parent.name / log.name)
        self.current.down()
        self.current = None

    def close(self) -> None:
        self._drop()


def run_matrix(faults: list[Fault], runs: int, root: Path, dcs: DcsKind, tuning: AgentTuning, *,
               clients: int = 2, keep_logs: Path | None = None,
               report: Callable[[RoundResult], None] = lambda result: None) -> list[RoundResult]:
    """Each fault ``runs`` times, reusing labs as :class:`LabPool` allows."""
    pool = LabPool(root, dcs, tuning, keep_logs)
    results: list[RoundResult] = []
    try:
        for fault in faults:
            for _ in range(runs):
                results.append(pool.run(fault, clients))
                report(results[-1])
    finally:
        pool.close()
    return results

