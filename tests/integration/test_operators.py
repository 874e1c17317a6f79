"""Operators in the loop, through every door, against the daemon process and a real
Mosquitto: commands over MQTT (`aemon/command/<machine>`), over HTTP (`POST
/api/machines/<machine>/commands` with a bearer token) and from the CLI (`aemon machine`),
and the conditions that change without a command: off, stale, a restart."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support import (
    FAST_CONFIG,
    REPO,
    Daemon,
    Mosquitto,
    Publisher,
    Subscriber,
    running,
    wait_until,
)
from tests.synthetic import Fault, machine_rows

MACHINE = "pump-7"
ALERT = f"aemon/alerts/{MACHINE}"
RESULT = f"aemon/command/{MACHINE}/result"
LEARN_ROWS = 320  # 250 learning windows of 20 steps, plus discovery
TOKEN = "s3cret-token"
FAST_STALE = 300.0  # the default: no machine goes stale within these tests


def config(tmp_path: Path, **alert: Any) -> dict[str, dict[str, Any]]:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    return {
        **FAST_CONFIG,
        "http": {"command_token_file": str(token_file)},
        "alert": {**FAST_CONFIG["alert"], **alert},
    }


def daemon_in(tmp_path: Path, broker: Mosquitto, stale_after: float) -> Daemon:
    workdir = tmp_path / "daemon"
    workdir.mkdir()
    return Daemon(workdir, broker.port, config(tmp_path, stale_after=stale_after))


@pytest.fixture
def operated(tmp_path: Path, broker: Mosquitto) -> Iterator[Daemon]:
    daemon = daemon_in(tmp_path, broker, FAST_STALE).start()
    yield daemon
    daemon.stop()


class Plant:
    """One machine's rows, sent in order through a real broker."""

    def __init__(self, pub: Publisher, seconds: int, fault: Fault | None = None) -> None:
        self.pub = pub
        self.rows = machine_rows(time.time() - 20_000, seconds, seed=3, fault=fault)

    def send(self, count: int, values: dict[str, float] | None = None) -> None:
        for ts, row in itertools.islice(self.rows, count):
            self.pub.send(f"plant/{MACHINE}", {"ts": ts, "values": values or row})
        self.pub.flush()


def state(daemon: Daemon) -> str:
    return str(daemon.machines().get(MACHINE, {}).get("state"))


def wait_state(daemon: Daemon, wanted: str, timeout: float = 60) -> None:
    wait_until(lambda: state(daemon) == wanted, timeout, f"state {wanted}")


def learn(daemon: Daemon, plant: Plant) -> None:
    plant.send(LEARN_ROWS)
    # The model, not the state: with a short stale_after, a machine whose fit outlasts it
    # is shown stale until its next reading.
    wait_until(
        lambda: daemon.machines().get(MACHINE, {}).get("model_version") is not None, 60, "model"
    )


def by_mqtt(pub: Publisher, sub: Subscriber, body: dict[str, Any]) -> dict[str, Any]:
    """Sends a command over MQTT and returns its outcome from the result topic."""
    before = len(sub.on(RESULT))
    pub.send(f"aemon/command/{MACHINE}", body)
    pub.flush()
    return wait_until(lambda: sub.json_on(RESULT)[before:], 15, "command result")[0]


def by_http(
    daemon: Daemon, machine: str, body: dict[str, Any], token: str | None = TOKEN
) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        daemon.url(f"/api/machines/{machine}/commands"),
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"}
        | ({"Authorization": f"Bearer {token}"} if token else {}),
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def by_cli(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "service", "machine", MACHINE, *args]
    command += ["--config", str(daemon.config_path), "--by", "cli-operator"]
    return subprocess.run(
        command, check=False, capture_output=True, text=True, timeout=60, cwd=REPO
    )


def alerts(sub: Subscriber) -> list[dict[str, Any]]:
    return [orjson.loads(p) for p in sub.on(ALERT) if p]


