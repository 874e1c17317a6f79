"""`aemon evaluate --plot`: one row per file: scaled sensors, and score against threshold,
each with the labelled anomaly and the alert spans shaded. Needs the `[bench]` extra."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from service.offline.readers import BoolArray, TimeArray
from service.offline.results import FileResult


def plot_results(results: Sequence[FileResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(results), 2, figsize=(16, 2.6 * len(results)), squeeze=False, sharex="row"
    )
    for (sensors_ax, score_ax), r in zip(axes, results, strict=True):
        minutes = (r.ts - r.ts[0]) / 60
        std = np.maximum(r.values.std(axis=0), 1e-9)
        lines = sensors_ax.plot(minutes, (r.values - r.values.mean(axis=0)) / std, lw=0.6)
        sensors_ax.legend(lines, r.sensors, loc="upper left", fontsize=6, ncol=4)
        sensors_ax.set_title(f"{Path(r.name).name}: sensors (z-scored)", fontsize=9)
        score_minutes = (r.score_ts - r.ts[0]) / 60
        score_ax.semilogy(score_minutes, np.maximum(r.scores, 1e-6), lw=0.7, label="score")
        score_ax.axhline(r.threshold, color="k", ls="--", lw=0.8, label="threshold")
        score_ax.set_title("score vs threshold", fontsize=9)
        for ax in (sensors_ax, score_ax):
            _shade(ax, minutes, r.ts, r.truth, "tab:red", "labelled anomaly")
            _shade(ax, minutes, r.ts, r.predicted, "tab:blue", "alert firing")
        score_ax.legend(loc="upper left", fontsize=7)
    axes[-1][0].set_xlabel("minutes after warmup")
    axes[-1][1].set_xlabel("minutes after warmup")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _shade(
    ax: object, minutes: TimeArray, ts: TimeArray, mask: BoolArray, color: str, label: str
) -> None:
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    for i, (a, b) in enumerate(zip(starts, ends, strict=True)):
        ax.axvspan(minutes[a], minutes[b], color=color, alpha=0.15, label=label if i == 0 else None)  # type: ignore[attr-defined]
