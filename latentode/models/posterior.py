"""The standard normal draws behind posterior samples ``z0 = mean + std * noise``.

By default they come from torch's global stream, one tensor for the batch, so a series'
samples depend on the batch it is in. Inside :func:`series_noise` each series draws its own from
a seed of ``(key, series index)``: evaluation then scores a series alike under any batch size
and any number of processes (to the solver's tolerance, whose steps follow the batch).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextvars import ContextVar

import torch

from latentode.utils.seeds import stream_seed

_SERIES: ContextVar[tuple[list[int], tuple[int, ...]] | None] = ContextVar(
    "latentode_series_noise", default=None)


@contextlib.contextmanager
def series_noise(series: Sequence[int], key: Sequence[int]) -> Iterator[None]:
    """While inside, :func:`posterior_noise` draws series ``series[b]``'s noise (row ``b`` of
    the batch) from a seed of ``(*key, series[b])``."""
    token = _SERIES.set(([int(i) for i in series], tuple(int(k) for k in key)))
    try:
        yield
    finally:
        _SERIES.reset(token)


def posterior_noise(n: int, mean: torch.Tensor) -> torch.Tensor:
    """``(n, *mean.shape)`` standard normal draws: from torch's global stream, or per series
    inside :func:`series_noise` (whose series must be ``mean``'s rows)."""
    given = _SERIES.get()
    if given is None:
        return torch.randn((n, *mean.shape), dtype=mean.dtype, device=mean.device)
    series, key = given
    if len(series) != mean.shape[0]:
        raise RuntimeError(f"series_noise names {len(series)} series for a batch of "
                           f"{mean.shape[0]}.")
    # (float64 models draw float64, as torch.randn does for them; others float32, then cast)
    dtype = torch.float64 if mean.dtype == torch.float64 else torch.float32
    draws = [torch.randn((n, *mean.shape[1:]), dtype=dtype, generator=torch.Generator(
        ).manual_seed(stream_seed(*key, i))) for i in series]
    return torch.stack(draws, 1).to(device=mean.device, dtype=mean.dtype)
