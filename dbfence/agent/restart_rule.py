"""Whether the agent starts a mysqld that crashed on its own (pure; ``[rejoin]`` not manual).

With ``[rejoin] mode = truncate | rebuild`` the agent owns mysqld's restarts: the fence may SIGKILL
a primary's mysqld so that its in-doubt commits stay removable, and only the repair may start it,
after their copy is saved. systemd's ``Restart=`` of mariadb.service must then be off (it would
start that mysqld within seconds, and its crash recovery would remove them uncopied), so a mysqld
that crashes by itself would stay down for ever unless the agent starts it. The rule:

* a **replica**: its binlog holds nothing the primary lacks, so whatever crash recovery rolls
  back comes again from the primary;
* a **fenced** former primary (or one whose agent restarted since its fence began and passed
  STARTING into REPLICA: its term's record says so), once the binlog files crash recovery reads
  are copied into the state directory (:mod:`dbfence.mysql.binlog_tail`; mysqld is down, so the
  files hold still): recovery cuts its in-doubt commits, never acknowledged, and the copy keeps
  them. The copy needs no primary (it holds every transaction recovery reads); until it is taken,
  or while it fails (no room), mysqld stays down and status says why;
* never the primary (it fails over: its gate's lease and health checks take it out, and its
  in-doubt commits belong to the repair path), nor a node in a role change;
* only a **crash**: mysqld's pid file is left naming a process that is gone. A clean stop
  (``systemctl stop``, ``SHUTDOWN``) removes the pid file: an operator's stop is left alone. But a
  start of the agent's that failed can leave none either (the lab's start command removes the
  stale one before it starts mysqld, and a mysqld aborting in its crash recovery writes none:
  soak seed 443, MariaDB 10.11's recovery refusing a corrupt redo log), and that is
  no operator's stop: while mysqld has not run since, the starts go on with the backoff, and the
  restarter names the cause from mysqld's error log (a datadir that needs a rebuild);
* never a mysqld the fence killed (the repair starts it), never while a repair runs;
* the first start ``FIRST_START_DELAY`` after the crash is seen (short: a lossless promotion
  whose other replica is fenced waits for this node to acknowledge its token; the soak's kill -9
  RTO with a third node fenced was mostly this wait, at 2 s), then with backoff from
  ``FIRST_DELAY``, doubling to ``MAX_DELAY`` while the starts fail (the copies of the binlog's tail
  back off alike). With ``mode = manual`` the agent never starts mysqld: systemd's ``Restart=`` does.
"""

from __future__ import annotations

from dataclasses import dataclass

from dbfence.agent.state import Role

FIRST_START_DELAY = 0.5
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
    tail_saved: bool = False  # the binlog files recovery reads were copied since this crash
    # A fence (or a term as primary) of this node is still pending: an agent restarted since it
    # began passes STARTING into REPLICA, but its mysqld may hold in-doubt commits of that term.
    former_primary: bool = False
    # A start by the agent failed since this crash and mysqld has not run since: its missing pid
    # file is the failed start's (the start removed the stale one, and mysqld aborting in its
    # recovery writes none), not an operator's stop.
    start_failed: bool = False


#: The hold of a fenced node's crashed mysqld until its binlog's tail is copied (the restarter
#: copies it then: :func:`save_tail_first`).
SAVE_TAIL_FIRST = ("crashed while fenced: the binlog files its crash recovery reads are copied first "
                   "(recovery cuts errant transactions that were never acknowledged)")


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
    if not view.pid_file_left and not view.start_failed:
        return "stopped cleanly (no pid file left): an operator's stop is left alone"
    if view.role is Role.FENCED or (view.role is Role.REPLICA and view.former_primary):
        return None if view.tail_saved else SAVE_TAIL_FIRST
    if view.role is not Role.REPLICA:
        return f"crashed while {view.role.value}: not started by the agent"
    return None


def save_tail_first(view: CrashView) -> bool:
    """Whether the binlog's tail is to be copied now, before mysqld may be started."""
    return restart_hold(view) == SAVE_TAIL_FIRST


def next_delay(failed_starts: int) -> float:
    """Seconds to wait before the next start, after ``failed_starts`` failed ones."""
    if failed_starts <= 0:
        return FIRST_START_DELAY
    return min(FIRST_DELAY * 2.0 ** min(failed_starts, 16), MAX_DELAY)
