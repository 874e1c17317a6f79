"""What is saved beside a model version's weights (`meta.json`), checked by pydantic."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TrainingFacts(BaseModel):
    """How a version came about; shown by `aemon models list`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    reason: str = Field("unspecified", description="initial, promoted, train, rollback, ...")
    windows: int | None = Field(None, ge=0, description="Windows the model was trained on.")
    final_loss: float | None = Field(None, description="Last epoch's mean training loss.")
    parent: int | None = Field(None, ge=1, description="Version it was fine-tuned from.")


class DetectorMeta(BaseModel):
    """`Detector.meta()`, checked; fields added to it later pass through."""

    model_config = ConfigDict(frozen=True, extra="allow")
    sensors: list[str] = Field(min_length=1)
    window: int = Field(ge=1)
    model: dict[str, Any]
    mean: list[float]
    std: list[float]
    threshold: float
    version: int
    base_threshold: float | None = None

    @model_validator(mode="after")
    def _consistent(self) -> DetectorMeta:
        n = len(self.sensors)
        if len(self.mean) != n or len(self.std) != n:
            raise ValueError(f"scaler has {len(self.mean)}/{len(self.std)} values, {n} sensors")
        values = [*self.mean, *self.std, self.threshold, self.base_threshold or 0.0]
        if not all(abs(v) < float("inf") for v in values):
            raise ValueError("scaler and threshold must be finite")
        if min(self.std) <= 0:
            raise ValueError("scaler std must be positive")
        return self


class VersionMeta(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    format: Literal[1]
    machine: str
    version: int = Field(ge=1)
    created_at: float
    weights_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    facts: TrainingFacts
    detector: DetectorMeta


@dataclass(frozen=True)
class VersionInfo:
    version: int
    created_at: float
    threshold: float
    current: bool
    facts: dict[str, Any]
