"""`aemon train`: history files to a saved model version, anomalous rows left out."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from service import cli
from service.cli import main
from service.core.config import Settings
from service.learning.store import ModelStore
from service.offline.readers import read_history
from service.offline.train import TrainError, machine_sensors, normal_windows
from tests.support import REPO, write_toml
from tests.synthetic import SENSORS, Fault, machine_rows

SKAB_FILE = REPO / "tests" / "data" / "skab" / "valve1" / "0.csv"
FAULT = Fault(start=400, end=500, sensor="vibration", factor=10.0)


@pytest.fixture(autouse=True)
def keep_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """`main` configures structlog for good (cached loggers): keep the tests' setup."""
    monkeypatch.setattr(cli, "configure_logging", lambda *args: None)


def write_simple(path: Path, seconds: int, rfc3339: bool = False) -> Path:
    """The synthetic machine as `ts,<sensor>...,anomaly`, the fault rows labelled."""
    lines = [",".join(["ts", *SENSORS, "anomaly"])]
    for ts, values in machine_rows(1_700_000_000.0, seconds, seed=5, fault=FAULT):
        when = datetime.fromtimestamp(ts, UTC).isoformat() if rfc3339 else str(ts)
        label = int(FAULT.start <= ts - 1_700_000_000.0 < FAULT.end)
        lines.append(",".join([when, *(f"{values[s]:.5f}" for s in SENSORS), str(label)]))
    path.write_text("\n".join(lines) + "\n")
    return path


def settings(tmp_path: Path, **sections: dict[str, object]) -> Settings:
    base: dict[str, dict[str, object]] = {
        "state": {"dir": str(tmp_path / "state")},
        "window": {"length": 20, "lateness": 0.0},
        "learning": {"windows": 200},
        "model": {"epochs": 5},
    }
    return Settings.model_validate({**base, **sections})


def test_skab_files_are_read_with_their_labels() -> None:
    history = read_history(SKAB_FILE)
    assert len(history.sensors) == 8
    assert "anomaly" not in history.sensors
    assert history.values.shape == (len(history.ts), 8)
    assert 0 < history.anomalous.sum() < len(history.ts)


@pytest.mark.parametrize("rfc3339", [False, True])
def test_windows_reached_by_an_anomalous_row_are_left_out(tmp_path: Path, rfc3339: bool) -> None:
    history = read_history(write_simple(tmp_path / "m.csv", 900, rfc3339))
    assert history.anomalous.sum() == FAULT.end - FAULT.start
    s = settings(tmp_path)
    kept, excluded = normal_windows("m", history, tuple(sorted(SENSORS)), s)
    vibration = sorted(SENSORS).index("vibration")
    # Normal vibration is about 0.7-0.8; the fault multiplies it by 10.
    assert max(float(w[:, vibration].max()) for w in kept) < 2.0
    # Every window ending in the fault, or within a window length and max_stale after it.
    assert excluded == FAULT.end - FAULT.start + 19 + 5
    assert len(kept) + excluded == 900 - 19


def test_repeated_and_out_of_order_rows_are_rejected_as_the_daemon_does(tmp_path: Path) -> None:
    """No longer refused by the reader: the windower rejects them (duplicate, late) and the
    windows are those of the clean file."""
    clean = tmp_path / "clean.csv"
    lines = write_simple(clean, 900).read_text().splitlines()
    # Header, then the row at offset t is line t + 1.
    messy = [*lines[:102], lines[101], *lines[102:302], lines[51], *lines[302:]]
    path = tmp_path / "m.csv"
    path.write_text("\n".join(messy) + "\n")
    history = read_history(path)
    assert len(history.ts) == 902
    s = settings(tmp_path)
    sensors = tuple(sorted(SENSORS))
    kept, excluded = normal_windows("m", history, sensors, s)
    clean_kept, clean_excluded = normal_windows("m", read_history(clean), sensors, s)
    assert excluded == clean_excluded
    assert np.array_equal(np.stack(kept), np.stack(clean_kept))


def test_a_declared_machine_keeps_the_configured_sensor_order(tmp_path: Path) -> None:
    history = read_history(write_simple(tmp_path / "m.csv", 60))
    order = ["vibration", "current", "temperature", "pressure"]
    s = settings(tmp_path, machines={"m": {"sensors": order}})
    assert machine_sensors("m", [history], s) == tuple(order)
    wrong = settings(tmp_path, machines={"m": {"sensors": ["current", "flow"]}})
    with pytest.raises(TrainError, match="differ"):
        machine_sensors("m", [history], wrong)


def test_train_saves_a_version_and_models_list_shows_its_facts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = write_simple(tmp_path / "pump-9.csv", 900)
    config = write_toml(
        tmp_path / "aemon.toml",
        {
            "state": {"dir": str(tmp_path / "state")},
            "window": {"length": 20, "lateness": 0.0},
            "learning": {"windows": 200},
            "model": {"epochs": 5},
            "log": {"level": "warning"},
        },
    )
    assert main(["train", "--config", str(config), str(csv)]) == 0
    # structlog's default configuration (kept in tests) also prints to stdout.
    out = [line for line in capsys.readouterr().out.splitlines() if " [" not in line]
    assert len(out) == 1
    assert out[0].startswith("pump-9: version 1, 757 windows (189 held out to calibrate, 124 left")
    store = ModelStore(tmp_path / "state")
    detector = store.load_current("pump-9")
    assert detector is not None
    assert detector.sensors == tuple(sorted(SENSORS))
    assert np.isfinite(detector.threshold)
    assert main(["models", "--config", str(config), "list"]) == 0
    listed = capsys.readouterr().out
    assert "pump-9\tv1\t" in listed
    assert "reason=train\twindows=757\tloss=" in listed


def test_too_little_normal_history_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = write_simple(tmp_path / "pump-9.csv", 200)
    config = write_toml(
        tmp_path / "aemon.toml",
        {"state": {"dir": str(tmp_path / "state")}, "log": {"level": "warning"}},
    )
    assert main(["train", "--config", str(config), str(csv)]) == 1
    assert "fewer than learning.windows = 600" in capsys.readouterr().err
    assert ModelStore(tmp_path / "state").machines() == []
