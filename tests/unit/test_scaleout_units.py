"""The scale-out input's parts that need no server: its settings, the replica's index, a
released machine leaving the pipeline only after what was queued before, and a fine-tune of
a machine that left not being carried out."""

from __future__ import annotations

import pytest

from service.core.config import ConfigError, Settings, load_settings
from service.core.types import Reading
from service.stream.arrivals import Batch
from service.stream.learning import FitRequest
from service.transport import nats_input
from tests.unit.wiring import wired_pipeline


def test_the_ack_wait_must_be_under_the_pin_timeout() -> None:
    with pytest.raises(ConfigError, match=r"ack_wait must be under nats\.pin_timeout"):
        load_settings(None, nats={"ack_wait": 10.0, "pin_timeout": 10.0})


def test_sparkplug_needs_the_mqtt_input() -> None:
    with pytest.raises(ConfigError, match=r"sparkplug\.enabled needs input\.kind = mqtt"):
        load_settings(None, input={"kind": "nats"}, sparkplug={"enabled": True, "groups": ["g"]})


def test_the_replica_index_comes_from_the_setting_else_the_host_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert nats_input.replica_index(4) == 4
    monkeypatch.setattr(nats_input.socket, "gethostname", lambda: "aemon-2")
    assert nats_input.replica_index(None) == 2
    monkeypatch.setattr(nats_input.socket, "gethostname", lambda: "plant-box")
    assert nats_input.replica_index(None) == 0


def readings(machine: str, start: int, count: int) -> Batch:
    return Batch(
        0.0, [Reading(machine, "a", float(t), float(t % 5)) for t in range(start, start + count)]
    )


def test_a_released_machine_goes_after_the_readings_queued_before_it() -> None:
    settings = Settings(input={"kind": "nats"}, discovery={"period": 1.0})
    pipeline, _, metrics = wired_pipeline(settings)
    assert pipeline.submit(readings("m1", 0, 20))
    pipeline.cycle(timeout=0.01)
    assert pipeline.submit(readings("m1", 20, 10))  # delivered before the partition moved
    pipeline.release(["m1"])
    pipeline.cycle(timeout=0.01)  # the release waits: the queued readings are taken in
    assert "m1" in pipeline.machines
    assert metrics.accepted_of["m1"].get() == 30
    pipeline.cycle(timeout=0.01)
    assert "m1" not in pipeline.machines
    text = "\n".join(f"{s.name}{s.labels}" for f in metrics.registry.collect() for s in f.samples)
    assert "'m1'" not in text, "a released machine leaves no series"


def test_scaled_out_a_replica_adds_no_machine_before_its_readings() -> None:
    machines = {"press": {"sensors": ["a", "b"]}}
    assert "press" in wired_pipeline(Settings(machines=machines))[0].machines
    scaled = wired_pipeline(Settings(machines=machines, input={"kind": "nats"}))[0]
    assert "press" not in scaled.machines
    scaled.submit(Batch(0.0, [Reading("press", "a", 1.0, 1.0)]))
    scaled.cycle(timeout=0.01)
    assert scaled.machines["press"].sensors == ("a", "b"), "its declared sensors"


def test_a_fit_of_a_machine_that_left_is_not_carried_out() -> None:
    _, finetuner, _ = wired_pipeline(Settings())
    installed: list[str] = []
    finetuner.install = lambda result: installed.append(result.machine)
    request = FitRequest("m1", ("a",), [], "learned")
    finetuner.submit(request)
    finetuner.drop("m1")
    finetuner.handle(finetuner.jobs.get_nowait())  # type: ignore[arg-type]
    assert installed == []
    finetuner.submit(request)  # a new request after the drop is carried out
    assert not finetuner._skipped(request)
