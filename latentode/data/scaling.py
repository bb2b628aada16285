"""Channel scaling fitted on the training split's observed values only."""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from sklearn.preprocessing import StandardScaler

from latentode.utils.stack import user_stacklevel

from .dataset import IrregularDataset

WIDE_RANGE = 1e4
"""A channel of positive values whose largest is this many times its smallest is suggested for
``log_channels`` (standardised linearly, the small values all sit at the channel's bottom and
the Gaussian noise of its large ones gives intervals far below zero for them)."""


def _warn_wide_ranges(values: np.ndarray, channels: list[str], log: np.ndarray) -> None:
    """Name positive channels spanning more than ``WIDE_RANGE`` that are not on a log scale."""
    wide = []
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN channel
        low, high = np.nanmin(values, 0), np.nanmax(values, 0)
    for name, lo, hi, logged in zip(channels, low, high, log, strict=True):
        if not logged and np.isfinite(lo) and lo > 0 and hi > WIDE_RANGE * lo:
            wide.append(f"{name!r} ({lo:.3g} to {hi:.3g})")
    if wide:
        names = [w.split(" (")[0].strip("'") for w in wide]
        warnings.warn(
            f"channel(s) {', '.join(wide[:5])} hold positive values over more than "
            f"{WIDE_RANGE:g}x: standardised linearly, their intervals for small values reach "
            f"far below zero. On a log scale they are modelled multiplicatively and stay "
            f"positive: log_channels={names[:5]} (latentode-train: data.log_channels; "
            f"LatentODEForecaster.fit(log_channels=...)).", stacklevel=user_stacklevel())


