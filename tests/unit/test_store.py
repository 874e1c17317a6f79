from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import torch
from structlog.testing import capture_logs

from service.core.config import ModelSettings
from service.core.types import FloatArray
from service.learning import store as store_module
from service.learning.store import ModelStore, StoreError, machine_dirname
from service.learning.store_meta import TrainingFacts
from service.scoring.detector import Detector

SENSORS = ("a", "b", "c")


def detector(seed: int) -> Detector:
    """Untrained but distinct per seed: the store cares about bits, not quality."""
    d = Detector.new(SENSORS, 10, ModelSettings(seed=seed, kind="conv"))
    d.mean = np.array([1.0, 2.0, 3.0 + seed], np.float32)
    d.std = np.array([0.5, 0.25, 1.0 / 3.0], np.float32)
    d.threshold = 0.1 * seed + 1.0 / 7.0
    return d


def probe() -> FloatArray:
    return np.random.default_rng(9).normal(size=(5, 10, 3)).astype(np.float32)


def same_scores(a: Detector, b: Detector) -> bool:
    return bool(np.array_equal(a.score_many(probe())[0], b.score_many(probe())[0]))


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path)


def version_dir(store: ModelStore, machine: str, version: int) -> Path:
    return store.machine_dir(machine) / str(version)


def test_save_and_load_round_trip_with_facts(store: ModelStore) -> None:
    d = detector(1)
    facts = TrainingFacts(reason="initial", windows=300, final_loss=0.0812, parent=None)
    assert store.save("pump/7", d, facts) == 1
    loaded = store.load_current("pump/7")
    assert loaded is not None
    assert (loaded.version, loaded.threshold, loaded.sensors) == (1, d.threshold, SENSORS)
    assert same_scores(loaded, d)
    assert store.machines() == ["pump/7"]
    [info] = store.versions("pump/7")
    assert (info.version, info.current) == (1, True)
    assert info.facts == {"reason": "initial", "windows": 300, "final_loss": 0.0812}
    meta = orjson.loads((version_dir(store, "pump/7", 1) / "meta.json").read_bytes())
    assert meta["machine"] == "pump/7"
    assert meta["detector"]["threshold"] == d.threshold
    assert len(meta["weights_sha256"]) == 64


def test_versions_number_up_and_facts_may_be_a_dict(store: ModelStore) -> None:
    assert store.save("m", detector(1)) == 1
    assert store.save("m", detector(2), {"reason": "promoted", "parent": 1}) == 2
    assert [v.facts for v in store.versions("m")] == [
        {"reason": "unspecified"},
        {"reason": "promoted", "parent": 1},
    ]
    with pytest.raises(StoreError, match="typo"):
        store.save("m", detector(3), {"typo": 1})
    assert store.version_numbers("m") == [1, 2]


