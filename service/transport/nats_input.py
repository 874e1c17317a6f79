"""`NatsInput`: readings from JetStream partitions, each pinned by NATS to one replica.

A thread of its own runs an asyncio loop with one NATS connection, and on it a pull loop
per partition (`service.transport.partition`): ownership moves by the server's mechanism,
pinned priority groups, not by a protocol of aemon's.

A message is handed to the same handler as an MQTT message (topic, payload, time, ack),
on this thread only; its acknowledgement, called once its readings are in their windows,
is queued and sent from the loop. A message not acknowledged within `nats.ack_wait` is
delivered again (to whoever holds the partition then), and readings already taken in are
rejected as duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

import nats
import structlog
from nats.aio.client import Client
from nats.js.client import JetStreamContext
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from service.core.config import Settings
from service.core.metrics import Metrics
from service.transport import jetstream_admin
from service.transport.jetstream import Layout
from service.transport.mqtt import MessageHandler
from service.transport.partition import Consuming, Partition

log = structlog.get_logger(__name__)

T = TypeVar("T")
# How often queued acknowledgements are sent: well within ack_wait, and a send per cycle
# of the pipeline rather than per message.
ACK_INTERVAL = 0.05
# Look-ups of machines' models and alerts waiting for the pipeline, at most.
MAX_PREFETCHES = 65_536
# Seconds between attempts to put the streams and consumers in place.
DECLARE_RETRY = 2.0
_ORDINAL = re.compile(r"-(\d+)$")


def replica_index(configured: int | None) -> int:
    """`nats.replica`, else the number ending the host name (`aemon-2`), else 0."""
    if configured is not None:
        return configured
    found = _ORDINAL.search(socket.gethostname())
    return int(found[1]) if found else 0


class NatsInput:
    """Consumes the plant's readings from JetStream; the transport's `connected`,
    `subscribed`, `last_error` and thread liveness as `MqttClient` has them."""

    def __init__(
        self,
        settings: Settings,
        handler: MessageHandler,
        metrics: Metrics,
        room: Callable[[], float],
        release: Callable[[list[str]], None],
    ) -> None:
        self.settings = settings.nats
        n = self.settings
        self.layout = Layout(n.stream, settings.mqtt.topics, n.partitions, n.stream_replicas)
        self.metrics = metrics
        self.replica = replica_index(self.settings.replica)
        self.connected = threading.Event()
        self.subscribed = threading.Event()  # streams and consumers are in place
        self.last_error: str | None = None
        self._paused = threading.Event()
        self.shared = Consuming(
            self.layout, self.settings, self.replica, handler, metrics, room, release, self._paused
        )
        self.partitions = [Partition(p, self.shared) for p in range(self.settings.partitions)]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._nc: Client | None = None
        self._thread = threading.Thread(target=self._run, name="nats", daemon=True)
        self._started = False
        for direction in ("taken", "lost"):
            metrics.partition_moves.labels(direction=direction)

    # -- other threads ----------------------------------------------------------------------
    def start(self) -> None:
        log.info(
            "nats_connecting",
            servers=list(self.settings.servers),
            replica=self.replica,
            replicas=self.settings.replicas,
            partitions=self.settings.partitions,
        )
        self._started = True
        self._thread.start()

    def pause_input(self) -> None:
        """Stop pulling (first step of shutdown): what is not pulled stays in the stream."""
        self._paused.set()
        self.subscribed.clear()

    def stop(self, deadline: float) -> None:
        """Sends the acknowledgements queued, unpins this replica's partitions (a standby
        takes them over at once) and closes, by `deadline` (monotonic)."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and self._thread.is_alive():
            loop.call_soon_threadsafe(stop.set)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            log.warning("thread_not_stopped", thread="nats")
        self.connected.clear()
        self.metrics.nats_connected.set(0)

    def network_thread_alive(self) -> bool:
        return self._thread.is_alive() or not self._started

    def call(self, work: Coroutine[Any, Any, T], timeout: float) -> T:
        """Runs `work` on the connection's loop from another thread; its result."""
        loop = self._loop
        if loop is None or not self.connected.is_set():
            work.close()
            raise ConnectionError("not connected to NATS")
        return asyncio.run_coroutine_threadsafe(work, loop).result(timeout)

    def submit(self, work: Coroutine[Any, Any, None]) -> None:
        """Runs `work` on the connection's loop, not waited for; a failure is logged."""
        loop = self._loop
        if loop is None:
            work.close()
            log.warning("nats_work_dropped", reason="not connected")
            return
        asyncio.run_coroutine_threadsafe(work, loop).add_done_callback(_log_failure)

    async def object_store(self, bucket: str) -> ObjectStore:
        """JetStream's object store `bucket`, made if missing (`nats.stream_replicas`)."""
        js = self._jetstream()
        try:
            return await js.object_store(bucket)
        except BucketNotFoundError:
            return await js.create_object_store(bucket, replicas=self.settings.stream_replicas)

    async def key_value(self, bucket: str) -> KeyValue:
        """JetStream's key-value bucket `bucket`, made if missing."""
        js = self._jetstream()
        try:
            return await js.key_value(bucket)
        except BucketNotFoundError:
            replicas = self.settings.stream_replicas
            return await js.create_key_value(bucket=bucket, replicas=replicas)

    def _jetstream(self) -> JetStreamContext:
        if self._nc is None:
            raise ConnectionError("not connected to NATS")
        return self._nc.jetstream()

    def owned(self) -> list[int]:
        return sorted(self.shared.owned)

    # -- the loop's thread ------------------------------------------------------------------
    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception:
            self.metrics.thread_failures.labels(thread="nats").inc()
            log.exception("thread_failed", thread="nats")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        nc = await self._connect()
        if nc is None:
            return
        self._nc = nc
        await self._on_connected()
        while not await self._declare(nc):
            if await self._stopped_within(DECLARE_RETRY):
                await nc.close()
                return
        self.subscribed.set()
        tasks = [asyncio.create_task(p.serve(nc, self._stopped_within)) for p in self.partitions]
        tasks.append(asyncio.create_task(self._send_acks(nc)))
        await self._stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._flush_acks(nc)
        await self._unpin_owned(nc)
        await nc.close()

    async def _stopped_within(self, seconds: float) -> bool:
        assert self._stop is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        return self._stop.is_set()

    async def _connect(self) -> Client | None:
        """Connects, retrying with backoff until stopped; None when stopped first."""
        s = self.settings
        delay = 1.0
        attempt = 0
        while True:
            attempt += 1
            try:
                return await nats.connect(
                    list(s.servers),
                    name=f"aemon-{self.replica}",
                    user=s.user,
                    password=s.password_file.read_text().strip() if s.password_file else None,
                    tls=ssl.create_default_context(cafile=str(s.ca_file)) if s.ca_file else None,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    connect_timeout=5,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_connected,
                    error_cb=self._on_error,
                    closed_cb=self._on_closed,
                )
            except Exception as exc:  # nats raises several kinds; every one is retried
                self.last_error = f"connection failed: {exc!r}"
                log.warning("nats_connect_failed", error=repr(exc), attempt=attempt)
            if await self._stopped_within(delay):
                return None
            delay = min(delay * 2, 30.0)

    async def _on_connected(self) -> None:
        self.connected.set()
        self.last_error = None
        self.metrics.nats_connected.set(1)
        url = self._nc.connected_url if self._nc else None
        log.info("nats_connected", server=url.netloc if url else None)

    async def _on_disconnected(self) -> None:
        self.connected.clear()
        self.metrics.nats_connected.set(0)
        if not self._paused.is_set():  # not the close of a stop
            log.warning("nats_disconnected", retry="reconnects, every second")

    async def _on_error(self, exc: Exception) -> None:
        self.last_error = repr(exc)
        log.warning("nats_error", error=repr(exc))

    async def _on_closed(self) -> None:
        self.connected.clear()
        self.metrics.nats_connected.set(0)

    async def _declare(self, nc: Client) -> bool:
        try:
            await jetstream_admin.declare(nc, self.layout, self.settings)
        except (TimeoutError, nats.errors.Error, jetstream_admin.JetStreamError) as exc:
            self.last_error = f"JetStream not ready: {exc}"
            log.error("nats_declare_failed", error=str(exc), retry=f"in {DECLARE_RETRY} s")
            return False
        layout = self.layout
        log.info(
            "nats_streams_ready",
            stream=layout.stream,
            partitioned=layout.partitioned,
            subjects=layout.subjects(),
            partitions=layout.partitions,
        )
        return True

    async def _send_acks(self, nc: Client) -> None:
        in_progress_at = time.monotonic()
        while True:
            await asyncio.sleep(ACK_INTERVAL)
            await self._flush_acks(nc)
            if time.monotonic() >= in_progress_at:
                in_progress_at = time.monotonic() + self.settings.ack_wait / 3
                await self._still_working(nc)

    async def _flush_acks(self, nc: Client) -> None:
        acks, inflight = self.shared.acks, self.shared.inflight
        while acks:
            reply = acks.popleft()
            inflight.pop(reply, None)
            await nc.publish(reply, b"+ACK")

    async def _still_working(self, nc: Client) -> None:
        """Messages handed on for a third of the ack wait are reported in progress: the
        pipeline may be busy (a takeover loading models), and JetStream must deliver again
        only what a replica that died held."""
        older = time.monotonic() - self.settings.ack_wait / 3
        for reply, since in list(self.shared.inflight.items()):
            if since <= older:
                await nc.publish(reply, b"+WPI")

    def on_machine(self, prefetch: Callable[[str], None]) -> None:
        """`prefetch` is called on this input's thread for each machine it first sees."""
        self.shared.on_machine.append(prefetch)

    async def _unpin_owned(self, nc: Client) -> None:
        """On a clean stop: a standby takes the partitions now, not after a pin timeout."""
        with contextlib.suppress(Exception):
            await nc.flush(timeout=2)
            for partition in self.owned():
                await jetstream_admin.unpin(nc, self.layout, partition)
            log.info("partitions_unpinned", partitions=self.owned(), replica=self.replica)


def _log_failure(done: Future[None]) -> None:
    if not done.cancelled() and (exc := done.exception()) is not None:
        log.warning("nats_work_failed", error=repr(exc))


class Prefetches(Generic[T]):
    """Look-ups started on the input's loop when a machine's first message comes, taken
    (waited for) by the pipeline when it adds the machine: a takeover's machines are looked
    up together, not one by one on the pipeline's thread. At most `MAX_PREFETCHES` wait,
    so that made-up machine names cannot grow it."""

    def __init__(self, nats: NatsInput, look_up: Callable[[str], Coroutine[Any, Any, T]]):
        self.nats = nats
        self.look_up = look_up
        self._started: dict[str, Future[T]] = {}

    def start(self, machine: str) -> None:
        """On the input's loop."""
        if machine not in self._started and len(self._started) < MAX_PREFETCHES:
            loop = asyncio.get_running_loop()
            self._started[machine] = asyncio.run_coroutine_threadsafe(self.look_up(machine), loop)

    def take(self, machine: str, timeout: float) -> T:
        """The look-up's result, started now if it was not; from any other thread."""
        started = self._started.pop(machine, None)
        if started is not None:
            return started.result(timeout)
        return self.nats.call(self.look_up(machine), timeout)
