"""Model versions on disk, per machine, under `<state dir>/models/<machine>/`.

Each version is a folder `<n>/` holding `weights.safetensors` (the model's tensors) and
`meta.json` (scaler, threshold, sensors, model settings, training facts and the SHA-256 of
the weights). `meta.json` is written last, so it is the version's completion marker: a
folder without it is the remains of an interrupted save and does not count. `current`
names the version in use. Every file is written to a temporary name in its own folder,
fsynced, renamed over the old one, and the folder fsynced, so a crash at any point leaves
the previous state whole. Nothing is ever loaded with pickle: tensors come from
safetensors, everything else from JSON checked by pydantic.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import orjson
import structlog
from pydantic import ValidationError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from service.learning.store_meta import DetectorMeta, TrainingFacts, VersionInfo, VersionMeta
from service.scoring.detector import Detector

log = structlog.get_logger(__name__)

WEIGHTS = "weights.safetensors"
META = "meta.json"
CURRENT = "current"
FORGOTTEN = ".forgotten"  # a hidden folder, which no machine name can map to
FORMAT = 1
# ext4 and xfs allow 255 bytes per name; the rest is headroom for temporary names.
MAX_DIRNAME = 200
_PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


class StoreError(OSError):
    """A version cannot be written, read or used. An `OSError`, so that callers that handle
    a failed write (a full disk) handle a refused one the same way."""

    def __init__(
        self, machine: str, version: int | None, reason: str, path: Path | None = None
    ) -> None:
        where = machine if version is None else f"{machine} version {version}"
        super().__init__(f"{where}: {reason}")
        self.machine = machine
        self.version = version
        self.reason = reason
        self.path = path  # the file (or version folder) at fault


def machine_dirname(machine: str) -> str:
    """A folder name for any machine id: characters other than `[A-Za-z0-9_.-]`, and a
    leading dot, become `%XX` per UTF-8 byte. No id can then name a path outside the store
    (`..`, `/`, NUL) or a hidden folder, and two ids never share one (`%` itself is escaped).
    An MQTT topic level may be far longer than a file name can: such a name keeps its first
    characters and ends in `~` and a hash of the whole (`~` is escaped elsewhere).
    """
    if not machine:
        raise StoreError(repr(machine), None, "an empty machine name has no folder")
    escaped = "".join(
        c if c in _PLAIN and not (i == 0 and c == ".") else _percent(c)
        for i, c in enumerate(machine)
    )
    if len(escaped) > MAX_DIRNAME:
        digest = hashlib.sha256(machine.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        escaped = f"{escaped[: MAX_DIRNAME - len(digest) - 1]}~{digest}"
    return escaped


def _percent(char: str) -> str:
    return "".join(f"%{b:02X}" for b in char.encode("utf-8", "surrogatepass"))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """After a crash, `path` holds either its old content or `data`, never a mix."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def make_dirs(path: Path) -> None:
    """Creates `path` and its missing parents, each made durable in its own parent."""
    if path.is_dir():
        return
    make_dirs(path.parent)
    path.mkdir(exist_ok=True)
    _fsync_dir(path.parent)


