"""The daemon's process-wide torch settings (service.scoring.runtime)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

from service.scoring import runtime


@pytest.fixture(autouse=True)
def _threads_restored() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_onednn_keeps_a_bounded_number_of_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(runtime.ONEDNN_CACHE_ENV, raising=False)
    runtime.configure_torch(1)
    assert os.environ[runtime.ONEDNN_CACHE_ENV] == str(runtime.ONEDNN_CACHE_SHAPES)


def test_an_operators_own_onednn_cache_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(runtime.ONEDNN_CACHE_ENV, "1024")
    runtime.configure_torch(1)
    assert os.environ[runtime.ONEDNN_CACHE_ENV] == "1024"
