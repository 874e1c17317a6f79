from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.config import ModelSettings, ThresholdSettings
from service.detector import Detector
from service.store import ModelStore, StoreError, machine_dirname

SENSORS = ("a", "b", "c")


def detector(seed: int) -> Detector:
    rng = np.random.default_rng(seed)
    d = Detector.new(SENSORS, 10, ModelSettings(epochs=2, seed=seed))
    d.fit(rng.normal(size=(60, 10, 3)).astype(np.float32), ThresholdSettings())
    return d


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path)


def probe() -> np.ndarray:
    return np.random.default_rng(9).normal(size=(5, 10, 3)).astype(np.float32)


def test_save_and_load_current_round_trip(store: ModelStore) -> None:
    d = detector(1)
    assert store.save("pump/7", d) == 1
    loaded = store.load_current("pump/7")
    assert loaded is not None
    assert (loaded.version, loaded.threshold, loaded.sensors) == (1, d.threshold, SENSORS)
    np.testing.assert_array_equal(loaded.score_many(probe())[0], d.score_many(probe())[0])
    assert store.machines() == ["pump/7"]


def test_corrupt_current_falls_back_to_previous_version(
    store: ModelStore, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = detector(1), detector(2)
    store.save("m", first)
    store.save("m", second)
    weights = store.root / "m" / "2" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    loaded = store.load_current("m")
    assert loaded is not None
    assert loaded.version == 1
    np.testing.assert_array_equal(loaded.score_many(probe())[0], first.score_many(probe())[0])
    assert "model_version_unusable" in capsys.readouterr().out


def test_a_version_without_its_meta_does_not_count(store: ModelStore) -> None:
    store.save("m", detector(1))
    half_written = store.root / "m" / "2"
    half_written.mkdir()
    (half_written / "weights.safetensors").write_bytes(b"partial")
    assert store.version_numbers("m") == [1]
    assert store.save("m", detector(2)) == 2  # the incomplete folder is reused
    assert store.load_current("m") is not None


def test_rollback_to_previous_and_named_version(store: ModelStore) -> None:
    for seed in (1, 2, 3):
        store.save("m", detector(seed))
    assert store.rollback("m") == 2
    assert store.current_version("m") == 2
    assert store.rollback("m", 3) == 3
    with pytest.raises(StoreError):
        store.rollback("m", 9)
    assert [v.current for v in store.versions("m")] == [False, False, True]


@pytest.mark.parametrize("name", ["..", ".", "a/../../etc", "x%2F", "pump 7", "ü"])
def test_machine_names_cannot_escape_the_store(name: str, store: ModelStore) -> None:
    dirname = machine_dirname(name)
    assert "/" not in dirname
    assert dirname not in {".", ".."}
    store.save(name, detector(1))
    assert store.machines() == [name]
