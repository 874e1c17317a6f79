"""`FileResult`: what evaluating one labelled file gives, for the summary and the plots."""

from __future__ import annotations

from dataclasses import dataclass, field

from service.core.types import FloatArray
from service.offline.readers import BoolArray, TimeArray
from service.offline.scoring_metrics import Confusion


@dataclass
class FileResult:
    name: str
    ts: TimeArray  # test rows
    truth: BoolArray
    predicted: BoolArray
    changepoints: list[float]
    threshold: float
    sensors: tuple[str, ...] = field(repr=False)
    values: FloatArray = field(repr=False)  # test rows' sensor values, for plots
    score_ts: TimeArray = field(repr=False)  # scored windows' end times and scores, for plots
    scores: FloatArray = field(repr=False)
    # Rows of the file not taken onto the grid, by the windower's reason (duplicate, late).
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0  # the file's replay, its detector's fit included

    @property
    def rows(self) -> int:
        """Test rows scored."""
        return len(self.ts)

    @property
    def confusion(self) -> Confusion:
        return Confusion.of(self.truth, self.predicted)
