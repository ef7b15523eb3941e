"""A faithful in-process stand-in for the parts of Consul that dbfence uses.

THIS IS A TEST AND DEMO TOOL, NEVER A PRODUCTION PATH. No Consul server can be installed on the
machines dbfence is developed on, so the Consul lock backend, the discovery code and the lab run
against this stand-in; production runs against a real Consul agent.

It implements, with Consul's JSON field names, status codes and documented semantics:

* KV: GET (``raw``, ``recurse``, ``keys``/``separator``), PUT (``flags``, ``cas``, ``acquire``,
  ``release``), DELETE (``recurse``, ``cas``), ``X-Consul-Index`` and blocking ``index``/``wait``;
* sessions: create/renew/destroy/info/list/node, TTLs invalidated after TTL x multiplier (2, as in
  Consul), lock-delay on invalidation (not on ``?release``, at most 60 s), behavior ``release`` and
  ``delete``, bound to ``serfHealth`` unless the body says otherwise (Consul 1.7's decoding), and
  invalidated when a bound check goes critical or the node is deregistered;
* catalog nodes: each with a ``serfHealth`` that can be failed (``catalog/register``, or the
  stand-in's own ``agent/check/fail/serfHealth``), ``catalog/deregister``;
* faults on demand (``PUT /v1/standin/control``): 500 "No cluster leader", 429, tombstone reaping;
* agent services and TTL checks (pass/warn/fail/update, TTL expiry, DeregisterCriticalServiceAfter),
  health and catalog queries (blocking), status and a minimal agent/self;
* an optional ACL token (403 "Permission denied" / "ACL not found");
* DNS over UDP and TCP: A/AAAA/SRV for ``[tag.]service.service.consul``, node and addr names.

Every known difference from real Consul is listed in docs/consul-standin.md.

Run it with ``python -m dbfence.lab.consul_standin --http-addr 127.0.0.1:8500 --dns-addr 127.0.0.1:8600``
or embed it::

    from dbfence.lab.consul_standin import ConsulStandin
    with ConsulStandin(http_port=0, dns_port=0) as standin:
        print(standin.http_address, standin.dns_address)
"""

from dbfence.lab.consul_standin.model import StandinConfig
from dbfence.lab.consul_standin.server import ConsulStandin, StandinNotRunningError

__all__ = ["ConsulStandin", "StandinConfig", "StandinNotRunningError"]
