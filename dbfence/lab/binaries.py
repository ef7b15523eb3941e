"""Finding the server binaries the lab runs, with one clear line when one is missing."""

from __future__ import annotations

import os
import shutil

from dbfence.lab.errors import LabError

# Debian installs the servers in sbin, which a non-root PATH often lacks.
_EXTRA_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/bin")

_PACKAGE_OF = {
    "mariadbd": "mariadb-server",
    "mariadb-install-db": "mariadb-server",
    "etcd": "etcd-server",
    "etcdctl": "etcd-client",
    "haproxy": "haproxy",
    "sysbench": "sysbench",
}


class MissingBinary(LabError):
    """A required program is not installed."""

    def __init__(self, program: str) -> None:
        package = _PACKAGE_OF.get(program, program)
        super().__init__(
            f"{program} not found: install Debian's {package} package "
            f"(apt-get install {package}), or run `make setup`"
        )
        self.program = program


def find_binary(program: str) -> str:
    """Return the absolute path of ``program`` or raise :class:`MissingBinary`."""
    found = shutil.which(program)
    if found:
        return found
    for directory in _EXTRA_DIRS:
        candidate = os.path.join(directory, program)
        if os.access(candidate, os.X_OK):
            return candidate
    raise MissingBinary(program)
