"""Handing freed memory back to the operating system (glibc's `malloc_trim`), and keeping
the long-lived objects out of the cyclic garbage collector's full collections.

glibc keeps freed chunks in its arenas and returns pages to the system only from an
arena's top. Memory freed in the middle of an arena, between objects that live on, stays
resident. The stacked scorer frees each adopted detector's own weights, which the
fine-tuner's thread allocated between other objects, so without a trim a plant's worth of
first fits would stay resident twice: once in the stack, once as freed holes.

>>> trim() in (True, False)
True
"""

from __future__ import annotations

import ctypes
import gc
import os
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        function: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):  # not glibc (musl, macOS): nothing to do
        return None
    return function


_MALLOC_TRIM = _malloc_trim()
# A burst, since the last trim: this many readings taken, or the pipeline's queue this full
# (a share of its bound in messages or readings) at one poll.
BURST_READINGS = 2_000_000
BURST_FILL = 0.25
TRIM_SPACING = 30.0  # seconds between trims after bursts, at least
FREEZE_INTERVAL = 30.0  # seconds between freezes (`Freezer`), at least


def trim() -> bool:
    """Releases free heap pages to the system; False where the C library cannot."""
    if _MALLOC_TRIM is None:
        return False
    return bool(_MALLOC_TRIM(0))


def freeze() -> None:
    """Moves every object the cyclic collector tracks into its permanent generation (a
    constant-time splice; counting them would walk every one). A full collection walks
    every tracked object: at 1,000 machines (models, runtimes, buffers) about half a
    million, 200 ms during which no thread runs, and it comes whenever a quarter as many
    again have survived since the last, e.g. while fine-tunes are promoted. Frozen objects
    are still freed by reference counting; only cyclic garbage frozen with them stays, so
    this is done rarely (after models are installed), not per cycle."""
    gc.freeze()
    log.info("gc_frozen")


class Freezer:
    """Freezes after models are installed, at most every `FREEZE_INTERVAL` seconds: their
    objects (and the runtimes') are long-lived, and frozen, the collector's full
    collections stop walking them. A plant's first fits arrive over a minute or so, and
    each freeze keeps whatever cyclic garbage exists. The first poll freezes what start-up
    made: imports, saved models, runtimes."""

    def __init__(self) -> None:
        self._installed = True
        self._frozen_at = -FREEZE_INTERVAL

    def installed(self) -> None:
        self._installed = True

    def poll(self) -> None:
        now = time.monotonic()
        if self._installed and now - self._frozen_at >= FREEZE_INTERVAL:
            self._installed = False
            self._frozen_at = now
            freeze()


def rss_mib() -> float | None:
    """This process's resident memory, from /proc (None where there is none)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


class AfterBursts:
    """Trims the heap once a burst of input has drained. A flood leaves the arenas of the
    threads that parsed, windowed and scored it full of freed chunks between live ones,
    which glibc keeps resident (benchmarks/overload.py: 746 MiB after a flood of large
    batches, 515 MiB after a trim). Polled from the main thread (`poll`, every second), off
    the hot path; `malloc_trim` gives the GIL up, and took 21 ms after such a flood (1 ms
    with nothing to give back), holding each arena's lock in turn meanwhile. `taken` is the
    readings the pipeline has taken so far, `fill` how full its queue is now (0: empty, 1:
    at a bound)."""

    def __init__(self, taken: Callable[[], int], fill: Callable[[], float]) -> None:
        self._taken = taken
        self._fill = fill
        self._taken_at_trim = taken()
        self._deepest = 0.0
        self._trimmed_at = time.monotonic()

    def poll(self) -> bool:
        """Trims if a burst has drained since the last trim; whether it trimmed."""
        fill = self._fill()
        self._deepest = max(self._deepest, fill)
        taken = self._taken()
        burst = taken - self._taken_at_trim >= BURST_READINGS or self._deepest >= BURST_FILL
        now = time.monotonic()
        if fill or not burst or now - self._trimmed_at < TRIM_SPACING:
            return False
        before = rss_mib()
        trim()
        log.info(
            "heap_trimmed",
            readings=taken - self._taken_at_trim,
            fullest_queue=round(self._deepest, 2),
            rss_mib_before=before,
            rss_mib_after=rss_mib(),
        )
        self._taken_at_trim, self._deepest, self._trimmed_at = taken, 0.0, now
        return True