def newest(sub: Subscriber, **match: Any) -> dict[str, Any]:
    found = [a for a in alerts(sub) if all(a.get(k) == v for k, v in match.items())]
    return found[-1] if found else {}


def commands_seen(sub: Subscriber) -> list[tuple[str, str]]:
    return [(e["command"], e["by"]) for e in sub.json_on("aemon/events") if e["event"] == "command"]


def refused_without_doing(daemon: Daemon, pub: Publisher, sub: Subscriber) -> None:
    """Errors that say what is wrong, before the machine exists."""
    assert by_http(daemon, "nosuch", {"command": "ack"})[0] == 404
    status, answer = by_http(daemon, "nosuch", {"command": "reboot"})
    assert status == 400
    assert "must be one of" in answer["error"]
    assert by_http(daemon, MACHINE, {"command": "ack"}, token=None)[0] == 401
    assert by_http(daemon, MACHINE, {"command": "ack"}, token="wrong")[0] == 401
    outcome = by_mqtt(pub, sub, {"command": "ack"})
    assert outcome["ok"] is False
    assert "unknown machine" in outcome["error"]


def ack_then_false_alarm(daemon: Daemon, pub: Publisher, sub: Subscriber) -> None:
    firing = wait_until(lambda: newest(sub, state="firing"), 30, "firing alert")
    # ack over MQTT: still firing, marked acknowledged.
    outcome = by_mqtt(pub, sub, {"command": "ack", "by": "ana", "reason": "looking"})
    assert outcome["ok"] is True
    acked = wait_until(lambda: newest(sub, event="acknowledged"), 15, "acknowledged")
    assert acked["state"] == "firing"
    assert acked["acknowledged_by"] == "ana"
    assert acked["alert_id"] == firing["alert_id"]
    assert daemon.metric("aemon_alert_acknowledged", machine=MACHINE) == 1
    wait_until(lambda: daemon.machines()[MACHINE]["acknowledged_by"] == "ana", 5, "acked in API")
    # false_alarm over HTTP: resolved as such, its windows released, counted.
    body = {"command": "false_alarm", "by": "ana", "alert_id": firing["alert_id"]}
    status, answer = by_http(daemon, MACHINE, body)
    assert (status, answer["ok"]) == (200, True)
    resolved = wait_until(lambda: newest(sub, state="resolved"), 15, "resolved")
    assert resolved["resolution"] == "false_alarm"
    assert resolved["alert_id"] == firing["alert_id"]
    assert daemon.metric("aemon_false_alarms_total", machine=MACHINE) == 1
    assert daemon.metric("aemon_alert_firing", machine=MACHINE) == 0


def raised(sub: Subscriber) -> int:
    return len([a for a in alerts(sub) if a["event"] == "raised"])


def maintenance_then_off(daemon: Daemon, plant: Plant, pub: Publisher, sub: Subscriber) -> None:
    # maintenance from the CLI: state maintenance, its windows neither scored nor learnt.
    done = by_cli(daemon, "maintenance", "--for", "1h", "--reason", "bearing swap")
    assert done.returncode == 0, done.stderr + done.stdout
    wait_state(daemon, "maintenance")
    before = raised(sub)
    plant.send(60, {"current": 99.0, "pressure": 99.0, "temperature": 99.0, "vibration": 9.9})
    skipped = {"machine": MACHINE, "reason": "maintenance"}
    wait_until(lambda: daemon.metric("aemon_windows_skipped_total", **skipped) > 0, 15, "skipped")
    assert raised(sub) == before
    # maintenance_end over MQTT.
    assert by_mqtt(pub, sub, {"command": "maintenance_end", "by": "ana"})["ok"] is True
    wait_state(daemon, "scoring")
    # Off: every sensor at rest is a machine switched off, not a fault.
    plant.send(40, {"current": 0.0, "pressure": 0.0, "temperature": 20.0, "vibration": 0.0})
    wait_state(daemon, "off", 15)
    assert raised(sub) == before
    plant.send(40)  # running again
    wait_state(daemon, "scoring", 15)


