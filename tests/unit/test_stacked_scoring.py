"""Stacked scoring gives every machine the scores its own detector gives alone.

`service.scoring.stacked` scores the windows of many machines in one vmapped call per group of
like-shaped models, with the weights gathered from a stack the group owns. An alert must
not depend on which machines happened to be scored together, so every score and
per-sensor error must equal the detector's own `score_many` up to float32 roundoff.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from service.core.config import ModelSettings
from service.core.types import FloatArray
from service.scoring import batched, stacked
from service.scoring.detector import Detector
from service.scoring.models import Autoencoder, build_model
from service.scoring.stack_row import StackRow
from service.scoring.stacked import StackedScorer

WINDOW = 10
RTOL, ATOL = 1e-5, 1e-6
# Machine -> (family, sensors): two shapes per family, more members than a group's first
# capacity (4), so the stacks grow while machines join.
PLANT = {f"{kind}-{i}": (kind, 3 + i % 2) for kind in ("dense", "conv", "vae") for i in range(11)}


def detector(kind: str, n_sensors: int, seed: int) -> Detector:
    """An untrained detector with a scaler of its own: enough to tell machines apart."""
    rng = np.random.default_rng(seed)
    d = Detector.new(tuple(f"s{i}" for i in range(n_sensors)), WINDOW, ModelSettings(kind=kind))
    for param in d.model.parameters():  # Detector.new seeds alike: make each model its own
        param.data.add_(0.1 * float(rng.standard_normal()))
    d.mean = rng.normal(0, 2, n_sensors).astype(np.float32)
    d.std = rng.uniform(0.5, 2, n_sensors).astype(np.float32)
    d.held_weight = rng.uniform(0.01, 1, n_sensors).astype(np.float32)
    return d


def windows(seed: int, n: int, n_sensors: int) -> FloatArray:
    rng = np.random.default_rng(1000 + seed)
    return rng.normal(0, 2, (n, WINDOW, n_sensors)).astype(np.float32)


@pytest.fixture
def plant() -> dict[str, Detector]:
    return {name: detector(kind, n, k) for k, (name, (kind, n)) in enumerate(PLANT.items())}


def alone(work: dict[str, tuple[Detector, FloatArray]]) -> dict[str, tuple[FloatArray, FloatArray]]:
    return {name: d.score_many(w) for name, (d, w) in work.items()}


def assert_same(
    got: dict[str, tuple[FloatArray, FloatArray]], want: dict[str, tuple[FloatArray, FloatArray]]
) -> None:
    assert got.keys() == want.keys()
    for name, (scores, errors) in want.items():
        assert got[name][0].shape == scores.shape
        assert got[name][1].shape == errors.shape
        np.testing.assert_allclose(got[name][0], scores, rtol=RTOL, atol=ATOL, err_msg=name)
        np.testing.assert_allclose(got[name][1], errors, rtol=RTOL, atol=ATOL, err_msg=name)


def cycle(plant: dict[str, Detector], seed: int) -> dict[str, tuple[Detector, FloatArray]]:
    """A cycle's work: machines with 1 to 6 windows each, so items are padded."""
    return {
        name: (d, windows(seed + k, 1 + (seed + k) % 6, len(d.sensors)))
        for k, (name, d) in enumerate(plant.items())
    }


def test_mixed_groups_score_as_each_machine_alone(plant: dict[str, Detector]) -> None:
    scorer = StackedScorer()
    work = cycle(plant, seed=0)
    want = alone(work)
    assert_same(scorer.score(work), want)
    # Six groups (3 families x 2 sensor counts), all of them stacked.
    assert sorted((key[0], key[3], len(group)) for key, group in scorer.groups.items()) == [
        (kind, n, count) for kind in ("conv", "dense", "vae") for n, count in ((3, 6), (4, 5))
    ]
    # Every family runs as a plan (service.scoring.batched), none through vmap.
    assert {key[0]: group.uses_vmap for key, group in scorer.groups.items()} == {
        "conv": False,
        "dense": False,
        "vae": False,
    }
    # Different machines give different scores: the comparison is not vacuous.
    firsts = {float(scores[0]) for scores, _ in want.values()}
    assert len(firsts) == len(plant)


