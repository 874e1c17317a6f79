"""`ScoringPass`: one pipeline cycle's windows scored, a large cycle in parts on a thread.

A cycle of `OVERLAP_WINDOWS` or more (a batch's: thousands) is scored part by part on the
scoring thread, the next part's model calls running while the pipeline takes the scores
of the part before: the calls give the GIL up, so the model's time (two thirds of a
batch's pipeline with conv) and the per-window Python overlap.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import Histogram

from service.core.types import FloatArray
from service.scoring.detector import Detector
from service.scoring.stacked import Scored, StackedScorer

OVERLAP_WINDOWS = 2_048
OVERLAP_PARTS = 4

# A cycle's scoring work: each machine's current detector and windows [n, time, sensors].
Work = dict[str, tuple[Detector, FloatArray]]


def _split(work: Work, size: int) -> list[Work]:
    """`work` cut into runs of machines of about `size` windows each."""
    out: list[Work] = [{}]
    windows = 0
    for name, item in work.items():
        if windows >= size:
            out.append({})
            windows = 0
        out[-1][name] = item
        windows += len(item[1])
    return out


class ScoringPass:
    def __init__(self, latency: Histogram) -> None:
        self.scorer = StackedScorer()
        self.latency = latency
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scoring")

    def parts(self, work: Work) -> Iterator[tuple[Work, dict[str, Scored]]]:
        """`work` and its scores, in parts (one part below `OVERLAP_WINDOWS`)."""
        total = sum(len(values) for _, values in work.values())
        if total < OVERLAP_WINDOWS:
            if work:
                yield work, self._timed_score(work)
            return
        # Stack changes (models new to the scorer) on this thread, before any part runs.
        self.scorer.place(work)
        parts = _split(work, math.ceil(total / OVERLAP_PARTS))
        pending = self._thread.submit(self._timed_score, parts[0])
        for k, part in enumerate(parts):
            scored = pending.result()
            if k + 1 < len(parts):
                pending = self._thread.submit(self._timed_score, parts[k + 1])
            yield part, scored

    def shutdown(self) -> None:
        self._thread.shutdown()

    def _timed_score(self, work: Work) -> dict[str, Scored]:
        started = time.perf_counter()
        scored = self.scorer.score(work)
        self.latency.observe(time.perf_counter() - started)
        return scored
