"""deploy/kubernetes/scale-out: the overlay builds on the base, its NATS manifests validate
strictly, its patch gives the daemon a configuration that loads (three replicas reading
from the overlay's NATS), and the NATS server it runs has what aemon's partitions need."""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.core.config import load_settings
from tests.deploy.test_kubernetes import K8S, KUBERNETES_VERSIONS, load_all, obj, selects

OVERLAY = K8S / "scale-out"


def kustomization() -> dict[str, Any]:
    found: dict[str, Any] = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    return found


def nats_objects() -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in load_all(OVERLAY / "nats.yaml")}


def patch() -> dict[str, Any]:
    [found] = load_all(OVERLAY / "aemon-replicas.yaml")
    return found


def patched_env() -> dict[str, str]:
    [container] = patch()["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"]}


def test_the_overlay_builds_on_the_base_with_files_that_exist() -> None:
    k = kustomization()
    assert k["kind"] == "Kustomization"
    assert "../" in k["resources"]
    listed = [r for r in k["resources"] if r != "../"] + [p["path"] for p in k["patches"]]
    assert all((OVERLAY / name).is_file() for name in listed), listed
    assert sorted(p.name for p in OVERLAY.glob("*.yaml")) == sorted(["kustomization.yaml", *listed])


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_nats_manifests_validate_strictly(version: str) -> None:
    for doc in nats_objects().values():
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_patch_targets_the_base_statefulset_and_its_container() -> None:
    p = patch()
    base = obj("StatefulSet", "aemon")
    assert (p["kind"], p["metadata"]["name"]) == ("StatefulSet", base["metadata"]["name"])
    names = [c["name"] for c in base["spec"]["template"]["spec"]["containers"]]
    assert [c["name"] for c in p["spec"]["template"]["spec"]["containers"]] == names


def test_the_patched_daemon_reads_nats_as_one_of_its_replicas(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = patched_env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.input.kind == "nats"
    assert settings.nats.replicas == patch()["spec"]["replicas"] == 3
    assert settings.nats.partitions >= settings.nats.replicas
    # The replica's index comes from the pod's name (aemon-0, aemon-1, ...).
    assert settings.nats.replica is None
    [server] = settings.nats.servers
    host, port = re.fullmatch(r"nats://([^:]+):(\d+)", server).groups()  # type: ignore[union-attr]
    service = nats_objects()[("Service", host)]
    assert int(port) in [p["port"] for p in service["spec"]["ports"]]


def test_the_nats_server_has_jetstream_on_its_volume_and_an_mqtt_listener() -> None:
    objects = nats_objects()
    config = objects[("ConfigMap", "nats-config")]["data"]["nats.conf"]
    assert re.search(r"jetstream\s*\{[^}]*store_dir:\s*/data/", config)
    assert re.search(r"mqtt\s*\{[^}]*listen:\s*0\.0\.0\.0:1883", config)
    # JetStream (and the MQTT listener, which needs it) want a server name.
    assert "server_name:" in config
    nats = objects[("StatefulSet", "nats")]
    [container] = nats["spec"]["template"]["spec"]["containers"]
    major, minor = re.match(r"nats:(\d+)\.(\d+)", container["image"]).groups()  # type: ignore[union-attr]
    assert (int(major), int(minor)) >= (2, 11), "priority groups need nats-server 2.11"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    claims = [c["metadata"]["name"] for c in nats["spec"]["volumeClaimTemplates"]]
    assert mounts["/data"] in claims
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert f"listen: 0.0.0.0:{ports['client']}" in config
    service = objects[("Service", "nats")]
    assert selects(service["spec"]["selector"], nats["spec"]["template"]["metadata"]["labels"])
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports)


def test_the_base_points_to_the_overlay_for_more_replicas() -> None:
    text = (K8S / "statefulset.yaml").read_text()
    assert "not implemented" not in text
    assert "scale-out/" in text
