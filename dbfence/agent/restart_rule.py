"""Whether the agent starts a mysqld that crashed on its own (pure; ``[rejoin]`` not manual).

With ``[rejoin] mode = truncate | rebuild`` the agent owns mysqld's restarts: the fence may SIGKILL
a primary's mysqld so that its in-doubt commits stay removable, and only the repair may start it,
after their copy is saved. systemd's ``Restart=`` of mariadb.service must then be off (it would
start that mysqld within seconds, and its crash recovery would remove them uncopied), so a mysqld
that crashes by itself would stay down for ever unless the agent starts it. The rule:

* only a **replica**: its binlog holds nothing the primary lacks, so whatever crash recovery
  rolls back comes again from the primary. Never the primary (it fails over: its gate's lease and
  health checks take it out, and its in-doubt commits belong to the repair path), nor a node in a
  role change, nor a **fenced** former primary (its errant transactions would be removed
  uncopied: it waits for an operator, and status says so);
* only a **crash**: mysqld's pid file is left naming a process that is gone. A clean stop
  (``systemctl stop``, ``SHUTDOWN``) removes the pid file: an operator's stop is left alone;
* never a mysqld the fence killed (the repair starts it), never while a repair runs;
* with backoff: ``FIRST_DELAY`` after the crash is seen, doubling to ``MAX_DELAY`` while the
  starts fail. With ``mode = manual`` the agent never starts mysqld: systemd's ``Restart=`` does.
"""

from __future__ import annotations

from dataclasses import dataclass

from dbfence.agent.state import Role

FIRST_DELAY = 2.0
MAX_DELAY = 60.0


@dataclass(frozen=True, slots=True)
class CrashView:
    """What the adapter sees of the local mysqld this round."""

    mode: str  # [rejoin] mode
    role: Role
    running: bool  # the pid file names a live mysqld
    pid_file_left: bool  # a pid file exists (a crash leaves it, a clean stop removes it)
    killed_by_fence: bool  # the fence SIGKILLed it and nobody started it since
    repair_running: bool
    pid_file_readable: bool = True  # False: the agent may not read it (then "running" is unknown)


def restart_hold(view: CrashView) -> str | None:
    """Why the agent does not start mysqld (None: it should, once the backoff allows)."""
    if view.running:
        return "running"
    if not view.pid_file_readable:
        # Unreadable reads as "not running": a live mysqld would be started again and again.
        return ("its pid file cannot be read by the agent: whether mysqld runs is unknown (give the "
                "agent's user read access to it)")
    if view.mode == "manual":
        return "[rejoin] mode = manual: systemd's Restart= of mariadb.service restarts it"
    if view.killed_by_fence:
        return "killed by the fence: only the repair starts it, after saving what recovery removes"
    if view.repair_running:
        return "a repair is running"
    if not view.pid_file_left:
        return "stopped cleanly (no pid file left): an operator's stop is left alone"
    if view.role is Role.FENCED:
        return ("crashed while fenced: not started by the agent, its crash recovery could remove errant "
                "transactions without a copy; see docs/operations.md")
    if view.role is not Role.REPLICA:
        return f"crashed while {view.role.value}: not started by the agent"
    return None


def next_delay(failed_starts: int) -> float:
    """Seconds to wait before the next start, after ``failed_starts`` failed ones."""
    return min(FIRST_DELAY * 2.0 ** min(failed_starts, 16), MAX_DELAY)