class ChannelScaler:
    """A scikit-learn ``StandardScaler`` per channel that ignores unobserved (NaN) entries.

    Fit it on the training series only; ``transform`` and ``inverse_transform`` keep NaNs. A
    channel never observed in training, or constant there, gets scale 1 (values pass through
    shifted) rather than a division by zero.

    ``log_channels``: channels that are positive by nature (concentrations, counts plus one,
    populations, fluxes) are standardised as ``log(value)``, so the model's answers, their
    quantiles and the noise are positive and multiplicative there; every value of such a
    channel must be > 0.
    """

    def __init__(self, log_channels: Sequence[str] | None = None) -> None:
        self.scaler = StandardScaler()
        if isinstance(log_channels, str):  # one name (data.log_channels=glucose)
            log_channels = [log_channels]
        self.log_channels = [str(c) for c in (log_channels or [])]
        self.log: np.ndarray | None = None  # (D,) bool, set by fit
        self.channels: list[str] | None = None  # the fitted data's channels, in order

    def _log_mask(self, dataset: IrregularDataset) -> np.ndarray:
        names = [str(c) for c in dataset.channels]
        unknown = [c for c in self.log_channels if c not in names]
        if unknown:
            close = difflib.get_close_matches(unknown[0], names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"log_channels {unknown} are not channels of the data; its "
                             f"channels are {names}.{hint}")
        return np.asarray([c in self.log_channels for c in names], dtype=bool)

    def _logged(self, values: np.ndarray, channels: Sequence[str] | None = None,
                dataset: IrregularDataset | None = None) -> np.ndarray:
        """``values`` with the log channels' logarithms, refusing values <= 0 there."""
        if self.log is None or not self.log.any():
            return np.asarray(values, dtype=np.float64)
        values = np.array(values, dtype=np.float64)
        part = values[..., self.log]
        with np.errstate(invalid="ignore"):
            bad = part <= 0
        if bad.any():
            where = np.argwhere(bad)[0]
            j = int(np.flatnonzero(self.log)[where[-1]])
            name = channels[j] if channels is not None else f"#{j}"
            series = ""
            if dataset is not None and values.ndim == 2:
                row = int(where[0])
                k = int(np.searchsorted(dataset.offsets, row, side="right") - 1)
                series = f", series {dataset.ids[k]!r}"
            raise ValueError(
                f"channel {str(name)!r} is in log_channels but has {int(bad.sum())} value(s) "
                f"<= 0 (e.g. {part[tuple(where)]:g}{series}): a log scale needs positive values. "
                "Shift the column (e.g. counts + 1) or leave it out of log_channels.")
        values[..., self.log] = np.log(part)
        return values

    def fit(self, dataset: IrregularDataset) -> ChannelScaler:
        self.log = self._log_mask(dataset)
        self.channels = [str(c) for c in dataset.channels]
        values = self._logged(dataset.values, dataset.channels, dataset)
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
        _warn_wide_ranges(values, self.channels, self.log)
        return self

    @property
    def mean(self) -> np.ndarray:
        return self.scaler.mean_

    @property
    def scale(self) -> np.ndarray:
        return self.scaler.scale_

    def transform(self, values: np.ndarray, channels: Sequence[str] | None = None,
                  dataset: IrregularDataset | None = None) -> np.ndarray:
        """Data units to model units (``channels``/``dataset`` name what an error shows)."""
        return (self._logged(values, channels, dataset) - self.mean) / self.scale

    def inverse_transform(self, values: np.ndarray) -> np.ndarray:
        out = np.asarray(values, dtype=np.float64) * self.scale + self.mean
        if self.log is not None and self.log.any():
            out[..., self.log] = np.exp(out[..., self.log])
        return out

    def transform_errors(self, errors: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Measurement uncertainties of ``values`` (data units) in model units: divided by the
        channel's scale; on a log channel first relative, ``error / value`` (the first-order
        uncertainty of ``log(value)``)."""
        return errors_to_model(errors, values, self.scale, self.log)

    def apply(self, dataset: IrregularDataset) -> IrregularDataset:
        """``dataset`` with scaled values (NaN pattern unchanged) and uncertainties; its
        channels must be the fitted data's, in the same order (the statistics are per
        position)."""
        check_channels(self, dataset.channels, "the data")
        errors = (None if dataset.errors is None
                  else self.transform_errors(dataset.errors, dataset.values))
        return dataset.with_values(self.transform(dataset.values, dataset.channels, dataset),
                                   errors)


def errors_to_model(errors: np.ndarray, values: np.ndarray, scale: ArrayLike,
                    log: ArrayLike | None = None) -> np.ndarray:
    """Uncertainties ``errors`` of ``values`` (data units, ``(..., D)``) in model units:
    divided by each channel's ``scale``; on a ``log`` channel first relative, ``error /
    value`` (the first-order uncertainty of ``log(value)``)."""
    out = np.array(errors, dtype=np.float64)
    if log is not None:
        log = np.asarray(log, dtype=bool)
        if log.any():
            with np.errstate(invalid="ignore", divide="ignore"):
                out[..., log] = out[..., log] / np.asarray(values)[..., log]
    return out / np.asarray(scale, dtype=np.float64)


def check_channels(scaler: ChannelScaler, channels: Sequence[str], what: str) -> None:
    """Refuse ``channels`` other than those ``scaler`` was fitted on, or in another order: each
    channel would be scaled with another's mean and std, silently."""
    fitted = getattr(scaler, "channels", None)  # None: not fitted, or pickled before it was kept
    names = [str(c) for c in channels]
    if fitted is None or names == fitted:
        return
    order = " (the same channels in another order)" if sorted(names) == sorted(fitted) else ""
    raise ValueError(f"{what} has channels {names}, the scaler was fitted on {fitted}{order}: "
                     "give the channels the scaler was fitted on, in that order "
                     "(dataset.channels), or fit the scaler on this data.")


FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_representable(dataset: IrregularDataset, what: str) -> None:
    """Refuse values (and uncertainties) the float32 model would turn into inf, naming channel
    and series."""
    checks = [("holds", dataset.values,
               "rescale that column, or keep scale=true so channels are standardised.")]
    if dataset.errors is not None:
        checks.append(("has uncertainty", dataset.errors,
                       "a value that uncertain says nothing: give it as NaN (not observed), "
                       "or its uncertainty in other units."))
    for has, array, advice in checks:
        with np.errstate(invalid="ignore"):
            big = np.abs(array) > FLOAT32_MAX
        if big.any():
            row, j = np.argwhere(big)[0]
            series = int(np.searchsorted(dataset.offsets, row, side="right") - 1)
            raise ValueError(
                f"channel {dataset.channels[j]!r} of series {dataset.ids[series]!r} ({what}) "
                f"{has} {array[row, j]:.3g}, beyond float32's range (the model computes in "
                f"float32): {advice}")
