"""``LatentODEDataModule``: dataset, split, task, scaling and loaders in one LightningDataModule."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from .batch import Collator
from .dataset import IrregularDataset
from .scaling import ChannelScaler
from .splits import split_indices


class LatentODEDataModule(L.LightningDataModule):
    """Everything between a dataset and the model.

    Args:
        dataset: an :class:`IrregularDataset`, or a callable building one (called in ``setup``,
            so a Hydra config can name a source lazily).
        task: an ``Interpolation`` or ``Extrapolation`` (``latentode.data.tasks``), or None
            (the encoder sees and the model predicts every observation).
        batch_size: series per batch.
        val_fraction, test_fraction, split_seed, shuffle_split: the split by series; with
            ``split`` given instead (or a source that fixes one, as hopper's in-order 80/20),
            an array of "train"/"val"/"test" per series is used as is.
        scale: standardise channels with a scaler fitted on the training series' observed values.
        num_workers: DataLoader worker processes.
        seed: seed of the fixed validation/test masks.
    """

    def __init__(
        self,
        dataset: IrregularDataset | Callable[[], IrregularDataset],
        task: Any = None,
        batch_size: int = 50,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        shuffle_split: bool = True,
        split: Any = None,
        scale: bool = True,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        self._source = dataset
        self.task = task
        self.batch_size = batch_size
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.split_seed, self.shuffle_split, self.split = split_seed, shuffle_split, split
        self.scale, self.num_workers, self.seed = scale, num_workers, seed
        self.dataset: IrregularDataset | None = None
        self.scaler: ChannelScaler | None = None
        self.splits: dict[str, IrregularDataset] = {}
        self.split_index: dict[str, np.ndarray] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        data = self._source if isinstance(self._source, IrregularDataset) else self._source()
        if not isinstance(data, IrregularDataset):
            raise TypeError(f"dataset must build an IrregularDataset, got {type(data).__name__}.")
        self.dataset = data
        fixed = self.split if self.split is not None else data.split
        if fixed is not None:
            labels = np.asarray(fixed)
            if len(labels) != len(data):
                raise ValueError(f"split has {len(labels)} entries for {len(data)} series.")
            unknown = set(labels.tolist()) - {"train", "val", "test"}
            if unknown:
                raise ValueError(f"split entries must be train/val/test, got {sorted(unknown)}.")
            index = {name: np.nonzero(labels == name)[0] for name in ("train", "val", "test")}
        else:
            train, val, test = split_indices(
                len(data), self.val_fraction, self.test_fraction, self.split_seed,
                self.shuffle_split,
            )
            index = {"train": train, "val": val, "test": test}
        self.split_index = index
        raw = {name: data.subset(idx) for name, idx in index.items()}
        if self.scale:
            self.scaler = ChannelScaler().fit(raw["train"])
            raw = {name: self.scaler.apply(part) for name, part in raw.items()}
        self.splits = raw

    def _loader(self, name: str, train: bool) -> DataLoader:
        if not self.splits:
            self.setup()
        part = self.splits[name]
        return DataLoader(
            range(len(part)),
            batch_size=self.batch_size,
            shuffle=train,
            collate_fn=Collator(part, self.task, fixed=not train, seed=self.seed),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def inverse_values(self, values: np.ndarray) -> np.ndarray:
        """Model-space values (scaled) back to data units."""
        return self.scaler.inverse_transform(values) if self.scaler is not None else values
