"""Channel scaling fitted on the training split's observed values only."""

from __future__ import annotations

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
            values = values.copy()
            values[0, never] = 0.0
        self.scaler.fit(values)
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
