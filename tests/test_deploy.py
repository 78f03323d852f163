"""deploy/: the alerting rules and the Grafana dashboard, against the app's real /metrics.

* every series the rules, their promtool tests and the dashboard name is one the app
  exports (scraped from the app on the real Redis);
* ``promtool check rules`` and ``promtool test rules`` pass (promtool is required: .ci/run
  installs Debian's ``prometheus``, which brings it);
* every alert has a ``for``, a severity and its summary, description and runbook, and is
  tested firing and quiet;
* the dashboard loads, every panel has a title and a query, and its queries parse.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "cio-relay.json"

METRIC_NAME = re.compile(r"\bcio_relay_[a-z_]+")
# The series of Redis itself: no direction label.
SHARED_SERIES = ("cio_relay_redis_memory_used_bytes", "cio_relay_redis_memory_max_bytes")
# The sample names of a family, by its type (the family of a counter is named without
# _total by the parser).
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
}


def rule_expressions(text: str) -> list[str]:
    """Every ``expr:`` of a rules file: a one-line value or a block (| or >) below it."""
    lines = text.splitlines()
    found = []
    index = 0
    while index < len(lines):
        match = re.match(r"^(\s*)(?:- )?expr:\s*(.*)$", lines[index])
        index += 1
        if not match:
            continue
        indent, value = len(match.group(1)), match.group(2).strip()
        if value[:1] in ("|", ">"):
            block = []
            while index < len(lines) and (
                not lines[index].strip() or len(lines[index]) - len(lines[index].lstrip()) > indent
            ):
                block.append(lines[index].strip())
                index += 1
            found.append("\n".join(block).strip())
        elif len(value) > 1 and value[0] in "'\"" and value[-1] == value[0]:
            found.append(value[1:-1])
        else:
            found.append(value)
    return found


def alert_blocks(text: str) -> dict[str, str]:
    """Each alerting rule's text, by its name."""
    parts = re.split(r"^\s*- alert:\s*", text, flags=re.MULTILINE)[1:]
    return {part.split("\n", 1)[0].strip(): part for part in parts}


def dashboard_targets(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [target for panel in dashboard["panels"] for target in panel.get("targets", [])]


def exported_names(metrics_text: str) -> set[str]:
    """The sample names of every family /metrics declares, with or without samples yet
    (the retried and dead-lettered counters have none before their first reason)."""
    names = set()
    for family in text_string_to_metric_families(metrics_text):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


def require_promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: the alerting rules cannot be checked. "
                    "Install Debian's prometheus package (apt-get install prometheus), as "
                    ".ci/run does.")
    return promtool


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_promtool(), *args], capture_output=True, text=True,
                          timeout=120, check=False, cwd=ROOT)


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


# -- (a) the series they name are the app's ----------------------------------------------


def test_the_rule_parser_finds_every_expression():
    text = ALERTS.read_text(encoding="utf-8")
    expressions = rule_expressions(text)
    assert len(expressions) == len(re.findall(r"^\s*expr:", text, flags=re.MULTILINE))
    assert len(expressions) == len(alert_blocks(text)) >= 12
    assert all(METRIC_NAME.search(expr) or "up{" in expr for expr in expressions)
    assert 'up{job=~"cio-relay.*"} == 0' in expressions


def test_every_series_the_rules_and_the_dashboard_use_is_exported(client, dashboard):
    answer = client.get("/metrics")
    assert answer.status_code == 200
    exported = exported_names(answer.get_data(as_text=True))
    # Both directions' series and Redis's memory are there (the real Redis answers INFO).
    assert 'direction="to_customerio"' in answer.get_data(as_text=True)
    assert {"cio_relay_queue_depth", "cio_relay_queue_pending", "cio_relay_dead_letters",
            *SHARED_SERIES, "cio_relay_requests_retried_total",
            "cio_relay_events_dead_lettered_total",
            "cio_relay_destination_request_seconds_bucket"} <= exported

    in_rules = {name for expr in rule_expressions(ALERTS.read_text(encoding="utf-8"))
                for name in METRIC_NAME.findall(expr)}
    in_rule_tests = set(METRIC_NAME.findall(ALERTS_TEST.read_text(encoding="utf-8")))
    in_dashboard = {name for target in dashboard_targets(dashboard)
                    for name in METRIC_NAME.findall(target["expr"])}
    assert len(in_rules) >= 9
    assert len(in_dashboard) >= 12
    assert sorted(in_rules - exported) == []
    assert sorted(in_rule_tests - exported) == []
    assert sorted(in_dashboard - exported) == []


