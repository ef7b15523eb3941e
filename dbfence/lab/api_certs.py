"""Certificates for the lab agents' HTTP API under mutual TLS (``AgentTuning.api_tls``).

A CA of the lab's own and one certificate per agent, valid for its loopback address, for both
server and client use; made with the ``openssl`` command (EC P-256 keys: quick to make). Test
and demo material only: the keys sit unencrypted in the lab directory.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from dbfence.lab.errors import LabError

CA = "api-ca"


@dataclass(frozen=True, slots=True)
class ApiCertificate:
    cert: Path
    key: Path
    ca: Path


def _openssl(directory: Path, *args: str) -> None:
    try:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60)
    except subprocess.CalledProcessError as exc:
        raise LabError(f"openssl {args[0]} failed: {exc.stderr.decode(errors='replace').strip()}") from None


def api_certificate(directory: Path, name: str, address: str) -> ApiCertificate:
    """``name``'s certificate for ``address`` (an IP address), signed by the lab's API CA (made
    on first use); made once, reused afterwards."""
    if shutil.which("openssl") is None:
        raise LabError("the lab's mutual TLS needs the `openssl` command")
    directory.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    if not (directory / f"{CA}.crt").exists():
        _openssl(directory, "req", "-x509", *ec, "-days", "30", "-subj", "/CN=dbfence lab API CA",
                 "-keyout", f"{CA}.key", "-out", f"{CA}.crt")
    if not (directory / f"{name}.crt").exists():
        (directory / f"{name}.ext").write_text(
            f"subjectAltName=IP:{address}\nextendedKeyUsage=serverAuth,clientAuth\n")
        _openssl(directory, "req", *ec, "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr")
        _openssl(directory, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{CA}.crt", "-CAkey", f"{CA}.key",
                 "-CAcreateserial", "-days", "30", "-extfile", f"{name}.ext", "-out", f"{name}.crt")
        (directory / f"{name}.key").chmod(0o600)
    return ApiCertificate(directory / f"{name}.crt", directory / f"{name}.key", directory / f"{CA}.crt")
