"""deploy/kubernetes: every manifest validates against its schema, the kustomization lists
exactly the manifests there are, and the objects are wired to each other and to the daemon
(labels, ports, volumes, config paths, probes, the PrometheusRule = the rules file).

Core kinds are validated by kubernetes-validate (strict: unknown fields fail). It ships no
schema for prometheus-operator's ServiceMonitor and PrometheusRule (it only warns, exit 0,
about kinds it does not know), so those are validated here with jsonschema against schemas
vendored in tests/deploy/schemas/ (see generate.py there for where they come from).
"""

from __future__ import annotations

import json
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from service.core.config import load_settings
from tests.deploy import rules_sync

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "kubernetes"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
CRD_GROUP = "monitoring.coreos.com/"
# The oldest Kubernetes the base is written for, and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@cache
def objects() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> object, over every manifest."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in MANIFESTS:
        for doc in load_all(path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in out, f"{key} defined twice"
            out[key] = doc
    return out


def obj(kind: str, name: str) -> dict[str, Any]:
    return objects()[(kind, name)]


def statefulset() -> dict[str, Any]:
    return obj("StatefulSet", "aemon")


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = statefulset()["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    containers = pod_spec()["containers"]
    assert [c["name"] for c in containers] == ["aemon"]
    found: dict[str, Any] = containers[0]
    return found


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def toml_config() -> dict[str, Any]:
    return tomllib.loads(obj("ConfigMap", "aemon-config")["data"]["aemon.toml"])


# -- kustomization --------------------------------------------------------------------------


def test_kustomization_lists_every_manifest_and_only_existing_files() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources)), "a resource is listed twice"
    missing = [r for r in resources if not (K8S / r).is_file()]
    assert not missing, f"kustomization.yaml lists files that do not exist: {missing}"
    unlisted = {p.name for p in MANIFESTS} - set(resources)
    assert not unlisted, f"manifests kustomize would not apply: {unlisted}"


def test_the_base_has_the_objects_of_the_design() -> None:
    assert set(objects()) == {
        ("ConfigMap", "aemon-config"),
        ("Secret", "aemon-mqtt"),
        ("Service", "aemon"),
        ("Service", "aemon-headless"),
        ("StatefulSet", "aemon"),
        ("PodDisruptionBudget", "aemon"),
        ("ServiceMonitor", "aemon"),
        ("PrometheusRule", "aemon"),
    }


# -- schemas --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_core_manifest_validates_strictly(path: Path, version: str) -> None:
    for doc in load_all(path):
        if doc["apiVersion"].startswith(CRD_GROUP):
            continue  # below: kubernetes-validate has no schema for them
        # Raises ValidationError, or SchemaNotFoundError for a kind it does not know (which
        # the command line would only warn about).
        kubernetes_validate.validate(doc, version, strict=True)


