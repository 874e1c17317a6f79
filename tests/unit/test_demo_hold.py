"""The demo holds the plant (SIGSTOP by its PID) once every machine has learnt while a first
model is still being fitted, and continues it (SIGCONT) when every machine scores, or after
HOLD_MAX_S: the faults must not come before the models that are to catch them."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from simulators.clients import wait_for
from simulators.demo import run
from simulators.demo.run import PlantHold
from simulators.demo.watch import RunState
from simulators.stack import proc_stat


@pytest.fixture
def plant() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait(10)


def stopped(proc: subprocess.Popen[bytes]) -> bool:
    """The kernel's state letter of the process: T while stopped by a signal."""
    fields = proc_stat(proc.pid)
    assert fields is not None
    return fields[0] == "T"


def look(*states: str) -> RunState:
    """A look at the daemon's machines: `learning`, `fitting` or `scoring` each."""
    machines: list[dict[str, Any]] = [
        {"machine": f"m-{i}", "state": s.replace("fitting", "learning"), "fitting": s == "fitting"}
        for i, s in enumerate(states)
    ]
    return RunState(0.0, machines=machines)


def test_plant_is_held_while_first_models_are_fitted(plant: subprocess.Popen[bytes]) -> None:
    hold = PlantHold(plant, machines=3)
    hold.update(look("fitting", "fitting"))  # the third machine not even discovered yet
    hold.update(look("learning", "fitting", "scoring"))
    assert not hold.paused
    assert not stopped(plant)

    hold.update(look("fitting", "scoring", "fitting"))
    assert hold.paused
    wait_for(lambda: stopped(plant), 10, "the plant stopped")
    hold.update(look("scoring", "scoring", "fitting"))
    assert stopped(plant)

    hold.update(look("scoring", "scoring", "scoring"))
    assert not hold.paused
    wait_for(lambda: not stopped(plant), 10, "the plant continued")
    held = hold.held_s()
    assert held > 0
    # Once only: a model fitted again later (a failed fit, a restart) does not stop it.
    hold.update(look("fitting", "scoring", "scoring"))
    assert not hold.paused
    assert hold.held_s() == held


def test_a_fit_that_takes_too_long_no_longer_holds_the_plant(
    plant: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run, "HOLD_MAX_S", 0.0)
    hold = PlantHold(plant, machines=2)
    hold.update(look("fitting", "learning"))  # back to learning: its fit failed
    assert not hold.paused
    hold.update(look("fitting", "fitting"))
    wait_for(lambda: stopped(plant), 10, "the plant stopped")
    hold.update(look("fitting", "fitting"))
    assert not hold.paused
    wait_for(lambda: not stopped(plant), 10, "the plant continued")


def test_resume_continues_a_held_plant_so_that_it_can_be_stopped(
    plant: subprocess.Popen[bytes],
) -> None:
    hold = PlantHold(plant, machines=1)
    hold.update(look("fitting"))
    wait_for(lambda: stopped(plant), 10, "the plant stopped")
    hold.resume()  # what the demo's run does however it ends
    wait_for(lambda: not stopped(plant), 10, "the plant continued")
    hold.resume()  # a second call changes nothing
    assert not hold.paused
