"""Every alert rule queries only labels, and label values, that the daemon's metrics have:
a renamed label or a misspelt reason would otherwise make a rule silently never fire.
(tests/deploy/test_prometheus_rules.py checks the series names.)"""

from __future__ import annotations

import yaml

from tests.deploy import rules_sync
from tests.deploy.promql import exported_series, problems


def test_every_rule_uses_existing_labels_and_values() -> None:
    exported = exported_series()
    rules = [r for g in rules_sync.load_rules()["groups"] for r in g["rules"]]
    assert rules
    found = {r["alert"]: problems(r["expr"], exported) for r in rules}
    found = {alert: p for alert, p in found.items() if p}
    assert not found, yaml.safe_dump(found)
