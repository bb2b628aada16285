"""A batch of irregular series on the union of their time points, collated without Python loops.

``values (B, T, D)`` and ``mask (B, T, D)`` sit on the sorted union of the batch's times
``times (T,)``; ``encoder_mask`` says which observations the encoder may read and ``target_mask``
which ones the model is scored on (both subsets of ``mask``, set by a task: see ``tasks.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch

from .dataset import IrregularDataset
from .tasks import Points


@dataclass
class Batch:
    """Model-ready tensors of one batch (times in model units, values as stored: scaled or not)."""

    times: torch.Tensor  # (T,)
    values: torch.Tensor  # (B, T, D), 0 where not observed
    mask: torch.Tensor  # (B, T, D) bool, observed
    encoder_mask: torch.Tensor  # (B, T, D) bool, observed and shown to the encoder
    target_mask: torch.Tensor  # (B, T, D) bool, observed and to be predicted
    index: torch.Tensor  # (B,) positions of the series in their dataset
    static: torch.Tensor | None = None  # (B, S)
    labels: torch.Tensor | None = None  # (B,) per series or (B, T) per time point; NaN unknown

    @property
    def batch_size(self) -> int:
        return self.values.shape[0]

    def to(self, device: torch.device | str) -> Batch:
        return replace(
            self,
            **{
                f.name: getattr(self, f.name).to(device)
                for f in fields(self)
                if isinstance(getattr(self, f.name), torch.Tensor)
            },
        )


def collate(
    dataset: IrregularDataset,
    indices: Any,
    task: Any = None,
    rng: np.random.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Batch:
    """Collate series ``indices`` of ``dataset`` onto the union of their times.

    ``task`` (see ``tasks.py``) decides the encoder and target masks; without one the encoder
    sees and the model is scored on every observation.
    """
    indices = np.asarray(indices, dtype=np.int64)
    points, rows = dataset.point_index(indices)
    point_times = dataset.times[points]
    times, cols = np.unique(point_times, return_inverse=True)
    batch, length, dims = len(indices), len(times), dataset.n_channels
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    point_values = dataset.values[points]
    point_mask = ~np.isnan(point_values)
    flat = rows * length + cols  # one flat row index per point: cheaper than 2-D fancy indexing
    values = np.zeros((batch * length, dims), dtype=np_dtype)
    observed = np.zeros((batch * length, dims), dtype=bool)
    values[flat] = np.nan_to_num(point_values, copy=False)
    observed[flat] = point_mask
    if task is None:
        encoder, target = observed, observed
    else:
        starts = np.concatenate([[0], np.cumsum(dataset.lengths[indices])[:-1]])
        pts = Points(rows=rows, starts=starts, times=point_times, observed=point_mask)
        chosen = task.encoder_points(pts, rng or np.random.default_rng(), dataset.time_transform)
        scored = task.targets(pts, chosen)
        encoder = np.zeros_like(observed)
        encoder[flat] = point_mask & chosen[:, None]
        if scored is None:  # every observation is a target
            target = observed
        else:
            target = np.zeros_like(observed)
            target[flat] = point_mask & scored[:, None]
    shape = (batch, length, dims)
    values, observed = values.reshape(shape), observed.reshape(shape)
    encoder, target = encoder.reshape(shape), target.reshape(shape)
    static = labels = None
    if dataset.static is not None:
        static = torch.as_tensor(dataset.static[indices], dtype=dtype)
    if dataset.labels is not None:
        if dataset.label_kind == "series":
            labels = torch.as_tensor(dataset.labels[indices], dtype=dtype)
        else:
            grid = np.full((batch, length), np.nan)
            grid[rows, cols] = dataset.labels[points]
            labels = torch.as_tensor(grid, dtype=dtype)
    return Batch(
        times=torch.as_tensor(times, dtype=dtype),
        values=torch.from_numpy(values),
        mask=torch.from_numpy(observed),
        encoder_mask=torch.from_numpy(encoder),
        target_mask=torch.from_numpy(target),
        index=torch.from_numpy(indices),
        static=static,
        labels=labels,
    )


class Collator:
    """``collate_fn`` for a DataLoader over series indices, with per-batch random task masks.

    Training batches draw fresh masks every time (seeded through torch's RNG, so DataLoader
    workers and ``seed_everything`` make them reproducible); ``fixed=True`` (validation, test)
    derives the masks from ``seed`` and the batch's indices, the same every epoch.
    """

    def __init__(self, dataset: IrregularDataset, task: Any = None, fixed: bool = False,
                 seed: int = 0, dtype: torch.dtype = torch.float32):
        self.dataset, self.task, self.fixed, self.seed, self.dtype = (
            dataset, task, fixed, seed, dtype
        )

    def __call__(self, indices: list[int]) -> Batch:
        if self.fixed:
            rng = np.random.default_rng([self.seed, *map(int, indices[:4]), len(indices)])
        else:
            rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        return collate(self.dataset, indices, self.task, rng, self.dtype)