def crd_validator(kind: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{kind.lower()}-monitoring-v1.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("kind", ["ServiceMonitor", "PrometheusRule"])
def test_custom_resource_validates_against_the_vendored_crd_schema(kind: str) -> None:
    docs = [d for (k, _), d in objects().items() if k == kind]
    assert len(docs) == 1
    doc = docs[0]
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    error = jsonschema.exceptions.best_match(crd_validator(kind).iter_errors(doc))
    assert error is None, f"{kind}: {error.message} at {list(error.absolute_path)}"


def test_vendored_crd_schemas_catch_typos_and_bad_values() -> None:
    """The schemas are strict enough to be worth running."""
    validator = crd_validator("ServiceMonitor")
    good = obj("ServiceMonitor", "aemon")
    typo = json.loads(json.dumps(good))
    typo["spec"]["endpoints"][0]["intervall"] = "15s"
    bad_duration = json.loads(json.dumps(good))
    bad_duration["spec"]["endpoints"][0]["interval"] = "15 seconds"
    assert not list(validator.iter_errors(good))
    assert list(validator.iter_errors(typo))
    assert list(validator.iter_errors(bad_duration))
    rule_validator = crd_validator("PrometheusRule")
    rule = json.loads(json.dumps(obj("PrometheusRule", "aemon")))
    rule["spec"]["groups"][0]["rules"][0]["for"] = "two minutes"
    assert list(rule_validator.iter_errors(rule))


def test_kubernetes_validate_rejects_unknown_fields() -> None:
    broken = json.loads(json.dumps(statefulset()))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRoot"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


# -- the PrometheusRule is the rules file ---------------------------------------------------


def test_prometheusrule_carries_exactly_the_rules_file() -> None:
    rules = rules_sync.load_rules()
    in_cluster = obj("PrometheusRule", "aemon")
    assert in_cluster["spec"]["groups"] == rules["groups"], (
        "deploy/kubernetes/prometheusrule.yaml differs from deploy/prometheus/aemon-rules.yml: "
        "run `python -m tests.deploy.rules_sync`"
    )
    assert in_cluster == rules_sync.prometheus_rule(rules)


# -- wiring ---------------------------------------------------------------------------------


def test_statefulset_selects_its_pods_and_is_governed_by_the_headless_service() -> None:
    spec = statefulset()["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    assert selects(spec["selector"]["matchLabels"], pod_labels)
    headless = obj("Service", spec["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert selects(headless["spec"]["selector"], pod_labels)
    assert selects(obj("Service", "aemon")["spec"]["selector"], pod_labels)
    pdb = obj("PodDisruptionBudget", "aemon")
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels)


def test_services_expose_the_containers_http_port_9108() -> None:
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert ports == {"http": 9108}
    assert toml_config()["http"]["port"] == 9108
    assert toml_config()["http"]["host"] == "0.0.0.0"  # reachable from the kubelet's probes
    for name in ("aemon", "aemon-headless"):
        (port,) = obj("Service", name)["spec"]["ports"]
        assert (port["name"], port["port"], port["targetPort"]) == ("http", 9108, "http")


def test_servicemonitor_scrapes_one_service_with_job_aemon() -> None:
    monitor = obj("ServiceMonitor", "aemon")["spec"]
    matched = [
        name
        for (kind, name), o in objects().items()
        if kind == "Service"
        and selects(monitor["selector"]["matchLabels"], o["metadata"]["labels"])
    ]
    # Both Services select the same pods: matching both would scrape each pod twice.
    assert matched == ["aemon"]
    # Without jobLabel, prometheus-operator names the job after the Service; the rules
    # (AemonDown) match job="aemon".
    assert "jobLabel" not in monitor
    exprs = [r["expr"] for g in rules_sync.load_rules()["groups"] for r in g["rules"]]
    assert any('job="aemon"' in e for e in exprs)
    service_ports = {p["name"] for p in obj("Service", "aemon")["spec"]["ports"]}
    for endpoint in monitor["endpoints"]:
        assert endpoint["port"] in service_ports
        assert endpoint["path"] == "/metrics"


def test_config_and_secret_are_mounted_where_the_config_says() -> None:
    c = container()
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    assert c["args"][0] == "run"
    config_path = Path(c["args"][c["args"].index("--config") + 1])
    config_mount = mounts["config"]
    assert config_path.parent == Path(config_mount["mountPath"])
    assert config_mount["readOnly"]
    config_map = obj("ConfigMap", volumes["config"]["configMap"]["name"])
    assert config_path.name in config_map["data"]

    password_file = Path(toml_config()["mqtt"]["password_file"])
    secret_mount = mounts["mqtt-secret"]
    assert password_file.parent == Path(secret_mount["mountPath"])
    assert secret_mount["readOnly"]
    secret = obj("Secret", volumes["mqtt-secret"]["secret"]["secretName"])
    assert password_file.name in secret["stringData"]


def test_state_dir_is_the_per_replica_volume() -> None:
    (claim,) = statefulset()["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container()["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == toml_config()["state"]["dir"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert statefulset()["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }


def test_mqtt_client_id_is_the_pod_name() -> None:
    env = {e["name"]: e for e in container()["env"]}
    field = env["AEMON_MQTT__CLIENT_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert field == "metadata.name"


def test_configmap_config_is_accepted_by_the_daemon(tmp_path: Path) -> None:
    path = tmp_path / "aemon.toml"
    path.write_text(obj("ConfigMap", "aemon-config")["data"]["aemon.toml"])
    settings = load_settings(path)
    assert settings.mqtt.topics == ("plant/{machine}/{sensor}", "plant/{machine}")
    assert str(settings.state.dir) == "/var/lib/aemon"


# -- security and resources -----------------------------------------------------------------


def test_pod_runs_non_root_read_only_without_capabilities() -> None:
    pod = pod_spec()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = container()["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}


def test_tmp_is_a_writable_emptydir() -> None:
    """torch needs a writable temporary directory (tests/deploy/test_torch_sandbox.py)."""
    mounts = {m["mountPath"]: m["name"] for m in container()["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_resources_are_the_measured_figures() -> None:
    assert container()["resources"] == {
        "requests": {"cpu": "500m", "memory": "620Mi"},
        "limits": {"memory": "1Gi"},
    }


def test_probes_use_healthz_and_readyz() -> None:
    c = container()
    paths = {
        probe: (c[probe]["httpGet"]["path"], c[probe]["httpGet"]["port"])
        for probe in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert paths == {
        "startupProbe": ("/healthz", "http"),
        "livenessProbe": ("/healthz", "http"),
        "readinessProbe": ("/readyz", "http"),
    }
    startup = c["startupProbe"]
    # torch's import and the models' load must fit in the startup window.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60
    grace = pod_spec()["terminationGracePeriodSeconds"]
    drain = load_settings(None).pipeline.drain_timeout
    assert grace > drain + 5
