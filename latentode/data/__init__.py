"""Irregular time series in and batches out: pandas loaders, tasks, splits, scaling, datasets.

    from latentode.data import from_dataframe
    ds = from_dataframe(df, id_col="series_id", time_col="time")
"""

from .batch import Batch, Collator, collate
from .datamodule import LatentODEDataModule
from .dataset import IrregularDataset, TimeTransform
from .frame import from_dataframe
from .scaling import ChannelScaler
from .splits import split_indices
from .tasks import Extrapolation, Interpolation

__all__ = [
    "Batch",
    "ChannelScaler",
    "Collator",
    "Extrapolation",
    "Interpolation",
    "IrregularDataset",
    "LatentODEDataModule",
    "TimeTransform",
    "collate",
    "from_dataframe",
    "split_indices",
]
