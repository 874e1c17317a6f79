"""`Detail`: the JSON of `/api/machines/<machine>` and `/api/machines/<machine>/history`,
built on the HTTP request's thread from the board's copies.

The expected (reconstructed) values and the latent codes are model calls: they are made
here, for one machine's kept windows with its installed detector (read-only, no
gradients), so only a page that is open pays for them, and the pipeline never does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from service.core.types import FloatArray
from service.scoring.latent import forward
from service.stream.board import Board
from service.stream.history import HISTORY_POINTS, HISTORY_SPAN, Kept, Snapshot


class Detail:
    def __init__(self, board: Board) -> None:
        self.board = board

    def machine(self, name: str) -> dict[str, Any] | None:
        """The machine's record, its events (newest first) and the ring's bounds; None
        for an unknown machine."""
        found = self.board.record(name)
        if found is None:
            return None
        record, history = found
        snapshot = history.snapshot()
        return {
            **record,
            "events": snapshot.events[::-1],
            "history": {
                "span_seconds": HISTORY_SPAN,
                "points": HISTORY_POINTS,
                "bucket_seconds": history.bucket,
            },
        }

    def history(self, name: str, since: float) -> dict[str, Any] | None:
        """Scores, sensors (seen, expected, share) and the latent map from `since` (event
        time, Unix seconds) on; None for an unknown machine."""
        found = self.board.record(name)
        if found is None:
            return None
        snapshot = found[1].snapshot()
        recent = tiled(snapshot.recent, snapshot.period)
        around = tiled(snapshot.around_alert, snapshot.period)
        kept = unique([*snapshot.recent, *snapshot.around_alert])
        expected, points = _model_views(snapshot, kept)
        return {
            "machine": name,
            "since": since,
            "scores": _scores(snapshot, since),
            "sensors": [
                {
                    "name": sensor,
                    "points": _series(recent, expected, j, snapshot.period, since),
                    "alert_points": _series(around, expected, j, snapshot.period, since),
                    "share": _shares(snapshot, j, since),
                }
                for j, sensor in enumerate(snapshot.sensors)
            ],
            "latent": _latent(snapshot, kept, points, since),
            "model_version": snapshot.detector.version if snapshot.detector else None,
        }


def unique(windows: list[Kept]) -> list[Kept]:
    """Each kept window once (one may be both recent and around the alert), oldest first."""
    seen: dict[float, Kept] = {}
    for kept in windows:
        seen.setdefault(kept.end_ts, kept)
    return sorted(seen.values(), key=lambda k: k.end_ts)


def tiled(windows: list[Kept], period: float) -> list[Kept]:
    """From the newest back, the windows that do not overlap: one continuous series of
    seen values, each step drawn once."""
    chosen: list[Kept] = []
    limit = float("inf")
    for kept in reversed(windows):
        if kept.end_ts <= limit:
            chosen.append(kept)
            limit = kept.end_ts - len(kept.values) * period
    return chosen[::-1]


def _model_views(
    snapshot: Snapshot, kept: list[Kept]
) -> tuple[dict[int, FloatArray], dict[int, tuple[float, float]]]:
    """Per kept window (by its array's id): its reconstruction, and its point on the map."""
    detector = snapshot.detector
    if detector is None or not kept:
        return {}, {}
    recon, codes = forward(detector, np.stack([k.values for k in kept]))
    expected = {id(k.values): recon[i] for i, k in enumerate(kept)}
    if detector.latent_map is None:
        return expected, {}
    xy = detector.latent_map.project(codes).tolist()
    return expected, {id(k.values): (xy[i][0], xy[i][1]) for i, k in enumerate(kept)}


def _scores(snapshot: Snapshot, since: float) -> list[dict[str, float]]:
    keep = snapshot.ts >= since
    return [
        {"ts": ts, "score": score, "threshold": threshold}
        for ts, score, threshold in zip(
            snapshot.ts[keep].tolist(),
            snapshot.score[keep].tolist(),
            snapshot.threshold[keep].tolist(),
            strict=True,
        )
    ]


def _shares(snapshot: Snapshot, sensor: int, since: float) -> list[dict[str, float]]:
    """The sensor's share of each point's error (0 to 1; the shares of a point sum to 1)."""
    keep = snapshot.ts >= since
    shares = np.round(snapshot.shares[keep, sensor].astype(np.float64), 3)
    return [
        {"ts": ts, "share": share}
        for ts, share in zip(snapshot.ts[keep].tolist(), shares.tolist(), strict=True)
    ]


def _series(
    windows: list[Kept],
    expected: dict[int, FloatArray],
    sensor: int,
    period: float,
    since: float,
) -> list[dict[str, float | None]]:
    points: list[dict[str, float | None]] = []
    for kept in windows:
        steps = len(kept.values)
        if kept.end_ts < since:
            continue
        seen = kept.values[:, sensor].tolist()
        recon = expected.get(id(kept.values))
        wanted = recon[:, sensor].tolist() if recon is not None else [None] * steps
        for i in range(steps):
            ts = kept.end_ts - (steps - 1 - i) * period
            points.append({"ts": ts, "seen": seen[i], "expected": wanted[i]})
    return points


def _latent(
    snapshot: Snapshot, kept: list[Kept], points: dict[int, tuple[float, float]], since: float
) -> list[dict[str, Any]]:
    """Training windows (`train`, no time nor score), then the kept windows: `alert` if an
    alert was firing when they were scored, `recent` otherwise."""
    detector = snapshot.detector
    latent: list[dict[str, Any]] = []
    if detector is not None and detector.latent_map is not None:
        for x, y in detector.latent_map.train.tolist():
            latent.append({"ts": None, "x": x, "y": y, "score": None, "kind": "train"})
    for k in kept:
        if k.end_ts < since or id(k.values) not in points:
            continue
        x, y = points[id(k.values)]
        kind = "alert" if k.alert else "recent"
        latent.append({"ts": k.end_ts, "x": x, "y": y, "score": k.score, "kind": kind})
    return latent
