"""The contract every autoencoder family passes, plain and with each training option.

The machine: five sensors driven by one load that steps between random levels (with short
ramps); temperature follows the load with a lag. Anomalies are injected into windows of a
second, unseen stream and must score above the 99th percentile of that stream's normal
windows. Training uses the shipped defaults (60 epochs, lr 2e-3) so what ships is tested.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from service.core.config import ModelSettings, ThresholdSettings
from service.core.types import FloatArray
from service.learning.store import ModelStore
from service.scoring.detector import Detector, train_model
from service.scoring.models import REGISTRY, build_model, family_names

WINDOW = 30
SENSORS = ("current", "pressure", "temperature", "vibration", "flow")
NOISE = np.array([0.1, 0.03, 0.2, 0.02, 0.2])
OPTIONS: dict[str, dict[str, float]] = {
    "plain": {},
    "denoising": {"denoise_std": 0.1},
    "sparse": {"sparse_l1": 1e-3},
}
CASES = list(itertools.product(family_names(), OPTIONS))
ANOMALIES = ("tripled", "broken_correlation", "flat_line")


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def plant(n: int, seed: int) -> tuple[FloatArray, FloatArray]:
    """`n` rows of readings `[n, sensors]` and the load behind them `[n]`."""
    rng = np.random.default_rng(seed)
    load = np.empty(n)
    i, level = 0, 0.8
    while i < n:
        target = rng.uniform(0.5, 1.0)
        hold = np.full(int(rng.integers(20, 65)), target)
        segment = np.concatenate([np.linspace(level, target, 6), hold])[: n - i]
        load[i : i + len(segment)] = segment
        i, level = i + len(segment), target
    temperature = np.empty(n)
    t = 40 + 30 * load[0]
    for k in range(n):
        t += (40 + 30 * load[k] - t) / 20
        temperature[k] = t
    clean = np.stack([10 * load, 3 * load**2, temperature, 0.5 + 0.3 * load, 20 * load], axis=1)
    rows = clean + rng.normal(0, 1, clean.shape) * NOISE
    return rows.astype(np.float32), load.astype(np.float32)


def windows(rows: FloatArray, stride: int = 1) -> FloatArray:
    return np.stack([rows[i : i + WINDOW] for i in range(0, len(rows) - WINDOW + 1, stride)])


@dataclass(frozen=True)
class Data:
    learn: FloatArray
    normal: FloatArray
    anomalies: dict[str, FloatArray]


def make_data() -> Data:
    learn = windows(plant(1300, seed=1)[0], stride=4)
    rows, load = plant(3000, seed=2)
    normal, loads = windows(rows, stride=3), windows(load[:, None], stride=3)[:, :, 0]
    base = normal[:: len(normal) // 20][:20]
    tripled = base.copy()
    tripled[:, :, 3] *= 3  # vibration tripled
    # Pressure from the window whose load is furthest away: each sensor stays within its
    # normal range, only their relation is broken.
    mean_load = normal[:, :, 0].mean(axis=1)
    broken = base.copy()
    for k, window in enumerate(base):
        broken[k, :, 1] = normal[np.argmax(np.abs(mean_load - window[:, 0].mean())), :, 1]
    # Current stuck at its first value while the load steps by over 0.3 mid-window.
    steps = np.flatnonzero(np.abs(loads[:, 8] - loads[:, 22]) > 0.3)
    flat = normal[steps[:: max(1, len(steps) // 20)]].copy()
    flat[:, :, 0] = flat[:, :1, 0]
    anomalies = {"tripled": tripled, "broken_correlation": broken, "flat_line": flat}
    return Data(learn, normal, anomalies)


@pytest.fixture(scope="module")
def data() -> Data:
    return make_data()


def settings(kind: str, option: str, seed: int = 3) -> ModelSettings:
    return ModelSettings.model_validate({"kind": kind, "seed": seed, **OPTIONS[option]})


def fit(kind: str, option: str, data: Data) -> Detector:
    detector = Detector.new(SENSORS, WINDOW, settings(kind, option))
    detector.fit(data.learn, ThresholdSettings())
    return detector


@dataclass(frozen=True)
class Case:
    kind: str
    option: str
    detector: Detector
    normal_scores: FloatArray


@pytest.fixture(scope="module", params=CASES, ids=[f"{k}-{o}" for k, o in CASES])
def case(request: pytest.FixtureRequest, data: Data) -> Case:
    kind, option = request.param
    detector = fit(kind, option, data)
    return Case(kind, option, detector, detector.score_many(data.normal)[0])


@pytest.mark.parametrize("anomaly", ANOMALIES)
def test_injected_anomalies_score_above_normal_p99(case: Case, data: Data, anomaly: str) -> None:
    p99 = float(np.quantile(case.normal_scores, 0.99))
    scores, errors = case.detector.score_many(data.anomalies[anomaly])
    assert scores.min() > p99, f"lowest {anomaly} score {scores.min():.4g} <= normal p99 {p99:.4g}"
    if anomaly == "tripled":
        assert (errors.argmax(axis=1) == SENSORS.index("vibration")).all()


def test_store_round_trip_is_bit_for_bit(case: Case, data: Data, tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    version = store.save("pump/7", case.detector, {"reason": "initial"})
    loaded = store.load_current("pump/7")
    assert loaded is not None
    assert loaded.version == version
    original, restored = case.detector.model.state_dict(), loaded.model.state_dict()
    assert original.keys() == restored.keys()
    for name, tensor in original.items():
        assert tensor.dtype == restored[name].dtype, name
        assert torch.equal(tensor, restored[name]), name
    assert (loaded.sensors, loaded.window, loaded.settings) == (
        SENSORS,
        WINDOW,
        case.detector.settings,
    )
    assert loaded.threshold == case.detector.threshold
    np.testing.assert_array_equal(loaded.mean, case.detector.mean)
    np.testing.assert_array_equal(loaded.std, case.detector.std)
    for got, want in zip(
        loaded.score_many(data.normal), case.detector.score_many(data.normal), strict=True
    ):
        np.testing.assert_array_equal(got, want)


def test_clone_is_independent(case: Case, data: Data) -> None:
    probe = data.normal[:60]
    before = case.detector.score_many(probe)[0]
    weights = {k: v.clone() for k, v in case.detector.model.state_dict().items()}
    clone = case.detector.clone()
    shifted = probe + np.float32(5.0)
    train_model(clone.model, clone.scaled(shifted), case.detector.settings, epochs=3)
    assert not np.allclose(clone.score_many(probe)[0], before)
    np.testing.assert_array_equal(case.detector.score_many(probe)[0], before)
    for name, tensor in case.detector.model.state_dict().items():
        assert torch.equal(tensor, weights[name]), name


def test_batch_of_one_equals_batch_of_many(case: Case, data: Data) -> None:
    batch = data.normal[:64]
    together = case.detector.score_many(batch)[0]
    np.testing.assert_array_equal(case.detector.score_many(batch)[0], together)  # eval: no sampling
    alone = np.concatenate(
        [case.detector.score_many(batch[i : i + 1])[0] for i in range(len(batch))]
    )
    np.testing.assert_allclose(alone, together, rtol=1e-5, atol=1e-8)


def test_deterministic_under_a_seed(case: Case, data: Data) -> None:
    again = fit(case.kind, case.option, data)
    np.testing.assert_array_equal(again.score_many(data.normal)[0], case.normal_scores)
    assert again.threshold == case.detector.threshold


@pytest.mark.parametrize("kind", family_names())
@pytest.mark.parametrize(("window", "n_sensors"), [(8, 1), (9, 5), (30, 8), (31, 3), (60, 8)])
def test_recon_has_the_input_shape_for_any_window(kind: str, window: int, n_sensors: int) -> None:
    torch.manual_seed(0)
    model = build_model(kind, window, n_sensors, {})
    x = torch.randn(3, window, n_sensors)
    for training in (True, False):
        model.train(training)
        out = model(x)
        assert out.recon.shape == x.shape
        assert out.code.dim() == 2
        assert out.code.shape[0] == 3
        assert out.extra_loss.dim() == 0
        assert torch.isfinite(out.extra_loss)


@pytest.mark.parametrize("kind", family_names())
def test_family_config_follows_the_convention(kind: str) -> None:
    config_cls, _ = REGISTRY[kind]
    fields = [f.name for f in dataclasses.fields(config_cls)]
    assert fields[:2] == ["window", "n_sensors"]
    config = config_cls(window=30, n_sensors=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.window = 31
    with pytest.raises(ValueError, match="no parameter"):
        build_model(kind, 30, 4, {"no_such_field": 1})


def test_every_family_is_registered() -> None:
    assert set(family_names()) >= {"dense", "conv", "lstm", "vae"}
