"""torch's process-wide settings, made here so that nothing outside scoring and learning
imports torch to make them."""

from __future__ import annotations

import os

import torch

# oneDNN, which runs torch's convolutions on CPU, keeps the kernel it compiled for every
# input shape it has seen, up to 1,024 of them by default. A stacked conv call's shape is
# its number of models and windows, which change from cycle to cycle, so a daemon fills
# that cache: ~130 KB a shape, five convolutions a call. With 64 kept, calls of one to 63
# models left 18 MiB instead of 49 MiB and growing (benchmarks/model_memory.py), in no
# more time that in-process A/Bs could tell from a shared box's noise (docs/performance-
# history.md). An operator's own setting of the variable wins.
ONEDNN_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
ONEDNN_CACHE_SHAPES = 64


def configure_torch(threads: int) -> None:
    """torch's intra-op threads for this process. Its default of one a core makes the small
    models' calls and fits fight each other and the pipeline for the cores: on a 2-core box
    evaluation's fits ran 20x slower. And oneDNN's kernel cache bounded: oneDNN reads it
    when it compiles its first kernel, so this is called before any model runs."""
    torch.set_num_threads(threads)
    os.environ.setdefault(ONEDNN_CACHE_ENV, str(ONEDNN_CACHE_SHAPES))
