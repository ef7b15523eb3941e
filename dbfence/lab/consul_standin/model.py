"""The stand-in's data: its configuration, errors, and the records it keeps (KV entries, sessions,
services, checks, catalog nodes), with Consul's field meanings. No behaviour beyond validation."""

from __future__ import annotations

import re
from dataclasses import dataclass

SERF_CHECK_ID = "serfHealth"
PASSING = "passing"
WARNING = "warning"
CRITICAL = "critical"
CHECK_STATUSES = (PASSING, WARNING, CRITICAL)
BEHAVIOR_RELEASE = "release"
BEHAVIOR_DELETE = "delete"
# structs.MaxLockDelay: Consul caps every session's lock-delay at 60 s when it applies it.
MAX_LOCK_DELAY = 60.0

# Newer Consul releases validate KV keys: these characters only, no traversal, and no names ending like
# files a web cache might keep. Honouring the strictest rules keeps dbfence's keys portable.
_KEY_CHARACTERS = re.compile(r"^[A-Za-z0-9,\-_./]*$")
_CACHEABLE_SUFFIXES = frozenset(
    {
        *("js", "css", "html", "htm", "xml", "json", "txt", "log", "php", "asp", "jsp", "cgi", "pl", "py"),
        *("rb", "sh", "exe", "dll", "bat", "cmd", "com", "scr", "vbs", "pdf", "doc", "docx", "xls", "xlsx"),
        *("ppt", "pptx", "zip", "rar", "tar", "gz", "7z", "bz2", "jpg", "jpeg", "png", "gif", "svg", "ico"),
        *("bmp", "mp3", "mp4", "avi", "mov", "wmv", "flv", "swf", "woff", "woff2", "ttf", "eot", "otf"),
    }
)


class StandinError(Exception):
    """An API error with the HTTP status Consul would answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class StandinConfig:
    """Knobs of the stand-in. Defaults mirror Consul unless the field says otherwise."""

    node: str = "standin"
    datacenter: str = "dc1"
    node_address: str = "127.0.0.1"
    domain: str = "consul"
    acl_token: str | None = None
    # Consul's session_ttl_min defaults to 10s; the stand-in defaults low so tests can use short TTLs.
    session_ttl_min: float = 0.1
    session_ttl_max: float = 86400.0
    # Consul's server invalidates a TTL session only after TTL x 2 (a constant there).
    session_ttl_multiplier: float = 2.0
    # Consul's dns_config.only_passing (default false: warning instances are still answered).
    dns_only_passing: bool = False
    # Consul's dns_config.udp_answer_limit.
    dns_udp_answer_limit: int = 3
    # Consul adds up to wait/16 of random jitter to every blocking query.
    blocking_jitter: bool = True
    default_query_wait: float = 300.0
    max_query_wait: float = 600.0
    kv_max_value_size: int = 512 * 1024
    # Seconds before a check's status change made on the agent reaches the servers (catalog, health,
    # DNS, sessions bound to it). Consul's agent triggers that sync at once, and it takes moments; 0 (the
    # default) makes it instant, a test sets a delay to prove that its clients poll instead.
    catalog_sync_delay: float = 0.0
    # Consul's tombstone_ttl (15 min): deleted keys' tombstones keep a prefix's index up until reaped.
    tombstone_ttl: float = 900.0


@dataclass(frozen=True)
class KVEntry:
    key: str
    value: bytes | None
    flags: int
    session: str
    lock_index: int
    create_index: int
    modify_index: int

    def same_content(self, other: KVEntry) -> bool:
        """Consul's DirEntry.Equal: an unchanged write is skipped and keeps its ModifyIndex."""
        return (
            self.key == other.key
            and (self.value or b"") == (other.value or b"")
            and self.flags == other.flags
            and self.session == other.session
            and self.lock_index == other.lock_index
        )


@dataclass(frozen=True)
class Session:
    id: str
    name: str
    node: str
    lock_delay: float
    behavior: str
    ttl_text: str
    ttl: float
    node_checks: tuple[str, ...]
    service_checks: tuple[str, ...]
    create_index: int
    modify_index: int

    @property
    def check_ids(self) -> tuple[str, ...]:
        return self.node_checks + self.service_checks


@dataclass(frozen=True)
class Service:
    id: str
    name: str
    tags: tuple[str, ...]
    address: str
    port: int
    meta: tuple[tuple[str, str], ...]
    enable_tag_override: bool
    weight_passing: int
    weight_warning: int
    create_index: int
    modify_index: int


@dataclass(frozen=True)
class Check:
    id: str
    name: str
    status: str
    notes: str
    output: str
    service_id: str
    service_name: str
    service_tags: tuple[str, ...]
    ttl: float | None
    ttl_text: str
    deregister_critical_after: float | None
    create_index: int
    modify_index: int
    node: str = ""  # "" = the stand-in's own node


@dataclass(frozen=True)
class CatalogNode:
    """A node in the catalog: the stand-in's own, or one registered with /v1/catalog/register."""

    name: str
    address: str
    create_index: int
    modify_index: int


@dataclass(frozen=True)
class CheckDefinition:
    """A TTL check as given to /agent/service/register or /agent/check/register."""

    check_id: str
    name: str
    ttl: float
    ttl_text: str
    status: str
    notes: str
    deregister_critical_after: float | None


@dataclass(frozen=True)
class ServiceDefinition:
    id: str
    name: str
    tags: tuple[str, ...]
    address: str
    port: int
    meta: tuple[tuple[str, str], ...]
    enable_tag_override: bool
    weight_passing: int
    weight_warning: int
    checks: tuple[CheckDefinition, ...]


@dataclass(frozen=True)
class SessionRequest:
    name: str = ""
    node: str | None = None
    lock_delay: float = 15.0
    behavior: str = ""
    ttl_text: str = ""
    node_checks: tuple[str, ...] = (SERF_CHECK_ID,)
    service_checks: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServiceInstance:
    """One catalog row: the service and the checks that decide its health."""

    service: Service
    checks: tuple[Check, ...]

    @property
    def aggregate_status(self) -> str:
        statuses = {c.status for c in self.checks}
        if CRITICAL in statuses:
            return CRITICAL
        if WARNING in statuses:
            return WARNING
        return PASSING


def validate_kv_key(key: str) -> None:
    """Raise a 400 StandinError for a key newer Consul versions reject."""
    if key.startswith("/"):
        raise StandinError(400, "key must not begin with a '/'")
    if not _KEY_CHARACTERS.match(key):
        bad = next(c for c in key if not _KEY_CHARACTERS.match(c))
        raise StandinError(
            400, f"key contains invalid character {bad!r}; allowed are letters, digits and ,-_./"
        )
    if "../" in key:
        raise StandinError(400, "key contains path traversal sequence")
    lowered = key.lower()
    for suffix in _CACHEABLE_SUFFIXES:
        if lowered.endswith("." + suffix):
            raise StandinError(400, f"key ends with file extension '.{suffix}', which Consul refuses")
