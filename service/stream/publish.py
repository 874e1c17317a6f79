"""`AlertEvent` -> MQTT topic and JSON payload; the retained online/offline status."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
import structlog

from service.core.metrics import Metrics
from service.core.types import AlertEvent
from service.transport.status import OFFLINE, ONLINE  # noqa: F401  (the status payloads)

log = structlog.get_logger(__name__)


class MessageSink(Protocol):
    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None: ...


def rfc3339(ts: float | None) -> str | None:
    """Event time as an RFC 3339 UTC string with milliseconds."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def alert_document(event: AlertEvent) -> dict[str, Any]:
    return {
        "alert_id": event.alert_id,
        "machine": event.machine,
        "state": event.state.value,
        "event": event.kind.value,
        "started_at": rfc3339(event.started_at),
        "updated_at": rfc3339(event.updated_at),
        "ended_at": rfc3339(event.ended_at),
        "score": round(event.score, 6),
        "peak_score": round(event.peak_score, 6),
        "threshold": round(event.threshold, 6),
        "top_sensors": [{"sensor": s.sensor, "share": s.share} for s in event.top_sensors],
        "model_version": event.model_version,
        "resolution": event.resolution.value if event.resolution else None,
        "acknowledged_by": event.acknowledged_by,
        "acknowledged_at": rfc3339(event.acknowledged_at),
    }


class Publisher:
    """Publishes alerts: retained per-machine state plus a stream of every event (QoS 1)."""

    def __init__(self, sink: MessageSink, prefix: str, metrics: Metrics) -> None:
        self.sink = sink
        self.prefix = prefix
        self.metrics = metrics

    @property
    def status_topic(self) -> str:
        return f"{self.prefix}/status"

    def alert_topic(self, machine: str) -> str:
        return f"{self.prefix}/alerts/{machine}"

    def publish_alert(self, event: AlertEvent) -> None:
        payload = orjson.dumps(alert_document(event))
        self.sink.publish(self.alert_topic(event.machine), payload, qos=1, retain=True)
        self.sink.publish(f"{self.prefix}/events", payload, qos=1, retain=False)
        self.metrics.alerts_published.inc(2)
        log.info(
            f"alert_{event.kind.value}",
            machine=event.machine,
            alert_id=event.alert_id,
            score=round(event.score, 4),
            threshold=round(event.threshold, 4),
            top_sensor=event.top_sensors[0].sensor if event.top_sensors else None,
            resolution=event.resolution.value if event.resolution else None,
        )

    def publish_event(self, document: dict[str, Any]) -> None:
        """Another kind of event (a command, a machine discovered) on the events topic."""
        self.sink.publish(f"{self.prefix}/events", orjson.dumps(document), qos=1, retain=False)
        self.metrics.alerts_published.inc()

    def publish_result(self, machine: str, document: dict[str, Any]) -> None:
        """A command's outcome, for whoever sent it over MQTT."""
        topic = f"{self.prefix}/command/{machine}/result"
        self.sink.publish(topic, orjson.dumps(document), qos=1, retain=False)
        self.metrics.alerts_published.inc()

    def publish_retained(self, topic: str, document: dict[str, Any] | None) -> None:
        """A retained document on `topic`; None removes what is retained there."""
        payload = b"" if document is None else orjson.dumps(document)
        self.sink.publish(topic, payload, qos=1, retain=True)
        self.metrics.alerts_published.inc()

    def clear_alert(self, machine: str) -> None:
        """Removes the machine's retained alert (an empty retained message deletes it)."""
        self.publish_retained(self.alert_topic(machine), None)
