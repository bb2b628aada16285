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


@pytest.fixture
def one_thread():
    """One torch thread for the test (module-level ``pytestmark = pytest.mark.usefixtures(
    "one_thread")``): tiny models run faster so, and give the same numbers on any machine."""
    torch.set_num_threads(1)
    yield  # _restore_threads gives the count back
