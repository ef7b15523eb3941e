"""``ConsulStandin``: the HTTP API, the DNS listeners and the reaper thread around one shared state."""

from __future__ import annotations

import dataclasses
import threading
from types import TracebackType
from typing import Any

from dbfence.lab.consul_standin.dns_server import ConsulDNS, DNSServers
from dbfence.lab.consul_standin.http_api import ConsulAPI
from dbfence.lab.consul_standin.http_server import StandinHTTPServer, make_http_server
from dbfence.lab.consul_standin.model import StandinConfig
from dbfence.lab.consul_standin.state import StandinState


class StandinNotRunningError(RuntimeError):
    """An address was asked of a stand-in that is not started."""


class ConsulStandin:
    """A TEST AND DEMO stand-in for one Consul agent (which is also its datacenter's only server).

    >>> standin = ConsulStandin(http_port=0, dns_port=0).start()   # port 0: pick a free port
    >>> client = consul.Consul(*standin.http_address.split(":"))
    >>> standin.stop()

    Keyword arguments other than ``host``, ``http_port``, ``dns_port`` and ``verbose`` are
    :class:`StandinConfig` fields (``node``, ``datacenter``, ``acl_token``, ``session_ttl_min``,
    ``session_ttl_multiplier``, ``dns_only_passing``, ...).
    """

    def __init__(
        self,
        http_port: int = 0,
        dns_port: int = 0,
        *,
        host: str = "127.0.0.1",
        verbose: bool = False,
        config: StandinConfig | None = None,
        **config_fields: Any,
    ) -> None:
        base = config or StandinConfig(node_address=host if host not in ("0.0.0.0", "") else "127.0.0.1")
        self.config = dataclasses.replace(base, **config_fields) if config_fields else base
        self.host = host
        self._requested_http_port = http_port
        self._requested_dns_port = dns_port
        self.verbose = verbose
        self.state: StandinState | None = None
        self._http: StandinHTTPServer | None = None
        self._dns: DNSServers | None = None
        self._threads: list[threading.Thread] = []

    # --- lifecycle

    def start(self) -> ConsulStandin:
        """Bind both ports and start serving; returns self once requests are accepted."""
        if self.state is not None:
            return self
        state = StandinState(self.config)
        http = make_http_server(ConsulAPI(state), self.host, self._requested_http_port, self.verbose)
        try:
            dns = DNSServers(ConsulDNS(state), self.host, self._requested_dns_port)
        except OSError:
            http.server_close()
            raise
        self.state, self._http, self._dns = state, http, dns
        self._threads = [
            threading.Thread(target=state.run_reaper, name="consul-standin-reaper", daemon=True),
            threading.Thread(
                target=http.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="consul-standin-http",
                daemon=True,
            ),
        ]
        for thread in self._threads:
            thread.start()
        dns.start()
        return self

    def stop(self) -> None:
        """Stop serving and wake every blocked request; idempotent."""
        state, http, dns = self.state, self._http, self._dns
        if state is None or http is None or dns is None:
            return
        state.stop()
        # Each listener notices shutdown within one poll interval: stop them side by side.
        stoppers = [threading.Thread(target=http.shutdown), threading.Thread(target=dns.stop)]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()
        http.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self.state, self._http, self._dns, self._threads = None, None, None, []

    def __enter__(self) -> ConsulStandin:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    # --- addresses

    @property
    def http_port(self) -> int:
        if self._http is None:
            raise StandinNotRunningError("the Consul stand-in is not started")
        return int(self._http.server_address[1])

    @property
    def dns_port(self) -> int:
        if self._dns is None:
            raise StandinNotRunningError("the Consul stand-in is not started")
        return int(self._dns.port)

    @property
    def http_address(self) -> str:
        """``host:port`` of the HTTP API (what CONSUL_HTTP_ADDR holds)."""
        return f"{self.host}:{self.http_port}"

    @property
    def dns_address(self) -> str:
        """``host:port`` of the DNS interface (UDP and TCP)."""
        return f"{self.host}:{self.dns_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.http_address}"
