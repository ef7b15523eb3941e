"""Network namespaces for the lab, so a fault can cut one host off the network and heal it.

Layout (``<prefix>`` is ``dbf-`` plus a short id of the lab directory)::

    <prefix>-switch   a bridge ``br0``; one veth port per host, named after the host
    <prefix>-client   the application and the lab's own control-plane calls
    <prefix>-dcs      etcd (every member, on its own ports) or the Consul stand-in
    <prefix>-db1 ...  one database host each: its mysqld and its agent

Each host sees one interface, ``eth0``, with one address from a private subnet (10.213.0.0/24
unless the spec says otherwise). Nothing is created in the root namespace: no address, no
link, no rule, so the machine's real network is never touched, and a lab is removed by
deleting its namespaces.

A partition is an nftables table inside the switch namespace that drops the IP traffic
between one host's bridge port and the ports of the hosts it is cut from. Dropping in the
"network" rather than inside the host is what a real partition looks like to both sides:
packets vanish without an error, so every peer waits for its own timeouts; ARP still passes,
so nobody gets a fast "host unreachable" either. Taking a link down would instead make local
sends fail at once with ENETUNREACH, which no real partition does.

The lab's own process lives in the root namespace. It reaches the namespaces' addresses from
threads that joined the client namespace with ``setns(2)``: a network namespace belongs to a
thread, and threads (and sockets) created by such a thread stay in it. :class:`NamespaceRunner`
keeps a few such threads and runs calls on them.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from dbfence.lab.errors import LabError
from dbfence.lab.procs import ProcessRef, stop

P = ParamSpec("P")
R = TypeVar("R")

NAME_PREFIX = "dbf-"
DEFAULT_SUBNET = "10.213.0.0/24"
NETNS_DIR = Path("/run/netns")
CLIENT = "client"
DCS = "dcs"
SWITCH = "switch"
BRIDGE = "br0"
PARTITION_TABLE = "dbfence_partition"  # one table per isolated host: dbfence_partition_db1
_CLONE_NEWNET = 0x40000000


def unavailable_reason() -> str | None:
    """Why this machine cannot run namespaced labs, or None when it can."""
    if os.geteuid() != 0:
        return f"network namespaces need root (running as uid {os.geteuid()})"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"`{tool}` is not on PATH (Debian package {package})"
    return None


@dataclass(frozen=True, slots=True)
class NetnsLayout:
    """Which namespaces a lab owns and every host's address; stored in the lab's manifest."""

    prefix: str
    subnet: str
    addresses: dict[str, str]  # host name (client, dcs, db1...) -> its address

    @property
    def switch(self) -> str:
        return f"{self.prefix}-{SWITCH}"

    @property
    def hosts(self) -> list[str]:
        return list(self.addresses)

    @property
    def namespaces(self) -> list[str]:
        return [self.switch, *(self.namespace(h) for h in self.hosts)]

    def namespace(self, host: str) -> str:
        if host not in self.addresses:
            raise LabError(f"no host {host!r} in the lab's network (have {', '.join(self.addresses)})")
        return f"{self.prefix}-{host}"

    def address(self, host: str) -> str:
        self.namespace(host)  # names the host in the error if it is unknown
        return self.addresses[host]

    def exec_argv(self, host: str, argv: list[str]) -> list[str]:
        """``argv`` run inside the host's namespace. ``ip netns exec`` execs in place, so the pid
        the lab records is the server's own."""
        return ["ip", "netns", "exec", self.namespace(host), *argv]

    def to_json(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "subnet": self.subnet, "addresses": dict(self.addresses)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NetnsLayout:
        return cls(prefix=data["prefix"], subnet=data["subnet"], addresses=dict(data["addresses"]))


def plan(lab_id: str, db_hosts: Iterable[str], subnet: str = DEFAULT_SUBNET) -> NetnsLayout:
    """Addresses for the client (.2), the DCS (.3) and the database hosts (.11, .12, ...)."""
    try:
        network = ipaddress.ip_network(subnet)
    except ValueError as exc:
        raise LabError(f"netns subnet {subnet!r} is not a network: {exc}") from None
    if network.version != 4 or not network.is_private or network.prefixlen > 26:
        raise LabError(f"netns subnet {subnet} must be a private IPv4 network of /26 or larger")
    hosts = [CLIENT, DCS, *db_hosts]
    offsets = [2, 3, *range(11, 11 + len(hosts) - 2)]
    addresses = {host: str(network.network_address + offset)
                 for host, offset in zip(hosts, offsets, strict=True)}
    return NetnsLayout(prefix=f"{NAME_PREFIX}{lab_id}", subnet=str(network), addresses=addresses)


def _run(argv: list[str], *, input_text: str | None = None) -> None:
    done = subprocess.run(argv, input=input_text, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise LabError(f"`{' '.join(argv)}` failed: {done.stderr.strip() or done.stdout.strip()}")


def create(layout: NetnsLayout) -> None:
    """Create every namespace, the bridge and the links; on any failure remove what was made."""
    prefix_len = ipaddress.ip_network(layout.subnet).prefixlen
    try:
        for namespace in layout.namespaces:
            _run(["ip", "netns", "add", namespace])
            _run(["ip", "-n", namespace, "link", "set", "lo", "up"])
        _run(["ip", "-n", layout.switch, "link", "add", "name", BRIDGE, "type", "bridge"])
        _run(["ip", "-n", layout.switch, "link", "set", BRIDGE, "up"])
        for host in layout.hosts:
            namespace = layout.namespace(host)
            # Made inside the switch namespace, the pair never exists in the root namespace.
            _run(["ip", "-n", layout.switch, "link", "add", "name", host, "type", "veth",
                  "peer", "name", "eth0", "netns", namespace])
            _run(["ip", "-n", layout.switch, "link", "set", host, "master", BRIDGE, "up"])
            address = f"{layout.address(host)}/{prefix_len}"
            _run(["ip", "-n", namespace, "addr", "add", address, "dev", "eth0"])
            _run(["ip", "-n", namespace, "link", "set", "eth0", "up"])
    except BaseException:
        remove(layout)
        raise


def existing_namespaces(prefix: str = NAME_PREFIX) -> list[str]:
    """Named network namespaces whose name starts with ``prefix``."""
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=False)
    names = [line.split()[0] for line in done.stdout.splitlines() if line.strip()]
    return sorted(name for name in names if name.startswith(prefix))


def pids_in(namespace: str) -> list[int]:
    done = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, timeout=10,
                          check=False)
    return [int(word) for word in done.stdout.split() if word.isdigit()]


