"""A batch of irregular series on the union of their time points, collated without Python loops.

``values (B, T, D)`` and ``mask (B, T, D)`` sit on the sorted union of the batch's times
``times (T,)``; ``encoder_mask`` says which observations the encoder may read and ``target_mask``
which ones the model is scored on (both subsets of ``mask``, set by a task: see ``tasks.py``).

Where that union starts is the ``origin`` choice (:data:`TIME_ORIGINS`): ``"batch"`` keeps every
series on the data's clock, so the latent path starts (``z0``) at the batch's earliest time, as
the paper's code does; ``"series"`` moves each series to start at 0, so that ``z0`` is each
series' state at its own first observation. Series recorded on one absolute clock (ICU stays
admitted on different days) need ``"series"``: with ``"batch"`` a stay's path would start days
before its admission, at a time that depends on which other series share the batch. The models'
dynamics are autonomous (no input depends on the clock's zero), so the shift changes nothing
else; tasks still cut on the data's clock (``Extrapolation(cut_time=...)``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch

from latentode.utils.seeds import _GOLDEN, _MASK64, _mix, stream_seed

from .dataset import IrregularDataset
from .tasks import Points

TIME_ORIGINS = ("batch", "series")


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
    origin: torch.Tensor | None = None  # (B,) model time each row was moved back by ("series")
    errors: torch.Tensor | None = None  # (B, T, D) measurement uncertainties, 0 where none

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


def distinct_in(times: np.ndarray, np_dtype: Any) -> np.ndarray:
    """Sorted distinct ``times`` cast to ``np_dtype``, still strictly increasing: distinct float64
    times closer than float32's resolution (continuous timestamps of many series: ~5e-7 at model
    time 5) would round to one value, which the solver refuses as a repeated output time. Each
    collision is moved up by ULPs instead, an error of a few 1e-7 relative, and no point merged."""
    cast = np.asarray(times).astype(np_dtype)
    clash = np.nonzero(cast[1:] <= cast[:-1])[0]
    if not len(clash):
        return cast
    widths: dict[int, np.dtype[Any]] = {4: np.dtype(np.int32), 8: np.dtype(np.int64)}
    ints = widths.get(cast.dtype.itemsize) if cast.dtype.kind == "f" else None
    if ints is None or not np.isfinite(cast).all():  # (other dtypes: one step at a time)
        up = np_dtype(np.inf)
        for i in range(int(clash[0]) + 1, len(cast)):
            if cast[i] <= cast[i - 1]:
                cast[i] = np.nextafter(cast[i - 1], up)
        return cast
    # In a key where consecutive floats are consecutive integers, "move up to one ULP past the
    # previous" is key[i] = max(key[i], key[i-1] + 1): a running maximum of key - i, plus i
    # (the step-by-step loop took 16 of 392 ms of a 256-series batch on its own clocks).
    bits = cast.view(ints).astype(np.int64)
    low = np.int64(np.iinfo(ints).min)
    key = np.where(bits < 0, low - bits, bits)  # negative floats count down from -0 = 0
    at = np.arange(len(key), dtype=np.int64)
    moved = np.maximum.accumulate(key - at) + at
    out = np.where(moved < 0, low - moved, moved).astype(ints).view(cast.dtype)
    return np.where(moved == key, cast, out)  # unmoved times keep their bits (-0.0)


def collate(
    dataset: IrregularDataset,
    indices: Any,
    task: Any = None,
    rng: np.random.Generator | SeriesRandom | None = None,
    dtype: torch.dtype = torch.float32,
    origin: str = "batch",
) -> Batch:
    """Collate series ``indices`` of ``dataset`` onto the union of their times.

    ``task`` (see ``tasks.py``) decides the encoder and target masks; without one the encoder
    sees and the model is scored on every observation. ``origin``: ``"batch"`` (times as
    stored) or ``"series"`` (each series moved to start at 0; ``Batch.origin`` says by how
    much), see the module docstring.
    """
    check_origin(origin)
    indices = np.asarray(indices, dtype=np.int64)
    points, rows = dataset.point_index(indices)
    point_times = dataset.times[points]
    shift = None
    if origin == "series":  # in float64, before the cast: no precision lost to a late clock
        shift = dataset.times[dataset.offsets[indices]] if len(indices) else np.zeros(0)
        grid_times = point_times - shift[rows]
    else:
        grid_times = point_times
    times, cols = np.unique(grid_times, return_inverse=True)
    batch, length, dims = len(indices), len(times), dataset.n_channels
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    times = distinct_in(times, np_dtype)
    point_values = dataset.values[points]
    point_mask = ~np.isnan(point_values)
    flat = rows * length + cols  # one flat row index per point: cheaper than 2-D fancy indexing
    # annotated as plain arrays: reshaped to 3-D below (numpy's stubs track shapes)
    values: np.ndarray = np.zeros((batch * length, dims), dtype=np_dtype)
    observed: np.ndarray = np.zeros((batch * length, dims), dtype=bool)
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
    static = labels = errors = None
    if dataset.errors is not None:  # 0 where none was given, or nothing observed
        grid_errors: np.ndarray = np.zeros((batch * length, dims), dtype=np_dtype)
        grid_errors[flat] = np.nan_to_num(dataset.errors[points], nan=0.0)
        errors = torch.from_numpy(grid_errors.reshape(shape))
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
        origin=None if shift is None else torch.as_tensor(shift, dtype=dtype),
        errors=errors,
    )


def check_origin(origin: str) -> None:
    if origin not in TIME_ORIGINS:
        raise ValueError(
            f"time_origin must be one of {TIME_ORIGINS}, got {origin!r}: 'series' starts every "
            "series' latent path at its own first observation (series on one absolute clock), "
            "'batch' at the batch's earliest time (series that share a clock's zero)."
        )




def series_uniforms(key: tuple[int, ...], series: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """One uniform in ``[0, 1)`` per point of the given series, laid out series after series:
    a function of ``key``, the series' index and the point's position in its series only."""
    series = np.asarray(series, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    rows = np.repeat(np.arange(len(series)), lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    position = np.arange(int(lengths.sum()), dtype=np.int64) - starts[rows]
    with np.errstate(over="ignore"):
        base = np.uint64(stream_seed(*key))
        per_series = _mix(base + (series.astype(np.uint64) + np.uint64(1)) * _GOLDEN)
        h = _mix(per_series[rows] ^ ((position.astype(np.uint64) + np.uint64(1)) * _GOLDEN))
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


class SeriesRandom:
    """A stand-in for a numpy ``Generator`` whose draws belong to series, not to batches.

    ``random(n)`` with ``n`` the batch's number of points (the draw a task such as
    ``Interpolation`` makes, one number per point, series after series) gives every point a
    uniform that depends on ``key``, its series and its position in the series only: a series
    gets the same mask in any batch, with any batch size, in any order and on any process.
    Every further ``random(n)`` call continues each series' stream; ``uniform(low, high, m)``
    with ``m`` the number of series draws one number per series the same way. Other draws come
    from one generator seeded by ``key`` and the batch's series.
    """

    def __init__(self, key: tuple[int, ...], series: np.ndarray, lengths: np.ndarray):
        self.key = tuple(int(k) & _MASK64 for k in key)
        self.series = np.asarray(series, dtype=np.int64)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self._calls = 0
        self._generator: np.random.Generator | None = None

    @property
    def generator(self) -> np.random.Generator:
        if self._generator is None:
            self._generator = np.random.default_rng([*self.key, *self.series.tolist()])
        return self._generator

    def random(self, size: Any = None, dtype: Any = np.float64, out: Any = None) -> Any:
        n = int(self.lengths.sum())
        if out is None and np.dtype(dtype) == np.float64 and size in (n, (n,)):
            self._calls += 1
            return series_uniforms((*self.key, self._calls), self.series, self.lengths)
        return self.generator.random(size, dtype, out)

    def uniform(self, low: Any = 0.0, high: Any = 1.0, size: Any = None) -> Any:
        """With ``size`` the batch's number of series (a task's one draw per series, such as
        ``Extrapolation``'s cut): one uniform per series from its own stream, as
        :meth:`random` per point; other sizes from the batch's generator."""
        n = len(self.series)
        scalars = np.isscalar(low) and np.isscalar(high)  # (a bool: low and high stay Any)
        if size in (n, (n,)) and scalars:
            self._calls += 1
            u = series_uniforms((*self.key, self._calls), self.series, np.ones(n, np.int64))
            return low + (high - low) * u
        return self.generator.uniform(low, high, size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.generator, name)


