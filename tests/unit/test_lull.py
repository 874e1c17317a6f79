"""`Lull`: threads take turns beside a busy one (the pipeline) only while it waits or when it
hands a turn over between its cycles; several at once (concurrent scrapes, the fine-tuner),
and the fine-tuner's training batches each take one."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from service.core.config import Settings
from service.core.metrics import Metrics
from service.core.threads import Lull
from service.learning import finetune
from service.learning.finetune import FineTuner
from service.stream.learning import FitRequest, FitResult
from tests.support import wait_until
from tests.synthetic import SENSORS, machine_rows
from tests.unit.wiring import wired_pipeline


def test_lull_lets_a_turn_go_on_only_while_the_busy_thread_waits() -> None:
    lull = Lull()
    assert lull.wait(0), "a thread not started yet takes no turns"
    with lull.running():
        assert not lull.wait(0.01), "busy: the turn times out"
        with lull.waiting():
            assert lull.wait(0)
            lull.done()
        assert not lull.wait(0)
        release = threading.Event()

        def waiter() -> None:
            with lull.waiting():
                release.wait(10)

        thread = threading.Thread(target=waiter)
        thread.start()
        try:
            assert lull.wait(10)
            lull.done()
        finally:
            release.set()
            thread.join(10)
    assert lull.wait(0), "an ended thread takes no turns"


def test_a_busy_thread_that_never_waits_hands_a_turn_over_and_waits_for_its_end() -> None:
    lull = Lull(turn_limit=10.0)
    cycles = 0
    stop = threading.Event()

    def busy() -> None:
        nonlocal cycles
        with lull.running():
            while not stop.is_set():
                cycles += 1  # a cycle's work, never a wait
                lull.hand_over()

    thread = threading.Thread(target=busy)
    thread.start()
    try:
        assert lull.wait(10), "handed over between two cycles"
        during = cycles
        time.sleep(0.05)  # the turn's work
        assert cycles == during, "the busy thread waits while the turn runs"
        lull.done()
        wait_until(lambda: cycles > during, 10, "cycles after the turn")
    finally:
        stop.set()
        thread.join(10)


def test_pipeline_is_busy_while_it_cycles_and_waiting_on_an_empty_queue() -> None:
    pipeline, _, _ = wired_pipeline(Settings())
    during_work: list[bool] = []
    take_installs = pipeline._take_installs

    def recording() -> None:
        during_work.append(pipeline.lull.wait(0))
        take_installs()

    pipeline._take_installs = recording  # type: ignore[method-assign]
    pipeline.start()
    try:
        wait_until(lambda: len(during_work) >= 3, 10, "three cycles")
        assert not any(during_work), "a cycle's work is busy"
        assert pipeline.lull.wait(10), "an idle pipeline waits for input"
    finally:
        pipeline.stop(0.0)
        assert pipeline.join_until(time.monotonic() + 10)
    assert pipeline.lull.wait(0), "an ended pipeline takes no turns"


def test_several_threads_take_their_turns_together_and_ask_again_for_the_next() -> None:
    """Both asking threads begin at one hand-over (each waits inside its turn for the
    other's), and one that ends its turn and asks again is left for the next hand-over: the
    busy thread does not wait out `turn_limit` for it."""
    lull = Lull(turn_limit=30.0, share=0.5)
    together = threading.Barrier(2, timeout=10)
    turns_taken = [0, 0]

    def other(k: int) -> None:
        assert lull.wait(10)
        together.wait()  # both in their turns at once
        for _ in range(20):
            assert lull.wait(10)
            turns_taken[k] += 1
        lull.done()

    others = [threading.Thread(target=other, args=(k,)) for k in range(2)]
    with lull.running():
        for t in others:
            t.start()
        wait_until(lambda: lull._asking == 2, 10, "both asking")
        deadline = time.monotonic() + 10
        while turns_taken != [20, 20] and time.monotonic() < deadline:
            time.sleep(0.001)  # a cycle's work
            lull.hand_over()
    for t in others:
        t.join(10)
    assert turns_taken == [20, 20], "twenty turns each, a hand-over apart, within 10 s"


def test_the_finetuner_trains_only_in_turns(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fit's training batches wait for the pipeline's turns: none while it is busy and
    hands none over, all once it waits."""
    monkeypatch.setattr(finetune, "TURN_WAIT", 30.0)
    s = Settings.model_validate({"window": {"length": 20}, "model": {"epochs": 2}})
    installed: list[FitResult] = []
    lull = Lull()
    tuner = FineTuner(s, Metrics(CollectorRegistry()), installed.append, None, lull)
    rows = np.array([list(vs.values()) for _, vs in machine_rows(0.0, 200)], np.float32)
    windows = [rows[i : i + 20] for i in range(0, 180, 2)]
    tuner.start()
    try:
        with lull.running():
            tuner.submit(FitRequest("pump-3", tuple(SENSORS), windows))
            wait_until(lambda: lull._asking == 1, 30, "the fit's first batch asks for a turn")
            assert not installed
            with lull.waiting():
                wait_until(lambda: len(installed) == 1, 60, "the fit, in the pipeline's wait")
        assert installed[0].detector is not None
        assert not lull._in_turn, "its turn ended with the job"
    finally:
        tuner.stop(0.0)
        assert tuner.join_until(time.monotonic() + 30)


def test_a_busy_thread_hands_over_at_most_its_share_of_time() -> None:
    """A thread that always asks, beside one that never waits: turns as long as the busy
    thread's cycles are handed over about one cycle in four at a share of 0.2, not every
    cycle."""
    lull = Lull(turn_limit=1.0, share=0.2)
    cycles = turns = 0
    stop = threading.Event()

    def asking() -> None:
        nonlocal turns
        while not stop.is_set():
            if lull.wait(1.0):
                turns += 1
                time.sleep(0.004)  # the turn's work
        lull.done()

    thread = threading.Thread(target=asking)
    with lull.running():
        thread.start()
        try:
            while cycles < 100:
                time.sleep(0.004)  # a cycle's work
                cycles += 1
                lull.hand_over()
        finally:
            stop.set()
            lull.hand_over()
    thread.join(10)
    assert 5 <= turns <= cycles / 2


def test_a_background_thread_waits_out_a_scrapes_work_before_its_turns() -> None:
    """Training (background) takes no turn while a scrape's render is under way, even while
    the pipeline waits; the scrape's `done()` lets it go on at once."""
    lull = Lull()
    began: list[str] = []

    def background() -> None:
        assert lull.wait(30, background=True)
        began.append("background")
        lull.done()

    with lull.running():
        # The scrape is this thread: its first piece asks, and its work has begun.
        assert not lull.wait(0.0)
        thread = threading.Thread(target=background)
        thread.start()
        wait_until(thread.is_alive, 10, "the background thread started")
        with lull.waiting():
            assert lull.wait(1.0), "the scrape's turns go on while the pipeline waits"
            time.sleep(0.2)  # the render goes on; training must not begin meanwhile
            assert began == []
            lull.done()  # the render is over
            thread.join(10)
    assert began == ["background"]


def test_a_background_thread_goes_on_when_a_scrape_outlasts_its_wait() -> None:
    """A render that never ends (its thread stuck) holds training back for the timeout
    only."""
    lull = Lull()
    stuck = threading.Event()

    def scrape() -> None:
        lull.wait(1.0)  # its work begins, and does not end until the test is over
        stuck.wait(30)
        lull.done()

    thread = threading.Thread(target=scrape)
    with lull.running(), lull.waiting():
        thread.start()
        wait_until(lambda: bool(lull._foreground), 10, "the scrape's work began")
        started = time.monotonic()
        assert lull.wait(0.3, background=True)
        assert time.monotonic() - started >= 0.3, "it waited out the timeout first"
        stuck.set()
    thread.join(10)
