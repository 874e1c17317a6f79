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


def trim() -> bool:
    """Releases free heap pages to the system; False where the C library cannot."""
    if _MALLOC_TRIM is None:
        return False
    return bool(_MALLOC_TRIM(0))


def freeze() -> int:
    """Moves every object the cyclic collector tracks into its permanent generation; returns
    how many are frozen now. A full collection walks every tracked object: at 1,000
    machines (models, runtimes, buffers) about half a million, 200 ms during which no
    thread runs, and it comes whenever a quarter as many again have survived since the
    last, e.g. while fine-tunes are promoted. Frozen objects are still freed by reference
    counting; only cyclic garbage frozen with them stays, so this is done rarely (after
    models are installed), not per cycle."""
    gc.freeze()
    return gc.get_freeze_count()
