"""Two network namespaces for the remote path's tests: a client host and a database host.

The database host runs a stand-in mysqld (``backend``: echoes, counts every byte per peer, and
floods a peer that asks for it) and the agent (``agent``: a real :class:`Gate` with the remote path
on, driven over stdin). The client host is reached from the test through setns'd threads. The
namespaces are named ``dbf-r<id>-...`` (the lab's prefix, so a crashed run's leftovers are found by
``dbfence.lab.netns.remove_leftovers``) and removed, with every process in them, at the end.

Run as a script, this module is the backend (``backend PORT STATE_FILE``) or the agent
(``agent GATE_PORT BACKEND_IP BACKEND_PORT MAX_CONNECTIONS LISTEN_HOST``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = str(Path(__file__).resolve().parents[2])
SUBNET = "10.214.7"
CLIENT_IP, DB_IP = f"{SUBNET}.2", f"{SUBNET}.11"
BACKEND_PORT, GATE_PORT = 3306, 3307
FLOOD = b"FLOOD"  # the backend sends without end, as fast as TCP lets it
TICK = b"TICK"  # the backend sends its CLOCK_MONOTONIC (8 bytes, ns) every 20 ms, on its own


# --- the backend ----------------------------------------------------------------------------------
def run_backend(port: int, state_file: Path) -> None:
    lock = threading.Lock()
    peers: dict[str, dict[str, int]] = {}

    def handle(conn: socket.socket, peer: str) -> None:
        counts = peers[peer]
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                with lock:
                    counts["received"] += len(data)
                if data.startswith(TICK):
                    while True:
                        conn.sendall(struct.pack("=Q", time.monotonic_ns()))  # stamped before it is sent
                        with lock:
                            counts["sent"] += 8
                        time.sleep(0.02)
                if data.startswith(FLOOD):
                    chunk = b"\0" * 65536
                    while True:
                        conn.sendall(chunk)
                        with lock:
                            counts["sent"] += len(chunk)
                conn.sendall(data)
                with lock:
                    counts["sent"] += len(data)
        except OSError:
            return
        finally:
            with lock:
                counts["closed"] = 1
            conn.close()

    def report() -> None:
        while True:
            with lock:
                text = json.dumps(peers)
            temporary = state_file.with_suffix(".tmp")
            temporary.write_text(text)
            temporary.replace(state_file)
            time.sleep(0.02)

    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", port))
    server.listen(128)
    threading.Thread(target=report, daemon=True).start()
    while True:
        conn, address = server.accept()
        peer = f"{address[0]}:{address[1]}"
        with lock:
            peers[peer] = {"received": 0, "sent": 0, "closed": 0}
        threading.Thread(target=handle, args=(conn, peer), daemon=True).start()


# --- the agent --------------------------------------------------------------------------------
def run_agent(gate_port: int, backend_ip: str, backend_port: int, max_connections: int | None,
              listen_host: str) -> None:
    from dbfence.breaker.config import GateConfig  # noqa: PLC0415 (only the agent process needs it)
    from dbfence.breaker.gate import Gate  # noqa: PLC0415

    config = GateConfig(listen_host=listen_host, listen_port=gate_port, backend_host=backend_ip,
                        backend_port=backend_port, workers=1, kernel_forwarding="off", remote_path="on",
                        max_connections=max_connections)
    gate = Gate(config).start()
    drained: dict[str, Any] = {}

    def drain(seconds: float) -> None:
        drained.update(vars(gate.drain(seconds)))
    print(json.dumps({"ready": True, "workers": gate.worker_pids(), "remote_path": gate.remote_path}),
          flush=True)
    for line in sys.stdin:
        command: dict[str, Any] = json.loads(line)
        reply: dict[str, Any] = {}
        if "admit_for" in command:
            deadline = time.monotonic() + float(command["admit_for"])
            gate.admit(deadline)
            reply = {"deadline": deadline}
        elif "block" in command:
            gate.block(str(command["block"]))
        elif "drain" in command:  # in the background: the test acts while it runs
            seconds = float(command["drain"])
            threading.Thread(target=drain, args=(seconds,), daemon=True).start()
        elif "drain_result" in command:  # {} until the drain has ended
            reply = dict(drained)
        elif "stats" in command:
            reply = gate.stats().to_dict()
        elif "stop" in command:
            gate.stop()
            print(json.dumps({"stopped": True}), flush=True)
            return
        print(json.dumps(reply), flush=True)


# --- the test side --------------------------------------------------------------------------------
def _run(*argv: str) -> None:
    subprocess.run(list(argv), check=True, capture_output=True, timeout=30)


class RemoteLab:
    """The two namespaces, the backend and the agent; :meth:`close` removes everything."""

    def __init__(self, directory: Path) -> None:
        tag = f"{os.getpid() % 100000}"
        self.client_ns, self.db_ns = f"dbf-r{tag}-client", f"dbf-r{tag}-db1"
        self.directory = directory
        self.state_file = directory / "backend.json"
        self.backend: subprocess.Popen[bytes] | None = None
        self.agent: subprocess.Popen[str] | None = None
        self.workers: list[int] = []
        self.remote_path = ""
        for namespace in (self.client_ns, self.db_ns):
            _run("ip", "netns", "add", namespace)
            _run("ip", "-n", namespace, "link", "set", "lo", "up")
        _run("ip", "-n", self.client_ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
             "netns", self.db_ns)
        for namespace, address in ((self.client_ns, CLIENT_IP), (self.db_ns, DB_IP)):
            _run("ip", "-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
            _run("ip", "-n", namespace, "link", "set", "eth0", "up")

    def _spawn(self, *args: str, text: bool) -> subprocess.Popen[Any]:
        env = dict(os.environ, PYTHONPATH=ROOT)
        argv = ["ip", "netns", "exec", self.db_ns, sys.executable, "-m", "tests.breaker.remote_lab", *args]
        return subprocess.Popen(argv, env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=text)

    def start_backend(self) -> None:
        self.backend = self._spawn("backend", str(BACKEND_PORT), str(self.state_file), text=False)
        deadline = time.monotonic() + 20
        while not self.state_file.exists():
            if time.monotonic() > deadline or self.backend.poll() is not None:
                raise AssertionError("the backend did not start")
            time.sleep(0.01)

    def start_agent(self, max_connections: int | None = None, listen_host: str = "0.0.0.0") -> None:
        self.agent = self._spawn("agent", str(GATE_PORT), DB_IP, str(BACKEND_PORT), str(max_connections or 0),
                                 listen_host, text=True)
        hello = self._reply()
        self.workers = [int(pid) for pid in hello["workers"]]
        self.remote_path = str(hello["remote_path"])

    def _reply(self) -> dict[str, Any]:
        assert self.agent is not None and self.agent.stdout is not None
        line = self.agent.stdout.readline()
        if not line:
            raise AssertionError(f"the agent exited (code {self.agent.poll()})")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def command(self, **command: Any) -> dict[str, Any]:
        assert self.agent is not None and self.agent.stdin is not None
        self.agent.stdin.write(json.dumps(command) + "\n")
        self.agent.stdin.flush()
        return self._reply()

    def freeze_agent(self, frozen: bool) -> None:
        assert self.agent is not None
        # The agent's own pid: `ip netns exec` execs in place.
        for pid in (self.agent.pid, *self.workers):
            os.kill(pid, signal.SIGSTOP if frozen else signal.SIGCONT)

    def backend_peers(self) -> dict[str, dict[str, int]]:
        peers: dict[str, dict[str, int]] = json.loads(self.state_file.read_text())
        return peers

    def in_db(self, *argv: str) -> str:
        done = subprocess.run(["ip", "netns", "exec", self.db_ns, *argv], capture_output=True, text=True,
                              timeout=30, check=False)
        return done.stdout

    def close(self) -> None:
        for process in (self.agent, self.backend):
            if process is None or process.poll() is not None:
                continue
            os.kill(process.pid, signal.SIGCONT)
            for pid in self.workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for namespace in (self.client_ns, self.db_ns):
            subprocess.run(["ip", "netns", "delete", namespace], capture_output=True, timeout=30, check=False)


if __name__ == "__main__":
    if sys.argv[1] == "backend":
        run_backend(int(sys.argv[2]), Path(sys.argv[3]))
    else:
        run_agent(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]) or None, sys.argv[6])
