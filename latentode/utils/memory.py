"""Peak tensor memory of a call, on CPU (profiler allocation events) or CUDA (allocator stats).

Used by the solver tests (adjoint memory must not grow with the number of steps) and by the
benchmarks. CPU numbers count bytes of tensors allocated *during* the call and still alive at its
peak, relative to what was alive before it: exactly what an O(steps) graph would show.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile


@contextlib.contextmanager
def _without_profiler_trace() -> Iterator[None]:
    """Drop the ``USDT: ... profiler_start/stop`` lines that torch's C++ profiler writes to
    the process's stderr on every start and stop (a benchmark's table drowned in them); any
    other line written meanwhile is passed on."""
    fd = 2  # the C++ side writes to the process's stderr, whatever sys.stderr is
    try:
        sys.stderr.flush()
        saved = os.dup(fd)
    except OSError:  # no file descriptor 2: nothing to filter
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            sink.seek(0)
            kept = [line for line in sink.read().decode(errors="replace").splitlines(True)
                    if not line.startswith("USDT:")]
            if kept:
                sys.stderr.write("".join(kept))


def peak_memory(fn: Callable[[], Any], device: torch.device | str = "cpu") -> tuple[Any, int]:
    """Run ``fn()`` and return ``(result, peak_bytes)`` of tensor memory allocated during it."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result, torch.cuda.max_memory_allocated(device) - before
    with _without_profiler_trace(), profile(activities=[ProfilerActivity.CPU],
                                            profile_memory=True) as prof:
        result = fn()
    events = [
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    events.sort()
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return result, peak
