"""Writes deploy/kubernetes/prometheusrule.yaml from deploy/prometheus/aemon-rules.yml.

The rules file is the one source of the alert rules; prometheus-operator needs them wrapped
in a PrometheusRule. After editing the rules run `python -m tests.deploy.rules_sync`;
tests/deploy/test_kubernetes.py fails while the two differ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "aemon-rules.yml"
PROMETHEUS_RULE = REPO / "deploy" / "kubernetes" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/aemon-rules.yml by `python -m tests.deploy.rules_sync`:
# edit that file, not this one. kube-prometheus-stack selects PrometheusRules by its Helm
# release label by default: add it to metadata.labels in your overlay (e.g.
# `release: kube-prometheus-stack`) or set ruleSelectorNilUsesHelmValues=false.
"""


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (runbooks, long expressions) as literal blocks, readable in review."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def load_rules(path: Path = RULES) -> dict[str, Any]:
    rules: dict[str, Any] = yaml.safe_load(path.read_text())
    return rules


def prometheus_rule(rules: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "aemon",
            "labels": {"app.kubernetes.io/name": "aemon", "app.kubernetes.io/part-of": "aemon"},
        },
        "spec": {"groups": rules["groups"]},
    }


def render(rules: dict[str, Any]) -> str:
    body = yaml.dump(prometheus_rule(rules), Dumper=_Dumper, sort_keys=False, width=100)
    return HEADER + body


def main() -> None:
    PROMETHEUS_RULE.write_text(render(load_rules()))
    print(f"wrote {PROMETHEUS_RULE.relative_to(REPO)}")


if __name__ == "__main__":
    main()
