"""Empirical coverage of central posterior predictive intervals (a calibration check).

A ``level`` interval is the central one: from the ``(1 - level) / 2`` to the ``(1 + level) / 2``
quantile of the samples, per point (the 5-95% interval for ``level=0.9``). A calibrated model
covers about ``level`` of the held-out values; much less means over-confident intervals, much more
means too wide ones. Pure numpy/torch: no model, no Lightning.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def _as_numpy(x: Any, dtype: Any = np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def check_level(level: float) -> float:
    """``level`` as a float in (0, 1), or a ``ValueError`` saying what came."""
    try:
        value = float(level)
    except (TypeError, ValueError) as err:
        raise ValueError(f"level must be a number in (0, 1), got {level!r}.") from err
    if not 0.0 < value < 1.0:
        raise ValueError(f"level must be in (0, 1) (e.g. 0.9 for a 5-95% interval), got {level}.")
    return value


def interval_hits(
    samples: Any, values: Any, mask: Any = None, level: float = 0.9
) -> tuple[int, int]:
    """How many of the points under ``mask`` lie in their central ``level`` interval, and how many
    points there are: ``(hits, count)``, to pool over batches before dividing.

    Args:
        samples: ``(S, ...)`` samples of the predictive distribution (numpy or torch).
        values: ``(...)`` the observed values.
        mask: ``(...)`` bool, the points to count (None: all).
        level: the interval's probability, in (0, 1).
    """
    level = check_level(level)
    s, v = _as_numpy(samples), _as_numpy(values)
    if s.shape[1:] != v.shape:
        raise ValueError(f"samples must have shape (S, *values.shape) = (S, {v.shape}), got "
                         f"{s.shape}.")
    m = np.ones(v.shape, dtype=bool) if mask is None else _as_numpy(mask, bool)
    if m.shape != v.shape:
        raise ValueError(f"mask must have the shape of values {v.shape}, got {m.shape}.")
    if not m.any():
        return 0, 0
    picked = s[:, m]  # (S, N): only the points that count
    lo, hi = np.quantile(picked, [(1 - level) / 2, (1 + level) / 2], axis=0)
    target = v[m]
    return int(np.count_nonzero((target >= lo) & (target <= hi))), int(target.size)


def interval_coverage(samples: Any, values: Any, mask: Any = None, level: float = 0.9) -> float:
    """Fraction of the points under ``mask`` whose value lies in the central ``level`` interval
    of ``samples`` (``(S, ...)``, per point); NaN when ``mask`` selects nothing."""
    hits, count = interval_hits(samples, values, mask, level)
    return hits / count if count else float("nan")


__all__ = ["check_level", "interval_coverage", "interval_hits"]
