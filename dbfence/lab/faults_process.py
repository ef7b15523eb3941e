"""Process faults: a signal to the primary's mysqld, its agent, or every process of its host.

Each injector takes a :class:`~dbfence.lab.fault_model.FaultContext` and returns the heal that
undoes it (restart after a kill, SIGCONT after a SIGSTOP), registered as a step of the context
once the signal is sent, so that a fault built on top of these (a kill after a lag has built up)
undoes it if its own injection fails later. The rows that use them are in the registry,
:mod:`dbfence.lab.faults`.
"""

from __future__ import annotations

import contextlib
import signal

import psutil

from dbfence.lab.cluster import LabCluster
from dbfence.lab.errors import LabError
from dbfence.lab.fault_model import FaultContext, Heal
from dbfence.lab.procs import ProcessRef
from dbfence.lab.wait import WaitTimeout, wait_until


def _signal_mysqld(ctx: FaultContext, sig: signal.Signals) -> None:
    if not ctx.lab.kill_mysql(ctx.primary, sig):
        raise LabError(f"{ctx.primary}'s mysqld is not running: nothing to send {sig.name} to")


#: With ``[rejoin] truncate | rebuild`` the agent owns mysqld's restarts, as in production, where
#: systemd's ``Restart=`` is off (docs/operations.md): it copies the binlog tail crash recovery
#: reads, then starts mysqld. A heal that started it first raced it, and the node's evidence was
#: then unusable (soak seeds 305 and 411). The heal waits this long for the agent, then starts
#: mysqld itself, as an operator would (its agent down, say).
AGENT_RESTART_WAIT = 60.0


def kill_mysqld(ctx: FaultContext) -> Heal:
    killed = ctx.lab.live_node(ctx.primary).process
    _signal_mysqld(ctx, signal.SIGKILL)
    rejoin = ctx.tuning.rejoin
    return ctx.step(f"killed {ctx.primary}'s mysqld",
                    lambda: _restart_mysqld(ctx.lab, ctx.primary, killed, rejoin))


def _restart_mysqld(lab: LabCluster, name: str, killed: ProcessRef, rejoin: str = "manual") -> None:
    # The killed process, not whichever the manifest names now: its agent may have started another.
    wait_until(lambda: not killed.alive(), timeout=30, what=f"{name}'s killed mysqld to exit")

    def running() -> bool:  # the live one, as the pid file names it now
        return lab.live_node(name).process.alive()
    if rejoin != "manual" and any(agent.name == name for agent in lab.agents):
        with contextlib.suppress(WaitTimeout):
            wait_until(running, timeout=AGENT_RESTART_WAIT, what=f"{name}'s agent to start its mysqld")
    if not running():  # its agent started it already, or not in time
        lab.start_mysql(name)


def stop_mysqld(ctx: FaultContext) -> Heal:
    _signal_mysqld(ctx, signal.SIGSTOP)

    def heal() -> None:
        ctx.lab.kill_mysql(ctx.primary, signal.SIGCONT)  # or its agent replaced it meanwhile
    return ctx.step(f"stopped {ctx.primary}'s mysqld (SIGSTOP)", heal)


def kill_agent(ctx: FaultContext) -> Heal:
    agent = ctx.lab.agent(ctx.primary)
    ctx.lab.kill_agent(ctx.primary, signal.SIGKILL)

    def heal() -> None:
        wait_until(lambda: not agent.process.alive(), timeout=10, what=f"agent {agent.name} to exit")
        ctx.lab.restart_agent(ctx.primary)
    return ctx.step(f"killed {ctx.primary}'s agent", heal)


def stop_agent(ctx: FaultContext) -> Heal:
    # The agent process only: its gate workers keep running and must stop admitting on their own
    # when the lease deadline passes.
    ctx.lab.kill_agent(ctx.primary, signal.SIGSTOP)
    return ctx.step(f"stopped {ctx.primary}'s agent (SIGSTOP)",
                    lambda: ctx.lab.kill_agent(ctx.primary, signal.SIGCONT))


def _host_processes(lab: LabCluster, name: str) -> list[psutil.Process]:
    agent = psutil.Process(lab.agent(name).pid)
    return [psutil.Process(lab.node(name).pid), agent, *agent.children(recursive=True)]


def freeze_host(ctx: FaultContext) -> Heal:
    processes = _host_processes(ctx.lab, ctx.primary)
    frozen: list[psutil.Process] = []

    def heal() -> None:
        for proc in frozen:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGCONT)
    # registered first: one process gone half-way must not leave the others stopped
    thaw = ctx.step(f"stopped {ctx.primary}'s mysqld, agent and gate workers (SIGSTOP)", heal)
    for proc in processes:
        proc.send_signal(signal.SIGSTOP)
        frozen.append(proc)
    return thaw

