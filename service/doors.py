"""The MQTT and HTTP doors of the operator commands (the CLI's goes through HTTP): each
checks what it must (HTTP: the bearer token), parses the same JSON, hands the command to
the pipeline thread and reports the outcome its own way."""

from __future__ import annotations

import hmac
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import structlog

from service.core.metrics import Metrics
from service.stream.commands import Command, CommandError, Outcome, parse, refused
from service.stream.pipeline import Pipeline
from service.stream.publish import Publisher

log = structlog.get_logger(__name__)

# Seconds an HTTP command waits for the pipeline thread (a cycle takes milliseconds).
REPLY_TIMEOUT = 10.0


class CommandDoors:
    def __init__(
        self, pipeline: Pipeline, publisher: Publisher, metrics: Metrics, token_file: Path | None
    ) -> None:
        self.pipeline = pipeline
        self.publisher = publisher
        self.metrics = metrics
        self.token_file = token_file

    # -- MQTT: aemon/command/<machine>, the outcome on aemon/command/<machine>/result ------
    def from_mqtt(self, machine: str, payload: bytes) -> None:
        """On paho's thread: parse and hand over, never wait."""
        command = self._parse(payload)
        if isinstance(command, Outcome):
            self.publisher.publish_result(machine, command.document())
            return
        self.pipeline.command(
            machine, command, lambda o: self.publisher.publish_result(machine, o.document())
        )

    # -- HTTP: POST /api/machines/<machine>/commands ----------------------------------------
    def from_http(
        self, machine: str, body: bytes, authorization: str | None
    ) -> tuple[int, dict[str, Any]]:
        """On an HTTP thread: (status, JSON body)."""
        denied = self._authorize(authorization)
        if denied is not None:
            return denied
        command = self._parse(body)
        if isinstance(command, Outcome):
            return 400, command.document()
        answer: Future[Outcome] = Future()
        self.pipeline.command(machine, command, answer.set_result)
        try:
            outcome = answer.result(REPLY_TIMEOUT)
        except TimeoutError:
            return 504, refused(command.command, "the pipeline did not answer in time").document()
        if outcome.ok:
            return 200, outcome.document()
        return (404 if outcome.unknown_machine else 400), outcome.document()

    def _authorize(self, authorization: str | None) -> tuple[int, dict[str, Any]] | None:
        if self.token_file is None:
            error = "commands over HTTP are off: set http.command_token_file"
            return 403, refused("", error).document()
        try:
            token = self.token_file.read_text().strip()
        except OSError as exc:
            log.error("command_token_unreadable", path=str(self.token_file), error=str(exc))
            return 403, refused("", "the daemon cannot read its command token").document()
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not token or not hmac.compare_digest(given.encode(), token.encode()):
            return 401, refused("", "a valid bearer token is required").document()
        return None

    def _parse(self, payload: bytes) -> Command | Outcome:
        try:
            return parse(payload)
        except CommandError as exc:
            self.metrics.commands.labels(command="invalid", outcome="refused").inc()
            log.warning("command_invalid", error=str(exc))
            return refused("", str(exc))
