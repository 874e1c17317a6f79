"""The JetStream layout of the scale-out input: an intake stream on the plant's subjects,
a partitioned stream sourced from it, one pull consumer per partition, and the mapping
between NATS subjects and aemon's MQTT-style topics.

The plant publishes to subjects made from `mqtt.topics` (`plant/{machine}/{sensor}` is
`plant.*.*`): directly, through NATS's MQTT listener, or through a Mosquitto bridge to it.
NATS's MQTT mapping turns `/` into `.` and a `.` inside a topic level into `//`, and
`topic_of` reverses it, so the ingest reads the same topics whichever way they came.

Partitioning is the server's own: the partitioned stream sources the intake stream with one
subject transform per topic template, `partition(n, <machine wildcard>)` (a stream's own
`subject_transform` is one only, and a plant has two templates). The partitioned stream is
a work queue: a reading is kept until the replica that scored it acknowledges it.

>>> layout = Layout("PLANT", ("plant/{machine}/{sensor}", "plant/{machine}"), 4)
>>> layout.transforms()[0]
{'src': 'plant.*.*', 'dest': 'aemon.in.{{partition(4,1)}}.plant.{{wildcard(1)}}.{{wildcard(2)}}'}
>>> layout.topic_of("aemon.in.3.plant.line//1.temp")
'plant/line.1/temp'
>>> layout.machine_of("aemon.in.3.plant.m1.t"), layout.machine_of("aemon.in.3.other.m1")
('m1', None)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FIELD = re.compile(r"^\{(machine|sensor)\}$")
# Where partitioned subjects start: `aemon.in.<partition>.<the plant's subject>`.
PARTITIONED_ROOT = "aemon.in"
_ROOT_TOKENS = PARTITIONED_ROOT.count(".") + 1
# The priority group every replica pulls in: JetStream pins each partition's consumer to
# one client of the group and hands it to another when that one stops pulling.
GROUP = "aemon"
NANOS = 1_000_000_000


@dataclass(frozen=True)
class _Template:
    tokens: tuple[str, ...]  # literal tokens, or "*" for a placeholder
    machine_at: int  # token index of {machine}
    machine_wildcard: int  # 1-based number of {machine} among the wildcards


def _template(topic: str) -> _Template:
    levels = topic.split("/")
    tokens, machine_at, wildcards, machine_wildcard = [], -1, 0, 0
    for i, level in enumerate(levels):
        placeholder = _FIELD.match(level)
        if placeholder is None:
            tokens.append(level)
            continue
        wildcards += 1
        tokens.append("*")
        if placeholder[1] == "machine":
            machine_at, machine_wildcard = i, wildcards
    if machine_at < 0:
        raise ValueError(f"topic template {topic!r} has no {{machine}} level")
    return _Template(tuple(tokens), machine_at, machine_wildcard)


class Layout:
    """Stream, consumer and subject names of one plant's scale-out input."""

    def __init__(
        self, stream: str, topics: tuple[str, ...], partitions: int, replicas: int = 1
    ) -> None:
        self.stream = stream
        self.replicas = replicas
        self.partitioned = f"{stream}_BY_MACHINE"
        self.partitions = partitions
        self._templates = [_template(t) for t in topics]

    def subjects(self) -> list[str]:
        """The intake stream's subjects: each topic template with `*` for its fields."""
        return [".".join(t.tokens) for t in self._templates]

    def transforms(self) -> list[dict[str, str]]:
        """Per template, its subject to `aemon.in.<partition of the machine>.<subject>`."""
        found = []
        for t in self._templates:
            numbered, n = [], 0
            for token in t.tokens:
                if token == "*":
                    n += 1
                numbered.append(f"{{{{wildcard({n})}}}}" if token == "*" else token)
            partition = f"{{{{partition({self.partitions},{t.machine_wildcard})}}}}"
            dest = ".".join([PARTITIONED_ROOT, partition, *numbered])
            found.append({"src": ".".join(t.tokens), "dest": dest})
        return found

    def consumer(self, partition: int) -> str:
        return f"aemon-{partition}"

    def filter_subject(self, partition: int) -> str:
        return f"{PARTITIONED_ROOT}.{partition}.>"

    def topic_of(self, subject: str) -> str:
        """The MQTT-style topic of a partitioned subject (what the ingest matches)."""
        plant = subject.split(".", _ROOT_TOKENS + 1)[-1]
        return "/".join(level.replace("//", ".") for level in plant.split("."))

    def machine_of(self, subject: str) -> str | None:
        """The machine a partitioned subject is of, None when no template matches."""
        tokens = subject.split(".")[_ROOT_TOKENS + 1 :]
        for t in self._templates:
            if len(tokens) == len(t.tokens) and all(
                want in ("*", got) for want, got in zip(t.tokens, tokens, strict=True)
            ):
                return tokens[t.machine_at].replace("//", ".")
        return None

    def intake_config(self, max_age: float) -> dict[str, object]:
        return {
            "name": self.stream,
            "subjects": self.subjects(),
            "retention": "limits",
            "max_age": int(max_age * NANOS),
            "storage": "file",
            "num_replicas": self.replicas,
        }

    def partitioned_config(self) -> dict[str, object]:
        return {
            "name": self.partitioned,
            "retention": "workqueue",
            "storage": "file",
            "num_replicas": self.replicas,
            "sources": [{"name": self.stream, "subject_transforms": self.transforms()}],
        }

    def consumer_config(
        self, partition: int, pin_timeout: float, ack_wait: float
    ) -> dict[str, object]:
        return {
            "durable_name": self.consumer(partition),
            "filter_subject": self.filter_subject(partition),
            "ack_policy": "explicit",
            "ack_wait": int(ack_wait * NANOS),
            # Redelivered until taken in: the duplicate rule drops what was already.
            "max_deliver": -1,
            "max_ack_pending": 20_000,
            "priority_groups": [GROUP],
            "priority_policy": "pinned_client",
            "priority_timeout": int(pin_timeout * NANOS),
            "num_replicas": self.replicas,
        }