def remove(layout: NetnsLayout) -> list[str]:
    """Delete the lab's namespaces (and with them every link, address and rule in them).

    The lab stops its servers by pid before calling this. A process still inside one of the
    namespaces (left by a crashed run) is ours by construction, and is stopped by its pid
    first, so the namespace really goes away rather than lingering unnamed.
    """
    return _remove_namespaces([n for n in layout.namespaces if n in existing_namespaces(layout.prefix)])


def remove_leftovers(prefix: str = NAME_PREFIX) -> list[str]:
    """Crash-safe cleanup: remove every namespace named ``prefix``..., whatever lab made it."""
    if not prefix.startswith(NAME_PREFIX):
        raise LabError(f"refusing to remove namespaces outside the lab's own {NAME_PREFIX!r} names")
    return _remove_namespaces(existing_namespaces(prefix))


def _remove_namespaces(namespaces: list[str]) -> list[str]:
    for namespace in namespaces:
        for pid in pids_in(namespace):
            if pid == os.getpid():
                continue  # only a thread of ours entered it; setns never moves the whole process
            with contextlib.suppress(Exception):  # it may exit on its own meanwhile
                stop(ProcessRef.of(pid), grace=10.0)
    removed = []
    for namespace in namespaces:
        done = subprocess.run(["ip", "netns", "delete", namespace], capture_output=True, text=True,
                              timeout=10, check=False)
        if done.returncode == 0:
            removed.append(namespace)
    left = [n for n in namespaces if n in existing_namespaces(n)]
    if left:
        raise LabError(f"could not remove network namespaces {', '.join(left)}")
    return removed


