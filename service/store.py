"""Model versions on disk, per machine, under `<state dir>/models/<machine>/`.

Each version is a folder `<n>/` with `weights.safetensors` (the model's tensors), and
`meta.json` (scaler, threshold, sensors, model settings, training facts). A version counts
only once `meta.json` is in place, written last; `current` names the version in use. Every
file is written to a temporary name, fsynced and renamed, so a crash leaves the previous
state whole. Nothing is ever loaded with pickle.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import orjson
import structlog
from pydantic import BaseModel, ConfigDict
from safetensors.torch import load_file, save_file

from service.config import ModelSettings
from service.detector import Detector

log = structlog.get_logger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class StoreError(Exception):
    """A version on disk cannot be used; the message says which and why."""


class VersionMeta(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    sensors: list[str]
    window: int
    model: dict[str, Any]
    mean: list[float]
    std: list[float]
    threshold: float
    version: int
    created_at: float


@dataclass(frozen=True)
class VersionInfo:
    version: int
    created_at: float
    threshold: float
    current: bool
    facts: dict[str, Any]


def machine_dirname(machine: str) -> str:
    """A file name for any machine id: unsafe characters become `%XX`, so no id can name
    a path outside the store (`..`, `/`) and two ids never share a folder."""
    escaped = _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), machine)
    return "%2E%2E" if escaped == ".." else ("%2E" if escaped == "." else escaped)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = root / "models"

    def _dir(self, machine: str) -> Path:
        return self.root / machine_dirname(machine)

    def version_numbers(self, machine: str) -> list[int]:
        folder = self._dir(machine)
        if not folder.is_dir():
            return []
        found = (p for p in folder.iterdir() if p.name.isdigit() and (p / "meta.json").exists())
        return sorted(int(p.name) for p in found)

    def current_version(self, machine: str) -> int | None:
        pointer = self._dir(machine) / "current"
        try:
            return int(pointer.read_text().strip())
        except (OSError, ValueError):
            versions = self.version_numbers(machine)
            return versions[-1] if versions else None

    def save(self, machine: str, detector: Detector, facts: dict[str, Any] | None = None) -> int:
        """Writes `detector` as the machine's next version and makes it current."""
        folder = self._dir(machine)
        folder.mkdir(parents=True, exist_ok=True)
        version = max([0, *self.version_numbers(machine)]) + 1
        target = folder / str(version)
        target.mkdir(exist_ok=True)
        tensors = {k: v.detach().contiguous() for k, v in detector.model.state_dict().items()}
        tmp = target / ".weights.safetensors.tmp"
        save_file(tensors, str(tmp))
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target / "weights.safetensors")
        meta = {**detector.meta(), "version": version, "created_at": time.time(), **(facts or {})}
        _write_atomic(target / "meta.json", orjson.dumps(meta, option=orjson.OPT_INDENT_2))
        _write_atomic(folder / "current", f"{version}\n".encode())
        return version

    def load(self, machine: str, version: int) -> Detector:
        folder = self._dir(machine) / str(version)
        try:
            meta = VersionMeta.model_validate(orjson.loads((folder / "meta.json").read_bytes()))
            weights = load_file(str(folder / "weights.safetensors"))
            settings = ModelSettings.model_validate(meta.model)
            detector = Detector.new(tuple(meta.sensors), meta.window, settings)
            detector.model.load_state_dict(weights)
        except Exception as exc:
            raise StoreError(f"{machine} version {version}: {type(exc).__name__}: {exc}") from exc
        detector.mean = np.asarray(meta.mean, dtype=np.float32)
        detector.std = np.asarray(meta.std, dtype=np.float32)
        detector.threshold = meta.threshold
        detector.version = version
        return detector

    def load_current(self, machine: str) -> Detector | None:
        """The current version, or the newest older one that loads when it does not."""
        current = self.current_version(machine)
        if current is None:
            return None
        candidates = [current] + [v for v in reversed(self.version_numbers(machine)) if v < current]
        for version in candidates:
            try:
                return self.load(machine, version)
            except StoreError as exc:
                log.error(
                    "model_version_unusable", machine=machine, version=version, error=str(exc)
                )
        return None

    def machines(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(unquote(p.name) for p in self.root.iterdir() if p.is_dir())

    def versions(self, machine: str) -> list[VersionInfo]:
        current = self.current_version(machine)
        infos = []
        for v in self.version_numbers(machine):
            meta = orjson.loads((self._dir(machine) / str(v) / "meta.json").read_bytes())
            facts = {k: meta[k] for k in ("reason", "windows", "parent") if k in meta}
            infos.append(VersionInfo(v, meta["created_at"], meta["threshold"], v == current, facts))
        return infos

    def rollback(self, machine: str, version: int | None = None) -> int:
        """Makes `version` (default: the one before current) current; returns it."""
        current = self.current_version(machine)
        older = [v for v in self.version_numbers(machine) if current is None or v < current]
        target = version if version is not None else (older[-1] if older else None)
        if target is None or target not in self.version_numbers(machine):
            raise StoreError(f"{machine}: no version {target} to roll back to")
        self.load(machine, target)  # refuse to point at a version that does not load
        _write_atomic(self._dir(machine) / "current", f"{target}\n".encode())
        return target
