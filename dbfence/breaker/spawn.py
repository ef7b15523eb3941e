"""Starting a gate worker: forked from the agent, sharing its memory.

A fresh interpreter per worker cost ~14 MB PSS each (issue 18), for modules the agent has already
imported: ``gate.py`` imports the worker's code, asyncio and uvloop. A forked worker shares those
pages with the agent until one of them writes to a page; the objects that exist at the fork are
frozen (``gc.freeze``) so that neither process's collector writes to them.

The child keeps only the descriptors it is handed (and standard output and error), resets the
agent's signal handlers, runs :func:`dbfence.breaker.worker_main.main` and leaves with
``os._exit``: it never returns into the agent's code, its atexit handlers or its threads (a
forked child has only the thread that forked). It dies with the thread that forked it, as a
spawned worker did (``PR_SET_PDEATHSIG``, set by ``worker_main``).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Collection
from typing import Final

from dbfence.breaker import worker_main

PR_SET_NAME: Final = 15
_WAIT_STEP = 0.01  # seconds between looks at a child that is asked to exit


class WorkerProcess:
    """A forked worker, with the part of ``subprocess.Popen``'s interface the gate uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # collected elsewhere: it is gone all the same
                self.returncode = -1
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"gate worker {self.pid}", timeout or 0.0)
            time.sleep(_WAIT_STEP)
        return code

    def kill(self) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


def fork_worker(argv: list[str], keep_fds: Collection[int], name: str) -> WorkerProcess:
    """Fork a worker that runs ``worker_main.main(argv)`` with only ``keep_fds`` open."""
    gc.freeze()  # once frozen, the objects stay out of both collectors: their pages stay shared
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the worker: never return from here
        code = 1
        try:
            _become_worker(keep_fds, name)
            code = worker_main.main(argv)
        except BaseException:  # a worker that cannot start says why; the gate sees it exit
            traceback.print_exc()
        finally:
            os._exit(code)
    return WorkerProcess(pid)


def _become_worker(keep_fds: Collection[int], name: str) -> None:
    for signum in signal.valid_signals():  # the agent's handlers must not run in a worker
        with contextlib.suppress(OSError, ValueError, TypeError):
            if callable(signal.getsignal(signum)):
                signal.signal(signum, signal.SIG_DFL)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    keep = sorted({0, 1, 2, *keep_fds})
    for low, high in zip(keep, [*keep[1:], os.sysconf("SC_OPEN_MAX")], strict=True):
        os.closerange(low + 1, high)  # the agent's sockets, files and pipes are not the worker's
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)  # what ps and top show
