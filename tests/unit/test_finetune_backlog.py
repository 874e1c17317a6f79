"""Machines that fall due together do not queue a plant's worth of fine-tune jobs.

Machines that learned together fall due for fine-tuning together, and each job holds a
clone of the model and its training windows. The pipeline builds a fine-tune job only
while fewer than `MAX_QUEUED_JOBS` wait for the fine-tuner; a machine turned away stays
due and gets its job at a later window, once the fine-tuner has caught up.
"""

from __future__ import annotations

from service.core.config import Settings
from service.core.types import MachineState, Reading
from service.learning.finetune import FineTuner
from service.stream.arrivals import Batch
from service.stream.learning import TuneRequest
from service.stream.pipeline import Pipeline
from service.stream.verdicts import MAX_QUEUED_JOBS
from tests.synthetic import SENSORS, machine_rows
from tests.unit.wiring import wired_pipeline

MACHINES = [f"pump-{i}" for i in range(MAX_QUEUED_JOBS + 3)]
INTERVAL = 30.0


def plant() -> tuple[Pipeline, FineTuner]:
    s = Settings.model_validate(
        {
            "window": {"length": 10, "lateness": 0.0},
            "learning": {"windows": 20},
            "model": {"epochs": 2},
            # Five held-out windows of a 2-epoch model: the former quantile x 2 keeps every
            # machine clean, and due, whatever its noise; this test is about the queue.
            "threshold": {"spread": 0.0, "margin": 2.0},
            "machines": {m: {"sensors": list(SENSORS)} for m in MACHINES},
            "finetune": {
                "interval": INTERVAL,
                "admit_every": 1,
                "min_windows": 10,
                "margin_windows": 0,
                "recent_windows": 20,
                "epochs": 1,
            },
        }
    )
    pipeline, finetuner, _ = wired_pipeline(s)
    return pipeline, finetuner


def feed(
    pipeline: Pipeline, rows: dict[str, list[tuple[float, dict[str, float]]]], seconds: range
) -> None:
    """One cycle per second of event time, every machine's row of that second in it."""
    for i in seconds:
        for machine in MACHINES:
            ts, values = rows[machine][i]
            assert pipeline.submit(
                Batch(0.0, [Reading(machine, s, ts, v) for s, v in values.items()])
            )
        pipeline.cycle(timeout=0)


def handle_all(pipeline: Pipeline, finetuner: FineTuner) -> list[str]:
    """Runs every queued job here, hands the results back; the fine-tuned machines."""
    tuned = []
    while not finetuner.jobs.empty():
        job = finetuner.jobs.get_nowait()
        assert job is not None
        if isinstance(job, TuneRequest):
            tuned.append(job.machine)
        finetuner.handle(job)
    pipeline.cycle(timeout=0)
    return tuned


def test_fine_tunes_that_fall_due_together_queue_no_more_than_the_limit() -> None:
    pipeline, finetuner = plant()
    rows = {m: list(machine_rows(0.0, 200, seed=k)) for k, m in enumerate(MACHINES)}
    feed(pipeline, rows, range(40))  # 10 rows to the first window, 20 learning windows
    handle_all(pipeline, finetuner)
    assert all(r.state == MachineState.SCORING for r in pipeline.machines.values())

    # Well past the interval: every machine is due, but only the limit's worth is built.
    feed(pipeline, rows, range(40, 40 + int(2 * INTERVAL)))
    assert finetuner.jobs.qsize() == MAX_QUEUED_JOBS
    first = handle_all(pipeline, finetuner)
    assert len(first) == MAX_QUEUED_JOBS

    # The others stay due: their jobs come at their next windows, once there is room.
    feed(pipeline, rows, range(100, 102))
    second = handle_all(pipeline, finetuner)
    assert sorted(first + second) == sorted(MACHINES)
