"""The Prometheus files in deploy/prometheus: promtool accepts them, their unit tests pass,
and every metric the rules query is one the daemon exports (service/core/metrics.py)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from service.core.metrics import Metrics

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "aemon-rules.yml"
RULE_TESTS = PROMETHEUS_DIR / "aemon-rules.test.yml"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"

# Series that Prometheus itself provides, not the daemon.
NOT_FROM_AEMON = {"up"}

EXPECTED_ALERTS = {
    "AemonMachineAnomalous",
    "AemonDown",
    "AemonBrokerDisconnected",
    "AemonReadingsRejectedHigh",
    "AemonSensorStale",
    "AemonFinetuneFailing",
    "AemonModelVersionUnusable",
    "AemonNotReady",
    "AemonOverloaded",
    "AemonThreadDied",
}

PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "atan2",
}  # fmt: skip


def promtool() -> str:
    # `make install` (system-deps) installs Debian's prometheus package, which has promtool:
    # a missing promtool is a broken setup, so fail rather than skip.
    found = shutil.which("promtool") or (
        "/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None
    )
    if found is None:
        pytest.fail("promtool not found: run `make system-deps` (Debian package prometheus)")
    return found


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [promtool(), *args],
        cwd=PROMETHEUS_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """Series names an expression selects: identifiers that are not functions, keywords,
    label names or values, durations or grouping labels."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range and subquery durations
    expr = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr
    )  # grouping label lists
    expr = re.sub(r"\boffset\s+\w+", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?", expr):
        name, call = match.group(1), match.group(2)
        if call or name in PROMQL_WORDS:
            continue
        names.add(name)
    return names


SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
    "info": ("_info",),
}


def exported_names() -> set[str]:
    """Every series name the daemon's registry can expose. A labelled metric has no samples
    until its first label set is used, so the names come from the families (with the
    suffixes of their type) as well as from the samples."""
    registry = CollectorRegistry()
    Metrics(registry)
    names = set()
    for family in registry.collect():
        names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def test_promtool_check_rules() -> None:
    out = run_promtool("check", "rules", str(RULES))
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in out.stdout


def test_promtool_unit_tests_pass() -> None:
    run_promtool("test", "rules", str(RULE_TESTS))


def test_promtool_check_config() -> None:
    out = run_promtool("check", "config", str(CONFIG))
    assert "SUCCESS" in out.stdout


def test_every_alert_is_defined_with_severity_and_runbook() -> None:
    found = {rule["alert"]: rule for rule in rules()}
    assert set(found) == EXPECTED_ALERTS
    for name, rule in found.items():
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        for key in ("summary", "description", "runbook"):
            assert rule["annotations"].get(key, "").strip(), f"{name} lacks {key}"
        assert "Check:" in rule["annotations"]["runbook"], name
        assert "Do:" in rule["annotations"]["runbook"], name


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    doc = yaml.safe_load(RULE_TESTS.read_text())
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in doc["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert fires >= EXPECTED_ALERTS, EXPECTED_ALERTS - fires
    assert quiet >= EXPECTED_ALERTS, EXPECTED_ALERTS - quiet


def test_metric_names_parsed_from_an_expression() -> None:
    expr = (
        'sum by (job, instance) (rate(a_total{reason="x y"}[5m])) / b offset 5m > 0 '
        'unless on (machine) time() - c{m=~"error|p"} and up{job="aemon"}'
    )
    assert metric_names(expr) == {"a_total", "b", "c", "up"}


def test_rules_only_query_metrics_the_daemon_exports() -> None:
    exported = exported_names()
    used = set().union(*(metric_names(rule["expr"]) for rule in rules()))
    assert "aemon_alert_firing" in used  # the parser found names at all
    assert "aemon_readings_rejected_total" in exported
    unknown = used - exported - NOT_FROM_AEMON
    assert not unknown, f"rules query metrics that service/core/metrics.py lacks: {unknown}"
