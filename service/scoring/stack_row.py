"""`StackRow`: where the weights of a detector that a stack scores live
(`service.scoring.stacked`), and a module over them when one is asked for.

A torch module costs ~30 KB of Python objects (its `nn.Module`s, their hook dicts, the
`Parameter` objects) beside its weights: 30 MiB for 1,000 conv models
(benchmarks/model_memory.py). A stack holds every member's weights in its rows anyway, so a
member keeps its row and no module.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from service.scoring.batched import Span
from service.scoring.models import Autoencoder

# Each parameter's place in a row, by name, in `parameters()` order.
Spans = Mapping[str, Span]


@dataclass(frozen=True)
class StackRow:
    """A member's row of the stack, and the stack's model without numbers (on the meta
    device) with each parameter's place in the row."""

    row: torch.Tensor  # [n_weights]
    skeleton: Autoencoder
    spans: Spans

    def module(self) -> Autoencoder:
        """A model whose parameters are views of the row: what is written into them in
        place is written into the row."""
        module = copy.deepcopy(self.skeleton)
        views = {name: self.row[s.start : s.stop].view(s.shape) for name, s in self.spans.items()}
        module.load_state_dict(views, assign=True)
        return module

    def detached(self) -> StackRow:
        """The same weights in a row of their own: the stack's row may be reused."""
        return StackRow(self.row.clone(), self.skeleton, self.spans)


def copy_into(row: torch.Tensor, spans: Spans, model: Autoencoder) -> None:
    """Copies `model`'s parameters into their places in `row`."""
    with torch.no_grad():
        for span, param in zip(spans.values(), model.parameters(), strict=True):
            row[span.start : span.stop].view(span.shape).copy_(param)


def point_at(row: torch.Tensor, spans: Spans, model: Autoencoder) -> None:
    """Makes `model`'s parameters views of their places in `row`."""
    for span, param in zip(spans.values(), model.parameters(), strict=True):
        param.data = row[span.start : span.stop].view(span.shape)
