"""Typed errors of the lease-lock backends.

Every lock operation either returns a result or raises one of these; none of them
ever answers ``False``. The agent loop treats each as an observation (never as a
reason to crash): a failed renewal simply leaves the previous deadline in place,
and that deadline runs out on its own.
"""

from __future__ import annotations


class LockError(Exception):
    """Base class of every error raised by :mod:`dbfence.locks`."""


class DcsUnreachable(LockError):
    """The DCS could not be asked, or did not answer within the call's timeout.

    The outcome of a write that raised this is UNKNOWN (it may have been applied);
    the backends make their writes safe to repeat, so the caller simply retries
    later. ``endpoint`` names the server that failed last, when known.
    """

    def __init__(self, detail: str, endpoint: str | None = None) -> None:
        self.detail = detail
        self.endpoint = endpoint
        where = f" ({endpoint})" if endpoint else ""
        super().__init__(f"DCS unreachable{where}: {detail}")


class DcsAccessDenied(LockError):
    """The DCS answered but refused our credentials (ACL token, user/password, TLS identity).

    Retrying will not help until the configuration is fixed.
    """

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(f"DCS refused access: {detail}")


class LockLost(LockError):
    """We do not hold what we believed we held.

    Raised by ``renew`` when the lock key no longer belongs to our lease/session
    (released by an operator, overwritten), and by any call that needs the session
    when the session itself is gone (see :class:`SessionExpired`).
    """

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(f"lock lost: {detail}")


class SessionExpired(LockLost):
    """Our lease (etcd) or session (Consul) no longer exists on the server.

    Everything bound to it - the lock and our member record - is gone. Call
    ``open_session()`` again to start over with a new one.
    """


class LockConflict(LockError):
    """Someone else holds the lock (or Consul's lock-delay still protects the key).

    ``holder`` is a short human description of the other holder when known,
    ``token`` its fencing token when known.
    """

    def __init__(self, key: str, detail: str, holder: str | None = None, token: int | None = None) -> None:
        self.key = key
        self.detail = detail
        self.holder = holder
        self.token = token
        super().__init__(f"{key}: {detail}")


class BadData(LockError):
    """A key holds a value we cannot parse. ``key`` is the full DCS key name."""

    def __init__(self, key: str, detail: str) -> None:
        self.key = key
        self.detail = detail
        super().__init__(f"bad data in {key}: {detail}")
