"""`aemon machine <name> <command>` against a stand-in of the daemon's HTTP API (the real
endpoint is tested with the daemon): the request it sends, the exit status of each answer,
the times and durations of a maintenance window."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from service import machine_cli
from service.cli import main
from service.machine_cli import UsageError, parse_duration, parse_time
from simulators.clients import free_port

TOKEN = "s3cret-token"
AT = 1_790_000_000.0


@dataclass
class StandIn:
    """Records each request; answers with `status` and `answer` (the daemon's JSON)."""

    url: str
    status: int = 200
    answer: dict[str, Any] | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)

    @property
    def last(self) -> dict[str, Any]:
        return self.requests[-1]


@pytest.fixture
def daemon() -> Iterator[StandIn]:
    stand_in = StandIn("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            stand_in.requests.append(
                {
                    "path": self.path,
                    "authorization": self.headers.get("Authorization"),
                    "content_type": self.headers.get("Content-Type"),
                    "body": json.loads(body),
                }
            )
            command = json.loads(body).get("command")
            answer = stand_in.answer or {"command": command, "ok": True, "error": None, "at": AT}
            data = json.dumps(answer).encode()
            self.send_response(stand_in.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    stand_in.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield stand_in
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in [n for n in os.environ if n.upper().startswith("AEMON_")]:
        monkeypatch.delenv(name)
    token = tmp_path / "command-token"
    token.write_text(f"\n{TOKEN}  \n")
    path = tmp_path / "aemon.toml"
    path.write_text(f'[http]\nport = 9108\ncommand_token_file = "{token}"\n')
    return path


def aemon(daemon: StandIn, config: Path, *args: str) -> int:
    return main(["machine", *args, "--url", daemon.url, "--config", str(config)])


def test_ack_posts_the_command_with_the_token(
    daemon: StandIn, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert aemon(daemon, config, "pump-1", "ack", "--by", "ana", "--reason", "seen it") == 0
    assert daemon.last == {
        "path": "/api/machines/pump-1/commands",
        "authorization": f"Bearer {TOKEN}",
        "content_type": "application/json",
        "body": {"command": "ack", "by": "ana", "reason": "seen it"},
    }
    assert capsys.readouterr().out == "pump-1: ack: done at 2026-09-21T14:13:20Z\n"


def test_each_command_sends_its_own_keys(daemon: StandIn, config: Path) -> None:
    assert aemon(daemon, config, "pump-1", "false_alarm", "--alert-id", "pump-1-17") == 0
    assert daemon.last["body"]["alert_id"] == "pump-1-17"
    assert daemon.last["body"]["command"] == "false_alarm"
    assert aemon(daemon, config, "pump-1", "false-alarm") == 0  # the spelling of the shell
    assert daemon.last["body"]["command"] == "false_alarm"
    assert "alert_id" not in daemon.last["body"]
    assert aemon(daemon, config, "pump-1", "relearn", "--windows", "300") == 0
    assert daemon.last["body"]["windows"] == 300
    assert aemon(daemon, config, "pump-1", "maintenance_end") == 0
    assert aemon(daemon, config, "line 2/pump", "forget") == 0
    assert daemon.last["path"] == "/api/machines/line%202%2Fpump/commands"
    assert daemon.last["body"]["command"] == "forget"
    assert daemon.last["body"]["by"].endswith(f"@{socket.gethostname()}")  # <user>@<host>


def test_maintenance_sends_its_end_in_unix_seconds(
    daemon: StandIn, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    until = "2099-12-07T18:00:00Z"
    args = ["pump-1", "maintenance", "--until", until, "--reason", "bearing swap"]
    assert aemon(daemon, config, *args) == 0
    sent = daemon.last["body"]
    assert sent["until"] == datetime(2099, 12, 7, 18, tzinfo=UTC).timestamp()
    assert sent["reason"] == "bearing swap"
    before = datetime.now(UTC).timestamp()
    assert aemon(daemon, config, "pump-1", "maintenance", "--for", "1h30m", "--reason", "x") == 0
    assert before + 5400 <= daemon.last["body"]["until"] <= before + 5400 + 60
    assert "for" not in daemon.last["body"]
    count = len(daemon.requests)
    assert aemon(daemon, config, "pump-1", "maintenance", "--for", "2h") == 2  # no --reason
    assert "maintenance needs --reason" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:  # neither --until nor --for
        aemon(daemon, config, "pump-1", "maintenance", "--reason", "x")
    assert usage.value.code == 2
    assert (
        aemon(
            daemon,
            config,
            "pump-1",
            "maintenance",
            "--until",
            "2000-01-01T00:00:00Z",
            "--reason",
            "x",
        )
        == 2
    )
    assert "in the past" in capsys.readouterr().err
    assert len(daemon.requests) == count  # nothing sent


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90m", 5400.0), ("2h", 7200.0), ("1h30m", 5400.0), ("45s", 45.0), ("3600", 3600.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "2 hours", "h", "1m2h", "-5", "0", "0m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(UsageError, match="--for"):
        parse_duration(text)


def test_times() -> None:
    assert parse_time("2026-12-07T18:00:00Z") == datetime(2026, 12, 7, 18, tzinfo=UTC).timestamp()
    assert parse_time("2026-12-07T19:00:00+01:00") == parse_time("2026-12-07T18:00:00Z")
    with pytest.raises(UsageError, match="time zone"):
        parse_time("2026-12-07T18:00:00")
    with pytest.raises(UsageError, match="RFC 3339"):
        parse_time("tomorrow")


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, "relearn: windows: Input should be greater than or equal to 10"),
        (401, "missing or wrong bearer token"),
        (403, "no command token configured"),
        (404, "unknown machine pump-9"),
    ],
)
def test_a_refusal_exits_1_with_the_daemons_error(
    daemon: StandIn, config: Path, capsys: pytest.CaptureFixture[str], status: int, error: str
) -> None:
    daemon.status = status
    daemon.answer = {"command": "relearn", "ok": False, "error": error, "at": AT}
    assert aemon(daemon, config, "pump-9", "relearn", "--windows", "5") == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"aemon: pump-9: relearn refused (HTTP {status}): {error}\n"


