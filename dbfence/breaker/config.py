"""Settings of a gate."""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import asdict, dataclass
from typing import Any

DEFAULT_GATE_PORT = 3307
# mysqld's compiled-in max_connections: the gate's assumption until it has read the real one (it
# cannot admit before then anyway: admitting needs the probes that read it to pass).
MYSQLD_DEFAULT_MAX_CONNECTIONS = 151
# Backend links the kernel's maps are sized for when max_connections is derived from mysqld's (a
# link that does not fit there is forwarded by its worker).
KERNEL_LINKS_DEFAULT = 4096


class GateConfigError(ValueError):
    """A gate setting is out of range or inconsistent."""


@dataclass(frozen=True)
class GateConfig:
    """Where the gate listens, where ``mysqld`` is, and its limits.

    ``backend_socket`` (a Unix socket path) wins over ``backend_host``/``backend_port`` when set.
    ``workers`` = 0 means one worker process per two CPU cores (at least one): the gate shares its host
    with mysqld, and on a 2-core host one worker needs about a quarter less CPU per query than two
    (benchmarks/README-gate.md, step 5). ``idle_timeout`` = None disables it.

    The workers together hold at most :meth:`backend_cap` connections to mysqld: mysqld's own
    ``max_connections`` less ``reserved_connections`` (kept for the agent, the replicas' IO
    threads, peers' checks and administrators), and no more than ``max_connections`` when that is
    set. A client beyond it gets ERR 1040 and no backend connection is opened for it. A client
    that has not finished its login ``login_timeout`` seconds after it connected is dropped (a TLS
    login counts as finished once it switches to TLS; mysqld's own ``connect_timeout`` bounds the
    rest).

    With ``proxy_protocol`` each backend connection starts with a PROXY protocol header naming the
    client (:mod:`dbfence.breaker.proxy_header`), so mysqld authenticates and shows the client's
    address instead of the gate's. ``backend_source`` is the local address the backend connections
    come from over TCP (None: the kernel's choice): one that only the gate uses, such as 127.0.0.2,
    lets mysqld's ``proxy_protocol_networks`` name just the gate.
    """

    listen_host: str = "127.0.0.1"
    listen_port: int = DEFAULT_GATE_PORT
    backend_host: str = "127.0.0.1"
    backend_port: int = 3306
    backend_socket: str | None = None
    workers: int = 0
    max_connections: int | None = None
    reserved_connections: int = 10
    login_timeout: float = 5.0
    idle_timeout: float | None = None
    connect_timeout: float = 5.0
    # How often each worker re-reads the fence without traffic (cuts idle connections after a
    # lease expiry) and sweeps idle timeouts; the data path checks every chunk regardless.
    tick: float = 0.02
    # How often a worker that holds no connection wakes up (only to notice that the agent is gone,
    # which the control socket and PR_SET_PDEATHSIG also tell it): with no link there is nothing to
    # cut or sweep, and a new connection is checked against the fence when it is accepted. The
    # first admitted link brings the fast tick back at once.
    idle_tick: float = 1.0
    # While draining, a connection is closed once its last reply ended a command outside a
    # transaction and both directions have been quiet this long.
    drain_quiet: float = 0.02
    # "auto": join a logged-in client of this host to mysqld's socket in the kernel when the host
    # can (BPF, root, cgroup v2, TCP to mysqld at an IPv4 address), else forward in the workers;
    # "on": refuse to start without it; "off": never.
    kernel_forwarding: str = "auto"
    proxy_protocol: bool = False
    backend_source: str | None = None
    # Clients on other hosts: "on" = forward their connections to mysqld (backend_host:backend_port,
    # even when backend_socket is set) in the kernel, with no relay, behind a per-packet BPF fence
    # (breaker/passthrough.py), or refuse to start; "auto" = when the host allows it, else the
    # workers relay them; "off" = the workers always relay them.
    remote_path: str = "off"
    # The interfaces remote clients arrive on, comma-separated; "" = every Ethernet interface up.
    remote_interfaces: str = ""

    def __post_init__(self) -> None:
        if self.backend_source is not None:
            if self.backend_socket is not None:
                raise GateConfigError("backend_source applies to TCP to mysqld, not to a Unix socket")
            try:
                ipaddress.ip_address(self.backend_source)
            except ValueError:
                message = f"backend_source must be an IP address: {self.backend_source!r}"
                raise GateConfigError(message) from None
        if self.kernel_forwarding not in ("auto", "on", "off"):
            raise GateConfigError(f"kernel_forwarding must be auto, on or off: {self.kernel_forwarding!r}")
        if self.remote_path not in ("auto", "on", "off"):
            raise GateConfigError(f"remote_path must be auto, on or off: {self.remote_path!r}")
        if not 0 <= self.listen_port < 65536:
            raise GateConfigError(f"listen_port out of range: {self.listen_port}")
        if self.backend_socket is None and not 0 < self.backend_port < 65536:
            raise GateConfigError(f"backend_port out of range: {self.backend_port}")
        if self.workers < 0:
            raise GateConfigError(f"workers must be >= 0 (0 = one per two cores): {self.workers}")
        if self.max_connections is not None and self.max_connections < 1:
            raise GateConfigError(f"max_connections must be >= 1 or None: {self.max_connections}")
        if self.reserved_connections < 0:
            raise GateConfigError(f"reserved_connections must be >= 0: {self.reserved_connections}")
        if not self.login_timeout > 0:
            raise GateConfigError(f"login_timeout must be positive: {self.login_timeout}")
        if self.idle_timeout is not None and self.idle_timeout <= 0:
            raise GateConfigError(f"idle_timeout must be positive or None: {self.idle_timeout}")
        if self.connect_timeout <= 0 or self.tick <= 0 or self.idle_tick <= 0 or self.drain_quiet < 0:
            raise GateConfigError("connect_timeout, tick and idle_tick must be positive, drain_quiet >= 0")

    @property
    def worker_count(self) -> int:
        # The CPUs this process may run on (cgroup/affinity aware), not every CPU of the host. Half
        # of them: mysqld needs the rest, and fewer, busier workers each serve more links per wake-up.
        return self.workers or max(1, len(os.sched_getaffinity(0)) // 2)

    def backend_cap(self, mysqld_max_connections: int | None) -> int:
        """Backend connections the workers may hold together, given mysqld's ``max_connections``
        (None while unknown: its compiled-in default is assumed, unless ``max_connections`` is set)."""
        if mysqld_max_connections is None:
            if self.max_connections is not None:
                return self.max_connections
            mysqld_max_connections = MYSQLD_DEFAULT_MAX_CONNECTIONS
        derived = max(0, mysqld_max_connections - self.reserved_connections)
        return derived if self.max_connections is None else min(self.max_connections, derived)

    @property
    def kernel_links(self) -> int:
        """How many joined links the kernel's maps are sized for."""
        return self.max_connections or KERNEL_LINKS_DEFAULT

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> GateConfig:
        raw: dict[str, Any] = json.loads(text)
        return cls(**raw)
