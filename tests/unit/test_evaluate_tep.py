"""`aemon evaluate` on the simple `ts,...,anomaly` format (the Tennessee Eastman files):
per-file figures, learning from `--base` alone, repeated and out-of-order timestamps,
the period of each file, and progress without a terminal. Small generated files only."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.core.config import Settings, ThresholdSettings, WindowSettings
from service.core.types import FloatArray
from service.offline import report
from service.offline.evaluate import evaluate_file, file_settings, summarise
from service.offline.readers import read_history, read_labelled
from service.offline.report import build_report, format_report, progress

SENSORS = ("xmeas_01", "xmeas_02", "xmv_01")


def write_simple(
    path: Path,
    ts: Sequence[float],
    fault: tuple[int, int] = (0, 0),
    shift: float = 10.0,
    seed: int = 0,
) -> Path:
    """`ts,<sensors>,anomaly` as the TEP files are written: a shift of every sensor by
    `shift` on rows `fault[0]` to `fault[1] - 1`, which are labelled 1."""
    rng = np.random.default_rng(seed)
    lines = [",".join(("ts", *SENSORS, "anomaly"))]
    for i, t in enumerate(ts):
        inside = fault[0] <= i < fault[1]
        values = 0.1 * np.sin(i / 5 + np.arange(len(SENSORS))) + rng.normal(0, 0.01, 3)
        values = values + (shift if inside else 0.0)
        lines.append(",".join([f"{t:.3f}", *(f"{v:.6f}" for v in values), str(int(inside))]))
    path.write_text("\n".join(lines) + "\n")
    return path


class FixedScorer:
    """Fitted already (as one from `--base` is): a window scores its last row's first
    sensor, against a threshold of 5. Counts its fits, which warmup 0 must not call."""

    version = 0
    fits = 0

    def __init__(self, sensors: tuple[str, ...]) -> None:
        self.threshold = 5.0

    def fit(self, windows: FloatArray, threshold: ThresholdSettings) -> object:
        FixedScorer.fits += 1
        self.threshold = float(windows[:, -1, 0].max()) + 1.0
        return None

    def score_many(self, windows: FloatArray) -> tuple[FloatArray, FloatArray]:
        errors = windows[:, -1, :].astype(np.float32)
        return errors[:, 0].copy(), errors


def test_simple_files_carry_their_labels_and_a_changepoint_per_fault(tmp_path: Path) -> None:
    data = read_labelled(write_simple(tmp_path / "fault01.csv", range(10), (4, 7)), None)
    assert data.sensors == SENSORS
    assert np.flatnonzero(data.anomaly).tolist() == [4, 5, 6]
    assert np.flatnonzero(data.changepoint).tolist() == [4]
    # The same reader as `aemon train`'s.
    history = read_history(tmp_path / "fault01.csv")
    assert history.ts.tolist() == data.ts.tolist()
    assert np.array_equal(history.values, data.values)


def test_warmup_0_scores_every_row_with_the_scorer_as_given(tmp_path: Path) -> None:
    path = write_simple(tmp_path / "fault01.csv", range(100), (50, 80))
    FixedScorer.fits = 0
    result = evaluate_file(read_labelled(path, None), Settings(), 0, FixedScorer)
    assert FixedScorer.fits == 0
    assert result.rows == 100
    # The third anomalous window (row 52) raises; ten clean ones (80 - 89) resolve.
    assert np.flatnonzero(result.predicted).tolist() == list(range(52, 89))
    row = report.file_row(result)
    assert set(row) == {"file", "rows", "f1", "precision", "recall", "far", "mar", "skipped"} | {
        "seconds"
    }
    assert (row["file"], row["rows"]) == (str(path), 100)
    assert row["recall"] == pytest.approx(28 / 30)  # TEP's detection rate
    assert row["far"] == pytest.approx(9 / 70)
    assert row["precision"] == pytest.approx(28 / 37)
    assert row["mar"] == pytest.approx(2 / 30)
    assert row["f1"] == pytest.approx(28 / (28 + (2 + 9) / 2))
    assert row["skipped"] == {"duplicate": 0, "late": 0}


def test_repeated_and_out_of_order_rows_are_skipped_and_counted(tmp_path: Path) -> None:
    ts: list[float] = list(range(100))
    ts.insert(41, 40)  # row 40 again
    ts.insert(62, 20)  # 40 s behind: later than window.lateness (2 s)
    ts[80], ts[81] = ts[81], ts[80]  # 1 s out of order: within it, taken
    path = write_simple(tmp_path / "m.csv", ts, (70, 90))
    result = evaluate_file(read_labelled(path, None), Settings(), 0, FixedScorer)
    assert result.skipped == {"duplicate": 1, "late": 1}
    assert result.rows == 100
    assert result.ts.tolist() == list(map(float, range(100)))
    assert result.truth.sum() == 20
    row = report.file_row(result)
    assert row["skipped"] == {"duplicate": 1, "late": 1}
    built = build_report(summarise([result]), [result])
    assert built["skipped"] == {"duplicate": 1, "late": 1}
    assert "1 duplicate, 1 late" in format_report(built)


def test_a_file_at_300_s_steps_is_cut_at_its_own_period(tmp_path: Path) -> None:
    path = write_simple(tmp_path / "slow.csv", [300.0 * i for i in range(200)], (150, 180))
    data = read_labelled(path, None)
    settings = file_settings(Settings(), data.ts)
    assert settings.window.period == 300.0
    assert settings.window.max_stale == 1500.0  # 5 periods, as the defaults' 5 s of 1 s
    assert settings.window.lateness == 600.0
    result = evaluate_file(data, Settings(), 100, FixedScorer)
    assert result.rows == 100
    assert result.confusion.recall > 0.8
    # A period the config sets is kept: 1 s steps and 5 s of hold cut no window here.
    explicit = Settings(window=WindowSettings(period=1.0))
    assert file_settings(explicit, data.ts) is explicit
    with pytest.raises(ValueError, match="only 0 windows"):
        evaluate_file(data, explicit, 100, FixedScorer)


def test_tep_headline_leaves_out_faults_3_9_and_15(tmp_path: Path) -> None:
    faults = {"normal-test.csv": (0, 0), "fault01.csv": (50, 100), "fault09.csv": (50, 100)}
    results = [
        evaluate_file(
            read_labelled(write_simple(tmp_path / name, range(100), rows, shift=10.0), None),
            Settings(),
            0,
            FixedScorer,
        )
        for name, rows in faults.items()
    ]
    tep = report.tep_headline(results)
    assert tep is not None
    assert tep["faults"] == 1
    assert tep["mean_detection_rate"] == pytest.approx(48 / 50)  # fault01 alone
    assert tep["far_normal_test"] == 0.0
    text = format_report(build_report(summarise(results), results))
    assert "TEP mean detection rate 0.9600 over 1 faults" in text
    assert "TEP false alarm rate on normal-test.csv 0.0000" in text
    assert report.tep_headline(results[2:]) == {"far_fault_files": 0.0}  # fault09 alone
    assert report.tep_headline([]) is None


def test_a_line_per_file_on_stderr_without_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stderr = io.StringIO()  # isatty() is False
    monkeypatch.setattr(sys, "stderr", stderr)
    path = write_simple(tmp_path / "fault02.csv", range(100), (50, 80))
    result = evaluate_file(read_labelled(path, None), Settings(), 0, FixedScorer)
    with progress(2) as on_file:
        on_file(result)
        on_file(result)
    # Log lines may share stderr (another test may have configured logging to it).
    lines = [line for line in stderr.getvalue().splitlines() if line.startswith("[")]
    assert len(lines) == 2
    assert lines[1].startswith(f"[2/2] {path}: 100 rows, f1 0.8358, ")
    assert lines[1].endswith(" s")


def run_evaluate(*args: str) -> subprocess.CompletedProcess[str]:
    """`aemon evaluate ARGS` as a user runs it, stdout and stderr piped (not terminals)."""
    return subprocess.run(
        [sys.executable, "-m", "service", "evaluate", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={"AEMON_MODEL__EPOCHS": "10", "AEMON_LOG__LEVEL": "warning", "PATH": "/usr/bin:/bin"},
    )


def test_tep_layout_end_to_end_learning_from_the_base_only(tmp_path: Path) -> None:
    """TEP's protocol on small files at 180 s steps, with the default config: the model
    learns from the base file only and scores every row of every file."""
    steps = [1_700_000_000 + 180.0 * i for i in range(240)]
    base = write_simple(tmp_path / "normal-train.csv", steps[:200], seed=1)
    files = [
        write_simple(tmp_path / "normal-test.csv", steps, seed=2),
        write_simple(tmp_path / "fault01.csv", steps, (80, 240), seed=3),
        write_simple(tmp_path / "fault03.csv", steps, (80, 240), shift=0.0, seed=4),
    ]
    done = run_evaluate("--base", str(base), "--warmup", "0", "--json", *map(str, files))
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = json.loads(done.stdout)
    assert {"f1", "precision", "recall", "far", "mar", "nab_standard", "files", "rows"} <= set(out)
    assert (out["files"], out["rows"]) == (3, 720)
    per_file = {Path(r["file"]).name: r for r in out["per_file"]}
    assert list(per_file) == ["normal-test.csv", "fault01.csv", "fault03.csv"]
    assert all(r["rows"] == 240 for r in per_file.values())
    # A shift of 1000 noise standard deviations is found, from the base alone.
    assert per_file["fault01.csv"]["recall"] > 0.9
    assert out["tep"]["faults"] == 1
    assert out["tep"]["mean_detection_rate"] == per_file["fault01.csv"]["recall"]
    assert out["tep"]["far_normal_test"] == per_file["normal-test.csv"]["far"]
    progress_lines = [line for line in done.stderr.splitlines() if line.startswith("[")]
    assert [line.split(":")[0] for line in progress_lines] == [
        f"[{i}/3] {f}" for i, f in enumerate(files, 1)
    ]
    assert all("240 rows, f1 " in line for line in progress_lines)


def test_warmup_0_needs_a_base(tmp_path: Path) -> None:
    path = write_simple(tmp_path / "fault01.csv", range(100), (50, 80))
    done = run_evaluate("--warmup", "0", str(path))
    assert done.returncode == 2
    assert "--base" in done.stderr
