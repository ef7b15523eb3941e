"""Account safety: the application account must not be able to write through read_only.

On MariaDB 10.11, SUPER and READ ONLY ADMIN (and ALL PRIVILEGES, which includes them) ignore
read_only, so a fenced primary would still take that account's writes. The agent refuses to start
when the application account holds any of them, directly or through a role.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dbfence.mysql.connection import DbConnection, query
from dbfence.mysql.errors import MysqlQueryError, UnsafeAccountError
from dbfence.mysql.flavour import FlavourSql

_GLOBAL_GRANT = re.compile(r"^GRANT (?P<privs>.+?) ON \*\.\* TO ", re.IGNORECASE)
_ROLE_GRANT = re.compile(r"^GRANT (?P<roles>`[^`]+`(?:\s*,\s*`[^`]+`)*) TO ", re.IGNORECASE)
_MAX_ROLE_DEPTH = 5


def _normal(privilege: str) -> str:
    return " ".join(privilege.strip().upper().replace("_", " ").split())


@dataclass(frozen=True)
class UnsafeGrant:
    grantee: str  # user@host, or a role
    privilege: str
    via_role: str | None


def unsafe_global_privileges(grant_lines: list[str], dangerous: frozenset[str]) -> tuple[set[str], list[str]]:
    """From SHOW GRANTS lines: the dangerous global privileges, and the roles granted."""
    wanted = {_normal(p) for p in dangerous}
    found: set[str] = set()
    roles: list[str] = []
    for line in grant_lines:
        match = _GLOBAL_GRANT.match(line)
        if match:
            for privilege in match["privs"].split(","):
                if _normal(privilege) in wanted:
                    found.add(_normal(privilege))
            continue
        role_match = _ROLE_GRANT.match(line)
        if role_match:
            roles.extend(r.strip().strip("`") for r in role_match["roles"].split(","))
    return found, roles


def _grants(conn: DbConnection, grantee_sql: str, params: tuple[str, ...]) -> list[str]:
    return [str(next(iter(row.values()))) for row in query(conn, f"SHOW GRANTS FOR {grantee_sql}", params)]


def find_unsafe_grants(conn: DbConnection, user: str, flavour: FlavourSql) -> list[UnsafeGrant]:
    """Every way ``user`` (any host) can write through read_only; empty when the account is safe."""
    hosts = [
        str(row["host"])
        for row in query(conn, "SELECT Host AS host FROM mysql.user WHERE User = %s", (user,))
    ]
    if not hosts:
        raise UnsafeAccountError(
            f"application account {user!r} does not exist on this server; cannot verify it"
        )
    unsafe: list[UnsafeGrant] = []
    for host in hosts:
        grantee = f"{user}@{host}"
        found, roles = unsafe_global_privileges(
            _grants(conn, "%s@%s", (user, host)), flavour.write_through_read_only_privileges
        )
        unsafe += [UnsafeGrant(grantee, p, None) for p in sorted(found)]
        seen: set[str] = set()
        depth = 0
        while roles and depth < _MAX_ROLE_DEPTH:
            depth += 1
            next_roles: list[str] = []
            for role in roles:
                if role in seen:
                    continue
                seen.add(role)
                try:
                    lines = _grants(conn, "%s", (role,))
                except MysqlQueryError:
                    continue  # a dangling role grant gives nothing
                role_found, nested = unsafe_global_privileges(
                    lines, flavour.write_through_read_only_privileges
                )
                unsafe += [UnsafeGrant(grantee, p, role) for p in sorted(role_found)]
                next_roles += nested
            roles = next_roles
    return unsafe


def check_app_account(conn: DbConnection, user: str, flavour: FlavourSql) -> None:
    """Raise UnsafeAccountError naming every privilege that lets ``user`` write through read_only."""
    unsafe = find_unsafe_grants(conn, user, flavour)
    if unsafe:
        what = ", ".join(
            f"{u.grantee} has {u.privilege}" + (f" (via role {u.via_role})" if u.via_role else "")
            for u in unsafe
        )
        raise UnsafeAccountError(
            f"refusing to start: the application account can write through read_only, so fencing "
            f"could not stop its writes: {what}. Revoke these privileges from the application account."
        )