_FIXED, _TRAIN, _FRESH = 1, 2, 3  # domains of the mask streams


class Collator:
    """``collate_fn`` for a DataLoader over series, with random task masks drawn per series.

    Items are series indices, or ``(index, epoch)`` pairs as the training sampler of
    :class:`~latentode.data.LatentODEDataModule` yields them. Every series draws its own mask
    (:class:`SeriesRandom`), so a series' mask does not depend on the batch it lands in:

    - ``fixed=True`` (validation, test): from ``seed`` and the series, the same every epoch and
      for any batch size or number of processes;
    - ``(index, epoch)`` items (training): from ``seed``, the epoch and the series, fresh every
      epoch; under DDP every process draws what a single process would draw for its series;
    - plain indices with ``fixed=False``: from a number drawn from torch's RNG per batch (so
      DataLoader workers and ``seed_everything`` make them reproducible).
    """

    def __init__(self, dataset: IrregularDataset, task: Any = None, fixed: bool = False,
                 seed: int = 0, dtype: torch.dtype = torch.float32, origin: str = "batch"):
        check_origin(origin)
        self.dataset, self.task, self.fixed, self.seed, self.dtype = (
            dataset, task, fixed, seed, dtype
        )
        self.origin = origin

    def __call__(self, items: list) -> Batch:
        epoch = None
        if items and isinstance(items[0], tuple):
            indices = np.asarray([int(i) for i, _ in items], dtype=np.int64)
            epochs = {int(e) for _, e in items}
            if len(epochs) != 1:
                raise ValueError(f"a batch mixes epochs {sorted(epochs)}.")
            epoch = epochs.pop()
        else:
            indices = np.asarray(items, dtype=np.int64)
        if self.fixed:
            key: tuple[int, ...] = (_FIXED, self.seed)
        elif epoch is not None:
            key = (_TRAIN, self.seed, epoch)
        else:
            key = (_FRESH, int(torch.randint(0, 2**62, ()).item()))
        rng = SeriesRandom(key, indices, self.dataset.lengths[indices])
        return collate(self.dataset, indices, self.task, rng, self.dtype, self.origin)