def test_nothing_is_unpickled(store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.save("m", detector(1))

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("torch.load must not be used")

    monkeypatch.setattr(torch, "load", refuse)
    assert store.load_current("m") is not None
    weights = (version_dir(store, "m", 1) / "weights.safetensors").read_bytes()
    header = int.from_bytes(weights[:8], "little")
    assert weights[8:9] == b"{"
    assert orjson.loads(weights[8 : 8 + header])  # a JSON header, then raw tensor bytes


# -- crashes --------------------------------------------------------------------------


def test_a_version_without_its_meta_is_an_interrupted_save(store: ModelStore) -> None:
    first = detector(1)
    store.save("m", first)
    half = version_dir(store, "m", 2)
    half.mkdir()
    (half / "weights.safetensors").write_bytes(b"partial")
    (half / ".meta.json.x1y2.tmp").write_bytes(b'{"format": 1, "mach')
    assert store.version_numbers("m") == [1]
    assert store.current_version("m") == 1
    loaded = store.load_current("m")
    assert loaded is not None
    assert same_scores(loaded, first)
    assert store.save("m", detector(2)) == 2  # the remains are overwritten
    assert store.load_current("m") is not None


@pytest.mark.parametrize("crash_on", ["weights.safetensors", "meta.json", "current"])
def test_a_crash_mid_save_leaves_the_previous_version_current(
    store: ModelStore, monkeypatch: pytest.MonkeyPatch, crash_on: str
) -> None:
    """The process dies (here: an exception) after the temporary file of `crash_on` is
    written but before it is renamed into place."""
    first = detector(1)
    store.save("m", first)
    real_replace = os.replace

    def crash(src: Any, dst: Any) -> None:
        if Path(dst).name == crash_on:
            raise KeyboardInterrupt  # anything, even a BaseException
        real_replace(src, dst)

    monkeypatch.setattr(store_module.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        store.save("m", detector(2))
    monkeypatch.undo()
    assert store.current_version("m") == 1
    loaded = store.load_current("m")
    assert loaded is not None
    assert loaded.version == 1
    assert same_scores(loaded, first)
    leftovers = [p.name for p in store.machine_dir("m").rglob("*.tmp")]
    assert leftovers == []
    # A crash after meta.json but before `current`: version 2 is whole but not current.
    assert store.version_numbers("m") == ([1, 2] if crash_on == "current" else [1])
    assert (store.machine_dir("m") / "current").read_text() == "1\n"


def test_current_pointer_is_never_half_written(store: ModelStore) -> None:
    store.save("m", detector(1))
    store.save("m", detector(2))
    (store.machine_dir("m") / "current").write_text("")  # what a torn write would leave
    assert store.current_version("m") == 2  # falls back to the newest complete version


# -- corruption -----------------------------------------------------------------------


def corrupt_truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def corrupt_flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x04  # inside the last tensor: the file still parses
    path.write_bytes(bytes(data))


def corrupt_delete(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (corrupt_truncate, "SHA-256"),
        (corrupt_flip_a_bit, "SHA-256"),
        (corrupt_delete, "No such file"),
    ],
    ids=["truncated", "bit-flip", "missing"],
)
def test_corrupt_weights_fall_back_to_the_previous_version(
    store: ModelStore, corrupt: Any, reason: str
) -> None:
    first = detector(1)
    store.save("m", first)
    store.save("m", detector(2))
    corrupt(version_dir(store, "m", 2) / "weights.safetensors")
    with capture_logs() as logs:
        loaded = store.load_current("m")
    assert loaded is not None
    assert loaded.version == 1
    assert same_scores(loaded, first)
    error = next(e for e in logs if e["event"] == "model_version_unusable")
    assert (error["log_level"], error["machine"], error["version"]) == ("error", "m", 2)
    assert reason in error["reason"]
    assert error["path"] == str(version_dir(store, "m", 2) / "weights.safetensors")
    fallback = next(e for e in logs if e["event"] == "model_version_fallback")
    assert (fallback["current"], fallback["loaded"]) == (2, 1)
    assert store.unusable["m"] == 1


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda m: m["detector"].update(mean=[0.0]), "scaler has 1/3 values"),
        (lambda m: m["detector"].update(model={"kind": "nope"}), "unknown model kind"),
        (lambda m: m["detector"]["model"].update(params={"channels": 8}), "size mismatch"),
        (lambda m: m.update(machine="other"), "meta.json is other"),
        (lambda m: m.pop("facts"), "facts"),
    ],
    ids=["scaler", "kind", "shapes", "machine", "missing-field"],
)
def test_inconsistent_meta_is_refused_with_its_reason(
    store: ModelStore, edit: Any, reason: str
) -> None:
    store.save("m", detector(1))
    store.save("m", detector(2))
    path = version_dir(store, "m", 2) / "meta.json"
    meta = orjson.loads(path.read_bytes())
    edit(meta)
    path.write_bytes(orjson.dumps(meta))
    with pytest.raises(StoreError, match=reason):
        store.load("m", 2)
    loaded = store.load_current("m")
    assert loaded is not None
    assert loaded.version == 1


