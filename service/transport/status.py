"""The payloads of the retained status topic: `online` while connected, `offline` (also
the last will) once gone."""

from __future__ import annotations

ONLINE = b"online"
OFFLINE = b"offline"