def relearn_then_forget(daemon: Daemon, plant: Plant, sub: Subscriber) -> None:
    # relearn over HTTP: learns again and fits version 2, version 1 kept.
    status, _ = by_http(daemon, MACHINE, {"command": "relearn", "by": "ana", "windows": 100})
    assert status == 200
    wait_state(daemon, "learning", 15)
    plant.send(150)
    wait_until(lambda: daemon.machines()[MACHINE].get("model_version") == 2, 60, "version 2")
    models = daemon.workdir / "state" / "models" / MACHINE
    assert {"1", "2"} <= {p.name for p in models.iterdir()}
    # forget from the CLI: gone, retained alert removed, models moved aside.
    done = by_cli(daemon, "forget", "--reason", "decommissioned")
    assert done.returncode == 0, done.stderr + done.stdout
    wait_until(lambda: MACHINE not in daemon.machines(), 15, "machine forgotten")
    wait_until(lambda: sub.on(ALERT)[-1:] == [b""], 15, "retained alert cleared")
    assert not models.exists()
    assert list((models.parent / ".forgotten").iterdir())


def test_each_command_through_each_door(operated: Daemon, broker: Mosquitto) -> None:
    daemon = operated
    sub = Subscriber(broker.port, [ALERT, RESULT, "aemon/events"])
    pub = Publisher(broker.port)
    with running(pub, sub):
        refused_without_doing(daemon, pub, sub)
        plant = Plant(pub, 2000, Fault(LEARN_ROWS + 30, LEARN_ROWS + 90, "vibration", 3.0))
        learn(daemon, plant)
        plant.send(80)  # into the fault
        ack_then_false_alarm(daemon, pub, sub)
        maintenance_then_off(daemon, plant, pub, sub)
        relearn_then_forget(daemon, plant, sub)
        seen = commands_seen(sub)
        assert ("ack", "ana") in seen
        assert ("maintenance", "cli-operator") in seen
        assert ("forget", "cli-operator") in seen
        assert daemon.metric("aemon_commands_total", command="relearn", outcome="ok") == 1


def send_until_firing(daemon: Daemon, plant: Plant, sub: Subscriber) -> dict[str, Any]:
    learn(daemon, plant)
    plant.send(80)
    return wait_until(lambda: newest(sub, state="firing"), 30, "firing alert")


def test_a_silent_machine_goes_stale_and_its_alert_resolves(
    tmp_path: Path, broker: Mosquitto
) -> None:
    daemon = daemon_in(tmp_path, broker, stale_after=3.0)
    sub = Subscriber(broker.port, [ALERT])
    pub = Publisher(broker.port)
    with running(pub, sub):
        daemon.start()
        with running(daemon):
            plant = Plant(pub, 2000, Fault(LEARN_ROWS + 30, 2000, "vibration", factor=3.0))
            firing = send_until_firing(daemon, plant, sub)
            # No more readings: stale within a few seconds, the alert ended for lack of data.
            resolved = wait_until(lambda: newest(sub, state="resolved"), 20, "resolved")
            assert resolved["resolution"] == "no_data"
            assert resolved["alert_id"] == firing["alert_id"]
            assert state(daemon) == "stale"
            plant.send(5)
            wait_until(lambda: state(daemon) != "stale", 15, "back from stale")


def test_a_restart_takes_the_firing_alert_up(tmp_path: Path, broker: Mosquitto) -> None:
    daemon = daemon_in(tmp_path, broker, stale_after=600.0)
    sub = Subscriber(broker.port, [ALERT])
    pub = Publisher(broker.port)
    with running(pub, sub):
        daemon.start()
        with running(daemon):
            plant = Plant(pub, 2000, Fault(LEARN_ROWS + 30, LEARN_ROWS + 200, "vibration", 3.0))
            firing = send_until_firing(daemon, plant, sub)
        # Stopped while firing; started again, the episode goes on under the same id and
        # ends as any other once the machine runs clean.
        daemon.start()
        with running(daemon):
            assert daemon.metric("aemon_alert_firing", machine=MACHINE) == 1
            assert daemon.machines()[MACHINE]["alert_id"] == firing["alert_id"]
            plant.send(200)
            resolved = wait_until(lambda: newest(sub, state="resolved"), 30, "resolved")
            assert resolved["alert_id"] == firing["alert_id"]
            assert resolved["resolution"] == "clean"
            raised = [a for a in alerts(sub) if a["event"] == "raised"]
            assert [a["alert_id"] for a in raised] == [firing["alert_id"]]


