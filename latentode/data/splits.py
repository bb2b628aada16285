"""Train/validation/test split by series: seeded, reproducible, never by time point."""

from __future__ import annotations

import numpy as np


def split_indices(
    n: int, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0,
    shuffle: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Series indices for train, validation and test.

    With ``shuffle=False`` the split keeps the stored order (train first, then validation, then
    test), as the paper's code does for hopper. Every non-empty fraction gets at least one
    series when ``n`` allows.
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction and test_fraction must be in [0, 1) with a sum below 1, got "
            f"{val_fraction} and {test_fraction}."
        )
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    n_test = round(test_fraction * n) if test_fraction else 0
    n_val = round(val_fraction * n) if val_fraction else 0
    n_test = max(n_test, 1) if test_fraction and n >= 3 else n_test
    n_val = max(n_val, 1) if val_fraction and n >= 3 else n_val
    if n - n_test - n_val < 1:
        raise ValueError(f"{n} series are too few for a split leaving training data.")
    train = order[: n - n_val - n_test]
    val = order[n - n_val - n_test : n - n_test]
    test = order[n - n_test :]
    return np.sort(train) if shuffle else train, np.sort(val), np.sort(test)
