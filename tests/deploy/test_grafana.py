"""deploy/grafana: the dashboard is valid JSON whose every panel queries the one datasource,
whose every query uses only series, labels and label values the daemon defines (so it cannot
drift from service/core/metrics.py), and whose provisioning files point at it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.promql import exported_series, problems

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "aemon.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRID_WIDTH = 24


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def query_panels() -> list[dict[str, Any]]:
    """Every panel but rows, which only group panels and query nothing."""
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def variables() -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard()["templating"]["list"]}


def test_dashboard_is_a_dashboard() -> None:
    d = dashboard()
    assert d["uid"] == "aemon"
    assert d["title"]
    assert isinstance(d["schemaVersion"], int)
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for row in (p for p in d["panels"] if p["type"] == "row"):
        assert not row.get("targets"), row["title"]


def test_every_panel_queries_the_datasource_variable() -> None:
    for panel in query_panels():
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["expr"].strip(), f"{panel['title']} {target['refId']} has no expr"
            assert target.get("datasource", DATASOURCE) == DATASOURCE, panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_variables_datasource_and_machine() -> None:
    v = variables()
    assert v["datasource"]["type"] == "datasource"
    assert v["datasource"]["query"] == "prometheus"
    machine = v["machine"]
    assert machine["datasource"] == DATASOURCE
    assert machine["query"]["query"] == "label_values(aemon_anomaly_score, machine)"
    assert machine["definition"] == machine["query"]["query"]
    assert not problems("aemon_anomaly_score", exported_series())


def test_machine_panels_filter_by_the_machine_variable() -> None:
    for title in (
        "Score against threshold",
        "Alert timeline",
        "Model version",
        "Machine state timeline",
        "Windows skipped",
    ):
        panel = next(p for p in query_panels() if p["title"] == title)
        for target in panel["targets"]:
            assert 'machine=~"$machine"' in target["expr"], (title, target["expr"])


@pytest.mark.parametrize(
    ("title", "kind", "series"),
    [
        ("Machines by state", "stat", "aemon_machine_state"),
        ("Alerts firing", "stat", "aemon_alert_firing"),
        ("Broker connected", "stat", "aemon_broker_connected"),
        ("Score against threshold", "timeseries", "aemon_anomaly_threshold"),
        ("Alert timeline", "state-timeline", "aemon_alert_firing"),
        ("Readings per second", "timeseries", "aemon_readings_received_total"),
        ("Rejections by reason", "timeseries", "aemon_readings_rejected_total"),
        ("Scoring latency", "timeseries", "aemon_scoring_latency_seconds_bucket"),
        ("Pipeline lag", "timeseries", "aemon_pipeline_lag_seconds_bucket"),
        ("Queue depth", "timeseries", "aemon_queue_depth"),
        ("Fine-tune runs by outcome", "timeseries", "aemon_finetune_runs_total"),
        ("Model version", "timeseries", "aemon_model_version"),
        ("Machine state timeline", "state-timeline", "aemon_machine_state"),
        ("Alerts acknowledged", "stat", "aemon_alert_acknowledged"),
        ("Alert timeline", "state-timeline", "aemon_alert_acknowledged"),
        ("False alarms (7d)", "stat", "aemon_false_alarms_total"),
        ("Operator commands", "timeseries", "aemon_commands_total"),
        ("Windows skipped", "timeseries", "aemon_windows_skipped_total"),
    ],
)
def test_the_panels_operators_need_are_there(title: str, kind: str, series: str) -> None:
    panels = [p for p in query_panels() if p["title"] == title]
    assert len(panels) == 1, f"no single panel titled {title!r}"
    assert panels[0]["type"] == kind
    assert any(series in t["expr"] for t in panels[0]["targets"])


def test_latency_panels_show_p50_and_p99() -> None:
    for title in ("Scoring latency", "Pipeline lag"):
        panel = next(p for p in query_panels() if p["title"] == title)
        exprs = [t["expr"] for t in panel["targets"]]
        assert any(e.startswith("histogram_quantile(0.5,") for e in exprs), title
        assert any(e.startswith("histogram_quantile(0.99,") for e in exprs), title
        assert all("by (le)" in e for e in exprs), title


def test_every_query_uses_only_what_the_daemon_exports() -> None:
    exported = exported_series()
    found = {
        f"{panel['title']} {target['refId']}: {target['expr']}": problems(target["expr"], exported)
        for panel in query_panels()
        for target in panel["targets"]
    }
    found = {query: p for query, p in found.items() if p}
    assert not found, json.dumps(found, indent=1)


def test_the_check_catches_a_renamed_metric_or_label() -> None:
    exported = exported_series()
    assert problems("aemon_scoring_latency_bucket", exported)
    assert problems('sum by (sensor) (aemon_anomaly_score{machine=~"$machine"})', exported)
    assert problems('rate(aemon_readings_rejected_total{reason="overload"}[5m])', exported)
    assert problems('aemon_finetune_runs_total{outcome="promote"}', exported)


def test_panels_fit_the_grid_without_overlapping() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        g = panel["gridPos"]
        assert g["x"] >= 0, panel["title"]
        assert g["x"] + g["w"] <= GRID_WIDTH, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_provisioning_points_at_the_dashboard_and_the_datasource_uid() -> None:
    datasources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    # The dashboard's datasource variable starts on this uid.
    assert source["uid"] == variables()["datasource"]["current"]["value"] == "prometheus"
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/aemon.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert Path(provider["options"]["path"]).is_absolute()
