"""``LatentODEDataModule``: dataset, split, task, scaling and loaders in one LightningDataModule."""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from latentode.utils.stack import user_stacklevel

from .batch import Collator, check_origin, stream_seed
from .dataset import IrregularDataset
from .scaling import ChannelScaler, check_representable
from .splits import split_indices
from .tasks import Interpolation, Mixed, interpolation_task
from .windows import rescale_for_window, split_windows

log = logging.getLogger(__name__)


class SeriesKeys(Dataset):
    """The loader's "dataset": it hands the sampler's keys (series index, or ``(index, epoch)``)
    to the collator, which does the real work on whole batches."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: Any) -> Any:
        return key


class SeriesSampler(DistributedSampler):
    """Which series one process reads, in which order, each epoch; one class for one process
    and for many (a ``DistributedSampler``, so Lightning keeps it instead of putting its own).

    Training (``shuffle=True``): a permutation of all series drawn from ``seed`` and the epoch,
    padded by repeating series to a multiple of the ``num_replicas`` processes (as torch's
    ``DistributedSampler``), process ``rank`` reading every ``num_replicas``-th entry: with
    batch size ``b`` per process, global batch ``k`` holds the same series as batch ``k`` of
    one process with batch size ``num_replicas * b``. It yields ``(index, epoch)`` so that the
    collator draws each series' mask from the series and the epoch, in worker processes too.

    Evaluation (``shuffle=False``): stored order and no padding, process ``rank`` reading series
    ``rank, rank + num_replicas, ...``: sums over processes count every series exactly once.

    Lightning calls :meth:`set_epoch` every epoch; a pass without one advances the epoch.
    """

    def __init__(self, n: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = False,
                 seed: int = 0):
        super().__init__(SeriesKeys(n), num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed, drop_last=False)
        self.n = n
        self._epoch_set, self._passes = False, 0

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self._epoch_set = True

    def __len__(self) -> int:
        if self.shuffle:
            return math.ceil(self.n / self.num_replicas)
        return len(range(self.rank, self.n, self.num_replicas))

    def __iter__(self) -> Iterator[Any]:
        if not self._epoch_set and self._passes:
            self.epoch += 1
        self._epoch_set, self._passes = False, self._passes + 1
        if not self.shuffle:
            return iter(range(self.rank, self.n, self.num_replicas))
        generator = torch.Generator().manual_seed(stream_seed(self.seed, self.epoch))
        order = torch.randperm(self.n, generator=generator).tolist()
        total = math.ceil(self.n / self.num_replicas) * self.num_replicas
        while len(order) < total:
            order += order[: total - len(order)]
        epoch = self.epoch
        return iter([(i, epoch) for i in order[self.rank : total : self.num_replicas]])


class SeriesLoader(DataLoader):
    """A ``DataLoader`` that takes one draw of torch's global stream per pass, with or without
    worker processes.

    A loader without a generator draws its worker base seed from the global stream whenever
    an iterator is made: once per pass without workers, once per fit with persistent ones, so
    the posterior samples drawn next followed ``num_workers`` and runs in chunks differed from
    straight runs. The base seed comes from the loader's own generator here (the collator
    seeds its own draws, so it is never read), and the one global draw per pass is taken
    explicitly: every run keeps the stream it had without workers (drawing none at all moved
    the quick start's default seed onto a stream that stays at the mean for 40 epochs)."""

    def __iter__(self) -> Any:
        torch.empty((), dtype=torch.int64).random_()
        return super().__iter__()


class LatentODEDataModule(L.LightningDataModule):
    """Everything between a dataset and the model.

    Args:
        dataset: an :class:`IrregularDataset`, or a callable building one (called in ``setup``,
            so a Hydra config can name a source lazily).
        task: an ``Interpolation``, ``Extrapolation`` or ``Mixed`` (``latentode.data.tasks``),
            or None (the encoder sees and the model predicts every observation).
        batch_size: series per batch.
        val_fraction, test_fraction, split_seed, shuffle_split: the split by series; with
            ``split`` given instead (or a source that fixes one, as hopper's in-order 80/20),
            an array of "train"/"val"/"test" per series is used as is.
        scale: standardise channels with a scaler fitted on the training series' observed values.
        log_channels: channels standardised as ``log(value)`` (positive by nature: the
            model's answers and intervals stay positive there; see ``ChannelScaler``).
        num_workers: DataLoader worker processes.
        seed: seed of the fixed validation/test masks.
        time_origin: where each latent path starts: ``"batch"``, the batch's earliest time (the
            paper's protocol: series that share a clock's zero, time since admission), or
            ``"series"``, each series' own first observation (series on one absolute clock:
            see :mod:`latentode.data.batch`). With ``"batch"``, series whose starts lie further
            apart than they are long get a warning.
        window, window_stride: cut every series of every split into windows of ``window``
            every ``window_stride`` (default: back to back), in the data's time units (for
            datetimes a duration, ``"24h"``), each window a series of its own
            (:mod:`latentode.data.windows`); the split is made first, so a series' windows stay
            in one split. Long series of many cycles train far better in windows. Without a
            given ``time_scale`` the model's time unit is chosen for the window's span.
        train_seed: seed of the training order and masks, combined with the epoch. None: the
            run's seed when a trainer runs the loaders (``PL_GLOBAL_SEED``, which
            ``seed_everything`` sets, as Lightning's own samplers do), else a number drawn from
            torch's RNG per loader (shared by all processes).

    Loaders use a :class:`SeriesSampler` and draw every series' mask from the series itself
    (see :class:`~latentode.data.batch.Collator`), so under DDP (``trainer=ddp``/``ddp_cpu``)
    the processes together read, with batch size ``b`` each, exactly the series and masks that
    one process reads with batch size ``processes * b``, and validation/test read every series
    once (no padding).
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
        log_channels: Sequence[str] | None = None,
        num_workers: int = 0,
        seed: int = 0,
        train_seed: int | None = None,
        time_origin: str = "batch",
        window: Any = None,
        window_stride: Any = None,
    ):
        super().__init__()
        if not (isinstance(dataset, IrregularDataset) or callable(dataset)):
            raise TypeError(
                f"dataset must be an IrregularDataset or a function that builds one, got "
                f"{type(dataset).__name__} {dataset!r} (in a config: data.dataset needs a "
                "_target_, e.g. the data group's own: a bare 'dataset:' empties it).")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        check_origin(time_origin)
        self.time_origin = time_origin
        if window is None and window_stride is not None:
            raise ValueError("window_stride needs a window (data.window=...).")
        self.window, self.window_stride = window, window_stride
        self._source = dataset
        self.task = task
        self.batch_size = batch_size
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.split_seed, self.shuffle_split, self.split = split_seed, shuffle_split, split
        self.scale, self.num_workers, self.seed = scale, num_workers, seed
        if isinstance(log_channels, str):  # one name (data.log_channels=glucose)
            log_channels = [log_channels]
        self.log_channels = [str(c) for c in (log_channels or [])]
        if self.log_channels and not scale:
            raise ValueError("log_channels are standardised on a log scale by the data's "
                             "scaler: they need scale=true.")
        self.train_seed = train_seed
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
        if self.window is not None:
            data = rescale_for_window(data, self.window)
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
            _warn_if_split_empty(len(data), index, self.val_fraction, self.test_fraction)
        self.split_index = index
        raw = {name: data.subset(idx) for name, idx in index.items()}
        if self.window is not None:  # after the split: a series' windows stay together
            raw = {name: split_windows(part, self.window, self.window_stride) if len(part)
                   else part for name, part in raw.items()}
            log.info("windows of %s: %s", self.window, ", ".join(
                f"{name} {len(part)} from {len(index[name])} series" for name, part in raw.items()))
        if self.scale:
            self.scaler = ChannelScaler(self.log_channels).fit(raw["train"])
            raw = {name: self.scaler.apply(part) for name, part in raw.items()}
        else:
            _warn_if_far_from_unit(raw["train"])
        for name, part in raw.items():
            check_representable(part, f"{name} split" + (", standardised" if self.scale else ""))
        if not _warn_if_single_times(raw["train"]):
            _warn_if_nothing_held_out(self.task, raw["train"])
        if self.time_origin == "batch":  # windows of one series start at different times
            _warn_if_clocks_differ(data if self.window is None else raw["train"])
        if self.window is None:
            _warn_if_long_series(raw["train"], self.batch_size)
        self.splits = raw

    def _processes(self) -> tuple[int, int]:
        """``(number of processes, rank)`` of the data-parallel run (``(1, 0)`` alone)."""
        trainer = self.trainer
        kwargs = getattr(trainer.strategy, "distributed_sampler_kwargs", None) if trainer else None
        if not kwargs:
            return 1, 0
        return int(kwargs["num_replicas"]), int(kwargs["rank"])

    def _train_seed(self, processes: int) -> int:
        if self.train_seed is not None:
            return int(self.train_seed)
        if self.trainer is not None and os.environ.get("PL_GLOBAL_SEED") is not None:
            return int(os.environ["PL_GLOBAL_SEED"])
        seed = int(torch.randint(0, 2**62, ()).item())
        if processes > 1:  # every process must read its part of the same permutation
            assert self.trainer is not None  # the processes are the trainer's (_processes)
            seed = int(self.trainer.strategy.broadcast(seed, src=0))
        return seed

    def _loader(self, name: str, train: bool) -> DataLoader:
        if not self.splits:
            self.setup()
        part = self.splits[name]
        processes, rank = self._processes()
        if train:
            seed = self._train_seed(processes)
            collator = Collator(part, self.task, seed=seed, origin=self.time_origin)
        else:
            if 0 < len(part) < processes:
                raise ValueError(
                    f"the {name} split has {len(part)} series for {processes} processes; every "
                    "process needs at least one (fewer processes, or a larger split)."
                )
            seed = 0
            collator = Collator(part, self.task, fixed=True, seed=self.seed,
                                origin=self.time_origin)
        sampler = SeriesSampler(len(part), processes, rank, shuffle=train, seed=seed)
        progress = getattr(getattr(self.trainer, "fit_loop", None), "epoch_progress", None)
        if train and progress is not None:
            # the epoch the fit goes on with, as Lightning's own set_epoch counts it: Lightning
            # makes the iterator first, and worker processes fetch their first batches at once
            # (a run resumed with data.num_workers=2 trained its second epoch on the first's)
            sampler.set_epoch(int(progress.current.processed))
        return SeriesLoader(
            SeriesKeys(len(part)),
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=collator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator(),  # the worker base seed (never read: see SeriesLoader)
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        """The test split's loader, so that ``trainer.predict(module, datamodule=dm)`` answers
        for the test series (``LatentODELightning.predict_step``); another split:
        ``trainer.predict(module, dataloaders=dm.val_dataloader())``."""
        return self._loader("test", train=False)

    def inverse_values(self, values: np.ndarray) -> np.ndarray:
        """Model-space values (scaled) back to data units."""
        return self.scaler.inverse_transform(values) if self.scaler is not None else values


UNIT_RANGE = (0.05, 20.0)
"""Unscaled (``scale=False``) training data are warned about where a channel's spread lies
above this range, or every channel's below it. The default run on the periodic sines fed
unscaled in units x0.01 / x1 / x10 / x100 / x1000 (channel std 0.007 / 0.7 / 7 / 70 / 700,
``obs_std`` scaled alike, 2 or 3 seeds; 2026-12-07) ended at 0.90-1.16 / 0.05-0.06 /
0.04-0.07 / 0.31-0.36 / 0.84-0.92 of the data's variance, against 0.009-0.012 standardised:
the models learn in units of about 1 (weights start at unit scale, Adamax moves each by about
the learning rate per step)."""

OFFSET_LIMIT = 10.0
"""Unscaled training channels whose mean lies further from zero are warned about too: the
encoder reads the raw values. The sines in units x1 (std 0.7) moved up by 5 / 20 / 1000 ended
at 0.12-0.14 / 0.84-0.90 / 0.82-0.86 of the variance (2 seeds; the decoder's bias started at
the mean, ``output_bias: auto``), against 0.05-0.06 where they were (mean 1.08)."""


def _warn_if_far_from_unit(data: IrregularDataset) -> None:
    """Name unscaled training channels far from unit spread or from zero, with the way out
    (the scaler)."""
    values = np.asarray(data.values, dtype=np.float64)
    seen = ~np.isnan(values)
    if not seen.any():
        return
    counts = seen.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(values, 0) / counts
        std = np.sqrt(np.nansum((values - mean) ** 2, 0) / counts)
    low, high = UNIT_RANGE
    spread = [(name, s, m) for name, s, m, n in zip(data.channels, std, mean, counts, strict=True)
              if n > 1 and np.isfinite(s) and s > 0]
    # one wide channel dominates the loss; narrow ones matter only when all are (a narrow
    # channel beside others is fitted less closely, as its errors weigh little: the hopper's
    # qvel3, std 0.035, in the paper's units)
    far = [c for c in spread if c[1] > high or abs(c[2]) > OFFSET_LIMIT]
    if not far and spread and max(c[1] for c in spread) < low:
        far = spread
    if not far:
        return
    named = ", ".join(f"{name!r} (std {s:.3g}, mean {m:.3g})" for name, s, m in far[:5]) + (
        f" and {len(far) - 5} more" if len(far) > 5 else "")
    warnings.warn(
        f"data.scale=false, and the training series' channel(s) {named} are far from unit "
        f"spread (std outside {low:g}-{high:g}) or from zero (mean beyond +-{OFFSET_LIMIT:g}): "
        "the models learn in units of about 1, and on such data the default run stayed near "
        "the channel means (docs/results.md, Unscaled data in other units). Keep "
        "data.scale=true (the default: metrics are reported in the data's units as well, "
        "mse_data) or rescale those channels.",
        stacklevel=user_stacklevel(),
    )


LONG_SERIES = 5000
"""Training series of at least this many observation times, not cut into windows, are warned
about: each is one example walked point by point (6 sensors of 27k-48k points: one optimiser
step per epoch, 76 s and 1.9 GB; in 6-hour windows 50 s for 2 epochs at 0.74 GB and test MSE
0.87 against 1.35)."""


def _warn_if_long_series(data: IrregularDataset, batch_size: int) -> None:
    """Name very long training series with the way out, ``data.window``."""
    if not len(data):
        return
    counts = data.observed_times  # (rows with no value, a grid kept whole, do not count)
    if int(counts.max()) < LONG_SERIES:
        return
    steps = math.ceil(len(data) / max(int(batch_size), 1))
    warnings.warn(
        f"the training series are long (up to {int(counts.max())} observation times, median "
        f"{int(np.median(counts))}, {len(data)} series): each is one example walked point by "
        f"point, {steps} optimiser step(s) per epoch. Long series of many cycles train far "
        "better cut into windows of a span holding a few hundred points: data.window=... "
        "(LatentODEForecaster({'data.window': ...}); README: Windows on long series).",
        stacklevel=user_stacklevel(),
    )


def _warn_if_clocks_differ(data: IrregularDataset) -> None:
    """Series that start further apart than they last were read on one absolute clock (dates,
    hours since some epoch): with ``time_origin="batch"`` each latent path would start at the
    batch's earliest time, long before most series' first observation."""
    if len(data) < 2:
        return
    first, last = data.times[data.offsets[:-1]], data.times[data.offsets[1:] - 1]
    spread = float(np.percentile(first, 90) - np.percentile(first, 10))
    typical = float(np.median(last - first))
    if spread > typical:  # typical >= 0, so the starts do spread
        scale = data.time_transform.scale
        warnings.warn(
            f"the series start at different times: the middle 80% of first observations spread "
            f"over {spread * scale:.4g} time units, more than a typical series lasts "
            f"({typical * scale:.4g}). With time_origin='batch' every latent path starts at the "
            "batch's earliest time, before most series began. If the times are on one "
            "absolute clock (dates, admissions on different days), set "
            "data.time_origin=series (Python: LatentODEDataModule(time_origin='series')).",
            stacklevel=3,
        )


def _warn_if_split_empty(n: int, index: dict[str, np.ndarray], val_fraction: float,
                         test_fraction: float) -> None:
    """Held-out series asked for but too few series to give any: said, never silent (2 series
    trained on both, then the test crashed on an empty split)."""
    empty = [name for name, key, fraction in (("validation", "val", val_fraction),
                                              ("test", "test", test_fraction))
             if fraction and len(index[key]) == 0]
    if empty:
        what = " and ".join(empty)
        warnings.warn(
            f"{n} series are too few to hold out {what} series (val_fraction={val_fraction}, "
            f"test_fraction={test_fraction} need at least 3 series; the split is by series, "
            f"before any windows): all {n} train, and there are no {what} metrics. Add series, "
            "or set data.val_fraction=0 data.test_fraction=0 to train on all of them knowingly.",
            stacklevel=3,
        )


def _warn_if_single_times(train: IrregularDataset) -> bool:
    """Most training series observed at one time only have no dynamics to learn; the usual
    cause is a wrong series id column (a row or visit id splits every series into one-row
    pieces), which trained without a word before. Returns whether it warned."""
    if len(train) < 2:
        return False
    per_series = train.observed_times
    single = int(np.sum(per_series <= 1))
    if single < 0.5 * len(train):
        return False
    warnings.warn(
        f"{single} of the {len(train)} training series are observed at a single time "
        f"(median {int(np.median(per_series))} observed times): a series needs two or more "
        "times to show how it changes, so the model has almost nothing to learn from. If that "
        "is unexpected, check the series id column (id_col= / data.dataset.id_col): a row or "
        "visit id in its place splits every series into one-row pieces.",
        stacklevel=3,
    )
    return True


def _warn_if_nothing_held_out(task: Any, train: IrregularDataset) -> None:
    """An interpolation task with ``count=`` shows short series every point: nothing is left to
    interpolate, and metrics on unseen points (and calibrated intervals) have nothing to use.
    A ``Mixed`` task is checked by its interpolation part (its cut series still forecast)."""
    mixed = isinstance(task, Mixed)
    task = interpolation_task(task)
    if not isinstance(task, Interpolation) or task.count is None or len(train) == 0:
        return
    per_series = train.observed_times
    whole = float(np.mean(per_series <= task.count))
    if whole >= 0.5:
        warnings.warn(
            f"{'Mixed' if mixed else 'Interpolation'}(count={task.count}) shows the encoder "
            f"every point of {whole:.0%} of the {'subsampled ' if mixed else ''}training series "
            f"(median {int(np.median(per_series))} observed times): nothing is held out there, "
            "so the model learns to reconstruct rather than to interpolate, and unseen-point "
            "metrics have nothing to measure there. For short series use a share: "
            + ("data.task.count=null data.task.fraction=0.75 data.task.fraction_spread=0.25 "
               "(Python: Mixed())." if mixed else
               "data.task.count=null data.task.fraction=0.5 (Python: "
               "Interpolation(fraction=0.5))."),
            stacklevel=3,
        )
