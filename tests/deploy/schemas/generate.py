"""Regenerates the vendored JSON schemas of prometheus-operator's ServiceMonitor and
PrometheusRule (tests/deploy/schemas/*.json), which kubernetes-validate does not ship.

Source: the PyPI package `cloudcoil-models-prometheus-operator` (pydantic models generated from
prometheus-operator's CRD OpenAPI schemas; version 0.80.1.0 = prometheus-operator v0.80.1).
It is not a test dependency: run this in a throwaway virtualenv,

    python3 -m venv /tmp/cc
    /tmp/cc/bin/pip install cloudcoil-models-prometheus-operator==0.80.1.0
    /tmp/cc/bin/python tests/deploy/schemas/generate.py

Two changes to the models' own JSON schema: every object with declared properties refuses
undeclared ones (what `kubectl apply`'s default strict field validation does with a typo), and
apiVersion, kind, metadata and spec are required, as the API server requires them. One
pattern is rewritten for Python's re (a Go `^(?i)...` flag group moved to the front).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SOURCE = "cloudcoil-models-prometheus-operator==0.80.1.0 (prometheus-operator v0.80.1)"


def strict(node: Any) -> Any:
    if isinstance(node, dict):
        out = {key: strict(value) for key, value in node.items()}
        pattern = out.get("pattern")
        if isinstance(pattern, str) and pattern.startswith("^(?i)"):
            # Go's regexp takes a flag group anywhere; Python's re only at the start.
            out["pattern"] = "(?i)^" + pattern.removeprefix("^(?i)")
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [strict(item) for item in node]
    return node


def schema_of(model: Any) -> dict[str, Any]:
    schema: dict[str, Any] = strict(model.model_json_schema(by_alias=True, mode="validation"))
    schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "description": f"{model.__name__} monitoring.coreos.com/v1, generated from {SOURCE} "
        "by tests/deploy/schemas/generate.py",
        **schema,
    }


def main() -> None:
    from cloudcoil.models.prometheus_operator import v1  # only in the throwaway venv

    for model in (v1.ServiceMonitor, v1.PrometheusRule):
        path = HERE / f"{model.__name__.lower()}-monitoring-v1.json"
        path.write_text(json.dumps(schema_of(model), indent=1, sort_keys=True) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
