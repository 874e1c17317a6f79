"""Where each key of a TOML text is: tomllib parses values but gives no positions, which a
config error needs (`a.toml:3: mqtt.port: ...`, `service.core.config_errors`)."""

from __future__ import annotations

import re

Loc = tuple[str | int, ...]
BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class TomlLines:
    """The line (1-based) of every table header and key of a TOML text, by key path:
    `[mqtt]` gives `("mqtt",)`, `port = 1` under it `("mqtt", "port")`, the second
    `[[maintenance]]` `("maintenance", 1)`. Best effort on valid TOML: lines inside
    multi-line strings and arrays are skipped."""

    def __init__(self, text: str) -> None:
        self.lines: dict[Loc, int] = {}
        table: Loc = ()
        arrays: dict[Loc, int] = {}
        inside = _Scan()
        for number, line in enumerate(text.splitlines(), start=1):
            if inside.open:
                inside.feed(line)
                continue
            stripped = line.strip()
            if stripped.startswith("["):
                double = stripped.startswith("[[")
                parts, _ = _key(stripped, 2 if double else 1)
                if parts:
                    path: Loc = tuple(parts)
                    if double:
                        arrays[path] = arrays.get(path, -1) + 1
                        path = (*path, arrays[path])
                    table = path
                    self._add(path, number)
                continue
            parts, end = _key(line, 0)
            if parts and end < len(line) and line[end] == "=":
                self._add((*table, *parts), number)
                inside.feed(line[end + 1 :])

    def _add(self, path: Loc, number: int) -> None:
        for cut in range(1, len(path) + 1):
            self.lines.setdefault(path[:cut], number)

    def line(self, loc: Loc) -> int | None:
        """The line of `loc`, else of its nearest enclosing key or table in the file."""
        for cut in range(len(loc), 0, -1):
            if loc[:cut] in self.lines:
                return self.lines[loc[:cut]]
        return None


def _key(text: str, start: int) -> tuple[list[str], int]:
    """A dotted key (`a."b c".d`) from `start`: its parts and where it ends (at `=` or `]`,
    whitespace skipped). No parts if there is none."""
    parts: list[str] = []
    pos = start
    while True:
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        if pos < len(text) and text[pos] in "\"'":
            close = text.find(text[pos], pos + 1)
            if close < 0:
                return [], pos
            parts.append(text[pos + 1 : close])
            pos = close + 1
        else:
            bare = BARE_KEY.match(text, pos)
            if bare is None:
                return [], pos
            parts.append(bare.group())
            pos = bare.end()
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        if pos < len(text) and text[pos] == ".":
            pos += 1
            continue
        return parts, pos


class _Scan:
    """Whether a value goes on past its line: an open multi-line string or array."""

    def __init__(self) -> None:
        self.depth = 0
        self.quote = ""  # '"""' or "'''" while in a multi-line string

    @property
    def open(self) -> bool:
        return self.depth > 0 or bool(self.quote)

    def feed(self, text: str) -> None:
        pos = 0
        while pos < len(text):
            if self.quote:
                end = text.find(self.quote, pos)
                if end < 0:
                    return
                self.quote, pos = "", end + 3
                continue
            char = text[pos]
            if text.startswith(('"""', "'''"), pos):
                self.quote, pos = text[pos : pos + 3], pos + 3
            elif char in "\"'":
                pos = _string_end(text, pos)
            elif char == "#":
                return
            else:
                self.depth += (char in "[{") - (char in "]}")
                pos += 1


def _string_end(text: str, pos: int) -> int:
    quote, pos = text[pos], pos + 1
    while pos < len(text) and text[pos] != quote:
        pos += 2 if quote == '"' and text[pos] == "\\" else 1
    return pos + 1
