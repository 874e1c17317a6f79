"""`Partition`: one JetStream partition as a replica pulls it, gains it and loses it.

The replica pulls in the priority group `aemon`: NATS pins the partition's consumer to the
first client that pulls and hands it to a waiting one when the pinned client has not
pulled for `nats.pin_timeout`. A message carries the pin it was delivered under, so a new
pin is a takeover (`service.transport.takeover`); a pull answered 423 (pin mismatch) means
the partition went to another replica, whose machines are then released here. A home
partition (p mod replicas = this replica) pinned to another is unpinned, so that a replica
that comes back gets its share back.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import nats
import orjson
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg

from service.core.metrics import Metrics
from service.core.nats_settings import NatsSettings
from service.transport import jetstream_admin
from service.transport.jetstream import GROUP, NANOS, Layout
from service.transport.mqtt import MessageHandler
from service.transport.takeover import Takeover

log = structlog.get_logger(__name__)

# A pull waits at most this long for messages before NATS answers 408 and it pulls again.
PULL_EXPIRES = 1.0
# While the pipeline's queue is fuller than this, pulls wait (JetStream keeps the rest).
ROOM = 0.5
# Pin timeouts after its start before a replica stands by for partitions not its own, so
# that replicas starting together each pin their home partitions first.
STANDBY_AFTER = 2
# Machines remembered per replica (to release them with their partition): a bound, so
# that made-up machine names cannot grow it.
MAX_TRACKED_MACHINES = 65_536
_STATUS_TIMEOUT = "408"
_STATUS_NO_MESSAGES = "404"
_STATUS_PIN_MISMATCH = "423"
_NATS_ERRORS = (TimeoutError, nats.errors.Error, jetstream_admin.JetStreamError)


@dataclass
class Consuming:
    """What the partitions of one replica share."""

    layout: Layout
    settings: NatsSettings
    replica: int
    handler: MessageHandler
    metrics: Metrics
    room: Callable[[], float]  # how full the pipeline's queue is, 0 to 1
    release: Callable[[list[str]], None]  # machines that went to another replica
    paused: threading.Event
    acks: deque[str] = field(default_factory=deque)  # reply subjects to acknowledge
    # Handed on and not yet acknowledged: reply subject -> when (monotonic), kept in
    # progress while the pipeline works, so that only a dead replica's come again.
    inflight: dict[str, float] = field(default_factory=dict)
    owned: set[int] = field(default_factory=set)
    tracked: int = 0
    # Called for each machine first seen in a partition (fetches of its model and alert).
    on_machine: list[Callable[[str], None]] = field(default_factory=list)


@dataclass
class _Pull:
    """One outstanding pull request."""

    batch: int = 0
    count: int = 0
    status: str | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Partition:
    def __init__(self, index: int, shared: Consuming) -> None:
        self.index = index
        self.shared = shared
        s = shared.settings
        self.home = index % s.replicas == shared.replica % s.replicas
        self.pin: str | None = None
        self.machines: set[str] = set()
        self.takeover: Takeover[Msg] | None = None
        self._pull = _Pull()
        layout = shared.layout
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{layout.partitioned}.{layout.consumer(index)}"

    async def serve(self, nc: Client, stopped_within: Callable[[float], Awaitable[bool]]) -> None:
        """Pulls the partition for as long as the input runs."""
        s = self.shared.settings
        if not self.home and await stopped_within(STANDBY_AFTER * s.pin_timeout):
            return

        async def on_message(msg: Msg) -> None:
            self._take(msg)

        subscription = await nc.subscribe(nc.new_inbox(), cb=on_message)
        reclaim_at = time.monotonic() + 2 * s.pin_timeout
        try:
            while True:
                if self.shared.paused.is_set():
                    await asyncio.sleep(0.1)
                    continue
                try:
                    await self._pull_once(nc, subscription.subject)
                    if self.takeover is not None:
                        await self._follow_takeover(nc)
                except Exception:  # a connection gone mid-pull: pull again, never stop
                    self.shared.metrics.callback_errors.inc()
                    log.exception("nats_pull_failed", partition=self.index, retry="in 1 s")
                    await asyncio.sleep(1.0)
                    continue
                status = self._pull.status
                if status == _STATUS_PIN_MISMATCH:
                    self._lose()
                    if not self.home:  # let the home replica, or another, have it
                        await asyncio.sleep(s.pin_timeout)
                elif status not in (None, _STATUS_TIMEOUT, _STATUS_NO_MESSAGES):
                    log.warning("nats_pull_refused", partition=self.index, status=status)
                    await asyncio.sleep(1.0)
                if self.home and self.pin is None and time.monotonic() >= reclaim_at:
                    reclaim_at = time.monotonic() + 2 * s.pin_timeout
                    await self._reclaim(nc)
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def _pull_once(self, nc: Client, inbox: str) -> None:
        pull = self._pull
        # A full pipeline gets one message: a pull that keeps the pin.
        pull.batch = self.shared.settings.pull_batch if await self._wait_for_room() else 1
        pull.count, pull.status = 0, None
        pull.done.clear()
        request: dict[str, Any] = {
            "batch": pull.batch,
            "expires": int(PULL_EXPIRES * NANOS),
            "group": GROUP,
        }
        if self.pin is not None:
            request["id"] = self.pin
        await nc.publish(self._next, orjson.dumps(request), reply=inbox)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(pull.done.wait(), PULL_EXPIRES + 5)

    async def _wait_for_room(self) -> bool:
        """Waits while the pipeline's queue is full, at most a quarter of a pin timeout (a
        pin is kept by pulling, and a loaded box delays this loop); whether it has room.
        JetStream keeps what is not pulled: a busy replica falls behind, sheds nothing."""
        deadline = time.monotonic() + self.shared.settings.pin_timeout / 4
        while self.shared.room() > ROOM:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def _take(self, msg: Msg) -> None:
        """A message of a pull: a status ends the pull, readings go on (or are held)."""
        pull, headers = self._pull, msg.headers
        if headers and not msg.data and "Status" in headers:
            pull.status = headers["Status"]
            pull.done.set()
            return
        pin = headers.get("Nats-Pin-Id") if headers else None
        if pin is not None and pin != self.pin:
            self._gain(pin)
        pull.count += 1
        if pull.count >= pull.batch:
            pull.done.set()
        delivered, sequence = delivery(msg.reply)
        if delivered > 1:
            self.shared.metrics.redeliveries.inc()
        if self.takeover is not None:
            self.takeover.hold(sequence, msg, again=delivered > 1)
        else:
            self._hand_on(msg)

    def _hand_on(self, msg: Msg) -> None:
        """The message to the handler, with its acknowledgement."""
        shared = self.shared
        self._track(msg.subject)
        reply, acks = msg.reply, shared.acks
        topic = shared.layout.topic_of(msg.subject)
        shared.inflight[reply] = time.monotonic()
        try:
            shared.handler(topic, msg.data, time.time(), lambda: acks.append(reply))
        except Exception:
            acks.append(reply)
            shared.metrics.callback_errors.inc()
            log.exception("nats_on_message_failed", subject=msg.subject)

    def _track(self, subject: str) -> None:
        machine = self.shared.layout.machine_of(subject)
        if machine is None or machine in self.machines:
            return
        if self.shared.tracked < MAX_TRACKED_MACHINES:
            self.machines.add(machine)
            self.shared.tracked += 1
        for listener in self.shared.on_machine:
            listener(machine)

    def _gain(self, pin: str) -> None:
        self.pin = pin
        s = self.shared.settings
        # Pending messages are counted at the end of this pull (foreign -1 until then).
        self.takeover = Takeover(-1, time.monotonic() + s.ack_wait + 2 * PULL_EXPIRES)
        self._owned(True)
        self.shared.metrics.partition_moves.labels(direction="taken").inc()
        log.info("partition_taken", partition=self.index, replica=self.shared.replica)

    async def _follow_takeover(self, nc: Client) -> None:
        """Hands on what the takeover held once the previous holder's messages came again;
        keeps the held ones' ack waits running meanwhile."""
        takeover = self.takeover
        assert takeover is not None
        if takeover.foreign < 0:
            try:
                info = await jetstream_admin.consumer_info(nc, self.shared.layout, self.index)
                takeover.foreign = max(0, int(info.get("num_ack_pending", 0)) - len(takeover))
            except _NATS_ERRORS as exc:
                log.warning("takeover_pending_unknown", partition=self.index, error=str(exc))
                takeover.foreign = 0
        if not takeover.done(time.monotonic()):
            for msg in takeover.messages():
                await nc.publish(msg.reply, b"+WPI")
            return
        self.takeover = None
        held = takeover.release()
        log.info("partition_caught_up", partition=self.index, held=len(held), left=takeover.foreign)
        for msg in held:
            self._hand_on(msg)

    def _lose(self) -> None:
        """Pinned to another replica: its machines are released here (their windows,
        alerts and series), after the readings already queued."""
        if self.pin is None:
            return
        self.pin = None
        self.takeover = None  # what it held is unacknowledged: it goes to the new holder
        machines, self.machines = sorted(self.machines), set()
        self.shared.tracked -= len(machines)
        self._owned(False)
        self.shared.metrics.partition_moves.labels(direction="lost").inc()
        replica = self.shared.replica
        log.warning("partition_lost", partition=self.index, replica=replica, machines=len(machines))
        if machines:
            self.shared.release(machines)

    def _owned(self, owned: bool) -> None:
        owners = self.shared.owned
        owners.add(self.index) if owned else owners.discard(self.index)
        self.shared.metrics.partitions_owned.set(len(owners))

    async def _reclaim(self, nc: Client) -> None:
        """A home partition pinned to another replica is unpinned, so that it comes home."""
        layout = self.shared.layout
        try:
            info = await jetstream_admin.consumer_info(nc, layout, self.index)
            if jetstream_admin.pinned(info) and self.pin is None:
                await jetstream_admin.unpin(nc, layout, self.index)
                log.info("partition_reclaimed", partition=self.index, replica=self.shared.replica)
        except _NATS_ERRORS as exc:
            log.warning("partition_reclaim_failed", partition=self.index, error=str(exc))


def delivery(reply: str) -> tuple[int, int]:
    """How many times JetStream delivered the message, and its stream sequence, from its
    reply subject `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>...`.

    >>> delivery("$JS.ACK.PLANT_BY_MACHINE.aemon-0.2.517.9.1796656010801448458.0")
    (2, 517)
    """
    parts = reply.split(".", 7)
    try:
        return int(parts[4]), int(parts[5])
    except (IndexError, ValueError):
        return 1, 0
