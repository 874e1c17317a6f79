"""JetStream's API as the NATS input uses it: streams and consumers put in place, a
consumer's pin and pending count looked up, a pin released. Plain requests on
`$JS.API.*`: the client library of the day (nats-py 2.16) knows no priority groups."""

from __future__ import annotations

from typing import Any

import orjson
from nats.aio.client import Client

from service.core.nats_settings import NatsSettings
from service.transport.jetstream import GROUP, Layout

API_TIMEOUT = 5.0


class JetStreamError(RuntimeError):
    """JetStream refused a request; the message is its description."""


async def request(nc: Client, subject: str, body: dict[str, Any] | None) -> dict[str, Any]:
    payload = orjson.dumps(body) if body is not None else b""
    reply = await nc.request(f"$JS.API.{subject}", payload, timeout=API_TIMEOUT)
    answer: dict[str, Any] = orjson.loads(reply.data)
    return answer


def _checked(answer: dict[str, Any], what: str) -> dict[str, Any]:
    if "error" in answer:
        error = answer["error"]
        raise JetStreamError(f"{what}: {error.get('description', error)}")
    return answer


async def declare(nc: Client, layout: Layout, settings: NatsSettings) -> None:
    """Creates the streams and consumers, or updates them to this configuration."""
    for config in (layout.intake_config(settings.stream_max_age), layout.partitioned_config()):
        name = config["name"]
        answer = await request(nc, f"STREAM.CREATE.{name}", config)
        if "error" in answer:  # it exists: take this configuration
            answer = await request(nc, f"STREAM.UPDATE.{name}", config)
        _checked(answer, f"stream {name}")
    for partition in range(layout.partitions):
        name = layout.consumer(partition)
        config = layout.consumer_config(partition, settings.pin_timeout, settings.ack_wait)
        body: dict[str, Any] = {"stream_name": layout.partitioned, "config": config}
        subject = f"CONSUMER.CREATE.{layout.partitioned}.{name}"
        answer = await request(nc, subject, body)
        if "error" in answer:  # it exists with another configuration: take this one
            body["action"] = "update"
            answer = await request(nc, subject, body)
        _checked(answer, f"consumer {name}")


async def consumer_info(nc: Client, layout: Layout, partition: int) -> dict[str, Any]:
    subject = f"CONSUMER.INFO.{layout.partitioned}.{layout.consumer(partition)}"
    return _checked(await request(nc, subject, None), f"consumer {layout.consumer(partition)}")


def pinned(info: dict[str, Any]) -> bool:
    """Whether some client holds the consumer's pin."""
    return any(g.get("pinned_client_id") for g in info.get("priority_groups") or [])


async def unpin(nc: Client, layout: Layout, partition: int) -> None:
    """Releases the partition's pin: the next waiting pull takes it."""
    subject = f"CONSUMER.UNPIN.{layout.partitioned}.{layout.consumer(partition)}"
    _checked(await request(nc, subject, {"group": GROUP}), f"unpin {partition}")
