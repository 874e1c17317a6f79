"""`aemon machine <name> <command> [options]`: an operator command sent to a running daemon
through its HTTP API (`POST <url>/api/machines/<name>/commands`, a bearer token read from
the file `http.command_token_file` names), its outcome printed on one line.

Exit status: 0 done, 1 refused by the daemon (its error printed), 2 a usage or
configuration problem, 3 the daemon cannot be reached.
"""

from __future__ import annotations

import argparse
import getpass
import json
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from typing import Any

from service.core.config import Settings

OK, REFUSED, USAGE, UNREACHABLE = 0, 1, 2, 3
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")
# What the daemon's status codes mean, for a refusal whose body says nothing.
_STATUS = {
    400: "bad command or arguments",
    401: "no token or a wrong token",
    403: "the daemon has no command token configured (http.command_token_file)",
    404: "unknown machine",
}


class UsageError(Exception):
    """The command cannot be sent as given; the message says why."""


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """`aemon machine <name> <command>`; `common` holds the options every level takes."""
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        help="the daemon's HTTP API (default: http://127.0.0.1:<http.port of the config>)",
    )
    shared.add_argument(
        "--by", default=argparse.SUPPRESS, help="who asks (default: <user>@<hostname>)"
    )
    shared.add_argument(
        "--reason", default=argparse.SUPPRESS, help="why: logged and published with the command"
    )
    shared.add_argument(
        "--timeout",
        type=float,
        default=argparse.SUPPRESS,
        help="seconds to wait for the daemon's answer (default 10)",
    )
    parents = [common, shared]
    machine = commands.add_parser(
        "machine",
        parents=parents,
        help="send an operator command to a running daemon (ack, false_alarm, relearn, "
        "maintenance, maintenance_end, forget)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    machine.add_argument("name", help="the machine")
    verbs = machine.add_subparsers(dest="verb", required=True, metavar="command")
    verbs.add_parser("ack", parents=parents, help="acknowledge the firing alert")
    false_alarm = verbs.add_parser(
        "false_alarm",
        aliases=["false-alarm"],
        parents=parents,
        help="resolve the alert as a false alarm; its windows may be learnt as normal",
    )
    false_alarm.add_argument("--alert-id", help="the alert (default: the machine's current one)")
    relearn = verbs.add_parser(
        "relearn", parents=parents, help="learn the machine again from its next windows"
    )
    relearn.add_argument(
        "--windows", type=int, help="windows to learn from (default: learning.windows)"
    )
    maintenance = verbs.add_parser(
        "maintenance",
        parents=parents,
        help="start a maintenance window (--until or --for, and --reason): no alert, no learning",
    )
    end = maintenance.add_mutually_exclusive_group(required=True)
    end.add_argument("--until", help="its end, RFC 3339 (2026-12-07T18:00:00Z)")
    end.add_argument("--for", dest="for_", metavar="DURATION", help="its length: 90m, 2h, 1h30m")
    verbs.add_parser(
        "maintenance_end",
        aliases=["maintenance-end"],
        parents=parents,
        help="end the maintenance window now",
    )
    verbs.add_parser(
        "forget",
        parents=parents,
        help="remove the machine's state, series and retained topics (models moved aside)",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Sends the command `args` describes; prints its outcome; the exit status."""
    try:
        body = command_body(args)
        url = command_url(getattr(args, "url", None), settings, args.name)
        token = read_token(settings)
    except UsageError as exc:
        print(f"aemon: {exc}", file=sys.stderr)
        return USAGE
    return send(url, token, body, args.name, getattr(args, "timeout", 10.0))


def command_url(base: str | None, settings: Settings, machine: str) -> str:
    if base is None:
        if settings.http.port == 0:
            raise UsageError("http.port is 0 (any free port) in the config: give --url")
        base = f"http://127.0.0.1:{settings.http.port}"
    parts = urllib.parse.urlsplit(base)
    try:
        port = parts.port  # the property checks it
    except ValueError as exc:
        raise UsageError(f"--url {base}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise UsageError(f"--url {base}: give an http:// or https:// URL")
    name = urllib.parse.quote(machine, safe="")
    return f"{base.rstrip('/')}/api/machines/{name}/commands"


def read_token(settings: Settings) -> str:
    path = settings.http.command_token_file
    if path is None:
        raise UsageError(
            "no command token: set http.command_token_file in the config (or "
            "AEMON_HTTP__COMMAND_TOKEN_FILE) to the file holding the daemon's token"
        )
    try:
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise UsageError(f"http.command_token_file: cannot read {path}: {reason}") from exc
    if not token:
        raise UsageError(f"http.command_token_file: {path} is empty")
    if not (token.isascii() and token.isprintable()) or any(c.isspace() for c in token):
        raise UsageError(
            f"http.command_token_file: {path} is not a token: one word of printable ASCII"
        )
    return token


def command_body(args: argparse.Namespace, now: float | None = None) -> dict[str, Any]:
    """The JSON of the command: `command`, `by`, `reason` and its own keys."""
    verb = str(args.verb).replace("-", "_")
    body: dict[str, Any] = {"command": verb, "by": getattr(args, "by", None) or default_by()}
    reason = getattr(args, "reason", None)
    if reason:
        body["reason"] = reason
    if verb == "false_alarm" and args.alert_id is not None:
        body["alert_id"] = args.alert_id
    if verb == "relearn" and args.windows is not None:
        if args.windows < 1:
            raise UsageError(f"--windows {args.windows}: give a positive number of windows")
        body["windows"] = args.windows
    if verb == "maintenance":
        if not reason:
            raise UsageError("maintenance needs --reason (say why, for the log and the events)")
        now = time.time() if now is None else now
        until = parse_time(args.until) if args.until else now + parse_duration(args.for_)
        if until <= now:
            raise UsageError(f"--until {args.until}: that is in the past")
        body["until"] = until
    return body


def default_by() -> str:
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name and no USER: a bare container
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def parse_duration(text: str) -> float:
    """Seconds of `90m`, `2h`, `1h30m`, `45s` or `3600`."""
    spec = text.strip()
    match = _DURATION.fullmatch(spec)
    try:
        seconds = float(spec)
    except ValueError:
        if not spec or match is None:
            raise UsageError(f"--for {text}: not a duration (e.g. 90m, 2h, 1h30m, 3600)") from None
        h, m, s = (float(g) if g else 0.0 for g in match.groups())
        seconds = h * 3600 + m * 60 + s
    if not seconds > 0:
        raise UsageError(f"--for {text}: give a duration above zero")
    return seconds


def parse_time(text: str) -> float:
    """Unix seconds of an RFC 3339 time (`2026-12-07T18:00:00Z`, `...+01:00`)."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"--until {text}: not an RFC 3339 time (2026-12-07T18:00:00Z)") from None
    if when.tzinfo is None:
        raise UsageError(f"--until {text}: give its time zone (Z for UTC, or +01:00)")
    return when.timestamp()


def send(url: str, token: str, body: dict[str, Any], machine: str, timeout: float) -> int:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    verb = body["command"]
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:  # 4xx, 5xx: an answer all the same
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"aemon: cannot reach the daemon at {url}: {reason}", file=sys.stderr)
        return UNREACHABLE
    answer = _document(raw)
    if status == 200 and answer.get("ok") is True:
        print(f"{machine}: {verb}: done{_at(answer.get('at'))}")
        return OK
    error = answer.get("error") or _STATUS.get(status) or raw[:200].decode(errors="replace")
    print(f"aemon: {machine}: {verb} refused (HTTP {status}): {error}", file=sys.stderr)
    return REFUSED


def _document(raw: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(raw)
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


def _at(at: Any) -> str:
    if isinstance(at, int | float) and not isinstance(at, bool):
        return f" at {datetime.fromtimestamp(at, UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}"
    return f" at {at}" if at else ""
