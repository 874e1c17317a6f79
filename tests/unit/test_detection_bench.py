"""The detection benchmark's peers, rows, figures and tables, on small generated data and
stubs: never the data sets (they live outside the repository)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from structlog.testing import capture_logs

from benchmarks import detection
from benchmarks.detection import (
    AlwaysAlarm,
    DynamicPca,
    HalfSpaceTreesPeer,
    IsolationForestPeer,
    PcaT2Q,
    RowPeer,
    entries,
    is_held_out,
    main,
    tep_figures,
    with_update,
)
from service.core.config import Settings, ThresholdSettings
from service.core.types import FloatArray
from service.offline.results import FileResult
from service.scoring.models import family_names
from tests.unit.test_evaluate import write_skab
from tests.unit.test_evaluate_tep import write_simple

SENSORS = ("a", "b", "c", "d")
WINDOW = 10
PEERS = ["PCA T²+Q", "dynamic PCA T²+Q (2 lags)", "Isolation Forest", "Half-Space Trees"]


def normal_windows(n: int, seed: int) -> FloatArray:
    """Four sensors driven by one load plus noise, as windows `[n, WINDOW, 4]`."""
    rng = np.random.default_rng(seed)
    load = rng.normal(size=n + WINDOW)[:, None]
    rows = load * np.array([1.0, 2.0, -1.0, 0.5]) + 0.3 * rng.normal(size=(n + WINDOW, 4))
    rows += np.array([10.0, 5.0, 0.0, 100.0])
    return np.stack([rows[i : i + WINDOW] for i in range(n)]).astype(np.float32)


@pytest.mark.parametrize("peer", [PcaT2Q, DynamicPca, IsolationForestPeer, HalfSpaceTreesPeer])
def test_peers_pass_normal_rows_and_flag_a_far_one(peer: type[RowPeer]) -> None:
    detector = peer(SENSORS)
    detector.fit(normal_windows(400, seed=1), ThresholdSettings())
    normal = normal_windows(300, seed=2)
    scores, errors = detector.score_many(normal)
    assert errors.shape == (300, 4)
    assert np.mean(scores > detector.threshold) < 0.05
    far = normal[:20].copy()
    far[:, -1, :] += np.array([15.0, -30.0, 15.0, 8.0])  # every sensor, far off its relation
    assert (detector.score_many(far)[0] > detector.threshold).all()


def slow_windows(n: int, seed: int) -> FloatArray:
    """Four sensors following one slow load (each step close to the one before)."""
    rng = np.random.default_rng(seed)
    load = np.cumsum(rng.normal(size=n + WINDOW)) * 0.05
    load = np.sin(np.arange(n + WINDOW) / 20) + load - load.mean()
    rows = load[:, None] * np.array([1.0, 2.0, -1.0, 0.5]) + 0.02 * rng.normal(size=(n + WINDOW, 4))
    return np.stack([rows[i : i + WINDOW] for i in range(n)]).astype(np.float32)


def test_dynamic_pca_flags_a_jump_that_static_pca_takes_for_a_level() -> None:
    """The newest row moves along the load's direction to a level seen while learning, but
    from one step to the next: a static model judges the row alone and passes it."""
    learn, probe = slow_windows(600, seed=3), slow_windows(200, seed=4)
    jumped = probe.copy()
    jumped[:, -1, :] = -probe[:, -2, :]  # the load flips sign in one step
    big = np.abs(probe[:, -2, 0]) > 0.6
    static, dynamic = PcaT2Q(SENSORS), DynamicPca(SENSORS)
    static.fit(learn, ThresholdSettings())
    dynamic.fit(learn, ThresholdSettings())
    assert np.mean(dynamic.score_many(probe)[0] > dynamic.threshold) < 0.05
    assert np.mean(static.score_many(jumped[big])[0] > static.threshold) < 0.05
    assert (dynamic.score_many(jumped[big])[0] > dynamic.threshold).all()


def test_always_alarm_flags_everything() -> None:
    detector = AlwaysAlarm(SENSORS)
    detector.fit(normal_windows(50, seed=1), ThresholdSettings())
    assert (detector.score_many(normal_windows(30, seed=2))[0] > detector.threshold).all()


def test_every_family_under_both_methods_then_the_peers() -> None:
    names = [e.name for e in entries(family_names())]
    aemon = [f"aemon {k}, {m}" for k in family_names() for m in ("quantile", "spot")]
    assert [n.removesuffix(" (default)") for n in names[: len(aemon)]] == aemon
    assert [n for n in names if n.endswith("(default)")] == ["aemon conv, quantile (default)"]
    assert names[len(aemon) :] == [
        "aemon dense, plain MSE (old)",
        "aemon conv, --base (SKAB)",
        *PEERS,
        "always alarm",
    ]
    skab_only = [e.name for e in entries(family_names()) if e.datasets() == ("skab",)]
    assert skab_only == ["aemon conv, --base (SKAB)"]
    quick = [e.name for e in entries(["conv"], quick=True)]
    assert quick == ["aemon conv, quantile (default)", "aemon conv, spot", "PCA T²+Q"]


def test_rows_change_only_the_family_and_method() -> None:
    (spot,) = [e for e in entries(["lstm"]) if e.name == "aemon lstm, spot"]
    settings = with_update(Settings(), spot.update)
    assert (settings.model.kind, settings.threshold.method) == ("lstm", "spot")
    assert settings.threshold.quantile == Settings().threshold.quantile


def result(name: str, truth: list[int], predicted: list[int]) -> FileResult:
    t, p, z = np.array(truth, bool), np.array(predicted, bool), np.zeros(0)
    return FileResult(name, np.arange(len(t), dtype=float), t, p, [], 1.0, (), z, z, z)


def test_tep_figures_leave_out_faults_3_9_15_from_the_mean() -> None:
    figures = tep_figures(
        [
            result("tep/normal-test.csv", [0, 0, 0, 0], [0, 0, 1, 0]),
            result("tep/fault03.csv", [0, 1, 1, 1], [1, 1, 1, 1]),
            result("tep/fault05.csv", [0, 1, 1, 1], [0, 1, 0, 0]),
            result("tep/fault10.csv", [0, 1, 1, 1], [0, 1, 1, 1]),
        ]
    )
    assert figures["mean_detection_rate"] == pytest.approx((1 / 3 + 1) / 2)
    assert figures["faults"] == 2
    assert figures["far_normal_test"] == pytest.approx(0.25)
    assert figures["far_fault_files"] == pytest.approx(1 / 3)
    assert (figures["dr_3"], figures["dr_5"], figures["dr_10"]) == (1.0, pytest.approx(1 / 3), 1.0)
    line = detection.line("x", figures, detection.TEP_COLUMNS)
    cells = [c.strip() for c in line.split("|")[1:-1]]
    # mean, FAR normal-test %, FAR pre-fault %, DR 5, 10, 16 (no file: blank), 19, 20, 21, s
    assert cells == ["x", "0.667", "25.00", "33.33", "0.33", "1.00", "", "", "", "", ""]


def test_odd_numbered_files_are_held_out() -> None:
    assert [is_held_out(Path(f"{i}.csv")) for i in range(4)] == [False, True, False, True]


def test_with_update_replaces_only_the_named_fields() -> None:
    settings = with_update(Settings(), {"model": {"epochs": 7}, "window": {"length": 12}})
    assert (settings.model.epochs, settings.window.length) == (7, 12)
    assert settings.model.kind == Settings().model.kind


def write_data(root: Path) -> tuple[Path, Path]:
    """Two SKAB valve1 files, and TEP's files in miniature (3 sensors, 180 s apart)."""
    skab, tep = root / "skab", root / "tep"
    (skab / "valve1").mkdir(parents=True)
    tep.mkdir()
    for i in range(2):
        write_skab(skab / "valve1" / f"{i}.csv", 560, (480, 540), seed=i)
    steps = [180.0 * i for i in range(200)]
    write_simple(tep / "normal-train.csv", steps, seed=1)
    write_simple(tep / "normal-test.csv", steps[:120], seed=2)
    for k in (1, 3, 5):
        write_simple(tep / f"fault{k:02d}.csv", steps[:120], (60, 120), seed=k + 2)
    return skab, tep


