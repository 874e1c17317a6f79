"""torch's process-wide settings, made here so that nothing outside scoring and learning
imports torch to make them."""

from __future__ import annotations

import os

import torch

# oneDNN, which runs torch's convolutions on CPU, keeps the kernels (primitives) it compiled
# for every layer and input shape it has seen, up to 1,024 by default, ~130 KB each. A
# stacked conv call's shape is its number of models and windows, padded to a few sizes
# (service.scoring.stacked.call_size), five layers each, and fine-tunes add their own: 256
# kept hold a live plant's with room for the fine-tuner's. At 1,000 machines (quiet box,
# benchmarks/latency.py): 64 kept thrashed (scoring p99 33 / 133 ms without / with
# fine-tunes, 604 MiB); 1,024 with exact shapes 15 / 38 ms at 629 MiB; 256 with the padded
# shapes 15 / 29 ms at 597 MiB. An operator's own setting of the variable wins.
ONEDNN_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
ONEDNN_CACHE_SHAPES = 256


def configure_torch(threads: int) -> None:
    """torch's intra-op threads for this process. Its default of one a core makes the small
    models' calls and fits fight each other and the pipeline for the cores: on a 2-core box
    evaluation's fits ran 20x slower. And oneDNN's kernel cache bounded: oneDNN reads it
    when it compiles its first kernel, so this is called before any model runs."""
    torch.set_num_threads(threads)
    os.environ.setdefault(ONEDNN_CACHE_ENV, str(ONEDNN_CACHE_SHAPES))