DOORS = ("mqtt", "http", "cli")
# Carried out on a machine without a model: the two that need an alert are refused (they
# reach the operator and say why), the others are done.
SEQUENCE: tuple[tuple[str, dict[str, Any], bool, str], ...] = (
    ("ack", {}, False, "no firing alert"),
    ("false_alarm", {}, False, "no alert"),
    ("maintenance", {"for": "1h", "reason": "checks"}, True, "maintenance"),
    ("maintenance_end", {}, True, "learning"),
    ("relearn", {"windows": 50}, True, "learning"),
    ("forget", {}, True, ""),
)


def send(
    door: str,
    daemon: Daemon,
    pub: Publisher,
    sub: Subscriber,
    machine: str,
    command: str,
    fields: dict[str, Any],
) -> tuple[bool, str]:
    """A command through one door: (ok, error)."""
    if door == "mqtt":
        before = len(sub.on(f"aemon/command/{machine}/result"))
        pub.send(f"aemon/command/{machine}", {"command": command, "by": door, **fields})
        pub.flush()
        outcome = wait_until(
            lambda: sub.json_on(f"aemon/command/{machine}/result")[before:], 15, "result"
        )[0]
        return outcome["ok"], outcome["error"] or ""
    if door == "http":
        _, answer = by_http(daemon, machine, {"command": command, "by": door, **fields})
        return answer["ok"], answer["error"] or ""
    args = [command, "--by", door]
    for key, value in fields.items():
        args += [f"--{key}", str(value)]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "service",
            "machine",
            machine,
            *args,
            "--config",
            str(daemon.config_path),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    return done.returncode == 0, done.stdout + done.stderr


def test_every_command_through_every_door(operated: Daemon, broker: Mosquitto) -> None:
    daemon = operated
    machines = {door: f"line-{door}" for door in DOORS}
    topics = [f"aemon/command/{m}/result" for m in machines.values()]
    sub = Subscriber(broker.port, [*topics, "aemon/events"])
    pub = Publisher(broker.port)
    with running(pub, sub):
        start = time.time() - 5_000
        for machine in machines.values():  # discovered: sensors fixed after 5 s, learning
            for ts, row in machine_rows(start, 30, seed=1):
                pub.send(f"plant/{machine}", {"ts": ts, "values": row})
        pub.flush()
        wait_until(
            lambda: all(
                daemon.machines().get(m, {}).get("state") == "learning" for m in machines.values()
            ),
            30,
            "machines learning",
        )
        for door, machine in machines.items():
            for command, fields, ok, expect in SEQUENCE:
                done, error = send(door, daemon, pub, sub, machine, command, fields)
                assert done is ok, (door, command, error)
                if not ok:
                    assert expect in error, (door, command, error)
                elif expect:
                    wait_until(
                        lambda m=machine, e=expect: daemon.machines()[m]["state"] == e,
                        15,
                        f"{door} {command}: {expect}",
                    )
            wait_until(lambda m=machine: m not in daemon.machines(), 15, f"{door}: forgotten")
        events = [e for e in sub.json_on("aemon/events") if e["event"] == "command"]
        for door, machine in machines.items():
            done = [e["command"] for e in events if e["machine"] == machine]
            assert done == ["maintenance", "maintenance_end", "relearn", "forget"], door
            assert {e["by"] for e in events if e["machine"] == machine} == {door}
        for command, _, ok, _ in SEQUENCE:
            outcome = "ok" if ok else "refused"
            assert daemon.metric("aemon_commands_total", command=command, outcome=outcome) == 3
