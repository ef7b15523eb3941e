"""Pure parts of dbfence.locks: key names, record parsing, settings, TOML config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dbfence.locks import BadData, ClusterKeys, HolderInfo, Intent, LockSettings, MemberRecord, load_config
from dbfence.locks.base import make_grant
from dbfence.locks.model import encode, parse_holder, parse_intent, parse_member


def test_key_layout() -> None:
    keys = ClusterKeys("prod")
    assert keys.leader == "dbfence/prod/leader"
    assert keys.member("db1") == "dbfence/prod/members/db1"
    assert keys.intent == "dbfence/prod/intent"
    assert keys.history_prefix == "dbfence/prod/history/"
    for bad in ("", "a/b", "../x", "with space"):
        with pytest.raises(ValueError):
            ClusterKeys(bad)
        with pytest.raises(ValueError):
            keys.member(bad)


def test_records_round_trip() -> None:
    holder = HolderInfo(node="db1", address="10.0.0.1", gate_port=3307, acquired_at=1700000000.5)
    assert parse_holder("k", encode(holder)) == holder
    record = MemberRecord("db2", "replica", False, ("lag 30s",), "0-1-9", "closed", "1.0", 1700000001.0,
                          gtid_received="0-1-12")
    assert parse_member("k", encode(record), "db2") == record
    # a record from an agent that does not publish what it received reads as "nothing more"
    older = json.loads(encode(record))
    del older["gtid_received"]
    assert parse_member("k", json.dumps(older), "db2").gtid_received == ""
    intent = Intent(paused=True, switchover_target="db3")
    assert parse_intent("k", encode(intent)) == intent


def test_the_api_address_is_one_field_and_old_records_still_read() -> None:
    """Until 0.1 a record carried the HTTP API twice (api_url and http_address): records now
    carry api_url, plus for one release the old key for agents not yet upgraded; a record with
    only the old key (an agent not yet upgraded) reads as http://host:port."""
    record = MemberRecord("db2", "replica", True, api_url="http://10.0.0.2:8008")
    raw = json.loads(encode(record))
    assert raw["api_url"] == "http://10.0.0.2:8008" and raw["http_address"] == "10.0.0.2:8008"
    assert not hasattr(parse_member("k", encode(record), "db2"), "http_address")
    tls = json.loads(encode(MemberRecord("db2", "replica", True, api_url="https://db2.example:8008")))
    assert "http_address" not in tls  # older agents speak plain HTTP only: nothing to tell them
    del raw["api_url"]
    assert parse_member("k", json.dumps(raw), "db2").api_url == "http://10.0.0.2:8008"
    assert parse_member("k", encode(MemberRecord("db2", "replica", True)), "db2").api_url == ""


@pytest.mark.parametrize(
    "raw",
    [None, b"", b"garbage", b"\xff\xfe", b"[]", b"null", b'{"node": "db1"}', b'{"node": 1, "address": "a"}',
     b'{"node": "db1", "address": "a", "gate_port": 99999, "acquired_at": 0}',
     b'{"node": "db1", "address": "a", "gate_port": true, "acquired_at": 0}',
     b'{"node": "a/b", "address": "a", "gate_port": 1, "acquired_at": 0}', b"x" * 70000],
)
def test_garbage_holder_is_bad_data_naming_the_key(raw: bytes | None) -> None:
    with pytest.raises(BadData) as caught:
        parse_holder("dbfence/c/leader", raw)
    assert caught.value.key == "dbfence/c/leader"
    assert "dbfence/c/leader" in str(caught.value)


def test_settings_keep_the_call_timeout_inside_the_margin() -> None:
    LockSettings(ttl=10, margin=3, call_timeout=2)
    for bad in ({"margin": 2, "call_timeout": 2}, {"margin": 10}, {"ttl": 0}, {"lock_delay": -1}):
        with pytest.raises(ValueError):
            LockSettings(**bad)
    grant = make_grant("s", 10, sent_at=100.0, margin=3.0, token=None)
    assert grant.deadline == 107.0 and not grant.holds_lock


def test_config_file(tmp_path: Path) -> None:
    path = tmp_path / "dbfence.toml"
    path.write_text('cluster = "prod"\n[dcs]\nkind = "etcd"\nendpoints = ["http://a:2379", "http://b:2379"]\n')
    loaded = load_config(path)
    assert loaded.cluster == "prod" and loaded.dcs.endpoints == ("http://a:2379", "http://b:2379")
    path.write_text("[dcs]\nkind = 'zookeeper'\nendpoints = ['x']\n")
    with pytest.raises(ValueError, match="kind"):
        load_config(path)
    path.write_text("not toml [")
    with pytest.raises(ValueError, match="TOML"):
        load_config(path)
    with pytest.raises(ValueError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
