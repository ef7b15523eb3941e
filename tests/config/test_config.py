"""Configuration: every mistake is named by its key; the reference doc is generated and current."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from dbfence.cli import main
from dbfence.config import ConfigError, api_url_of, load_config, parse_config
from dbfence.config_docs import reference_markdown, render_config

MINIMAL = """
[cluster]
name = "orders"
[node]
name = "db1"
[mysql]
credentials_file = "/etc/dbfence/credentials.toml"
[dcs]
kind = "etcd"
endpoints = ["http://127.0.0.1:2379"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dbfence.toml"
    path.write_text(text)
    return path


def test_minimal_config_fills_documented_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert config.cluster.name == "orders"
    assert config.gate.listen == "0.0.0.0:3307"
    assert config.http.listen == "127.0.0.1:8008"
    assert config.dcs.ttl == 10.0 and config.renew_interval == 2.0
    assert config.failover.lossless is True


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("[node]\nname = 'db1'\ncolour = 'blue'", "node.colour: unknown setting"),
        ("[nodes]\nname = 'x'", "[nodes]: unknown section"),
        ("[dcs]\nkind = 'zookeeper'\nendpoints = ['x']", "dcs.kind: expected one of etcd, consul"),
        ("[dcs]\nkind = 'etcd'\nendpoints = 'http://x'", "dcs.endpoints: expected a list of strings"),
        ("[dcs]\nkind = 'etcd'\nendpoints = ['x']\nttl = 'ten'", "dcs.ttl: expected a number"),
        ("[dcs]\nkind = 'etcd'\nendpoints = ['x']\nttl = 5\nmargin = 5", "dcs.margin: must be smaller"),
        ("[dcs]\nkind = 'etcd'\nendpoints = []", "dcs.endpoints: at least one"),
        ("[gate]\nlisten = '3307'", "gate.listen: expected host:port"),
        ("[gate]\nworkers = -1", "gate.workers: must be at least 0"),
        ("[gate]\nbackend_source = 'gate-host'", "gate.backend_source: expected an IP address"),
        ("[mysql]\ncredentials_file = 'c'\nsocket = '/run/mysqld/mysqld.sock'\n"
         "[gate]\nbackend_source = '127.0.0.2'", "gate.backend_source: the gate reaches mysqld over"),
        ("[gate]\nproxy_protocol = 'v2'", "gate.proxy_protocol: expected true or false"),
        ("[failover]\nlossless = 'yes'", "failover.lossless: expected true or false"),
        ("[node]\npriority = 5000\nname = 'db1'", "node.priority: must be at most 1000"),
        ("[rejoin]\napproval_ttl = -1", "rejoin.approval_ttl: must be at least 0"),
        ("[rejoin]\napproval_ttl = nan", "rejoin.approval_ttl: expected a number, got nan"),
    ],
)
def test_mistakes_name_the_key_and_the_expected_form(tmp_path: Path, change: str, message: str) -> None:
    # Replace the section being changed, keep the rest valid.
    section = change.split("]", 1)[0] + "]"
    kept = []
    skipping = False
    for line in MINIMAL.splitlines():
        if line.startswith("["):
            skipping = line == section
        if not skipping:
            kept.append(line)
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, "\n".join(kept) + "\n" + change + "\n"))
    assert message in str(error.value)


