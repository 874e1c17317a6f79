"""The fine-tuner runs at a lower CPU priority than the threads that score."""

from __future__ import annotations

import os
import threading

from service.app import lower_priority


def test_lower_priority_raises_only_that_threads_nice_value() -> None:
    release = threading.Event()
    worker = threading.Thread(target=release.wait, name="trainer")
    worker.start()
    try:
        assert worker.native_id is not None
        own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        lower_priority(worker, 5)
        assert os.getpriority(os.PRIO_PROCESS, worker.native_id) == min(19, own + 5)
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own
    finally:
        release.set()
        worker.join()


def test_a_thread_not_started_is_left_alone() -> None:
    lower_priority(threading.Thread(target=lambda: None), 5)  # logs, does not raise
