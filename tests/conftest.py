"""Shared test fixtures."""

from __future__ import annotations

import os
import sys

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    """Under ``pytest -n N`` (pytest-xdist) each worker takes its share of the cores for torch's
    threads instead of all of them: N workers each running torch's default thread count on the
    same cores oversubscribe them (the README's ``-n auto`` on 2 cores: 4 threads)."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        torch.set_num_threads(max(1, torch.get_num_threads() // int(workers)))


@pytest.fixture(autouse=True, scope="session")
def _absl_leaves_pytests_streams_open():
    """dm_control (the hopper source) imports absl, whose log handler keeps the ``sys.stderr`` of
    the moment it was made, here pytest's capture file, and closes it when logging is
    reconfigured (the next in-process Hydra run's ``dictConfig``) unless it is ``sys.stderr``
    then: every later test failed with "I/O operation on closed file" (test_hopper or the hopper
    search in test_sweeps before test_cli_typos). Point it at the real stderr, which it never
    closes."""
    try:
        from absl import logging as absl_logging
    except ImportError:
        yield
        return
    absl_logging.get_absl_handler().python_handler.stream = sys.__stderr__
    yield


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
