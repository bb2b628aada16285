"""Channel scaling fitted on the training split's observed values only."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.preprocessing import StandardScaler

from .dataset import IrregularDataset


class ChannelScaler:
    """A scikit-learn ``StandardScaler`` per channel that ignores unobserved (NaN) entries.

    Fit it on the training series only; ``transform`` and ``inverse_transform`` keep NaNs. A
    channel never observed in training, or constant there, gets scale 1 (values pass through
    shifted) rather than a division by zero.
    """

    def __init__(self) -> None:
        self.scaler = StandardScaler()

    def fit(self, dataset: IrregularDataset) -> ChannelScaler:
        values = dataset.values
        never = np.isnan(values).all(0)
        if never.any():  # StandardScaler would warn and give NaN statistics
            names = [c for c, n in zip(dataset.channels, never, strict=True) if n]
            warnings.warn(
                f"channel(s) {names} have no observed "
                "value in the training series: the model cannot learn them and its answers for "
                "them are untrained guesses (they are left unscaled).", stacklevel=2)
            values = values.copy()
            values[0, never] = 0.0
        with np.errstate(over="ignore", invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            self.scaler.fit(values)
        overflow = ~np.isfinite(self.scaler.var_) | ~np.isfinite(self.scaler.mean_)
        if overflow.any():
            j = int(np.argmax(overflow))
            raise ValueError(
                f"channel {dataset.channels[j]!r} has values too large to standardise (largest "
                f"|value| {np.nanmax(np.abs(values[:, j])):.3g}): their squares overflow. "
                "Rescale that column (other units, or a log) before training.")
        self.scaler.scale_ = np.where(
            np.isfinite(self.scaler.scale_) & (self.scaler.scale_ > 0), self.scaler.scale_, 1.0
        )
        return self

    @property
    def mean(self) -> np.ndarray:
        return self.scaler.mean_

    @property
    def scale(self) -> np.ndarray:
        return self.scaler.scale_

    def transform(self, values: np.ndarray) -> np.ndarray:
        return (np.asarray(values, dtype=np.float64) - self.mean) / self.scale

    def inverse_transform(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=np.float64) * self.scale + self.mean

    def apply(self, dataset: IrregularDataset) -> IrregularDataset:
        """``dataset`` with scaled values (NaN pattern unchanged)."""
        return dataset.with_values(self.transform(dataset.values))


FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_representable(dataset: IrregularDataset, what: str) -> None:
    """Refuse values the float32 model would turn into inf, naming channel and series."""
    with np.errstate(invalid="ignore"):
        big = np.abs(dataset.values) > FLOAT32_MAX
    if not big.any():
        return
    row, j = np.argwhere(big)[0]
    series = int(np.searchsorted(dataset.offsets, row, side="right") - 1)
    raise ValueError(
        f"channel {dataset.channels[j]!r} of series {dataset.ids[series]!r} ({what}) holds "
        f"{dataset.values[row, j]:.3g}, beyond float32's range (the model computes in float32): "
        "rescale that column, or keep scale=true so channels are standardised.")
