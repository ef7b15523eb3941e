"""contrib/: the alert rules pass promtool (syntax and their unit tests), the dashboard's queries
parse, and every metric either uses is one a real agent's /metrics exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dbfence.lab.agents import AgentTuning
from dbfence.lab.cluster import LabCluster

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "contrib" / "prometheus" / "dbfence-alerts.yml"
RULE_TESTS = ROOT / "contrib" / "prometheus" / "dbfence-alerts.test.yml"
DASHBOARD = ROOT / "contrib" / "grafana" / "dbfence-dashboard.json"
# Exported by agents with the repair command (another change); the rules and the dashboard name
# it already so that they work as soon as the agents export it.
NOT_YET_EXPORTED = {"dbfence_repair_in_progress"}
METRIC = re.compile(r"\bdbfence_[a-z_]+\b")


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (Debian's prometheus package; make setup installs it)")
    return found


def _run(*args: str | Path, cwd: Path) -> str:
    result = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, f"{args}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(queries) >= 10
    return queries


def _rule_queries() -> list[str]:
    found = re.findall(r"^\s+expr: (?:\|\n)?((?:.+\n)+?)(?=\s+(?:for|labels):)", RULES.read_text(), re.M)
    assert len(found) == 9  # every rule's expression
    return list(found)


def test_rules_pass_promtool() -> None:
    promtool = _promtool()
    assert "SUCCESS: 9 rules found" in _run(promtool, "check", "rules", RULES, cwd=RULES.parent)
    assert "SUCCESS" in _run(promtool, "test", "rules", RULE_TESTS, cwd=RULES.parent)


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Each panel's query, with Grafana's variables filled in, as a recording rule promtool checks."""
    promtool = _promtool()
    filled = [query.replace("$__rate_interval", "1m").replace("$__range", "1h").replace("$cluster", ".*")
              for query in _dashboard_queries()]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{index}", "expr": query} for index, query in enumerate(filled)]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    assert f"SUCCESS: {len(filled)} rules found" in _run(promtool, "check", "rules", path, cwd=tmp_path)


def test_the_pending_metrics_are_still_used() -> None:
    used = {name for query in _rule_queries() + _dashboard_queries() for name in METRIC.findall(query)}
    assert used >= NOT_YET_EXPORTED


@pytest.fixture
def agent_metrics(lab_factory: Callable[..., LabCluster]) -> Iterator[set[str]]:
    lab = lab_factory(mysql_count=1, agents=True, agent_tuning=AgentTuning(lossless=False))
    lab.wait_settled(timeout=60)
    with urllib.request.urlopen(f"{lab.agent('db1').http_url}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    yield names


@pytest.mark.timeout(180)
def test_every_metric_used_is_exported(agent_metrics: set[str]) -> None:
    used = {name for query in _rule_queries() + _dashboard_queries() for name in METRIC.findall(query)}
    assert used - NOT_YET_EXPORTED - agent_metrics == set()
    # The gate workers' counters and the probes come from the collectors.
    assert {"dbfence_gate_connections_refused_total", "dbfence_probe_ok", "dbfence_info",
            "dbfence_promotions_total"} <= agent_metrics