class ModelStore:
    """Versions of every machine's detector under `<root>/models/`. Thread-safe within one
    process; `unusable` counts, per machine, versions that failed to load."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root) / "models"
        self.unusable: Counter[str] = Counter()
        self._lock = threading.Lock()

    def machine_dir(self, machine: str) -> Path:
        return self.root / machine_dirname(machine)

    def version_numbers(self, machine: str) -> list[int]:
        """Complete versions (their `meta.json` is in place), oldest first."""
        folder = _folder_or_none(self, machine)
        if folder is None or not folder.is_dir():
            return []
        found = (p for p in folder.iterdir() if _is_version_name(p.name) and (p / META).exists())
        return sorted(int(p.name) for p in found)

    def current_version(self, machine: str) -> int | None:
        """The version `current` names; the newest complete one if it names none."""
        try:
            return int((self.machine_dir(machine) / CURRENT).read_text().strip())
        except (OSError, ValueError):  # StoreError (a name with no folder) is an OSError
            versions = self.version_numbers(machine)
            return versions[-1] if versions else None

    def save(
        self,
        machine: str,
        detector: Detector,
        facts: TrainingFacts | Mapping[str, Any] | None = None,
    ) -> int:
        """Writes `detector` as the machine's next version (newest + 1) and makes it current.
        `facts` may be a dict of `TrainingFacts` fields."""
        folder = self.machine_dir(machine)
        tensors = {k: v.detach().contiguous() for k, v in detector.model.state_dict().items()}
        data = save_tensors(tensors)
        with self._lock:
            make_dirs(folder)
            version = max([0, *self.version_numbers(machine)]) + 1
            meta = _version_meta(machine, version, detector, facts, data)
            target = folder / str(version)
            # A folder of this number without meta.json is an interrupted save: reuse it.
            make_dirs(target)
            write_atomic(target / WEIGHTS, data)
            write_atomic(target / META, meta)
            write_atomic(folder / CURRENT, f"{version}\n".encode())
        log.info("model_saved", machine=machine, version=version, bytes=len(data))
        return version

    def load(self, machine: str, version: int) -> Detector:
        """That version, or `StoreError` saying why it cannot be used."""
        folder = self.machine_dir(machine) / str(version)
        meta_path, weights_path = folder / META, folder / WEIGHTS
        try:
            meta = VersionMeta.model_validate(orjson.loads(meta_path.read_bytes()))
        except (OSError, orjson.JSONDecodeError, ValidationError) as exc:
            raise StoreError(machine, version, _describe(exc), meta_path) from exc
        if (meta.machine, meta.version) != (machine, version):
            reason = f"meta.json is {meta.machine} v{meta.version}"
            raise StoreError(machine, version, reason, meta_path)
        try:
            data = weights_path.read_bytes()
        except OSError as exc:
            raise StoreError(machine, version, _describe(exc), weights_path) from exc
        if hashlib.sha256(data).hexdigest() != meta.weights_sha256:
            reason = f"{WEIGHTS} does not match its SHA-256 (corrupt)"
            raise StoreError(machine, version, reason, weights_path)
        try:
            return Detector.from_state(meta.detector.model_dump(), load_tensors(data))
        except Exception as exc:  # whatever fails to decode makes the version unusable
            raise StoreError(machine, version, _describe(exc), folder) from exc

    def load_current(self, machine: str) -> Detector | None:
        """The current version; if it cannot be used, the newest older one that can (each
        failure logged and counted). None when no version can be used."""
        current = self.current_version(machine)
        if current is None:
            return None
        older = [v for v in reversed(self.version_numbers(machine)) if v < current]
        for version in [current, *older]:
            try:
                detector = self.load(machine, version)
            except StoreError as exc:
                self.unusable[machine] += 1
                log.error(
                    "model_version_unusable",
                    machine=machine,
                    version=version,
                    reason=exc.reason,
                    path=str(exc.path),
                )
                continue
            if version != current:
                log.warning(
                    "model_version_fallback", machine=machine, current=current, loaded=version
                )
            return detector
        log.error("model_no_usable_version", machine=machine, current=current)
        return None

    def versions(self, machine: str) -> list[VersionInfo]:
        """Complete versions, oldest first; one whose meta.json is unreadable is left out."""
        current = self.current_version(machine)
        infos = []
        for v in self.version_numbers(machine):
            path = self.machine_dir(machine) / str(v) / META
            try:
                meta = VersionMeta.model_validate(orjson.loads(path.read_bytes()))
            except (OSError, orjson.JSONDecodeError, ValidationError) as exc:
                log.error(
                    "model_version_unusable", machine=machine, version=v, reason=_describe(exc)
                )
                continue
            facts = meta.facts.model_dump(exclude_none=True)
            infos.append(
                VersionInfo(v, meta.created_at, meta.detector.threshold, v == current, facts)
            )
        return infos

    def rollback(self, machine: str, version: int | None = None) -> int:
        """Makes `version` current, by default the newest usable one before the current.
        Refuses a version that does not load. Returns the version made current."""
        with self._lock:
            current = self.current_version(machine)
            complete = self.version_numbers(machine)
            if version is not None:
                if version not in complete:
                    raise StoreError(machine, version, "no such complete version")
                candidates = [version]
            else:
                candidates = [v for v in reversed(complete) if current is None or v < current]
                if not candidates:
                    raise StoreError(machine, current, "no older version to roll back to")
            errors = []
            for candidate in candidates:
                try:
                    self.load(machine, candidate)
                except StoreError as exc:
                    errors.append(exc.reason)
                    continue
                write_atomic(self.machine_dir(machine) / CURRENT, f"{candidate}\n".encode())
                log.info("model_rolled_back", machine=machine, previous=current, current=candidate)
                return candidate
        raise StoreError(
            machine, version, "no usable version to roll back to: " + "; ".join(errors)
        )

    def machines(self) -> list[str]:
        """Machines with at least one complete version."""
        if not self.root.is_dir():
            return []
        names = []
        for path in self.root.iterdir():
            name = self._name_of(path) if path.is_dir() else None
            if name is not None and self.version_numbers(name):
                names.append(name)
        return sorted(names)

    def forget(self, machine: str) -> Path | None:
        """Moves the machine's versions aside, under `.forgotten/` (not deleted: a forgotten
        machine's models can still be looked at or moved back). The new place, or None when
        it had none."""
        folder = _folder_or_none(self, machine)
        if folder is None or not folder.is_dir():
            return None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.root / FORGOTTEN / f"{folder.name}-{stamp}"
        with self._lock:
            make_dirs(aside.parent)
            folder.rename(aside)
            _fsync_dir(self.root)
        log.info("models_moved_aside", machine=machine, to=str(aside))
        return aside

    def _name_of(self, folder: Path) -> str | None:
        """The machine a folder holds; None for a folder this store did not name."""
        if "~" not in folder.name:
            name = unquote(folder.name)
        else:  # a hashed long name: the whole name is in the versions' meta.json
            metas = sorted(folder.glob(f"*/{META}"), key=lambda p: p.stat().st_mtime)
            try:
                name = str(orjson.loads(metas[-1].read_bytes())["machine"])
            except (IndexError, OSError, orjson.JSONDecodeError, KeyError, TypeError):
                return None
        return name if _dirname_or_none(name) == folder.name else None


def _version_meta(
    machine: str,
    version: int,
    detector: Detector,
    facts: TrainingFacts | Mapping[str, Any] | None,
    weights: bytes,
) -> bytes:
    """meta.json's content, validated before anything is written: an unusable version
    (a NaN scaler, an infinite threshold) is refused rather than saved."""
    try:
        meta = VersionMeta(
            format=FORMAT,
            machine=machine,
            version=version,
            created_at=time.time(),
            weights_sha256=hashlib.sha256(weights).hexdigest(),
            facts=TrainingFacts.model_validate(facts or {}),
            detector=DetectorMeta.model_validate({**detector.meta(), "version": version}),
        )
    except ValidationError as exc:
        raise StoreError(machine, version, "refused: " + _describe(exc)) from exc
    return orjson.dumps(meta.model_dump(mode="json"), option=orjson.OPT_INDENT_2)


def _is_version_name(name: str) -> bool:
    return name.isascii() and name.isdigit() and str(int(name)) == name and int(name) > 0


def _folder_or_none(store: ModelStore, machine: str) -> Path | None:
    try:
        return store.machine_dir(machine)
    except StoreError:
        return None


def _dirname_or_none(machine: str) -> str | None:
    try:
        return machine_dirname(machine)
    except StoreError:
        return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return (
            f"{exc.title} invalid at {where or 'top'}: {first['msg']} ({exc.error_count()} errors)"
        )
    if isinstance(exc, OSError) and exc.strerror:
        return f"{Path(exc.filename).name if exc.filename else 'file'}: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}"