# -- (b) promtool --------------------------------------------------------------------------


def test_promtool_checks_the_rules():
    result = run_promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_of_the_rules_pass():
    result = run_promtool("test", "rules", str(ALERTS_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_dashboard_queries_parse(tmp_path, dashboard):
    """Each query as a recording rule (Grafana's variables filled in), checked by promtool."""
    rules = [
        {"record": f"dashboard_query_{number}",
         "expr": target["expr"].replace("$direction", "to_mparticle|to_customerio")
                               .replace("$__rate_interval", "5m")}
        for number, target in enumerate(dashboard_targets(dashboard))
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# -- the rules' shape ----------------------------------------------------------------------


def test_every_alert_has_for_severity_and_its_annotations():
    blocks = alert_blocks(ALERTS.read_text(encoding="utf-8"))
    for name, block in blocks.items():
        assert re.search(r"^\s*for: \d+[smh]$", block, flags=re.MULTILINE), name
        assert re.search(r"^\s*severity: (warning|critical)$", block, flags=re.MULTILINE), name
        for annotation in ("summary", "description", "runbook"):
            assert re.search(rf"^\s*{annotation}:", block, flags=re.MULTILINE), (name, annotation)
        assert f"deploy/README.md#{name.lower()}" in block, name


def test_every_alert_is_tested_firing_and_quiet():
    alerts = set(alert_blocks(ALERTS.read_text(encoding="utf-8")))
    cases = re.findall(r"alertname: (\w+)\s*\n\s*exp_alerts:(.*)",
                       ALERTS_TEST.read_text(encoding="utf-8"))
    firing = {name for name, rest in cases if rest.strip() != "[]"}
    quiet = {name for name, rest in cases if rest.strip() == "[]"}
    assert {name for name, _ in cases} == alerts
    assert sorted(alerts - firing) == []
    assert sorted(alerts - quiet) == []


def test_every_alert_is_explained_in_the_readme():
    readme = (ROOT / "deploy" / "README.md").read_text(encoding="utf-8")
    for name in alert_blocks(ALERTS.read_text(encoding="utf-8")):
        assert f"### {name}\n" in readme, name


# -- (c) the dashboard ---------------------------------------------------------------------


def test_the_dashboard_loads_and_every_panel_has_a_title_and_a_query(dashboard):
    assert dashboard["uid"] and dashboard["title"]
    assert len(dashboard["panels"]) >= 10
    for panel in dashboard["panels"]:
        assert panel.get("title"), panel
        assert panel.get("targets"), panel["title"]
        assert all(target.get("expr") and target.get("refId") for target in panel["targets"]), (
            panel["title"])
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])


def test_the_dashboard_filters_by_direction(dashboard):
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["direction"]["type"] == "query"
    assert "direction" in variables["direction"]["definition"]
    assert variables["direction"]["multi"] and variables["direction"]["includeAll"]
    for target in dashboard_targets(dashboard):
        names = set(METRIC_NAME.findall(target["expr"]))
        if names and not names <= set(SHARED_SERIES):
            assert 'direction=~"$direction"' in target["expr"], target["expr"]


def test_the_dashboard_has_the_panels_operators_look_for(dashboard):
    titles = {panel["title"] for panel in dashboard["panels"]}
    assert {"Webhooks by outcome", "Rejections by reason", "Events relayed per second",
            "Requests retried", "Events dead-lettered", "Dead letters stored",
            "Queue depth and pending", "Destination request latency", "Relay latency",
            "Redis memory used vs max"} <= titles
    exprs = " ".join(target["expr"] for target in dashboard_targets(dashboard))
    assert "histogram_quantile(0.5," in exprs and "histogram_quantile(0.99," in exprs
