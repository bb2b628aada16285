"""Irregular time series in and batches out: pandas loaders, tasks, splits, scaling, datasets.

    from latentode.data import from_dataframe
    ds = from_dataframe(df, id_col="series_id", time_col="time")
"""

from typing import Any

from .batch import Batch, Collator, collate
from .dataset import IrregularDataset, TimeTransform
from .frame import from_dataframe
from .scaling import ChannelScaler
from .splits import split_indices
from .tasks import Extrapolation, Folds, Interpolation, Mixed
from .windows import split_windows

__all__ = [
    "Batch",
    "ChannelScaler",
    "Collator",
    "Extrapolation",
    "Folds",
    "Interpolation",
    "IrregularDataset",
    "LatentODEDataModule",
    "Mixed",
    "TimeTransform",
    "collate",
    "from_dataframe",
    "load_dataset",
    "split_indices",
    "split_windows",
]


def __getattr__(name: str) -> Any:
    """Import Lightning only when the data module is asked for: plain data use stays light."""
    if name == "LatentODEDataModule":
        from .datamodule import LatentODEDataModule

        return LatentODEDataModule
    if name == "load_dataset":
        from .registry import load_dataset

        return load_dataset
    raise AttributeError(f"module 'latentode.data' has no attribute {name!r}")