# ---------------------------------------------------------------------------- partitions
def _partition_table(host: str) -> str:
    return f"{PARTITION_TABLE}_{host}"


def isolate(layout: NetnsLayout, host: str, *, from_clients: bool = False,
            from_hosts: Iterable[str] | None = None) -> list[str]:
    """Cut ``host`` off from the other hosts; return the hosts it no longer reaches.

    By default the host loses the DCS and every peer but the client namespace still reaches it:
    the hardest case for fencing, because applications keep talking to the old primary's gate
    after it lost its lock. ``from_clients`` cuts the client too; ``from_hosts`` names the hosts
    to cut from explicitly. Isolating an isolated host replaces its cut.
    """
    layout.namespace(host)
    if from_hosts is None:
        others = [h for h in layout.hosts if h != host and (from_clients or h != CLIENT)]
    else:
        others = [h for h in from_hosts if h != host]
        for other in others:
            layout.namespace(other)  # an unknown name is an error, not a silent no-op
    if not others:
        raise LabError(f"isolating {host} from nobody")
    ports = ", ".join(f'"{h}"' for h in others)
    table = _partition_table(host)
    # ARP passes so neighbours stay resolved: IP packets vanish silently, as in a real partition.
    ruleset = f"""
table bridge {table}
delete table bridge {table}
table bridge {table} {{
    chain forward {{
        type filter hook forward priority -100; policy accept;
        ether type arp accept
        iifname "{host}" oifname {{ {ports} }} drop
        iifname {{ {ports} }} oifname "{host}" drop
    }}
}}
"""
    _run(["ip", "netns", "exec", layout.switch, "nft", "-f", "-"], input_text=ruleset)
    return others


def heal(layout: NetnsLayout, host: str) -> None:
    """Undo :func:`isolate`; healing a host that is not isolated does nothing."""
    layout.namespace(host)
    if is_isolated(layout, host):
        _run(["ip", "netns", "exec", layout.switch, "nft", "delete", "table", "bridge",
              _partition_table(host)])


def is_isolated(layout: NetnsLayout, host: str) -> bool:
    done = subprocess.run(["ip", "netns", "exec", layout.switch, "nft", "list", "tables", "bridge"],
                          capture_output=True, text=True, timeout=10, check=False)
    return f"table bridge {_partition_table(host)}" in done.stdout.splitlines()


def isolated_hosts(layout: NetnsLayout) -> list[str]:
    return [h for h in layout.hosts if is_isolated(layout, h)]


# ---------------------------------------------------------------------------- threads in a namespace
def _netns_inode(namespace: str) -> int:
    return os.stat(NETNS_DIR / namespace).st_ino


def current_thread_in(namespace: str) -> bool:
    """Whether the calling thread's network namespace is ``namespace``."""
    return os.stat("/proc/thread-self/ns/net").st_ino == _netns_inode(namespace)


def enter(namespace: str) -> None:
    """Move the calling thread (only it: setns acts per thread) into ``namespace``, for good.

    Call it only on a thread that is never handed back to code expecting the root namespace.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(NETNS_DIR / namespace, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise LabError(f"setns into {namespace} failed: {os.strerror(errno)}")
    finally:
        os.close(fd)


class NamespaceRunner:
    """A few threads living in one namespace; ``call`` runs a function there and returns its result.

    A call made from a thread already in the namespace runs directly, so nested calls cannot
    starve the pool. Threads the function starts inherit the namespace, and so do the sockets
    it opens, which stay usable from any thread afterwards.
    """

    def __init__(self, namespace: str, threads: int = 8) -> None:
        self.namespace = namespace
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"netns-{namespace}",
                                        initializer=enter, initargs=(namespace,))

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        if current_thread_in(self.namespace):
            return fn(*args, **kwargs)
        return self._pool.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

