"""/metrics through prometheus_client: the agent's own series, the gate workers' counters read
from the worker processes at scrape time, and the probes' latest results."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from dbfence.breaker.config import GateConfig
from dbfence.breaker.gate import Gate
from dbfence.discovery.metrics import GateCollector, Metrics, ProbeCollector
from dbfence.lab.echo import EchoBackend
from dbfence.mysql.hysteresis import Health, HysteresisConfig
from dbfence.mysql.verdict import ProbeKind, Reason, Verdict


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse the exposition as Prometheus would: every sample by name and labels."""
    out = {}
    for family in text_string_to_metric_families(metrics.render()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def total(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    return sum(value for (sample, _labels), value in found.items() if sample == name)


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def _refused_once(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        data = sock.recv(1024)  # a blocked gate answers with a MySQL ERR packet and closes
        assert data[4:5] == b"\xff", data


def test_gate_workers_counters_reach_metrics() -> None:
    metrics = Metrics()
    with EchoBackend() as backend, Gate(GateConfig(listen_port=0, workers=2, backend_port=backend.port,
                                                   kernel_forwarding="off")) as gate:
        metrics.add_collector(GateCollector(gate))
        before = samples(metrics)
        assert before[("dbfence_gate_stats_up", ())] == 1
        assert before[("dbfence_gate_state", (("state", "blocking"),))] == 1
        assert {labels for (name, labels) in before if name == "dbfence_gate_worker_up"} == {
            (("worker", "0"),), (("worker", "1"),)}

        for _ in range(6):  # spread over the workers by SO_REUSEPORT
            _refused_once(gate.port)
        wait_for(lambda: total(samples(metrics), "dbfence_gate_connections_refused_total") == 6)

        gate.admit(time.monotonic() + 60)
        links = [socket.create_connection(("127.0.0.1", gate.port), timeout=5) for _ in range(3)]
        try:
            for link in links:
                link.sendall(b"ping")
                assert link.recv(4) == b"ping"
            found = samples(metrics)
            assert found[("dbfence_gate_state", (("state", "admitting"),))] == 1
            # accept() counts every connection, the refused ones too
            assert total(found, "dbfence_gate_connections_accepted_total") == 9
            assert total(found, "dbfence_gate_worker_open_connections") == 3
            gate.block("test")
            wait_for(lambda: total(samples(metrics), "dbfence_gate_connections_cut_total") == 3)
        finally:
            for link in links:
                link.close()
    # A stopped gate: the scrape still answers, and says the workers did not.
    assert samples(metrics)[("dbfence_gate_stats_up", ())] == 0


def test_probe_results() -> None:
    health = Health(HysteresisConfig(trip_after=2)).feed([
        Verdict.passed(ProbeKind.CONNECT, "", 0.002),
        Verdict(ProbeKind.SELECT, False, Reason.QUERY_TIMEOUT, "slow", 0.3),
    ]).feed([Verdict(ProbeKind.SELECT, False, Reason.QUERY_TIMEOUT, "slow", 0.3)])
    metrics = Metrics()
    metrics.add_collector(ProbeCollector(lambda: health))
    found = samples(metrics)
    assert found[("dbfence_probe_ok", (("probe", "connect"),))] == 1
    assert found[("dbfence_probe_ok", (("probe", "select"),))] == 0
    assert found[("dbfence_probe_tripped", (("probe", "select"),))] == 1
    assert found[("dbfence_probe_failures_in_row", (("probe", "select"),))] == 2
    assert found[("dbfence_probe_seconds", (("probe", "select"),))] == 0.3
    assert found[("dbfence_probe_saturated", (("probe", "select"),))] == 0


def test_saturation_and_the_gate_cap_are_exported() -> None:
    full = Verdict.failed(ProbeKind.CONNECTIONS, Reason.TOO_MANY_CONNECTIONS, "200 of 200 in use", 0.01)
    health = Health(HysteresisConfig(trip_after=1)).feed([full])
    metrics = Metrics()
    metrics.add_collector(ProbeCollector(lambda: health))
    with EchoBackend() as backend, Gate(GateConfig(listen_port=0, workers=2, backend_port=backend.port,
                                                   max_connections=1, kernel_forwarding="off")) as gate:
        metrics.add_collector(GateCollector(gate))
        gate.admit(time.monotonic() + 60)
        with socket.create_connection(("127.0.0.1", gate.port), timeout=5) as held:
            held.sendall(b"ping")
            assert held.recv(4) == b"ping"
            _refused_once(gate.port)  # over the cap of one
            found = samples(metrics)
            assert found[("dbfence_probe_saturated", (("probe", "connections"),))] == 1
            assert found[("dbfence_probe_tripped", (("probe", "connections"),))] == 0
            assert found[("dbfence_gate_backend_cap", ())] == 1
            assert found[("dbfence_gate_backend_connections", ())] == 1
            assert total(found, "dbfence_gate_connections_refused_full_total") == 1


def test_value_reads_back_each_kind() -> None:
    metrics = Metrics()
    metrics.inc("actions_total", "Actions.", labels={"action": "promote", "ok": "true"})
    metrics.set("lease_seconds_left", "Left.", 2.5)
    metrics.observe("renew_seconds", "Renewals.", 0.01)
    assert metrics.value("actions_total", {"action": "promote", "ok": "true"}) == 1
    assert metrics.value("lease_seconds_left") == 2.5
    assert metrics.value("renew_seconds") == 1
    assert metrics.value("never_set") is None


def test_clients_cut_for_a_proxy_header_of_their_own_are_counted() -> None:
    metrics = Metrics()
    with EchoBackend() as backend, Gate(GateConfig(listen_port=0, workers=1, backend_port=backend.port,
                                                   kernel_forwarding="off")) as gate:
        metrics.add_collector(GateCollector(gate))
        gate.admit(time.monotonic() + 60)
        with socket.create_connection(("127.0.0.1", gate.port), timeout=5) as sock:
            sock.sendall(b"PROXY TCP4 127.0.0.9 127.0.0.1 4242 3307\r\n")
            assert sock.recv(64) == b""  # cut, nothing echoed
        assert total(samples(metrics), "dbfence_gate_spoofed_headers_total") == 1


def bytes_moved(metrics: Metrics, direction: str) -> float:
    return sum(value for (name, labels), value in samples(metrics).items()
               if name == "dbfence_gate_bytes_total" and ("direction", direction) in labels)


def test_gate_bytes_both_ways_are_counted_and_never_step_back() -> None:
    metrics = Metrics()
    with EchoBackend() as backend, Gate(GateConfig(listen_port=0, workers=2, backend_port=backend.port,
                                                   kernel_forwarding="off")) as gate:
        metrics.add_collector(GateCollector(gate))
        gate.admit(time.monotonic() + 60)
        assert bytes_moved(metrics, "client_to_server") == 0
        links = [socket.create_connection(("127.0.0.1", gate.port), timeout=5) for _ in range(3)]
        try:
            for size, link in zip((1000, 20000, 300000), links, strict=True):
                link.sendall(b"x" * size)
                got = 0
                while got < size:
                    chunk = link.recv(1 << 16)
                    assert chunk
                    got += len(chunk)
            sent = 1000 + 20000 + 300000
            # Open links are counted as they are (the echo answers byte for byte)...
            assert bytes_moved(metrics, "client_to_server") == sent
            assert bytes_moved(metrics, "server_to_client") == sent
            links.pop(0).close()  # one ends by itself,
            wait_for(lambda: total(samples(metrics), "dbfence_gate_worker_open_connections") == 2)
            gate.block("test")  # the others are cut
            wait_for(lambda: total(samples(metrics), "dbfence_gate_connections_cut_total") == 2)
            # ...and ended ones stay counted: a counter never steps back.
            assert bytes_moved(metrics, "client_to_server") == sent
            assert bytes_moved(metrics, "server_to_client") == sent
        finally:
            for link in links:
                link.close()
