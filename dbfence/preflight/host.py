"""Checks of the host itself: secret files, free ports, clock synchronisation."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import socket
import ssl
import stat
import urllib.request
from pathlib import Path

from dbfence.config import AgentConfig, parse_host_port
from dbfence.discovery.api_tls import ApiTls, ApiTlsError
from dbfence.mysql.credentials import load_credentials_file
from dbfence.mysql.errors import CredentialsError
from dbfence.mysql.preflight import LOCAL_SOCKET
from dbfence.preflight.result import Check, fail, ok, warn

_TIME_ERROR = 5  # adjtimex(2): the clock is not synchronised


def _user() -> str:
    try:
        import pwd  # noqa: PLC0415 - POSIX only, and only for a message

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return str(os.geteuid())


def check_credentials(config: AgentConfig) -> list[Check]:
    """The agent reads [client] and [replication]; the file must be 0600 and the agent's own."""
    path = config.mysql.credentials_file
    fix = f"chmod 0600 {path} && chown {_user()} {path} (run dbfence check as the agent's user)"
    checks = []
    for section in ("client", "replication"):
        name = f"credentials [{section}]"
        try:
            credentials = load_credentials_file(path, section)
        except CredentialsError as exc:
            text = str(exc)
            section_fix = fix if "mode" in text or "owned" in text else \
                f"add [{section}] with user = ... and password = ... to {path}"
            checks.append(fail(name, text, section_fix))
            continue
        checks.append(ok(name, f"{path}: user {credentials.user}, mode 0600"))
    return checks


def check_secret_files(config: AgentConfig) -> list[Check]:
    checks = []
    for key, value in (("http.token_file", config.http.token_file),
                       ("dcs.password_file", config.dcs.password_file),
                       ("dcs.acl_token_file", config.dcs.acl_token_file),
                       ("http.tls_key", config.http.tls_key),
                       ("http.tls_client_key", config.http.tls_client_key)):
        if not value:
            continue
        try:
            mode = stat.S_IMODE(Path(value).stat().st_mode)
            Path(value).read_bytes()
        except OSError as exc:
            checks.append(fail(key, f"cannot read {value}: {exc.strerror}",
                               f"create {value} (mode 0600, owned by {_user()}) or empty {key}"))
            continue
        if mode & 0o077:
            checks.append(fail(key, f"{value} has mode {mode:04o}", f"chmod 0600 {value}"))
        else:
            checks.append(ok(key, f"{value}, mode {mode:04o}"))
    return checks


def _own_agent_answers(config: AgentConfig) -> bool:
    """This node's agent is running and answers on http.listen (then its ports are in use by it)."""
    if not config.http.listen:
        return False
    host, port = parse_host_port("http.listen", config.http.listen)
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    context = None
    if config.http.tls_cert:
        # Only asks whether the agent there is this node's: no need to trust its certificate.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(f"{'https' if context else 'http'}://{host}:{port}/status", timeout=1.0,
                                    context=context) as response:
            status = json.loads(response.read())
    except (OSError, ValueError):
        return False
    return isinstance(status, dict) and status.get("node") == config.node.name


def check_api_tls(config: AgentConfig) -> list[Check]:
    """The HTTP API's certificate, key and CA load (the agent refuses to start otherwise)."""
    http = config.http
    if not http.tls_cert:
        return []
    tls = ApiTls(cert=http.tls_cert, key=http.tls_key, ca=http.tls_ca, client_cert=http.tls_client_cert,
                 client_key=http.tls_client_key)
    try:
        tls.server_context()
        tls.client_context()
    except ApiTlsError as exc:
        return [fail("http.tls", str(exc), "fix the file named, or empty http.tls_cert")]
    mode = "mutual TLS: protected endpoints need a client certificate" if tls.mutual else "TLS"
    return [ok("http.tls", f"{http.tls_cert}: {mode}")]


def check_port_free(key: str, listen: str, config: AgentConfig | None = None) -> Check:
    """The agent binds these at start; something already there (an agent?) would stop it."""
    if not listen:
        return ok(key, "off")
    host, port = parse_host_port(key, listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                if config is not None and _own_agent_answers(config):
                    return ok(key, f"{listen} is in use by this node's running agent")
                return fail(key, f"{listen} is already in use (another agent, or another service?)",
                            f"ss -ltnp 'sport = :{port}' shows who; stop it, or change {key}")
            if exc.errno == errno.EADDRNOTAVAIL:
                return fail(key, f"this host has no address {host}", f"{key} = \"<an address of this "
                                                                     f"host>:{port}\"")
            return fail(key, f"cannot bind {listen}: {exc.strerror}")
    return ok(key, f"{listen} is free")


def check_clock() -> Check:
    """Leases run on monotonic time, so an unsynchronised clock only skews history and log
    timestamps: a warning, never a failure."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return warn("clock_sync", "cannot ask the kernel (no libc found)")
    libc = ctypes.CDLL(libc_name, use_errno=True)
    buffer = ctypes.create_string_buffer(512)  # struct timex, modes = 0: read only
    state = libc.adjtimex(buffer)
    if state < 0:
        return warn("clock_sync", f"adjtimex failed: {os.strerror(ctypes.get_errno())}")
    if state == _TIME_ERROR:
        return warn("clock_sync", "the kernel reports the clock as not synchronised (history and "
                                  "log times may be off; leases do not depend on it)",
                    "apt-get install chrony (or enable systemd-timesyncd)")
    return ok("clock_sync", "synchronised (kernel clock state)")


def gate_backend_address(config: AgentConfig) -> str | None:
    """The address mysqld sees the gate's connections come from: ``localhost`` over its Unix
    socket, gate.backend_source when set, else the kernel's choice of source towards mysql.host
    (None if that cannot be told)."""
    if config.mysql.socket:
        return LOCAL_SOCKET
    if config.gate.backend_source:
        return config.gate.backend_source
    try:
        family, _, _, _, address = socket.getaddrinfo(config.mysql.host, config.mysql.port,
                                                      type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(address)  # a datagram socket only picks its route: nothing is sent
            return str(probe.getsockname()[0])
    except (OSError, IndexError):
        return None


def check_backend_source(config: AgentConfig) -> list[Check]:
    """The gate binds its connections to mysqld to gate.backend_source: it must be this host's."""
    source = config.gate.backend_source
    if not source:
        return []
    family = socket.AF_INET6 if ":" in source else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((source, 0))
        except OSError as exc:
            return [fail("gate.backend_source", f"cannot bind {source}: {exc.strerror}",
                         'gate.backend_source = "<an address of this host>" (127.0.0.2 with mysqld on '
                         "loopback)")]
    return [ok("gate.backend_source", f"{source} is an address of this host")]
