"""Shared fixtures: tiny configs so the whole suite runs in minutes on two CPU cores."""

from __future__ import annotations

import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_cuda: the test needs a CUDA GPU (skipped without one)")
    config.addinivalue_line("markers", "slow: an end-to-end test that takes more than a few seconds")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is available")
    for item in items:
        if "needs_cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _few_threads():
    # Tiny tensors gain nothing from intra-op threads, and two cores are shared by everything.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
