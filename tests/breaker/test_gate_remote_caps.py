"""The remote path under reduced capabilities, as the systemd unit runs the agent.

Each case starts a real gate (remote_path auto or on) in a network namespace the test makes, in a
subprocess whose capabilities are bounded with ``setpriv`` (uid 0 kept: capabilities, not the uid,
are what the kernel checks). ``auto`` must fall back to the workers and say why; ``on`` must refuse.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbfence.breaker.passthrough import probe
from dbfence.lab.netns import unavailable_reason

ROOT = str(Path(__file__).resolve().parents[2])
_MISSING = unavailable_reason() or probe() or (None if shutil.which("setpriv") else "no setpriv")
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=f"cannot run: {_MISSING}")

# Start a gate, print its remote_path, then stop it, or (leave) exit at once without stopping:
# what an agent that dies leaves behind (the filter stays attached). With "seccomp", bpf(2) first
# answers EPERM, as under the unit's SystemCallFilter=@system-service (a classic BPF filter:
# load the syscall number; bpf -> ERRNO(EPERM), anything else -> ALLOW; x86_64 numbers).
_SCRIPT = """
import ctypes, json, os, struct, sys
from dbfence.breaker.config import GateConfig
from dbfence.breaker.gate import Gate, GateError
mode, leave = sys.argv[1], sys.argv[2] == "leave"
if sys.argv[3] == "seccomp":
    code = b"".join(struct.pack("=HBBI", *op) for op in (
        (0x20, 0, 0, 0), (0x15, 0, 1, 321), (0x06, 0, 0, 0x00050000 | 1), (0x06, 0, 0, 0x7FFF0000)))
    program = ctypes.create_string_buffer(code)
    fprog = struct.pack("=HxxxxxxQ", 4, ctypes.addressof(program))
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
    assert libc.prctl(22, 2, ctypes.c_char_p(fprog), 0, 0) == 0, ctypes.get_errno()  # SECCOMP_MODE_FILTER
config = GateConfig(listen_host="0.0.0.0", listen_port=3307, backend_host="10.214.9.11", backend_port=3306,
                    workers=1, kernel_forwarding="off", remote_path=mode)
try:
    gate = Gate(config).start()
except GateError as error:
    print(json.dumps({"error": str(error)}), flush=True)
    sys.exit(0)
print(json.dumps({"remote_path": gate.remote_path}), flush=True)
if leave:
    os._exit(0)
gate.stop()
"""


@pytest.fixture
def namespace() -> Iterator[str]:
    name = f"dbf-r{os.getpid() % 100000}-caps"
    for argv in (["ip", "netns", "add", name],
                 ["ip", "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"],
                 ["ip", "-n", name, "addr", "add", "10.214.9.11/24", "dev", "eth0"],
                 ["ip", "-n", name, "link", "set", "eth0", "up"],
                 ["ip", "-n", name, "link", "set", "eth1", "up"]):
        subprocess.run(argv, check=True, capture_output=True, timeout=30)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=30, check=False)


def start_gate(namespace: str, capabilities: str, mode: str, leave: bool = False,
               seccomp: bool = False) -> dict[str, str]:
    bound = ",".join(["-all", *filter(None, [capabilities])])
    argv = ["ip", "netns", "exec", namespace, "setpriv", f"--bounding-set={bound}", "--",
            sys.executable, "-c", _SCRIPT, mode, "leave" if leave else "stop", "seccomp" if seccomp else "-"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                          env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT)
    assert done.returncode == 0, done.stderr
    reply: dict[str, str] = json.loads(done.stdout.splitlines()[-1])
    return reply


def test_without_bpf_or_net_admin_auto_falls_back_to_the_workers_and_on_refuses(namespace: str) -> None:
    reply = start_gate(namespace, "", "auto")
    assert reply["remote_path"].startswith("off: the remote path needs CAP_BPF and CAP_NET_ADMIN"), reply
    assert "lacks CAP_BPF and CAP_NET_ADMIN" in reply["remote_path"]
    assert "lacks CAP_NET_ADMIN (" in start_gate(namespace, "+bpf", "auto")["remote_path"]
    refused = start_gate(namespace, "", "on")
    assert "remote path unavailable" in refused["error"] and "CAP_BPF" in refused["error"], refused


def test_bpf_and_net_admin_run_it_but_an_earlier_agents_filter_needs_sys_admin(namespace: str) -> None:
    assert start_gate(namespace, "+bpf,+net_admin", "auto") == {"remote_path": "on: eth0,eth1"}
    # An agent that dies leaves its filter attached (its flows stay fenced)...
    assert start_gate(namespace, "+bpf,+net_admin", "on", leave=True) == {"remote_path": "on: eth0,eth1"}
    # ...which only CAP_SYS_ADMIN can inspect and remove: without it, the workers, and why.
    reply = start_gate(namespace, "+bpf,+net_admin", "auto")
    assert reply["remote_path"].startswith("off: ") and "needs CAP_SYS_ADMIN" in reply["remote_path"], reply
    assert start_gate(namespace, "+bpf,+net_admin,+sys_admin", "auto") == {"remote_path": "on: eth0,eth1"}


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the filter uses x86_64 syscall numbers")
def test_a_system_call_filter_that_refuses_bpf_is_named_as_the_reason(namespace: str) -> None:
    reply = start_gate(namespace, "+bpf,+net_admin", "auto", seccomp=True)
    assert reply["remote_path"].startswith("off: "), reply
    assert "SystemCallFilter needs `bpf`" in reply["remote_path"], reply
