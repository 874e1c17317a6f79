"""`aemon evaluate` on small SKAB-format and NAB-format files generated here."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.core.config import Settings, ThresholdSettings
from service.core.types import FloatArray
from service.offline.evaluate import evaluate_file, summarise
from service.offline.readers import read_labelled, read_nab_windows, read_skab, windows_for

SENSORS = ("Accelerometer1RMS", "Current", "Pressure", "Volume Flow RateRMS")
START = datetime(2020, 3, 9, 10, 0, 0)


def write_skab(
    path: Path,
    rows: int,
    anomaly: tuple[int, int],
    seed: int = 0,
    steps: list[int] | None = None,
    fault: float = 5.0,
) -> None:
    """One row a second (or `steps`), a level shift of every sensor over `anomaly` rows,
    written the way SKAB writes its files (`;`, float labels, CRLF)."""
    rng = np.random.default_rng(seed)
    t = START
    lines = [";".join(("datetime", *SENSORS, "anomaly", "changepoint"))]
    for i in range(rows):
        inside = anomaly[0] <= i < anomaly[1]
        values = 1.0 + 0.1 * np.sin(i / 7 + np.arange(len(SENSORS))) + rng.normal(0, 0.01, 4)
        if inside:
            values = values + fault
        cp = i in anomaly
        cells = [t.strftime("%Y-%m-%d %H:%M:%S"), *(f"{v:.6f}" for v in values)]
        lines.append(";".join([*cells, f"{float(inside):.1f}", f"{float(cp):.1f}"]))
        t += timedelta(seconds=steps[i] if steps else 1)
    path.write_text("\r\n".join(lines) + "\r\n")


class LastValueScorer:
    """Scores a window by its last row's first sensor: no model, so the test is exact."""

    version = 0

    def __init__(self, sensors: tuple[str, ...]) -> None:
        self.threshold = float("inf")

    def fit(self, windows: FloatArray, threshold: ThresholdSettings) -> object:
        self.threshold = float(windows[:, -1, 0].max()) + 1.0
        return None

    def score_many(self, windows: FloatArray) -> tuple[FloatArray, FloatArray]:
        errors = windows[:, -1, :].astype(np.float32)
        return errors[:, 0].copy(), errors


def test_read_skab_reads_labels_and_naive_time_as_utc(tmp_path: Path) -> None:
    path = tmp_path / "0.csv"
    write_skab(path, 10, (4, 6))
    data = read_skab(path)
    assert data.sensors == SENSORS
    assert data.ts[0] == START.replace(tzinfo=UTC).timestamp()
    assert data.values.shape == (10, 4)
    assert data.anomaly.tolist() == [False] * 4 + [True] * 2 + [False] * 4
    assert np.flatnonzero(data.changepoint).tolist() == [4, 6]


def test_rows_are_flagged_while_the_daemons_alert_fires(tmp_path: Path) -> None:
    path = tmp_path / "1.csv"
    write_skab(path, 700, (500, 600))
    settings = Settings()  # k=3 of n=5 raise, m=10 clean windows resolve
    result = evaluate_file(read_skab(path), settings, 400, LastValueScorer)
    flagged = np.flatnonzero(result.predicted) + 400
    # Raised by the third anomalous window (row 502); the first clean window (row 600)
    # starts the run of 10 that resolves at row 609.
    assert flagged.tolist() == list(range(502, 609))
    assert result.confusion.tp == 98
    assert result.confusion.fp == 9
    assert result.changepoints == [result.ts[100], result.ts[200]]


def test_rows_in_a_sampling_gap_keep_the_current_state(tmp_path: Path) -> None:
    path = tmp_path / "2.csv"
    steps = [1] * 700
    steps[549] = 30  # a 30 s hole inside the anomaly: longer than max_stale
    write_skab(path, 700, (500, 600), steps=steps)
    result = evaluate_file(read_skab(path), Settings(), 400, LastValueScorer)
    assert result.predicted[550 - 400]  # the row after the hole is still flagged
    assert summarise([result])["files"] == 1


def test_too_short_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "3.csv"
    write_skab(path, 300, (200, 250))
    with pytest.raises(ValueError, match="warmup"):
        evaluate_file(read_skab(path), Settings(), 400, LastValueScorer)


