"""Starting and stopping the lab's server processes by pid, never by name."""

from __future__ import annotations

import collections
import contextlib
import os
import random
import signal
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import psutil

from dbfence.lab.wait import WaitTimeout, wait_until


@dataclass(frozen=True, slots=True)
class ProcessRef:
    """A pid plus its start time, so a recycled pid is never mistaken for our server."""

    pid: int
    create_time: float

    @classmethod
    def of(cls, pid: int) -> ProcessRef:
        return cls(pid=pid, create_time=psutil.Process(pid).create_time())

    def process(self) -> psutil.Process | None:
        """The live process, or None if it exited or the pid now belongs to someone else."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > 0.05:
                return None
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except psutil.NoSuchProcess:
            return None

    def alive(self) -> bool:
        return self.process() is not None

    def signal(self, sig: int) -> bool:
        """Send ``sig`` if the process is still ours; return whether it was sent."""
        proc = self.process()
        if proc is None:
            return False
        try:
            proc.send_signal(sig)
        except psutil.NoSuchProcess:
            return False
        return True


def spawn(argv: list[str], log_path: Path, cwd: Path | None = None) -> ProcessRef:
    """Start a server detached from our session, output appended to ``log_path``.

    A new session keeps the servers alive after ``dbfence lab up`` returns and keeps a
    terminal's Ctrl-C from reaching them.
    """
    with open(log_path, "ab") as log:
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )
    return ProcessRef.of(child.pid)


def stop(ref: ProcessRef, *, grace: float = 10.0) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL. Harmless if already gone."""
    proc = ref.process()
    if proc is None:
        return
    if proc.status() == psutil.STATUS_STOPPED:
        ref.signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
    ref.signal(signal.SIGTERM)
    try:
        wait_until(lambda: not ref.alive(), timeout=grace, what=f"pid {ref.pid} to exit")
    except WaitTimeout:
        ref.signal(signal.SIGKILL)
        wait_until(lambda: not ref.alive(), timeout=5.0, what=f"pid {ref.pid} to die")
    _reap(ref.pid)


def _reap(pid: int) -> None:
    """Collect the exit status if the server was our own child, so no zombie is left."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


# Ports for lab servers come from below the kernel's ephemeral range: a port from inside it (what
# bind(0) hands out) can be taken as the source port of any outgoing connection before the server
# binds it (seen: an etcd member failed with "address already in use" in a full test run).
_LISTEN_PORTS = range(20000, 32768)
# Parallel test processes each take a slice of that range (tests/conftest.py sets it per worker),
# so that one never hands out a port another has handed out and not bound yet, or whose server
# it stopped for a while (a fault) and will start again on the same port.
PORTS_ENV = "DBFENCE_LAB_PORTS"
_recently_handed_out: collections.deque[int] = collections.deque(maxlen=4096)
_hand_out = threading.Lock()


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _listen_ports() -> range:
    """The lab's port range: ``$DBFENCE_LAB_PORTS`` (``FIRST-LAST``) when set, else the default."""
    text = os.environ.get(PORTS_ENV, "")
    try:
        first, last = (int(part) for part in text.split("-"))
    except ValueError:
        return _LISTEN_PORTS
    return range(first, last + 1) if 1024 <= first <= last <= 65535 else _LISTEN_PORTS


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` now, outside the ephemeral range and not handed out lately by this
    process (the server it is for binds it a moment later)."""
    ports = _listen_ports()
    top = min(ports.stop, _ephemeral_floor())
    with _hand_out:
        for _ in range(200):
            port = random.randrange(ports.start, top) if top > ports.start else 0
            if port in _recently_handed_out:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    continue
                chosen: int = sock.getsockname()[1]
            _recently_handed_out.append(chosen)
            return chosen
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # a crowded range: the old way
        sock.bind((host, 0))
        fallback: int = sock.getsockname()[1]
        return fallback


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
