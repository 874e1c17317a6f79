"""A pipeline wired to its fine-tuner as the daemon wires them, without threads or MQTT: a
test runs cycles and fine-tune jobs itself, so event time alone decides what happens."""

from __future__ import annotations

from typing import Protocol

from prometheus_client import CollectorRegistry

from service.core.config import Settings
from service.core.metrics import Metrics
from service.learning.finetune import FineTuner
from service.learning.store import ModelStore
from service.stream.pipeline import Pipeline
from service.stream.publish import Publisher
from service.stream.rejections import RejectionLog


class Sink(Protocol):
    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None: ...


class NullSink:
    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        pass


def wired_pipeline(
    settings: Settings, sink: Sink | None = None, store: ModelStore | None = None
) -> tuple[Pipeline, FineTuner, Metrics]:
    metrics = Metrics(CollectorRegistry())
    pipeline: Pipeline
    # Late binding: the pipeline is built after the fine-tuner it is given.
    finetuner = FineTuner(settings, metrics, lambda result: pipeline.install(result), store)  # noqa: PLW0108
    publisher = Publisher(sink or NullSink(), "aemon", metrics)
    pipeline = Pipeline(settings, metrics, RejectionLog(metrics), publisher, finetuner, store)
    return pipeline, finetuner, metrics
