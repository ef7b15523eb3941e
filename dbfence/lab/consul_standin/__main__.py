"""``python -m dbfence.lab.consul_standin``: run the Consul stand-in (a test and demo tool) until a signal."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from dbfence.lab.consul_standin.durations import DurationError, parse_duration
from dbfence.lab.consul_standin.model import StandinConfig
from dbfence.lab.consul_standin.server import ConsulStandin


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be a number in {text!r}") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range in {text!r}")
    return host, number


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except DurationError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dbfence.lab.consul_standin",
        description="A Consul stand-in (HTTP API + DNS) for dbfence tests and demos. Not for production.",
    )
    parser.add_argument(
        "--http-addr",
        type=_address,
        default=("127.0.0.1", 8500),
        metavar="HOST:PORT",
        help="HTTP API address (port 0 picks a free one; default 127.0.0.1:8500)",
    )
    parser.add_argument(
        "--dns-addr",
        type=_address,
        default=("127.0.0.1", 8600),
        metavar="HOST:PORT",
        help="DNS address, UDP and TCP (must be the same host as --http-addr; default 127.0.0.1:8600)",
    )
    parser.add_argument("--node", default="standin", help="node name (default standin)")
    parser.add_argument("--datacenter", default="dc1", help="datacenter name (default dc1)")
    parser.add_argument(
        "--node-address", default=None, help="node address in catalog and DNS (default: the HTTP host)"
    )
    parser.add_argument(
        "--acl-token",
        default=None,
        help="require this token (X-Consul-Token header or ?token=); anonymous requests are denied",
    )
    parser.add_argument(
        "--session-ttl-min",
        "--min-ttl",
        dest="session_ttl_min",
        type=_duration,
        default=0.1,
        metavar="DURATION",
        help="smallest session TTL accepted (Consul: 10s; default here 100ms)",
    )
    parser.add_argument(
        "--session-ttl-multiplier",
        type=float,
        default=2.0,
        help="a TTL session is invalidated after TTL x this (Consul: 2, the default)",
    )
    parser.add_argument(
        "--dns-only-passing",
        action="store_true",
        help="DNS omits instances with warning checks too (Consul's dns_config.only_passing)",
    )
    parser.add_argument(
        "--catalog-sync-delay",
        type=_duration,
        default=0.0,
        metavar="DURATION",
        help="a check's status change reaches health, DNS and sessions this late (default 0: at once)",
    )
    parser.add_argument(
        "--tombstone-ttl",
        type=_duration,
        default=900.0,
        metavar="DURATION",
        help="deleted keys' tombstones are reaped this long after the delete (Consul: 15m, the default)",
    )
    parser.add_argument("--verbose", action="store_true", help="log every HTTP request to stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    (http_host, http_port), (dns_host, dns_port) = args.http_addr, args.dns_addr
    if dns_host != http_host:
        print("error: --dns-addr and --http-addr must use the same host", file=sys.stderr)
        return 2
    if args.session_ttl_multiplier < 1:
        print("error: --session-ttl-multiplier must be at least 1", file=sys.stderr)
        return 2
    config = StandinConfig(
        node=args.node,
        datacenter=args.datacenter,
        node_address=args.node_address or http_host,
        acl_token=args.acl_token,
        session_ttl_min=args.session_ttl_min,
        session_ttl_multiplier=args.session_ttl_multiplier,
        dns_only_passing=args.dns_only_passing,
        catalog_sync_delay=args.catalog_sync_delay,
        tombstone_ttl=args.tombstone_ttl,
    )
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        standin = ConsulStandin(
            http_port, dns_port, host=http_host, verbose=args.verbose, config=config
        ).start()
    except OSError as error:
        print(f"error: cannot listen: {error}", file=sys.stderr)
        return 1
    try:
        print(
            f"consul-standin ready http={standin.http_address} dns={standin.dns_address} "
            f"node={config.node} datacenter={config.datacenter} (test and demo tool, not for production)",
            flush=True,
        )
        while not stop.wait(0.5):
            pass
    finally:
        standin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
