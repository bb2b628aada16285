"""Shared test fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_threads():
    """The CLI sets torch's thread count (``threads: 1``); give every test back the one it had."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
