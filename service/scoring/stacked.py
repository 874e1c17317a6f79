"""Scoring many machines' windows in one model call per group of like-shaped models.

Under load every torch call has to win the GIL back from paho's network thread, so scoring
costs per *call*, not per window: one call per machine per cycle does not keep up with a
plant. Machines whose models have one shape (family, family parameters, window length,
sensor count) form a group, and a cycle's windows of a group are scored in one call: the
members' weights are gathered with one `index_select` and run through the family's
forward batched over models: a TorchScript plan (`service.scoring.batched`: dense, vae, conv),
`torch.vmap` over `torch.func.functional_call` for a family without one. A plan is checked
against vmap when its group forms.

A group owns its members' numbers: one float32 tensor `[capacity, n_weights]` holds every
member's weights, one row each, and two arrays hold the scalers. Each member detector's
weights are its row (it keeps no torch module of its own: `Detector.model` builds one
over the row when asked), its `mean` and `std` views into the scalers' rows, so the stack
costs no memory of its own and cannot go stale: whatever changes a member's weights in
place changes the stack.
A member whose detector is replaced (a first fit, a promoted fine-tune) has its row
overwritten; the outgoing detector first gets its own copy of the numbers, so whoever
still holds it keeps a working model. Rows are reallocated only when a group outgrows
its capacity (which doubles).

Adopting a new member frees its own copy of the weights; once a few tens of MB have been
freed that way (a plant's first fits), the heap is trimmed (`service.core.heap`), or the freed
holes would stay resident. A replaced member's weights are not counted: fine-tunes come
one at a time and the next one reuses what the last one freed.

A family `vmap` cannot batch (the LSTM: there is no batching rule for `aten::lstm`) is
scored by each detector alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import structlog
import torch
from torch.func import functional_call

from service.core import heap
from service.core.types import FloatArray
from service.scoring.batched import (
    COLUMNS_BATCH,
    NotBatchableError,
    Plan,
    Span,
    family_plan,
    plan_errors,
    run_plan,
)
from service.scoring.detector import Detector, sensor_errors, window_scores
from service.scoring.models import Autoencoder, build_model

log = structlog.get_logger(__name__)

# Families scored stacked (service.scoring.batched or torch.vmap; test_stacked_scoring.py).
STACKABLE = frozenset({"conv", "dense", "vae"})
# Windows per model call: bounds the memory of one call (inputs, gathered weights).
MAX_CALL_WINDOWS = 4096
MAX_CALL_MODELS = 64
# Windows a model in the calls a new group's plan is checked with against vmap.
PLAN_CHECKS = (COLUMNS_BATCH - 1, COLUMNS_BATCH + 1)
# Weights freed by adoptions after which the heap is trimmed (a trim costs ~10-100 ms).
TRIM_AFTER_BYTES = 32 << 20

Scored = tuple[FloatArray, FloatArray]  # scores [windows], per-sensor errors [windows, sensors]


def call_size(n: int) -> int:
    """`n` rounded up to one of two sizes an octave above 4 (6, 8, 12, 16, 24, 32, 48 ...).
    oneDNN compiles a convolution's kernels for each input shape and keeps a bounded number
    (service.scoring.runtime, with the figures); a call's models and windows vary from
    cycle to cycle, and at their exact counts the cache thrashed. Padded to these sizes a
    live cycle's calls take a few tens of shapes, for at most half as many rows again."""
    if n <= 4:
        return n
    step = 1 << (n.bit_length() - 2)
    return -(-n // step) * step


class GroupKey(NamedTuple):
    """What two detectors must share for their models to be stacked in one call."""

    kind: str
    params: tuple[tuple[str, float], ...]
    window: int
    n_sensors: int
    offset_weight: float  # of the errors


def group_key(detector: Detector) -> GroupKey | None:
    """What makes two detectors' models stackable; None for a family that is not."""
    settings = detector.settings
    if settings.kind not in STACKABLE:
        return None
    params = tuple(sorted((k, float(v)) for k, v in settings.params.items()))
    return GroupKey(
        settings.kind, params, detector.window, len(detector.sensors), settings.offset_weight
    )


@dataclass(frozen=True, slots=True)
class _Work:
    machine: str
    slot: int
    windows: FloatArray


class StackedGroup:
    """The members of one group key, and scoring any of them in one call."""

    def __init__(self, key: GroupKey, template: Detector) -> None:
        self.key = key
        kind, window, n_sensors = key.kind, key.window, key.n_sensors
        with torch.device("meta"):
            self.base: Autoencoder = build_model(
                kind, window, n_sensors, dict(template.settings.params)
            )
        self.base.eval()
        self.spans = _spans(self.base)
        self.width = max((span.stop for span in self.spans.values()), default=0)
        self.shape = (window, n_sensors)
        self.machines: list[str] = []
        self.members: list[Detector] = []
        self.weights = torch.zeros((0, self.width))
        self.mean = np.zeros((0, n_sensors), np.float32)
        self.std = np.ones((0, n_sensors), np.float32)
        self.held = np.ones((0, n_sensors), np.float32)
        # Reused by every call: a fresh allocation of this size per cycle would leave the
        # allocator's heap at its high-water mark (glibc raises its mmap threshold).
        self._gathered = torch.empty((0, self.width))
        self._vmapped: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = torch.vmap(
            self._forward_one
        )
        self.plan = self._choose_plan(template)
        self.uses_vmap = self.plan is None

    def __len__(self) -> int:
        return len(self.members)

    # -- membership -------------------------------------------------------------------------
    def add(self, machine: str, detector: Detector) -> int:
        """Takes `machine`'s `detector` in; returns its slot."""
        slot = len(self.members)
        if slot == len(self.weights):
            self._grow(max(4, 2 * slot))
        self.machines.append(machine)
        self.members.append(detector)
        self._bind(slot, detector)
        return slot

    def replace(self, slot: int, detector: Detector) -> None:
        """`detector` takes over `slot` (its weights are copied in)."""
        _release(self.members[slot])
        self.members[slot] = detector
        self._bind(slot, detector)

    def remove(self, slot: int) -> str | None:
        """Frees `slot` by moving the last member into it; returns the moved machine."""
        _release(self.members[slot])
        last, last_machine = self.members.pop(), self.machines.pop()
        if slot == len(self.members):
            return None
        self.members[slot], self.machines[slot] = last, last_machine
        self._bind(slot, last)
        return last_machine

    def _bind(self, slot: int, detector: Detector) -> None:
        """Copies `detector`'s numbers into `slot`, then makes them views of it."""
        detector.weights_into(self.weights[slot], self.base, self.spans)
        self.mean[slot] = detector.mean
        self.std[slot] = detector.std
        self.held[slot] = detector.held_weight
        detector.mean = self.mean[slot]
        detector.std = self.std[slot]
        detector.held_weight = self.held[slot]

    def _grow(self, capacity: int) -> None:
        n = len(self.members)
        # empty, not zeros: the pages of rows not yet used are never touched, so not resident.
        weights = torch.empty((capacity, self.width))
        weights[:n] = self.weights[:n]
        mean = np.zeros((capacity, self.shape[1]), np.float32)
        std = np.ones((capacity, self.shape[1]), np.float32)
        held = np.ones((capacity, self.shape[1]), np.float32)
        mean[:n], std[:n], held[:n] = self.mean[:n], self.std[:n], self.held[:n]
        self.weights, self.mean, self.std, self.held = weights, mean, std, held
        for slot, detector in enumerate(self.members):
            self._bind(slot, detector)

    # -- scoring ----------------------------------------------------------------------------
    def score(self, work: list[_Work]) -> dict[str, Scored]:
        """Scores every machine's windows, in as few calls as the size limits allow."""
        per_item = call_size(
            min(MAX_CALL_WINDOWS, math.ceil(sum(len(w.windows) for w in work) / len(work)))
        )
        items = [
            (k, start) for k, w in enumerate(work) for start in range(0, len(w.windows), per_item)
        ]
        per_call = max(1, min(MAX_CALL_MODELS, MAX_CALL_WINDOWS // per_item))
        while call_size(per_call) != per_call:  # a remainder's padding stays within it
            per_call -= 1
        errors: list[list[FloatArray]] = [[] for _ in work]
        for first in range(0, len(items), per_call):
            chunk = items[first : first + per_call]
            called = self._call(work, chunk, per_item)[: len(chunk)]
            for (k, start), e in zip(chunk, called, strict=True):
                errors[k].append(e[: len(work[k].windows) - start])
        out: dict[str, Scored] = {}
        for w, parts in zip(work, errors, strict=True):
            machine_errors = np.concatenate(parts) if len(parts) > 1 else parts[0]
            out[w.machine] = window_scores(machine_errors), machine_errors
        return out

    def _call(self, work: list[_Work], items: list[tuple[int, int]], per_item: int) -> FloatArray:
        """One batched model call: per-sensor errors `[items, per_item, sensors]` (and of the
        padding's repeats of the last item beyond them, up to the call's size)."""
        slots = np.fromiter((work[k].slot for k, _ in items), np.int64, len(items))
        slots = np.pad(slots, (0, call_size(len(items)) - len(items)), mode="edge")
        x = np.zeros((len(slots), per_item, *self.shape), np.float32)
        for i, (k, start) in enumerate(items):
            part = work[k].windows[start : start + per_item]
            x[i, : len(part)] = part
        if len(self._gathered) < len(slots):
            self._gathered = torch.empty((len(slots), self.width))
        rows = self._gathered[: len(slots)]
        index = torch.from_numpy(slots)
        with torch.no_grad():
            if self.plan is not None:
                # Scaled in the plan's call too: numpy on whole arrays gives the GIL up.
                mean, std, held = (torch.from_numpy(a) for a in (self.mean, self.std, self.held))
                xt = torch.from_numpy(x)
                errors = plan_errors(
                    self.weights,
                    mean,
                    std,
                    held,
                    index,
                    rows,
                    xt,
                    self.plan,
                    self.key.offset_weight,
                )
                return errors.numpy()
            scaled = (x - self.mean[slots][:, None, None]) / self.std[slots][:, None, None]
            scaled_t = torch.from_numpy(scaled)
            torch.index_select(self.weights, 0, index, out=rows)
            held_of = self.held[slots][:, None]  # per item: broadcast over its windows
            return sensor_errors(
                self._vmapped(rows, scaled_t) - scaled_t, self.key.offset_weight, held_of
            )

    def _choose_plan(self, template: Detector) -> Plan | None:
        """The family's plan if it gives what vmap gives, else None (vmap)."""
        row = torch.cat([p.detach().flatten() for p in template.model.parameters()])
        rows = torch.stack([row, -0.5 * row])
        generator = torch.Generator().manual_seed(0)
        # Both of a plan's ways: a live cycle's few windows a model, and a batch.
        inputs = [torch.randn((2, n, *self.shape), generator=generator) for n in PLAN_CHECKS]
        try:
            plan = family_plan(self.base, self.spans)
            if plan is None:
                return None
            with torch.no_grad():
                agree = all(
                    torch.allclose(run_plan(rows, x, plan), self._vmapped(rows, x), 1e-4, 1e-5)
                    for x in inputs
                )
        except (NotBatchableError, RuntimeError) as exc:
            log.warning("stacked_forward_unusable", kind=self.key.kind, error=str(exc))
            return None
        if not agree:
            log.warning("stacked_forward_unusable", kind=self.key.kind, error="differs from vmap")
            return None
        return plan

    def _forward_one(self, row: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        weights = {name: row[s.start : s.stop].view(s.shape) for name, s in self.spans.items()}
        recon: torch.Tensor = functional_call(self.base, weights, (x,)).recon
        return recon


class StackedScorer:
    """Scores a cycle's windows of many machines: one call per group, the rest alone."""

    def __init__(self) -> None:
        self.groups: dict[GroupKey, StackedGroup] = {}
        self._placed: dict[str, tuple[StackedGroup, int]] = {}
        self._freed_bytes = 0

    def score(self, work: Mapping[str, tuple[Detector, FloatArray]]) -> dict[str, Scored]:
        """`work` maps a machine to its current detector and windows `[n, time, sensors]`."""
        out: dict[str, Scored] = {}
        grouped: dict[GroupKey, list[_Work]] = {}
        for machine, (detector, windows) in work.items():
            placed = self._place(machine, detector)
            if placed is None:
                out[machine] = detector.score_many(windows)
            else:
                grouped.setdefault(placed[0].key, []).append(_Work(machine, placed[1], windows))
        for key, group_work in grouped.items():
            out.update(self.groups[key].score(group_work))
        if self._freed_bytes >= TRIM_AFTER_BYTES:
            log.debug("heap_trim", freed_bytes=self._freed_bytes, trimmed=heap.trim())
            self._freed_bytes = 0
        return out

    def place(self, work: Mapping[str, tuple[Detector, FloatArray]]) -> None:
        """Takes in the models of `work` new to it, as `score` would: then scoring it
        changes no group, and may run on another thread than the one that placed it."""
        for machine, (detector, _) in work.items():
            self._place(machine, detector)

    def _place(self, machine: str, detector: Detector) -> tuple[StackedGroup, int] | None:
        """The group and slot of `machine`, after taking in `detector` if it is new."""
        placed = self._placed.get(machine)
        if placed is not None and placed[0].members[placed[1]] is detector:
            return placed
        key = group_key(detector)
        if placed is not None:
            if placed[0].key == key:
                placed[0].replace(placed[1], detector)
                log.debug("stack_member_replaced", machine=machine, members=len(placed[0]))
                return placed
            self._remove(machine)
        if key is None:
            return None
        if key not in self.groups:
            self.groups[key] = StackedGroup(key, detector)
        group = self.groups[key]
        self._freed_bytes += group.weights.element_size() * group.width
        self._placed[machine] = (group, group.add(machine, detector))
        log.debug("stack_member_added", machine=machine, members=len(group), kind=key.kind)
        return self._placed[machine]

    def forget(self, machine: str) -> None:
        """Takes the machine's model out of its stack (it relearns or is forgotten)."""
        if machine in self._placed:
            self._remove(machine)

    def _remove(self, machine: str) -> None:
        group, slot = self._placed.pop(machine)
        moved = group.remove(slot)
        if moved is not None:
            self._placed[moved] = (group, slot)
        if not group.members:
            del self.groups[group.key]


def _spans(model: Autoencoder) -> dict[str, Span]:
    """Where each parameter goes in a row, in `parameters()` order."""
    spans: dict[str, Span] = {}
    start = 0
    for name, param in model.named_parameters():
        spans[name] = Span(tuple(param.shape), start, start + param.numel())
        start += param.numel()
    return spans


def _release(detector: Detector) -> None:
    """Gives an outgoing member its own copy of its numbers, leaving its row free."""
    detector.own_weights()
    detector.mean = detector.mean.copy()
    detector.std = detector.std.copy()
    detector.held_weight = detector.held_weight.copy()