def test_the_detectors_keep_scoring_alone_after_joining_a_stack(
    plant: dict[str, Detector],
) -> None:
    work = cycle(plant, seed=3)
    before = alone(work)
    StackedScorer().score(work)
    assert_same(alone(work), before)


def test_a_subset_of_the_machines_in_a_later_cycle(plant: dict[str, Detector]) -> None:
    scorer = StackedScorer()
    scorer.score(cycle(plant, seed=0))
    some = {name: plant[name] for name in list(plant)[::3]}
    work = cycle(some, seed=7)
    assert_same(scorer.score(work), alone(work))


def test_calls_split_by_the_size_limits_give_the_same_scores(
    plant: dict[str, Detector], monkeypatch: pytest.MonkeyPatch
) -> None:
    work = cycle(plant, seed=5)
    monkeypatch.setattr(stacked, "MAX_CALL_MODELS", 2)
    monkeypatch.setattr(stacked, "MAX_CALL_WINDOWS", 5)
    assert_same(StackedScorer().score(work), alone(work))


def test_a_replaced_model_is_scored_by_the_new_one(plant: dict[str, Detector]) -> None:
    scorer = StackedScorer()
    scorer.score(cycle(plant, seed=0))
    old = plant["dense-2"]
    probe = windows(9, 4, len(old.sensors))
    old_scores = old.score_many(probe)
    plant["dense-2"] = detector("dense", len(old.sensors), seed=99)  # a promoted fine-tune
    work = cycle(plant, seed=1) | {"dense-2": (plant["dense-2"], probe)}
    got = scorer.score(work)
    assert_same(got, alone(work))
    assert not np.allclose(got["dense-2"][0], old_scores[0])
    # The outgoing detector keeps its own weights: whoever still holds it is unaffected.
    np.testing.assert_array_equal(old.score_many(probe)[0], old_scores[0])


def test_a_machine_that_changes_family_leaves_its_group_intact(
    plant: dict[str, Detector],
) -> None:
    scorer = StackedScorer()
    scorer.score(cycle(plant, seed=0))
    plant["dense-0"] = detector("conv", 3, seed=77)  # the first slot: the last moves in
    plant["vae-1"] = detector("lstm", 4, seed=78)  # no stack for the LSTM: scored alone
    work = cycle(plant, seed=2)
    assert_same(scorer.score(work), alone(work))
    sizes = {(key[0], key[3]): len(group) for key, group in scorer.groups.items()}
    assert sizes[("dense", 3)] == 5
    assert sizes[("conv", 3)] == 7
    assert sizes[("vae", 4)] == 4


def test_a_clone_trains_apart_from_the_stack(plant: dict[str, Detector]) -> None:
    scorer = StackedScorer()
    work = cycle(plant, seed=0)
    before = scorer.score(work)
    clone = plant["conv-1"].clone()
    for param in clone.model.parameters():
        param.data.mul_(3.0)
    clone.mean += 1.0
    assert_same(scorer.score(work), before)


def test_a_layer_the_batched_forward_does_not_know_falls_back_to_vmap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def grown(kind: str, window: int, n_sensors: int, params: dict[str, Any]) -> Autoencoder:
        """The dense family as if it had grown a layer the batched forward cannot run."""
        model = build_model(kind, window, n_sensors, params)
        model.encoder.insert(1, nn.Tanh())
        return model

    monkeypatch.setattr(stacked, "build_model", grown)
    changed = []
    for k in range(3):
        d = detector("dense", 3, seed=k)
        d.model.encoder.insert(1, nn.Tanh())
        changed.append(d)
    work = {f"dense-x{k}": (d, windows(k, 2, 3)) for k, d in enumerate(changed)}
    scorer = StackedScorer()
    assert_same(scorer.score(work), alone(work))
    assert [group.uses_vmap for group in scorer.groups.values()] == [True]