def test_a_refusal_without_a_document(
    daemon: StandIn, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.status = 200
    daemon.answer = {"command": "ack", "ok": False, "error": "no alert is firing", "at": AT}
    assert aemon(daemon, config, "pump-1", "ack") == 1
    assert capsys.readouterr().err.endswith("ack refused (HTTP 200): no alert is firing\n")


def test_no_token_file_configured_is_a_usage_error(
    daemon: StandIn, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config.write_text("[http]\nport = 9108\n")
    assert aemon(daemon, config, "pump-1", "ack") == 2
    assert "set http.command_token_file in the config" in capsys.readouterr().err
    config.write_text(f'[http]\ncommand_token_file = "{config.parent / "nope"}"\n')
    assert aemon(daemon, config, "pump-1", "ack") == 2
    assert "cannot read" in capsys.readouterr().err
    config.write_text(f'[http]\ncommand_token_file = "{config}"\n')  # a file of many lines
    assert aemon(daemon, config, "pump-1", "ack") == 2
    assert "is not a token" in capsys.readouterr().err
    assert daemon.requests == []


def test_a_url_that_is_not_one_is_a_usage_error(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for url in ("http://127.0.0.1:port", "ftp://127.0.0.1"):
        assert main(["machine", "pump-1", "ack", "--url", url, "--config", str(config)]) == 2
        assert url in capsys.readouterr().err


def test_an_unreachable_daemon_exits_3_naming_the_url(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()  # nothing listens there
    url = f"http://127.0.0.1:{port}"
    assert main(["machine", "pump-1", "ack", "--url", url, "--config", str(config)]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"aemon: cannot reach the daemon at {url}/api/machines/pump-1/commands")


def test_the_default_url_is_the_configs_port(
    config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sent: list[str] = []

    def send(url: str, token: str, body: dict[str, Any], machine: str, timeout: float) -> int:
        sent.append(url)
        return 0

    monkeypatch.setattr(machine_cli, "send", send)
    monkeypatch.setenv("AEMON_CONFIG", str(config))
    assert main(["machine", "pump-1", "ack"]) == 0
    assert sent == ["http://127.0.0.1:9108/api/machines/pump-1/commands"]
    assert main(["--config", str(config), "machine", "--url", "http://h:1/", "pump-1", "ack"]) == 0
    assert sent[-1] == "http://h:1/api/machines/pump-1/commands"