def test_garbage_meta_and_no_usable_version(store: ModelStore) -> None:
    store.save("m", detector(1))
    (version_dir(store, "m", 1) / "meta.json").write_bytes(b"\x00garbage")
    with capture_logs() as logs:
        assert store.load_current("m") is None
    assert [e["event"] for e in logs] == ["model_version_unusable", "model_no_usable_version"]
    assert store.versions("m") == []  # listed versions are those whose meta reads


def test_unusable_values_are_refused_before_anything_is_written(store: ModelStore) -> None:
    d = detector(1)
    d.threshold = float("inf")  # JSON cannot hold it, and it would never alert
    with pytest.raises(StoreError, match="finite"):
        store.save("m", d)
    assert store.version_numbers("m") == []
    assert store.load_current("m") is None


# -- rollback -------------------------------------------------------------------------


def test_rollback_to_previous_and_named_version(store: ModelStore) -> None:
    for seed in (1, 2, 3):
        store.save("m", detector(seed))
    assert store.rollback("m") == 2
    assert store.current_version("m") == 2
    assert [v.current for v in store.versions("m")] == [False, True, False]
    assert store.rollback("m", 3) == 3
    with pytest.raises(StoreError, match="no such"):
        store.rollback("m", 9)
    store.rollback("m", 1)
    with pytest.raises(StoreError, match="no older version"):
        store.rollback("m")
    assert store.save("m", detector(4)) == 4  # numbers are never reused


def test_rollback_skips_an_unusable_previous_version(store: ModelStore) -> None:
    for seed in (1, 2, 3):
        store.save("m", detector(seed))
    corrupt_truncate(version_dir(store, "m", 2) / "weights.safetensors")
    assert store.rollback("m") == 1
    with pytest.raises(StoreError, match="SHA-256"):
        store.rollback("m", 2)
    assert store.current_version("m") == 1


# -- machine names --------------------------------------------------------------------

HOSTILE = ["..", ".", "../x", "a/../../etc", "/abs", "x%2F", "pump 7", "ü", "a\\b", "n\x00l"]
HOSTILE += [".hidden", "current", "models", "-", "~", "a" * 60, "../" * 100]


@pytest.mark.parametrize("name", HOSTILE)
def test_machine_names_cannot_escape_the_store(name: str, store: ModelStore) -> None:
    dirname = machine_dirname(name)
    assert "/" not in dirname
    assert "\x00" not in dirname
    assert not dirname.startswith(".")
    folder = store.machine_dir(name).resolve()
    assert folder.parent == store.root.resolve()
    store.save(name, detector(1))
    assert store.machines() == [name]
    loaded = store.load_current(name)
    assert loaded is not None


def test_distinct_names_get_distinct_folders() -> None:
    names = ["a/b", "a%2Fb", "a%252Fb", "a_b", "A/b", ".x", "%2Ex"]
    assert len({machine_dirname(n) for n in names}) == len(names)


def test_long_names_are_hashed_and_still_listed(store: ModelStore) -> None:
    """A topic level can be 64 KiB; a file name 255 bytes."""
    names = ["x" * 300, "x" * 299 + "y", "é" * 100]
    dirnames = {machine_dirname(n) for n in names}
    assert len(dirnames) == 3
    assert all(len(d) <= 200 and "~" in d for d in dirnames)
    for name in names:
        store.save(name, detector(1))
    assert store.machines() == sorted(names)
    assert all(store.load_current(n) is not None for n in names)


def test_empty_name_is_refused_but_reading_it_finds_nothing(store: ModelStore) -> None:
    with pytest.raises(StoreError, match="empty"):
        store.save("", detector(1))
    assert store.load_current("") is None
    assert store.versions("") == []
    assert store.machines() == []


def test_foreign_folders_are_not_machines(store: ModelStore) -> None:
    store.save("m", detector(1))
    (store.root / "lost+found").mkdir()
    (store.root / "empty-machine").mkdir()
    assert store.machines() == ["m"]
