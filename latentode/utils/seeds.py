"""Seeds mixed from tuples of integers, shared by the data layer (masks drawn per series) and
the models (posterior noise drawn per series)."""

from __future__ import annotations

import numpy as np

_MASK64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on ``uint64`` arrays (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def stream_seed(*key: int) -> int:
    """A well-mixed seed in ``[0, 2**63)`` from a tuple of integers (no Python ``hash``)."""
    with np.errstate(over="ignore"):
        h = np.zeros(1, dtype=np.uint64)
        for k in key:
            h = _mix(h + _GOLDEN + np.uint64(int(k) & _MASK64))
    return int(h[0] >> np.uint64(1))