def test_missing_required_setting_and_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"node\.name: required"):
        parse_config({"cluster": {"name": "c"}, "node": {}, "mysql": {"credentials_file": "f"},
                      "dcs": {"kind": "etcd", "endpoints": ["e"]}})
    with pytest.raises(ConfigError, match=r"\[dcs\]: required section is missing"):
        parse_config({"cluster": {"name": "c"}, "node": {"name": "n"}, "mysql": {"credentials_file": "f"}})


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration"):
        load_config(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[cluster\nname = "))


def test_show_prints_an_equivalent_config(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["config", "show", "--config", str(write(tmp_path, MINIMAL))])
    assert result.exit_code == 0, result.output
    assert "# Lease/session TTL in seconds." in result.output
    original = load_config(write(tmp_path, MINIMAL))
    shown = tmp_path / "shown.toml"
    shown.write_text(result.output)
    assert load_config(shown) == original
    assert render_config(load_config(shown)) == render_config(original)


def test_check_exits_nonzero_with_the_reason(tmp_path: Path) -> None:
    bad = write(tmp_path, MINIMAL.replace('kind = "etcd"', 'kind = "etcd"\nttl = 0'))
    result = CliRunner().invoke(main, ["config", "check", "--config", str(bad)])
    assert result.exit_code == 1
    assert "dcs.ttl: must be at least 1" in result.output


def test_reference_doc_is_current() -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    assert doc.read_text() == reference_markdown(), (
        "docs/configuration.md is stale: run `python -m dbfence.config > docs/configuration.md`")


def test_rejoin_defaults_to_manual_and_truncate_needs_a_pid_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert config.rejoin.mode == "manual" and config.rejoin.approval_ttl == 3600.0
    assert config.rejoin.start_command == ["systemctl", "start", "mariadb.service"]
    with pytest.raises(ConfigError, match=r"mysql.pid_file: required when rejoin.mode"):
        load_config(write(tmp_path, MINIMAL + '[rejoin]\nmode = "truncate"\n'))
    with_pid = MINIMAL.replace("[mysql]\n", '[mysql]\npid_file = "/run/mysqld/mysqld.pid"\n')
    assert load_config(write(tmp_path, with_pid + '[rejoin]\nmode = "truncate"\n')).rejoin.mode == "truncate"
    with pytest.raises(ConfigError, match=r"rejoin.start_command: required"):
        load_config(write(tmp_path, with_pid + '[rejoin]\nmode = "truncate"\nstart_command = []\n'))
    with pytest.raises(ConfigError, match=r"rejoin.mode: expected one of manual, truncate, rebuild, got 'cl"):
        load_config(write(tmp_path, MINIMAL + '[rejoin]\nmode = "clone"\n'))


def test_rebuild_needs_the_api_token_and_names_this_agents_api(tmp_path: Path) -> None:
    with_pid = MINIMAL.replace("[mysql]\n", '[mysql]\npid_file = "/run/mysqld/mysqld.pid"\n')
    with pytest.raises(ConfigError, match=r"http.token_file: rebuild copies the donor"):
        load_config(write(tmp_path, with_pid + '[rejoin]\nmode = "rebuild"\n'))
    api = '[http]\nlisten = "0.0.0.0:8008"\ntoken_file = "/etc/t"\n'
    config = load_config(write(tmp_path, with_pid + '[rejoin]\nmode = "rebuild"\n' + api))
    assert config.rejoin.mode == "rebuild" and config.rejoin.donor_rate_mib == 32
    assert api_url_of(config) == f"http://{config.node.address}:8008"


def test_api_tls_settings_go_together_and_mutual_tls_can_replace_the_token(tmp_path: Path) -> None:
    failsafe = '[failover]\nfailsafe = true\n'
    with pytest.raises(ConfigError, match=r"failover.failsafe: needs http.listen and http.token_file or"):
        load_config(write(tmp_path, MINIMAL + failsafe))
    with pytest.raises(ConfigError, match=r"http.tls_cert: tls_cert and tls_key must be given together"):
        load_config(write(tmp_path, MINIMAL + '[http]\ntls_cert = "/etc/dbfence/api.crt"\n'))
    with pytest.raises(ConfigError, match=r"http.tls_client_cert: tls_client_cert and tls_client_key"):
        load_config(write(tmp_path, MINIMAL + '[http]\ntls_client_key = "/k"\n'))
    with pytest.raises(ConfigError, match=r"http.tls_ca: mutual TLS needs the API's own certificate"):
        load_config(write(tmp_path, MINIMAL + '[http]\ntls_ca = "/etc/dbfence/ca.crt"\n'))
    mutual = ('[http]\nlisten = "0.0.0.0:8008"\ntls_cert = "/etc/dbfence/api.crt"\n'
              'tls_key = "/etc/dbfence/api.key"\ntls_ca = "/etc/dbfence/ca.crt"\n')
    config = load_config(write(tmp_path, MINIMAL + failsafe + mutual))
    assert config.failover.failsafe and not config.http.token_file
    assert api_url_of(config) == f"https://{config.node.address}:8008"  # peers ask it over TLS


def test_one_state_directory_and_the_old_key_still_read(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, MINIMAL)).notices == ()
    old = load_config(write(tmp_path, MINIMAL + '[rejoin]\nstate_dir = "/srv/dbfence"\n'))
    assert old.node.state_dir == "/srv/dbfence"
    assert old.notices == ("rejoin.state_dir is deprecated: it is now node.state_dir (one state directory "
                           "for everything the agent keeps); rename it (this release still reads it)",)
    both = MINIMAL.replace('name = "db1"\n', 'name = "db1"\nstate_dir = "/srv/dbfence"\n')
    same = load_config(write(tmp_path, both + '[rejoin]\nstate_dir = "/srv/dbfence"\n'))
    assert same.node.state_dir == "/srv/dbfence" and "remove it" in same.notices[0]
    with pytest.raises(ConfigError, match=r"rejoin.state_dir: replaced by node.state_dir, which is set to "
                                          r"'/srv/dbfence' while rejoin.state_dir says '/var/lib/x'"):
        load_config(write(tmp_path, both + '[rejoin]\nstate_dir = "/var/lib/x"\n'))
    shown = CliRunner().invoke(main, ["config", "show", "--config", str(write(
        tmp_path, MINIMAL + '[rejoin]\nstate_dir = "/srv/dbfence"\n'))])
    assert shown.exit_code == 0
    assert "warning: rejoin.state_dir is deprecated" in shown.stderr
    assert 'state_dir = "/srv/dbfence"' in shown.stdout and "[rejoin]" in shown.stdout
