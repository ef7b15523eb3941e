"""The gate as the agent sees it: start worker processes, admit, extend, block, drain, read status.

Only this object (in the agent process) writes the shared fence, and its mirror in the kernel
forwarding program's map. Worker processes (and that program) read it before every forwarded chunk,
so :meth:`Gate.extend` is one 8-byte store per copy and :meth:`Gate.block` reaches all workers at
once: the fence word changes first (any chunk after that is refused), then each worker is poked
over its control socket so idle connections are cut too.

Call :meth:`Gate.start` from a thread that lives as long as the gate (the main thread, say): Linux
delivers the workers' parent-death signal when the *thread* that spawned them exits.

The control-socket plumbing to each worker (fork, readiness, pokes, stats round trips) is in
``gate_workers.py``.
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import threading
import time
from dataclasses import replace

from dbfence.breaker.config import GateConfig
from dbfence.breaker.gate_workers import (
    GateError,
    WorkerHandle,
    await_ready,
    collect_reports,
    poke,
    spawn_worker,
)
from dbfence.breaker.kernel import KernelForwarder, KernelForwardingUnavailable
from dbfence.breaker.passthrough import RemotePath
from dbfence.breaker.remote_flows import RemotePathUnavailable
from dbfence.breaker.shared import (
    MAX_WORKERS,
    STATE_ADMITTING,
    STATE_BLOCKING,
    STATE_DRAINING,
    SharedRecord,
    fence_word,
)
from dbfence.breaker.state import (
    Admit,
    Admitting,
    Block,
    Blocking,
    Expire,
    Extend,
    GateState,
    GateStateMachine,
    IllegalTransition,
)
from dbfence.breaker.stats import ConnectionInfo, DrainResult, GateStats
from dbfence.breaker.worker import CTL_BLOCK, CTL_DRAIN, CTL_QUIT
from dbfence.breaker.worker_main import listening_socket

__all__ = ["Gate", "GateError"]  # GateError lives with the worker plumbing that raises it too

_REMOTE_DRAIN_EVERY = 0.1  # seconds between counts of the forwarded flows still open in a drain


class Gate:
    """A running gate: N worker processes proxying ``listen_port`` to the local mysqld."""

    def __init__(self, config: GateConfig) -> None:
        if config.worker_count > MAX_WORKERS:
            raise GateError(f"at most {MAX_WORKERS} workers")
        self.config = config
        self._machine = GateStateMachine("not yet admitted")
        self._lock = threading.RLock()  # transitions and fence writes
        self._control_lock = threading.Lock()  # stats round trips
        self._shared: SharedRecord | None = None
        self._reserved: socket.socket | None = None
        self._workers: list[WorkerHandle] = []
        self._draining = False
        self.port = config.listen_port
        self._kernel: KernelForwarder | None = None
        self._kernel_fence: memoryview | None = None
        # Why links are not forwarded in the kernel ("" when they are), for the status.
        self.kernel_forwarding_off = "not started"
        self.mysqld_max_connections: int | None = None  # as last read from mysqld
        self._remote: RemotePath | None = None
        self._remote_fence: memoryview | None = None
        self.remote_path_off = "not started"
        self._remote_live = 0  # forwarded flows holding mysqld connections, as last counted

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> Gate:
        if self._shared is not None:
            raise GateError("gate already started")
        shared = SharedRecord.create()
        self._shared = shared
        try:
            # Hold the port (bound, not listening) so port 0 resolves once for every worker (and
            # for the kernel's program, which watches connections to it).
            self._reserved = listening_socket(self.config.listen_host, self.config.listen_port)
            self.port = self._reserved.getsockname()[1]
            self._start_kernel_forwarding()
            self._start_remote_path()
            self._write_fence(fence_word(0.0, 0))
            shared.write_status(STATE_BLOCKING, 0, 0.0, 0.0, self._reason())
            self._publish_backend_cap()
            worker_config = replace(self.config, listen_port=self.port)
            # One datagram socket pair per worker for hand-offs: worker i reads the second end,
            # every worker may write to the first one (SCM_RIGHTS, see Worker.route).
            count = worker_config.worker_count
            pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(count)]
            try:
                senders = [pair[0] for pair in pairs]
                kernel_fds = self._kernel.descriptors() if self._kernel is not None else ()
                for index in range(count):
                    handle = spawn_worker(worker_config, index, shared, pairs[index][1], senders, kernel_fds)
                    self._workers.append(handle)
            finally:
                for pair in pairs:
                    pair[0].close()
                    pair[1].close()
            for handle in self._workers:
                await_ready(handle)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_kernel_forwarding(self) -> None:
        config = self.config
        if config.kernel_forwarding == "off":
            self.kernel_forwarding_off = "kernel_forwarding = off"
            return
        if config.backend_socket is not None:
            reason = "mysqld is reached over a Unix socket; kernel forwarding needs TCP"
        elif not _is_ipv4(config.backend_host):
            reason = f"mysqld's address is not an IPv4 address: {config.backend_host}"
        elif config.backend_source is not None and not _is_ipv4(config.backend_source):
            reason = f"backend_source is not an IPv4 address: {config.backend_source}"
        else:
            try:
                self._kernel = KernelForwarder.create(self.port, config.backend_port, config.kernel_links)
            except KernelForwardingUnavailable as error:
                reason = str(error)
            else:
                self._kernel_fence = self._kernel.fence_words()
                self.kernel_forwarding_off = ""
                return
        if config.kernel_forwarding == "on":
            raise GateError(f"kernel forwarding unavailable: {reason}")
        self.kernel_forwarding_off = reason

    def _start_remote_path(self) -> None:
        config = self.config
        if config.remote_path == "off":
            self.remote_path_off = "remote_path = off"
            return
        interfaces = [name.strip() for name in config.remote_interfaces.split(",") if name.strip()]
        try:
            self._remote = RemotePath.create(self.port, config.backend_host, config.backend_port, interfaces,
                                             4 * config.kernel_links)
        except (RemotePathUnavailable, OSError) as error:
            if config.remote_path == "on":
                raise GateError(f"remote path unavailable: {error}") from None
            self.remote_path_off = str(error)
            return
        self._remote_fence = self._remote.fence_words()
        self._remote.on_refresh = self._remote_room
        self.remote_path_off = ""

    @property
    def remote_path(self) -> str:
        """"on: <interfaces>", or "off: why" (for the status)."""
        if self._remote is not None:
            return f"on: {','.join(self._remote.interfaces)}"
        return f"off: {self.remote_path_off}"

    @property
    def kernel_forwarding(self) -> str:
        """"on", or "off: why" (for the status)."""
        return f"off: {self.kernel_forwarding_off}" if self.kernel_forwarding_off else "on"

    def _write_fence(self, word: int) -> None:
        """The one place the fence word changes: the kernel's copies first, then the workers'."""
        if self._remote_fence is not None:
            self._remote_fence[0] = word
        if self._kernel_fence is not None:
            self._kernel_fence[0] = word
        assert self._shared is not None
        self._shared.write_fence(word)

    def stop(self) -> None:
        """Cut everything and stop the workers (by their pids); idempotent."""
        with self._lock:
            if self._shared is not None:
                self._publish_block_locked("gate stopped")
            for handle in self._workers:
                poke(handle, CTL_QUIT)
            for handle in self._workers:
                try:
                    handle.process.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    handle.process.kill()
                    handle.process.wait()
                handle.control.close()
            self._workers = []
            if self._reserved is not None:
                self._reserved.close()
                self._reserved = None
            if self._kernel_fence is not None:
                self._kernel_fence.release()
                self._kernel_fence = None
            if self._kernel is not None:
                self._kernel.close()
                self._kernel = None
            if self._remote is not None:
                self._remote_fence = None  # the path's own view: it releases it
                self._remote.close()  # after the block above: destroys its flows, then detaches
                self._remote = None
            if self._shared is not None:
                self._shared.close()
                self._shared = None

    def __enter__(self) -> Gate:
        return self.start() if self._shared is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def worker_pids(self) -> list[int]:
        return [handle.process.pid for handle in self._workers]

    # --- the backend cap ------------------------------------------------------------------------
    @property
    def backend_cap(self) -> int:
        """Backend connections the workers may hold together (see GateConfig.backend_cap)."""
        return self.config.backend_cap(self.mysqld_max_connections)

    def set_mysqld_max_connections(self, value: int | None) -> bool:
        """mysqld's ``@@max_connections`` as just read (None: unknown, the last value stands).
        Returns True if it differs from the last value. Lowering the cap cuts nobody: new clients
        are refused until enough links have ended."""
        if value is None or value == self.mysqld_max_connections:
            return False
        self.mysqld_max_connections = value
        self._publish_backend_cap()
        return True

    def _publish_backend_cap(self) -> None:
        """The workers' share of the cap: what the kernel's forwarded flows hold is not theirs."""
        if self._shared is not None:
            self._shared.write_backend_cap(max(0, self.backend_cap - self._remote_live))

    def _remote_room(self, live: int) -> int:
        """The remote path's refresh (its thread, every 0.1 s while flows come): count its flows
        against the cap, and say how many more it may forward besides what the workers hold."""
        self._remote_live = live
        self._publish_backend_cap()
        shared = self._shared
        held = shared.backend_slots_held() if shared is not None else 0
        return max(0, self.backend_cap - live - held)

    def backend_connections(self) -> int:
        """Backend connections the workers hold now (slots taken), across every worker."""
        return self._require_started().backend_slots_held()

    # --- the fence ----------------------------------------------------------------------------
    @property
    def state(self) -> GateState:
        """The current state; reading it notices an expired lease and blocks the gate for good."""
        with self._lock:
            before = self._machine.epoch
            state = self._machine.transition(Expire(), time.monotonic())
            if self._machine.epoch != before:
                self._publish_block_locked(self._reason())
            return state

    def admits_now(self) -> bool:
        """Would the workers admit a new client right now (see SharedRecord.admits_now)? Takes
        no lock: HTTP threads answer from it while the agent loop holds the gate."""
        shared = self._shared
        if shared is None:
            return False
        try:
            return shared.admits_now()
        except ValueError:  # stop() released the shared page meanwhile: nothing is admitted
            return False

    def admit(self, deadline: float) -> None:
        """Start admitting until monotonic ``deadline``; raises IllegalTransition unless blocked."""
        with self._lock:
            shared = self._require_started()
            before = self._machine.epoch
            try:
                self._machine.transition(Admit(deadline), time.monotonic())
            except IllegalTransition:
                if self._machine.epoch != before:  # the old lease expired meanwhile
                    self._publish_block_locked(self._reason())
                raise
            epoch = self._machine.epoch
            self._draining = False
            shared.write_status(STATE_ADMITTING, epoch, 0.0, deadline, "")
            self._write_fence(fence_word(deadline, epoch))
            if self._remote is not None:
                self._remote.follow_cap(recount=True)
                self._remote.accept_new(True)
            if epoch != before:
                # A lapsed lease ended the old epoch inside this call: cut its links now.
                for handle in self._workers:
                    poke(handle, CTL_BLOCK)
                if self._remote is not None:
                    self._remote.cut()

    def extend(self, deadline: float) -> None:
        """Renew: move the deadline (one store per copy of the fence). Raises if blocked or expired."""
        with self._lock:
            self._require_started()
            before = self._machine.epoch
            try:
                self._machine.transition(Extend(deadline), time.monotonic())
            except IllegalTransition:
                if self._machine.epoch != before:
                    self._publish_block_locked(self._reason())
                raise
            self._write_fence(fence_word(deadline, before))

    def block(self, reason: str) -> None:
        """Stop admitting and cut every connection in every worker; keeps the first reason."""
        with self._lock:
            self._require_started()
            before = self._machine.epoch
            self._machine.transition(Block(reason), time.monotonic())
            if self._machine.epoch != before or self._draining:
                self._publish_block_locked(self._reason())

    def drain(self, seconds: float) -> DrainResult:
        """Switchover: refuse new clients, close each link between transactions, cut the rest after
        ``seconds``; the gate ends blocked ("drained for switchover"). Flows of the remote path
        are waited for until their clients close them, then cut with the rest."""
        started = time.monotonic()
        with self._lock:
            shared = self._require_started()
            epoch_before = self._machine.epoch
            state = self._machine.transition(Expire(), started)
            if self._machine.epoch != epoch_before:
                self._publish_block_locked(self._reason())
            if not isinstance(state, Admitting):
                raise IllegalTransition(f"cannot drain a blocked gate ({self._reason()})")
            self._draining = True
            if self._remote is not None:
                self._remote.accept_new(False)  # new remote clients go to the workers, which refuse
            shared.write_status(STATE_DRAINING, self._machine.epoch, started + seconds, state.deadline, "")
            remote = self._remote
            forwarded = remote.passthrough_live() if remote is not None else 0
            before = shared.open_total(len(self._workers)) + forwarded
            for handle in self._workers:
                poke(handle, CTL_DRAIN)
        end = started + seconds
        # Forwarded flows run on until their clients close them (the kernel cannot see a
        # transaction's end), counted from the filter's map a few times a second: it is a walk.
        next_count = time.monotonic() + _REMOTE_DRAIN_EVERY
        while time.monotonic() < end and (forwarded > 0 or shared.open_total(len(self._workers)) > 0):
            time.sleep(0.005)
            if remote is not None and forwarded > 0 and time.monotonic() >= next_count:
                forwarded = remote.passthrough_live()
                next_count = time.monotonic() + _REMOTE_DRAIN_EVERY
        with self._lock:
            if remote is not None:
                forwarded = remote.passthrough_live()
            left = shared.open_total(len(self._workers)) + forwarded
            self._machine.transition(Block("drained for switchover"), time.monotonic())
            self._publish_block_locked(self._reason())  # cuts the forwarded flows still open
        elapsed = time.monotonic() - started
        return DrainResult(closed_gracefully=max(0, before - left), cut=left, seconds=elapsed)

    def _publish_block_locked(self, reason: str) -> None:
        shared = self._shared
        assert shared is not None
        epoch = self._machine.epoch
        self._write_fence(fence_word(0.0, epoch))  # first: no chunk passes from here on
        if self._remote is not None:
            self._remote.accept_new(False)
        shared.write_status(STATE_BLOCKING, epoch, 0.0, 0.0, reason)
        self._draining = False
        for handle in self._workers:
            poke(handle, CTL_BLOCK)
        if self._remote is not None:
            self._remote.cut()  # the filter already drops their packets; this sends the RSTs

    def _reason(self) -> str:
        state = self._machine.state
        return state.reason if isinstance(state, Blocking) else ""

    def _require_started(self) -> SharedRecord:
        if self._shared is None:
            raise GateError("gate not started")
        return self._shared

    # --- status -------------------------------------------------------------------------------
    def open_connections(self) -> int:
        """Client connections through the gate now, read without waking a worker: the count each
        worker keeps in its shared slot (its links, and sockets handed to it not yet adopted)
        plus the remote path's forwarded flows. The decision loop reads this every round;
        :meth:`stats` asks every worker for its report, so it is left to status and scrapes."""
        shared = self._require_started()
        remote = self._remote
        forwarded = sum(1 for flow in remote.flows() if flow.passthrough) if remote is not None else 0
        return shared.open_total(len(self._workers)) + forwarded

    def stats(self) -> GateStats:
        state = self.state
        shared = self._require_started()
        with self._control_lock:
            reports = collect_reports(self._workers, shared)
        workers = reports.workers
        connections = reports.connections
        remote = self._remote
        for flow in remote.flows() if remote is not None else ():
            if flow.passthrough:
                connections.append(ConnectionInfo(-1, f"{flow.client[0]}:{flow.client[1]}", 0.0, flow.idle,
                                                  0, 0, 0, "remote-kernel"))
        if isinstance(state, Admitting):
            name = "draining" if self._draining else "admitting"
            reason, left = "", state.deadline - time.monotonic()
        else:
            name, reason, left = "blocking", state.reason, None
        return GateStats(
            state=name,
            reason=reason,
            deadline_in=left,
            epoch=self._machine.epoch,
            open_connections=sum(worker.open_connections for worker in workers)
            + sum(1 for row in connections if row.forwarding == "remote-kernel"),
            workers=tuple(workers),
            connections=tuple(connections),
            kernel_forwarding=self.kernel_forwarding,
            backend_cap=self.backend_cap,
            backend_connections=shared.backend_slots_held(),
            refused_full=reports.refused_full,
            login_timeouts=reports.login_timeouts,
            spoofed_headers=reports.spoofed_headers,
            remote_path=self.remote_path,
        )


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True
