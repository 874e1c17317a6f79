"""What `aemon evaluate` prints: the pooled summary, a row per file and, when the inputs
are the Tennessee Eastman files, TEP's headline; and its progress, on stderr.

Per file: SKAB's point-wise figures over its test rows (`recall` is TEP's fault detection
rate, the share of faulty rows flagged; `far` the share of normal rows flagged) and the
rows the windower skipped, by reason. TEP's headline is recognised by file name: the mean
detection rate over the `faultNN.csv` files but 3, 9 and 15 (practically undetectable from
TEP's variables, reported apart by convention), the false alarm rate on `normal-test.csv`
and, pooled, on the normal rows of the fault files (the 8 h before the fault).

>>> import numpy as np
>>> from service.offline.results import FileResult
>>> def result(name, truth, predicted):
...     t, p, z = np.array(truth, bool), np.array(predicted, bool), np.zeros(0)
...     return FileResult(name, np.arange(len(t), dtype=float), t, p, [], 1.0, (), z, z, z)
>>> tep = tep_headline([
...     result("tep/fault01.csv", [0, 1, 1, 1], [0, 1, 1, 0]),
...     result("tep/fault03.csv", [0, 1, 1, 1], [0, 0, 0, 0]),
...     result("tep/fault02.csv", [0, 1, 1, 1], [1, 1, 1, 1]),
...     result("tep/normal-test.csv", [0, 0, 0, 0], [0, 0, 0, 1]),
... ])
>>> {k: round(v, 4) for k, v in tep.items()}
{'mean_detection_rate': 0.8333, 'faults': 2, 'far_normal_test': 0.25, 'far_fault_files': 0.3333}
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from itertools import count
from pathlib import Path
from typing import Any

from service.offline.results import FileResult
from service.offline.scoring_metrics import Confusion

# A JSON object.
Report = dict[str, Any]

SKIP_REASONS = ("duplicate", "late")
TEP_FAULT = re.compile(r"fault(\d+)\.csv")
TEP_NORMAL = "normal-test.csv"
TEP_UNDETECTABLE = frozenset({3, 9, 15})
FIGURES = ("f1", "precision", "recall", "far", "mar")


def skipped(result: FileResult) -> dict[str, int]:
    """Skipped rows by reason, `duplicate` and `late` always present."""
    return {**dict.fromkeys(SKIP_REASONS, 0), **result.skipped}


def file_row(result: FileResult) -> Report:
    c = result.confusion
    figures = {"f1": c.f1, "precision": c.precision, "recall": c.recall, "far": c.far}
    row: Report = {"file": result.name, "rows": result.rows, **figures, "mar": c.mar}
    return {**row, "skipped": skipped(result), "seconds": round(result.seconds, 3)}


def tep_headline(results: Sequence[FileResult]) -> Report | None:
    """TEP's figures, if any input is named `faultNN.csv` or `normal-test.csv`."""
    faults: dict[int, FileResult] = {}
    normal: list[FileResult] = []
    for r in results:
        name = Path(r.name).name
        match = TEP_FAULT.fullmatch(name)
        if match:
            faults[int(match[1])] = r
        elif name == TEP_NORMAL:
            normal.append(r)
    counted = [r.confusion.recall for k, r in faults.items() if k not in TEP_UNDETECTABLE]
    if not faults and not normal:
        return None
    out: Report = {}
    if counted:
        out["mean_detection_rate"] = sum(counted) / len(counted)
        out["faults"] = len(counted)
    if normal:
        out["far_normal_test"] = _pooled(normal).far
    if faults:
        out["far_fault_files"] = _pooled(list(faults.values())).far
    return out


def _pooled(results: Sequence[FileResult]) -> Confusion:
    total = Confusion()
    for r in results:
        total = total + r.confusion
    return total


def build_report(summary: dict[str, float | int], results: Sequence[FileResult]) -> Report:
    """The summary's keys, then `skipped` (rows, by reason), `per_file` and, for TEP's
    files, `tep`."""
    report: Report = dict(summary)
    totals = dict.fromkeys(SKIP_REASONS, 0)
    for r in results:
        for reason, n in r.skipped.items():
            totals[reason] = totals.get(reason, 0) + n
    report["skipped"] = totals
    report["per_file"] = [file_row(r) for r in results]
    tep = tep_headline(results)
    if tep is not None:
        report["tep"] = tep
    return report


def format_report(report: Report) -> str:
    """The per-file table, the pooled summary and TEP's headline, as text."""
    rows: list[Report] = report["per_file"]
    width = max([len("file"), *(len(r["file"]) for r in rows)])
    head = f"{'file':<{width}}  {'rows':>6}" + "".join(f"  {k:>9}" for k in FIGURES)
    lines = [head + f"  {'duplicate':>9}  {'late':>6}  {'s':>6}"]
    for r in rows:
        figures = "".join(f"  {r[k]:>9.4f}" for k in FIGURES)
        skip = r["skipped"]
        tail = f"  {skip['duplicate']:>9}  {skip['late']:>6}  {r['seconds']:>6.1f}"
        lines.append(f"{r['file']:<{width}}  {r['rows']:>6}{figures}{tail}")
    lines.append("")
    for key, value in report.items():
        if isinstance(value, float):
            lines.append(f"{key:>13}  {value:.4f}")
        elif isinstance(value, int):
            lines.append(f"{key:>13}  {value}")
    lines.append(f"{'skipped':>13}  " + ", ".join(f"{n} {k}" for k, n in report["skipped"].items()))
    tep = report.get("tep")
    if tep is not None:
        lines += ["", *_tep_lines(tep)]
    return "\n".join(lines)


def _tep_lines(tep: Report) -> list[str]:
    lines = []
    if "mean_detection_rate" in tep:
        lines.append(
            f"TEP mean detection rate {tep['mean_detection_rate']:.4f} over {tep['faults']} "
            "faults (all but 3, 9 and 15)"
        )
    if "far_normal_test" in tep:
        lines.append(f"TEP false alarm rate on {TEP_NORMAL} {tep['far_normal_test']:.4f}")
    if "far_fault_files" in tep:
        lines.append(
            f"TEP false alarm rate on the fault files' normal rows {tep['far_fault_files']:.4f}"
        )
    return lines


def progress_line(done: int, total: int, result: FileResult) -> str:
    """`[3/22] tep/fault02.csv: 960 rows, f1 0.9872, 2.1 s`, then any skipped rows."""
    line = (
        f"[{done}/{total}] {result.name}: {result.rows} rows, f1 {result.confusion.f1:.4f}, "
        f"{result.seconds:.1f} s"
    )
    if result.skipped:
        line += ", skipped " + ", ".join(f"{n} {k}" for k, n in result.skipped.items())
    return line


@contextmanager
def progress(total: int) -> Iterator[Callable[[FileResult], None]]:
    """A rich progress bar when stderr is a terminal; otherwise a line per file on stderr
    (`progress_line`), so that a run in a pipe or a CI log shows where it is. stdout
    carries only the figures."""
    if not sys.stderr.isatty():
        done = count(1)

        def line(result: FileResult) -> None:
            print(progress_line(next(done), total, result), file=sys.stderr, flush=True)

        yield line
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("evaluating", total=total)
        yield lambda _result: bar.advance(task)