@pytest.mark.parametrize("kind", ["conv", "dense", "vae"])
@pytest.mark.parametrize("window", [WINDOW, 13])
def test_a_plan_as_matrix_products_reconstructs_as_its_grouped_convolutions(
    kind: str, window: int
) -> None:
    """A live cycle's few windows a model run through matrix products, a batch through
    grouped convolutions: the same reconstructions either way, for windows the decoder
    crops (10 and 13 steps: it returns 12 and 16)."""
    d = Detector.new(("a", "b", "c"), window, ModelSettings(kind=kind))
    group = stacked.StackedGroup(stacked.group_key(d), d)
    assert group.plan is not None
    rng = np.random.default_rng(0)
    rows = torch.from_numpy(rng.normal(0, 0.2, (5, group.width)).astype(np.float32))
    for batch in (1, 2, batched.COLUMNS_BATCH, batched.COLUMNS_BATCH + 3):
        x = torch.from_numpy(rng.normal(0, 1, (5, batch, window, 3)).astype(np.float32))
        with torch.no_grad():
            run = batched.scripted(batched._run)
            columns, grouped = run(rows, x, group.plan, batch), run(rows, x, group.plan, 0)
            vmapped = group._vmapped(rows, x)
        torch.testing.assert_close(columns, grouped, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(columns, vmapped, rtol=1e-4, atol=1e-5)


def test_a_member_keeps_no_module_and_its_model_is_its_row(plant: dict[str, Detector]) -> None:
    """One copy of the weights: a stack member's own module is dropped, and the model it
    gives is built over its row, so what is written into it is what the stack scores."""
    scorer = StackedScorer()
    work = cycle(plant, seed=4)
    want = alone(work)
    scorer.score(work)
    assert all(d.module is None and d.stacked is not None for d in plant.values())
    member = plant["conv-3"]
    for param in member.model.parameters():
        param.data.mul_(2.0)
    doubled = scorer.score(work)
    assert not np.allclose(doubled["conv-3"][0], want["conv-3"][0])
    assert_same({"conv-3": doubled["conv-3"]}, alone({"conv-3": work["conv-3"]}))


def test_a_member_saves_and_clones_as_it_scores(plant: dict[str, Detector]) -> None:
    scorer = StackedScorer()
    work = cycle(plant, seed=6)
    scorer.score(work)
    member = plant["vae-2"]
    restored = Detector.from_state(member.meta(), member.model.state_dict())
    clone = member.clone()
    assert restored.module is not None
    assert clone.module is not None
    probe = {"vae-2": (member, work["vae-2"][1])}
    assert_same(alone({"vae-2": (restored, probe["vae-2"][1])}), alone(probe))
    assert_same(alone({"vae-2": (clone, probe["vae-2"][1])}), alone(probe))


def test_a_growing_stack_moves_its_members_row_to_row(
    plant: dict[str, Detector], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Growing rebinds every member; building a module for each (a deep copy of the
    stack's model) would stall the pipeline at a plant's size."""
    scorer = StackedScorer()
    scorer.score(cycle(plant, seed=0))

    def no_module(self: StackRow) -> Autoencoder:
        raise AssertionError("a module was built")

    monkeypatch.setattr(StackRow, "module", no_module)
    more = {f"conv-x{k}": detector("conv", 3, seed=50 + k) for k in range(12)}
    scorer.score(cycle(more, seed=1))  # the conv group of 6 grows past its capacity of 8
    monkeypatch.undo()
    work = cycle(plant | more, seed=2)
    assert_same(scorer.score(work), alone(work))


def test_calls_of_any_number_of_machines_take_few_input_shapes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """oneDNN compiles kernels per input shape and keeps 64 (service.scoring.runtime): a
    live cycle's calls, 1 to 64 machines of 1 or 2 windows, must not need more than a few
    tens of shapes, or the cache thrashes (compiled again each cycle). The padded calls
    still score each machine as it scores alone."""
    shapes: set[tuple[int, ...]] = set()
    plan_errors = stacked.plan_errors

    def recording(*args: Any) -> Any:
        shapes.add(tuple(args[6].shape))
        return plan_errors(*args)

    monkeypatch.setattr(stacked, "plan_errors", recording)
    plant = {f"conv-{i}": detector("conv", 3, i) for i in range(64)}
    scorer = StackedScorer()
    for n in range(1, 65):
        for per_machine in (1, 2):
            work = {name: (d, windows(n, per_machine, 3)) for name, d in list(plant.items())[:n]}
            got = scorer.score(work)
            if n in (5, 33, 63):
                assert_same(got, alone(work))
    assert len(shapes) <= 24, sorted(shapes)
