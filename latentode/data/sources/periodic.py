"""The 1-D periodic toy of the latent ODE paper (Rubanova, Chen & Duvenaud 2019).

Mirrors the paper code (github.com/YuliaRubanova/latent_ode): ``lib/parse_datasets.py`` builds
one shared time grid and ``Periodic_1d(init_freq=None, init_amplitude=1., final_amplitude=1.,
final_freq=None, z0=1.)`` from ``generate_timeseries.py`` samples the series, with the
``run_models.py`` defaults ``--timepoints 100 --max-t 5. --noise-weight 0.01``:

- grid: ``0`` plus ``n_points - 1`` draws of U[0, t_max], sorted (shared by every series);
- per series, in this order: frequency ``f = 0.4 + 0.4 * U[0, 1)``, offset
  ``c = 1 + N(0, 0.1^2)``; amplitude 1, no phase shift, constant frequency (``final_freq=None``
  means ``final_freq = init_freq``), so ``y(t) = sin(2 pi f t) + c``;
- then one ``(n_series, n_points - 1)`` matrix of U[0, 1) noise, times ``noise_weight``, added
  to every point but the first (``TimeSeries.add_noise``): the noise is one-sided, not zero-mean.

Random numbers come from one ``numpy.random.Generator`` (``default_rng(seed)``), drawn in the
paper's order: ``rng.uniform(0, t_max, n_points - 1)`` for the grid, then for each series
``rng.random()`` (frequency) and ``rng.normal(0, 0.1)`` (offset), then
``rng.random((n_series, n_points - 1))`` for the noise. The paper used torch's global RNG for the
grid and numpy's legacy global RNG for the rest, so its numbers cannot be reproduced bit for bit;
the distributions and the order are the same. The paper integrates the phase step by step in
float32 (``phi += 2 pi f dt``); here ``2 pi f t`` is evaluated directly in float64, which is the
same function without the rounding drift.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
import pandas as pd

CHANNELS: list[str] = ["value"]
"""The one channel column."""

FRAME_KWARGS: dict[str, object] = {
    "id_col": "series_id",
    "time_col": "time",
    "value_cols": CHANNELS,
}
"""Keyword arguments for the core layer's ``from_dataframe``."""

FREQ_RANGE: tuple[float, float] = (0.4, 0.8)
"""Frequencies are drawn uniformly from this interval (cycles per time unit)."""

OFFSET_MEAN: float = 1.0
OFFSET_STD: float = 0.1


def _lattice(t_max: float, resolution: float) -> int:
    """Lattice points ``resolution, 2 resolution, ...`` up to ``t_max``: 0.7 / 0.1 is
    6.999... in floating point, whose plain floor left the last point out."""
    return int(np.floor(t_max / resolution + 1e-9))


def load(
    n_series: int = 1000,
    n_points: int = 100,
    t_max: float = 5.0,
    seed: int = 0,
    *,
    noise_weight: float = 0.01,
    own_grids: bool = False,
    resolution: float | None = None,
) -> pd.DataFrame:
    """Sample the paper's periodic toy: noisy sines sharing one irregular time grid.

    Args:
        n_series: number of series (the paper's ``-n``; its README uses 1000).
        n_points: time points per series, the first at 0 (``--timepoints``, default 100).
        t_max: the grid's other points are uniform on ``[0, t_max]`` (``--max-t``, default 5).
        seed: seed of the ``numpy.random.Generator`` (see the module docstring for its use).
        noise_weight: scale of the U[0, 1) noise added to all points but the first
            (``--noise-weight``, default 0.01).
        own_grids: not the paper's toy: each series gets its own grid (0 plus ``n_points - 1``
            uniform draws), the sparse, unaligned sampling of real records, where a batch's
            union of time points is much longer than any one series. Drawn after the paper's
            numbers, so the series' frequencies, offsets and noise stay the same.
        resolution: with ``own_grids``, times are distinct multiples of this (e.g. a clock's
            minute): ``n_points - 1`` of the ``floor(t_max / resolution)`` lattice points.

    Returns:
        ``n_series * n_points`` rows: ``series_id`` (int, 0..n_series-1), ``time`` (float64),
        ``value`` (float64, never NaN), sorted by ``series_id`` then ``time``.
    """
    _check_int("n_series", n_series, minimum=1)
    _check_int("n_points", n_points, minimum=1)
    _check_int("seed", seed, minimum=0)
    _check_real("t_max", t_max, positive=True)
    _check_real("noise_weight", noise_weight, positive=False)
    if resolution is not None:
        _check_real("resolution", resolution, positive=True)
        if not own_grids:
            raise ValueError("periodic.load: resolution applies to own_grids=True only.")
        if _lattice(t_max, resolution) < n_points - 1:
            raise ValueError(f"periodic.load: t_max / resolution = {t_max / resolution:g} "
                             f"lattice points cannot hold n_points - 1 = {n_points - 1} times; "
                             "use a finer resolution.")

    rng = np.random.default_rng(seed)
    grid = rng.uniform(0.0, float(t_max), size=n_points - 1)
    times = np.sort(np.concatenate([[0.0], grid]))

    lo, hi = FREQ_RANGE
    freqs = np.empty(n_series)
    offsets = np.empty(n_series)
    for i in range(n_series):  # the paper's per-series draw order: frequency, then offset
        freqs[i] = lo + (hi - lo) * rng.random()
        offsets[i] = OFFSET_MEAN + rng.normal(0.0, OFFSET_STD)
    noise = rng.random((n_series, n_points - 1))

    if own_grids:
        per_series = np.empty((n_series, n_points))
        for i in range(n_series):
            draws: np.ndarray
            if resolution is None:
                draws = rng.uniform(0.0, float(t_max), size=n_points - 1)
            else:
                lattice = _lattice(t_max, resolution)
                draws = (rng.choice(lattice, size=n_points - 1, replace=False) + 1) * resolution
            per_series[i] = np.sort(np.concatenate([[0.0], draws]))
    else:
        per_series = np.broadcast_to(times, (n_series, n_points))
    values = np.sin(2.0 * np.pi * freqs[:, None] * per_series) + offsets[:, None]
    values[:, 1:] += float(noise_weight) * noise

    return pd.DataFrame(
        {
            "series_id": np.repeat(np.arange(n_series, dtype=np.int64), n_points),
            "time": per_series.reshape(-1),
            "value": values.reshape(-1),
        }
    )


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"periodic.load: {name} must be an integer >= {minimum}, got {value!r}")


def _check_real(name: str, value: object, positive: bool) -> None:
    if isinstance(value, Real) and not isinstance(value, bool):
        number = float(value)  # as math.isfinite reads it
        if math.isfinite(number) and (number > 0 if positive else number >= 0):
            return
    bound = "> 0" if positive else ">= 0"
    raise ValueError(f"periodic.load: {name} must be a finite number {bound}, got {value!r}")
