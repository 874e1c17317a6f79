"""`SharedModelStore`: the model store of replicas sharing a plant (`input.kind = "nats"`).

Every version saved is copied to a JetStream object store (`aemon-models`), and the state
directory is its cache: when a replica takes over a machine, it fetches the machine's
current version if the store has a newer one than its cache, so it scores from that model
at once instead of learning again. A version is uploaded weights first, then `meta.json`,
then the machine's `current`, each object whole or not at all (NATS's object store writes
an object's chunks, then its record): a replica that reads `current` finds the version
complete. A fetch is written to the cache as a local save is (`service.learning.store`),
and the loaded weights are checked against the SHA-256 of `meta.json` as any version is.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog
from nats.js.errors import ObjectNotFoundError
from nats.js.object_store import ObjectStore

from service.core.metrics import Metrics
from service.learning.store import (
    CURRENT,
    META,
    WEIGHTS,
    ModelStore,
    machine_dirname,
    make_dirs,
    write_atomic,
)
from service.learning.store_meta import TrainingFacts
from service.scoring.detector import Detector
from service.transport.nats_input import NatsInput, Prefetches

log = structlog.get_logger(__name__)

BUCKET = "aemon-models"
# Seconds a copy to or from the object store may take before the replica goes on with its
# cache alone (the pipeline thread waits for a fetch when a machine arrives).
TIMEOUT = 10.0


class SharedModelStore(ModelStore):
    def __init__(self, root: Path, nats: NatsInput, metrics: Metrics) -> None:
        super().__init__(root)
        self.nats = nats
        self.metrics = metrics
        self._bucket: ObjectStore | None = None
        self._fetches = Prefetches(nats, self._fetch)
        nats.on_machine(self._fetches.start)
        for operation in ("save", "fetch"):
            metrics.shared_model_failures.labels(operation=operation)

    def save(
        self,
        machine: str,
        detector: Detector,
        facts: TrainingFacts | Mapping[str, Any] | None = None,
    ) -> int:
        version = super().save(machine, detector, facts)
        folder = self.machine_dir(machine) / str(version)
        try:
            weights, meta = (folder / WEIGHTS).read_bytes(), (folder / META).read_bytes()
            self.nats.call(self._upload(machine, version, weights, meta), TIMEOUT)
        except Exception as exc:  # the local save stands; the next save shares again
            self._failed("save", machine, exc)
        return version

    def load_current(self, machine: str) -> Detector | None:
        try:
            self._fetches.take(machine, TIMEOUT)
        except Exception as exc:  # the cache, if any, is used
            self._failed("fetch", machine, exc)
        return super().load_current(machine)

    def _failed(self, operation: str, machine: str, exc: BaseException) -> None:
        self.metrics.shared_model_failures.labels(operation=operation).inc()
        log.warning("shared_model_failed", operation=operation, machine=machine, error=repr(exc))

    async def _store(self) -> ObjectStore:
        if self._bucket is None:
            self._bucket = await self.nats.object_store(BUCKET)
        return self._bucket

    async def _upload(self, machine: str, version: int, weights: bytes, meta: bytes) -> None:
        store = await self._store()
        prefix = machine_dirname(machine)
        await store.put(f"{prefix}/{version}/{WEIGHTS}", weights)
        await store.put(f"{prefix}/{version}/{META}", meta)
        await store.put(f"{prefix}/{CURRENT}", str(version).encode())
        log.info("model_shared", machine=machine, version=version)

    async def _fetch(self, machine: str) -> None:
        """Copies the shared current version into the cache when it is newer."""
        store = await self._store()
        prefix = machine_dirname(machine)
        try:
            shared = int((await store.get(f"{prefix}/{CURRENT}")).data or b"0")
        except ObjectNotFoundError:
            return
        local = self.current_version(machine) or 0
        if shared <= local and shared in self.version_numbers(machine):
            return
        weights = (await store.get(f"{prefix}/{shared}/{WEIGHTS}")).data or b""
        meta = (await store.get(f"{prefix}/{shared}/{META}")).data or b""
        folder = self.machine_dir(machine)
        make_dirs(folder / str(shared))
        write_atomic(folder / str(shared) / WEIGHTS, weights)
        write_atomic(folder / str(shared) / META, meta)
        write_atomic(folder / CURRENT, f"{shared}\n".encode())
        log.info("model_fetched", machine=machine, version=shared, cached=local or None)
