"""Settings of the scale-out input: where readings come from (`[input]`) and NATS
JetStream's streams, partitions and ownership (`[nats]`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from service.core.sections import Section


class InputSettings(Section):
    """Where readings come from: the MQTT broker (one process), or NATS JetStream
    (replicas sharing a plant, each machine owned by one of them)."""

    kind: Literal["mqtt", "nats"] = Field(
        "mqtt",
        description="`mqtt`: subscribe to `mqtt.topics` (one process per plant). `nats`: "
        "consume the same topics from NATS JetStream partitions (`[nats]`), so that "
        "replicas share the plant; alerts, status and commands stay on `[mqtt]`.",
    )


class NatsSettings(Section):
    """NATS JetStream input (`input.kind = "nats"`): streams, partitions, ownership."""

    servers: tuple[str, ...] = Field(
        ("nats://127.0.0.1:4222",), description="NATS server URLs (a cluster's seeds)."
    )
    user: str | None = Field(None, description="NATS user name.")
    password_file: Path | None = Field(None, description="File holding the NATS password.")
    ca_file: Path | None = Field(None, description="CA bundle of the NATS servers (TLS).")
    stream: str = Field(
        "PLANT",
        pattern=r"^[A-Za-z0-9_-]+$",
        description="The stream that takes in the plant's subjects (`mqtt.topics` with `/` "
        "as `.`: `plant.<machine>.<sensor>`, `plant.<machine>`); created if missing.",
    )
    stream_max_age: float = Field(
        86400.0,
        gt=0,
        description="Seconds the intake stream keeps a reading (it only feeds the "
        "partitioned stream, which holds each reading until a replica acknowledges it).",
    )
    stream_replicas: int = Field(
        1,
        ge=1,
        le=5,
        description="Copies JetStream keeps of the streams and consumers (3 on a NATS "
        "cluster of three, so that losing a NATS server loses no reading).",
    )
    partitions: int = Field(
        12,
        ge=1,
        le=1024,
        description="Partitions the machines are hashed into (`partition(n, machine)`); "
        "at most this many replicas can share the work. Changing it moves machines: "
        "stop every replica first (docs/scale-out.md).",
    )
    replica: int | None = Field(
        None,
        ge=0,
        description="This replica's index, 0 to replicas - 1; unset: the number at the end "
        "of the host name (a StatefulSet's `aemon-2`), else 0.",
    )
    replicas: int = Field(
        1,
        ge=1,
        description="Replicas expected: replica i prefers the partitions p with p mod "
        "replicas = i and stands by for the others.",
    )
    pin_timeout: float = Field(
        10.0,
        ge=1,
        description="Seconds after a replica's last pull before NATS gives its partitions "
        "to a standby (the takeover time after a crash).",
    )
    ack_wait: float = Field(
        5.0,
        ge=1,
        description="Seconds NATS waits for a reading's acknowledgement before delivering "
        "it again; under pin_timeout, so that what a crashed replica held comes first.",
    )
    pull_batch: int = Field(
        500, ge=1, le=10000, description="Messages asked for per pull and partition."
    )

    @model_validator(mode="after")
    def _acks_before_takeover(self) -> NatsSettings:
        if self.ack_wait >= self.pin_timeout:
            raise ValueError(
                "nats.ack_wait must be under nats.pin_timeout: a reading held by a crashed "
                "replica must be redelivered before its partition's newer readings"
            )
        return self
