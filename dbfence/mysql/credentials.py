"""Database credentials: from a 0600 file or the environment, never argv, never in a log line.

The file uses the MySQL option-file syntax operators already keep in ``~/.my.cnf``::

    [client]
    user = dbfence_agent
    password = s3cret
"""

from __future__ import annotations

import configparser
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dbfence.mysql.errors import CredentialsError


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Credentials(user={self.user!r}, password=<hidden>)"

    __str__ = __repr__


def load_credentials_file(path: str | Path, section: str = "client") -> Credentials:
    """Read ``user`` and ``password`` from ``section`` of an option file readable only by its owner."""
    file = Path(path)
    try:
        info = file.stat()
    except OSError as exc:
        raise CredentialsError(f"cannot read credentials file {file}: {exc.strerror}") from exc
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise CredentialsError(
            f"credentials file {file} has mode {mode:04o}; it must not be readable by group or others "
            f"(chmod 0600 {file})"
        )
    if info.st_uid != os.geteuid():
        raise CredentialsError(
            f"credentials file {file} is owned by uid {info.st_uid}, not by this process (uid {os.geteuid()})"
        )
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(file.read_text(encoding="utf-8"), source=str(file))
    except (OSError, UnicodeDecodeError, configparser.Error):
        # the parser error text can quote a line, which may hold the password: do not chain it
        raise CredentialsError(f"credentials file {file} is not a valid option file") from None
    if not parser.has_section(section):
        raise CredentialsError(f"credentials file {file} has no [{section}] section")
    values = parser[section]
    user = values.get("user", "").strip().strip("'\"")
    password = values.get("password", "").strip().strip("'\"")
    if not user:
        raise CredentialsError(f"credentials file {file} [{section}] has no user")
    if "password" not in values:
        raise CredentialsError(f"credentials file {file} [{section}] has no password")
    return Credentials(user=user, password=password)


def load_credentials_env(prefix: str, environ: Mapping[str, str] | None = None) -> Credentials:
    """Read ``<prefix>_USER`` and ``<prefix>_PASSWORD`` (e.g. ``DBFENCE_MYSQL_USER``)."""
    env = os.environ if environ is None else environ
    user_key, password_key = f"{prefix}_USER", f"{prefix}_PASSWORD"
    user = env.get(user_key, "")
    if not user:
        raise CredentialsError(f"environment variable {user_key} is not set")
    if password_key not in env:
        raise CredentialsError(f"environment variable {password_key} is not set")
    return Credentials(user=user, password=env[password_key])


def load_credentials(
    file: str | Path | None = None,
    env_prefix: str = "DBFENCE_MYSQL",
    section: str = "client",
    environ: Mapping[str, str] | None = None,
) -> Credentials:
    """The file when one is configured, otherwise the environment."""
    if file is not None:
        return load_credentials_file(file, section)
    return load_credentials_env(env_prefix, environ)