def table(lines: list[str], after: str) -> list[list[str]]:
    """The cells of the markdown table printed after the line that starts with `after`."""
    start = next(i for i, line in enumerate(lines) if line.startswith(after))
    rows = []
    for line in lines[start + 1 :]:
        if rows and not line.startswith("|"):
            break
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.split("|")[1:-1]])
    return rows


@pytest.fixture
def quiet(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # main() configures structlog for a run; left so, later tests would log to this test's
    # captured stderr, closed after it. Its warnings (a short file's holdout) are kept
    # out of the tables.
    monkeypatch.setattr(detection, "configure_logging", lambda *args: None)
    with capture_logs():
        yield


@pytest.mark.usefixtures("quiet")
def test_prints_both_tables_and_one_json_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    skab, tep = write_data(tmp_path)
    assert main(["--data-skab", str(skab), "--data-tep", str(tep), "--rows", "PCA"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("machine: ")
    assert "thread" in lines[0]
    skab_rows = table(lines, "SKAB valve1")
    assert skab_rows[0] == [
        "detector", "F1", "FAR %", "MAR %", "NAB", "held-out F1", "FAR %", "MAR %", "s"
    ]  # fmt: skip
    assert [r[0] for r in skab_rows[2:4]] == ["PCA T²+Q", "dynamic PCA T²+Q (2 lags)"]
    assert any(r[0] == "SKAB published: Conv-AE" and r[1] == "0.780" for r in skab_rows)
    tep_rows = table(lines, "TEP: ")
    assert tep_rows[0] == [
        "detector", "mean DR (18)", "FAR % normal-test", "FAR % pre-fault",
        "DR 5", "DR 10", "DR 16", "DR 19", "DR 20", "DR 21", "s",
    ]  # fmt: skip
    assert [r[0] for r in tep_rows[2:4]] == ["PCA T²+Q", "dynamic PCA T²+Q (2 lags)"]
    assert tep_rows[2][4] != ""
    assert tep_rows[2][5] == ""
    assert any(r[0].startswith("TEP README: PCA") for r in tep_rows)
    assert lines[-2].startswith("took ")
    report: dict[str, Any] = json.loads(lines[-1])
    assert set(report) == {"machine", "seeds", "skab", "tep", "seconds", "load_after"}
    assert report["seeds"] == [Settings().model.seed]
    assert report["machine"]["torch_threads"] == Settings().model.torch_threads
    assert set(report["skab"]) == set(report["tep"]) == {"PCA T²+Q", "dynamic PCA T²+Q (2 lags)"}
    pca = report["tep"]["PCA T²+Q"]
    assert pca["faults"] == 2
    assert {"dr_1", "dr_3", "dr_5"} <= set(pca)
    assert pca["mean_detection_rate"] == pytest.approx((pca["dr_1"] + pca["dr_5"]) / 2, abs=1e-3)
    assert 0 <= report["skab"]["PCA T²+Q"]["held_f1"] <= 1


@pytest.mark.usefixtures("quiet")
def test_an_autoencoder_learns_tep_from_the_base_file_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, tep = write_data(tmp_path)
    calls: list[int] = []
    real = detection.evaluate_paths
    monkeypatch.setattr(
        detection, "evaluate_paths", lambda *a, **k: calls.append(a[2]) or real(*a, **k)
    )
    monkeypatch.setenv("AEMON_MODEL__EPOCHS", "2")
    argv = ["--only", "tep", "--data-tep", str(tep), "--families", "dense", "--rows", "quantile"]
    argv += ["--data-skab", str(tmp_path / "nowhere")]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert list(report["tep"]) == ["aemon dense, quantile"]
    assert "skab" not in report
    assert calls == [0]  # --warmup 0: no file is fitted on


@pytest.mark.usefixtures("quiet")
def test_seeds_average_aemons_rows_and_show_their_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, tep = write_data(tmp_path)
    monkeypatch.setenv("AEMON_MODEL__EPOCHS", "2")
    seeds: list[int] = []
    real = detection.evaluate_paths
    monkeypatch.setattr(
        detection,
        "evaluate_paths",
        lambda *a, **k: seeds.append(a[1].model.seed) or real(*a, **k),
    )
    argv = ["--only", "tep", "--data-tep", str(tep), "--families", "dense", "--rows", "quantile"]
    single: list[dict[str, float]] = []
    for seed in (3, 4):
        assert main([*argv, "--seeds", str(seed)]) == 0
        figures = json.loads(capsys.readouterr().out.splitlines()[-1])["tep"]
        single.append({k: v for k, v in figures["aemon dense, quantile"].items() if k != "seconds"})
    assert main([*argv, "--seeds", "3,4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    report = json.loads(lines[-1])
    assert report["seeds"] == [3, 4]
    assert seeds == [3, 4, 3, 4]  # each run's model takes its seed
    both = report["tep"]["aemon dense, quantile"]
    for key in ("mean_detection_rate", "far_normal_test", "dr_1"):
        values = [run[key] for run in single]
        assert both[key] == pytest.approx(np.mean(values))
        assert (both[f"{key}_min"], both[f"{key}_max"]) == pytest.approx((min(values), max(values)))
    rows = table(lines, "TEP: ")
    assert rows[0][-3:] == ["DR min", "DR max", "s"]
    assert {len(row) for row in rows} == {len(rows[0])}  # the README's rows too


@pytest.mark.usefixtures("quiet")
@pytest.mark.parametrize(
    "argv",
    [["--only", "skab"], ["--only", "tep"], ["--families", "dense,transformer"]],
)
def test_missing_data_or_an_unknown_family_is_refused(
    tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    nowhere = ["--data-skab", str(tmp_path), "--data-tep", str(tmp_path)]
    assert main([*nowhere, *argv]) == 2
    assert capsys.readouterr().err


@pytest.mark.parametrize("seeds", ["1,x", "1,1", ""])
def test_seeds_that_are_not_distinct_integers_are_refused(
    seeds: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--seeds", seeds])
    assert exited.value.code == 2
    assert "--seeds" in capsys.readouterr().err
