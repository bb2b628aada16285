"""Class labels: what classifier head they need, and whether a configured head fits them."""

from __future__ import annotations

import numpy as np


def label_head_size(labels: np.ndarray, label_col: str | None) -> int:
    """``n_labels`` a classifier of ``labels`` needs: 1 for a binary 0/1 label, ``C`` for class
    numbers ``0..C-1`` (NaN: unknown). Refuses labels that are not class numbers."""
    name = label_col or "label"
    known = np.asarray(labels, dtype=np.float64)
    known = known[~np.isnan(known)]
    if len(known) == 0:
        raise ValueError(f"label column {name!r} has no known label (all NaN).")
    if not np.all(known == np.round(known)) or known.min() < 0:
        raise ValueError(f"label column {name!r} must hold class numbers 0, 1, ... (NaN: "
                         f"unknown), got values such as {sorted(set(known.tolist()))[:5]}.")
    return 1 if known.max() <= 1 else int(known.max()) + 1


def check_label_head(n_labels: int, labels: np.ndarray, label_col: str | None) -> None:
    """Refuse a classifier head that cannot hold every class of ``labels`` (before training,
    which would otherwise fail deep in the loss or in the metrics), naming the value to use."""
    need = label_head_size(labels, label_col)
    if n_labels >= max(need, 2) or n_labels == need:
        return
    classes = "a binary 0/1 label" if need == 1 else f"classes 0..{need - 1}"
    raise ValueError(f"model.n_labels={n_labels} but label column {label_col or 'label'!r} holds "
                     f"{classes}: set model.n_labels={need}.")