def evaluate_json(*args: str) -> dict[str, Any]:
    """`aemon evaluate --json ARGS` as a user runs it (short fits), its summary."""
    done = subprocess.run(
        [sys.executable, "-m", "service", "evaluate", "--json", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={"AEMON_MODEL__EPOCHS": "20", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


def test_evaluate_json_end_to_end(tmp_path: Path) -> None:
    files = []
    for seed in (1, 2):
        path = tmp_path / f"{seed}.csv"
        write_skab(path, 700, (500, 620), seed=seed)
        files.append(str(path))
    summary = evaluate_json(*files)
    keys = {"f1", "precision", "recall", "far", "mar", "nab_standard", "nab_low_fp"}
    assert keys | {"nab_low_fn", "files", "rows", "skipped", "per_file"} == set(summary)
    assert summary["files"] == 2
    assert summary["rows"] == 600
    assert [r["file"] for r in summary["per_file"]] == files
    assert [r["rows"] for r in summary["per_file"]] == [300, 300]
    assert "tep" not in summary  # no TEP file among them
    # A shift of 50 standard deviations in every sensor is found.
    assert summary["recall"] > 0.8


def test_evaluate_refuses_an_unknown_model(tmp_path: Path) -> None:
    path = tmp_path / "1.csv"
    write_skab(path, 450, (420, 440))
    done = subprocess.run(
        [sys.executable, "-m", "service", "evaluate", "--model", "nope", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 2
    assert "nope" in done.stderr


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from service.offline.evaluate_plot import plot_results

    path = tmp_path / "1.csv"
    write_skab(path, 700, (500, 600))
    result = evaluate_file(read_skab(path), Settings(), 400, LastValueScorer)
    png = tmp_path / "out.png"
    plot_results([result, result], png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def write_nab(path: Path, rows: int, anomaly: tuple[int, int], step_s: int = 1) -> None:
    """NAB's layout: `timestamp,value`, a level shift over `anomaly` rows."""
    rng = np.random.default_rng(3)
    lines = ["timestamp,value"]
    for i in range(rows):
        value = 50 + 5 * np.sin(i / 9) + rng.normal(0, 0.2) + (40 if i in range(*anomaly) else 0)
        stamp = START + timedelta(seconds=i * step_s)
        lines.append(f"{stamp:%Y-%m-%d %H:%M:%S},{value:.4f}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def nab_labels(path: Path, windows: dict[str, list[tuple[int, int]]], step_s: int = 1) -> Path:
    """A NAB windows JSON, row numbers turned into NAB's timestamp strings."""

    def stamp(row: int) -> str:
        return f"{START + timedelta(seconds=row * step_s):%Y-%m-%d %H:%M:%S.%f}"

    document = {k: [[stamp(a), stamp(b)] for a, b in w] for k, w in windows.items()}
    path.write_text(json.dumps(document))
    return path


def test_nab_rows_inside_a_label_window_are_anomalous(tmp_path: Path) -> None:
    data_file = tmp_path / "realKnownCause" / "machine.csv"
    write_nab(data_file, 12, (4, 7), step_s=300)
    labels = read_nab_windows(
        nab_labels(tmp_path / "w.json", {"realKnownCause/machine.csv": [(4, 6)]}, 300)
    )
    data = read_labelled(data_file, labels)
    assert data.sensors == ("value",)
    assert data.values.shape == (12, 1)
    assert data.ts[1] - data.ts[0] == 300
    assert data.ts[0] == START.replace(tzinfo=UTC).timestamp()
    assert np.flatnonzero(data.anomaly).tolist() == [4, 5, 6]
    assert np.flatnonzero(data.changepoint).tolist() == [4]


def test_label_keys_match_by_path_tail_then_by_name(tmp_path: Path) -> None:
    windows = {"a/x.csv": [(1.0, 2.0)], "b/x.csv": [(3.0, 4.0)], "c/y.csv": []}
    assert windows_for(windows, tmp_path / "b" / "x.csv") == [(3.0, 4.0)]
    assert windows_for(windows, tmp_path / "elsewhere" / "y.csv") == []
    with pytest.raises(ValueError, match="2 "):
        windows_for(windows, tmp_path / "elsewhere" / "x.csv")
    with pytest.raises(ValueError, match="no label keys"):
        windows_for(windows, tmp_path / "z.csv")


def test_a_nab_file_without_labels_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    write_nab(path, 10, (4, 6))
    with pytest.raises(ValueError, match="--labels"):
        read_labelled(path, None)


def test_evaluate_json_end_to_end_on_nab(tmp_path: Path) -> None:
    path = tmp_path / "realTweets" / "spike.csv"
    write_nab(path, 700, (500, 620))
    labels = nab_labels(tmp_path / "combined_windows.json", {"realTweets/spike.csv": [(500, 619)]})
    summary = evaluate_json("--labels", str(labels), str(path))
    assert (summary["files"], summary["rows"]) == (1, 300)
    # A shift of 200 noise standard deviations is found.
    assert summary["recall"] > 0.8
