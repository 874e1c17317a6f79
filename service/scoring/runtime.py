"""torch's process-wide settings, made here so that nothing outside scoring and learning
imports torch to make them."""

from __future__ import annotations

import torch


def configure_torch(threads: int) -> None:
    """torch's intra-op threads for this process. Its default of one a core makes the small
    models' calls and fits fight each other and the pipeline for the cores: on a 2-core box
    evaluation's fits ran 20x slower."""
    torch.set_num_threads(threads)
