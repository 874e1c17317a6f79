"""`SharedAlertJournal`: the firing alerts of replicas sharing a plant (`input.kind =
"nats"`), in a NATS key-value bucket (`aemon-alerts`, one key per machine), so that a
machine that moves to another replica takes its firing alert along: the same id and start
go on there and end there, instead of a retained `firing` that nobody resolves, or the same
fault raised again under a new id. A replica's start takes up nothing: which machines it
scores is known only as their readings come, and each is looked up then.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import asdict

import orjson
import structlog
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from service.core.types import AlertEvent, AlertState
from service.stream.alert_journal import AlertJournal, event_from
from service.transport.nats_input import NatsInput, Prefetches

log = structlog.get_logger(__name__)

BUCKET = "aemon-alerts"
# Seconds the pipeline waits for a machine's alert when it takes the machine over.
TIMEOUT = 5.0


def key_of(machine: str) -> str:
    """A key-value key for any machine name (keys allow only [-/_=.a-zA-Z0-9]).

    >>> key_of("press 7/a")
    'cHJlc3MgNy9h'
    """
    return base64.urlsafe_b64encode(machine.encode()).decode().rstrip("=")


class SharedAlertJournal(AlertJournal):
    def __init__(self, nats: NatsInput) -> None:
        super().__init__(None)
        self.nats = nats
        self._bucket: KeyValue | None = None
        self._order: asyncio.Lock | None = None
        self._looked_up = Prefetches(nats, self._get)
        nats.on_machine(self._looked_up.start)

    def record(self, event: AlertEvent) -> None:
        """Puts a firing alert, deletes a resolved one; not waited for (the pipeline's
        thread does not wait on the network), sent in the order recorded."""
        if event.state == AlertState.FIRING:
            self.nats.submit(self._put(event))
        else:
            self.nats.submit(self._delete(event.machine))

    def forget(self, machine: str) -> None:
        self.nats.submit(self._delete(machine))

    def firing(self, machine: str) -> AlertEvent | None:
        try:
            return self._looked_up.take(machine, TIMEOUT)
        except Exception as exc:  # the machine goes on without the alert it had
            log.warning("shared_alert_unknown", machine=machine, error=repr(exc))
            return None

    async def _kv(self) -> KeyValue:
        if self._bucket is None:
            self._bucket = await self.nats.key_value(BUCKET)
        return self._bucket

    def _lock(self) -> asyncio.Lock:
        if self._order is None:
            self._order = asyncio.Lock()
        return self._order

    async def _put(self, event: AlertEvent) -> None:
        async with self._lock():
            await (await self._kv()).put(key_of(event.machine), orjson.dumps(asdict(event)))

    async def _delete(self, machine: str) -> None:
        async with self._lock():
            kv = await self._kv()
            try:
                await kv.get(key_of(machine))
            except KeyNotFoundError:
                return
            await kv.delete(key_of(machine))

    async def _get(self, machine: str) -> AlertEvent | None:
        try:
            entry = await (await self._kv()).get(key_of(machine))
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return event_from(orjson.loads(entry.value))
