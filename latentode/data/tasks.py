"""Tasks decide, per batch, which observations the encoder sees and which the model predicts.

* :class:`Interpolation` (the paper's protocol): the encoder sees a random subset of each
  series' observed time points, a ``fraction`` or a ``count``; the model reconstructs every
  observed point. Metrics on the unseen points (``target & ~encoder``) are reported apart.
* :class:`Extrapolation`: the encoder sees the first part of each series, the first ``count``
  observed time points, the first ``fraction`` of its observed time window, or everything up to
  ``cut_time`` (in the user's time units); the model predicts the rest. With ``subsample`` the
  encoder sees only a random share of that first part (the paper's ``--sample-tp`` with
  ``--extrap``); the targets stay the points after it.
* :class:`Mixed` (``conf/data/csv.yaml``'s, so the forecaster's): per series and batch, an
  interpolation mask or a cut, so one model learns to fill gaps and to forecast.
* :class:`Folds`: one of ``folds`` passes that together hold out every observed point once, the
  encoder seeing the rest of its series (the forecaster's calibration of its in-series noise).

They work on the batch's points before they are laid on the union grid (``Points``), so their
cost grows with the number of observations, not with ``batch x union of times``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .dataset import TimeTransform

_SPREAD_TOL = 1e-9  # spreads up to their bound pass despite rounding (1 - 0.9 < 0.1)


@dataclass
class Points:
    """The batch's points, grouped by series (``rows`` ascending) and sorted by time within one."""

    rows: np.ndarray  # (N,) batch row of each point
    starts: np.ndarray  # (B,) first point of each row
    times: np.ndarray  # (N,) model times
    observed: np.ndarray  # (N, D) bool

    def first_of_rows(self, flags: np.ndarray) -> np.ndarray:
        """Per row, the position of its first flagged point (len(flags) if none)."""
        pos = np.where(flags, np.arange(len(flags)), len(flags))
        return np.minimum.reduceat(pos, self.starts)

    def cumulative(self, flags: np.ndarray) -> np.ndarray:
        """Running count of flagged points within each row (inclusive)."""
        total = np.cumsum(flags)
        before = np.concatenate([[0], total])[self.starts]
        return total - before[self.rows]


def _check_choice(task: str, options: dict) -> None:
    if sum(v is not None for v in options.values()) != 1:
        names = ", ".join(f"{k}=" for k in options)
        names = " or ".join(names.rsplit(", ", 1))
        given = ", ".join(f"{k}={v!r}" for k, v in options.items() if v is not None) or "none"
        raise ValueError(
            f"{task} needs exactly one of {names}; got {given}. A config preset may set one "
            "already: set the others to null (e.g. data.task.count=null data.task.fraction=0.3)."
        )


def _check_sizes(fraction: float | None, count: int | None, whole_allowed: bool) -> None:
    if fraction is not None and not (0 < fraction < 1 or (whole_allowed and fraction == 1)):
        bounds = "(0, 1]" if whole_allowed else "(0, 1)"
        raise ValueError(f"fraction must be in {bounds}, got {fraction}.")
    if count is not None and count < 1:
        raise ValueError(f"count must be at least 1, got {count}.")


def _check_spread(name: str, spread: Any, center_name: str, center: float, what: str
                  ) -> None:
    """``spread`` around ``center`` keeps ``center +- spread`` within (0, 1): in ``[0,
    min(center, 1 - center)]``, the bound itself passing despite rounding (1 - 0.9 < 0.1)."""
    top = min(center, 1 - center)
    if not _real(spread) or not 0 <= spread <= top + _SPREAD_TOL:
        raise ValueError(f"{name} must be in [0, {top:g}] ({what} around "
                         f"{center_name}={center:g}), got {spread!r}.")


def _with_at_least_one(chosen: np.ndarray, points: Points, point_obs: np.ndarray) -> np.ndarray:
    """Give every series with data at least its first observed point."""
    has = np.add.reduceat(chosen.astype(np.int64), points.starts) > 0
    first = points.first_of_rows(point_obs)
    fix = ~has & (first < len(point_obs))
    if fix.any():
        chosen = chosen.copy()
        chosen[first[fix]] = True
    return chosen


def _random_ranks(flags: np.ndarray, points: Points, rng: np.random.Generator) -> np.ndarray:
    """Each point's place in a random order of its row's flagged points (unflagged points
    last): one float sort, row-major, from one ``rng.random`` draw per point."""
    scores = np.where(flags, rng.random(len(flags)), 2.0) + 4.0 * points.rows
    order = np.argsort(scores, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order)) - points.starts[points.rows[order]]
    return rank


def _random_subset(
    flags: np.ndarray, keep: np.ndarray, points: Points, rng: np.random.Generator
) -> np.ndarray:
    """``keep[row]`` of each row's flagged points, chosen at random."""
    return flags & (_random_ranks(flags, points, rng) < keep[points.rows])


@dataclass(frozen=True)
class Interpolation:
    """Encoder sees a random ``fraction`` (or ``count``) of each series' observed time points.

    ``fraction_spread`` (with ``fraction``): each series' fraction is drawn uniformly from
    ``fraction +- fraction_spread``, per batch (fixed per series in validation and test, like
    the subset itself). A model trained on one fraction meets a different density when it is
    asked to predict from *all* of a series' points (``LatentODEForecaster``'s predict and
    impute, unless it conditions on subsets: ``latentode.forecast.subsets``): trained on half
    of each series of dense oscillators, its imputation error from nine tenths was up to 1.5x
    its error from half (docs/results.md, *Training task of the forecaster*).
    """

    fraction: float | None = None
    count: int | None = None
    fraction_spread: float | None = None

    def __post_init__(self) -> None:
        _check_choice("Interpolation", {"fraction": self.fraction, "count": self.count})
        _check_sizes(self.fraction, self.count, whole_allowed=True)
        if self.fraction_spread is not None:
            if self.fraction is None:
                raise ValueError("fraction_spread draws each series' fraction around "
                                 "fraction=; set fraction, or fraction_spread=null with count=.")
            _check_spread("fraction_spread", self.fraction_spread, "fraction", self.fraction,
                          "fractions within (0, 1]")

    def encoder_points(
        self, points: Points, rng: np.random.Generator, transform: TimeTransform | None = None
    ) -> np.ndarray:
        point_obs = np.any(points.observed, axis=1)
        n = np.add.reduceat(point_obs.astype(np.int64), points.starts)
        if self.count is not None:
            keep = np.minimum(n, self.count)
        else:
            fraction = np.full(len(n), self.fraction, dtype=np.float64)
            if self.fraction_spread:  # one fraction per series
                fraction += rng.uniform(-self.fraction_spread, self.fraction_spread, len(n))
            keep = np.minimum(n, np.maximum(1, np.round(fraction * n).astype(np.int64)))
        return _random_subset(point_obs, keep, points, rng)

    def targets(self, points: Points, encoder: np.ndarray) -> None:
        """Every observed point is a target (None: the batch reuses its observation mask)."""
        return None


@dataclass(frozen=True)
class Extrapolation:
    """Encoder sees the beginning of each series (``count``, ``fraction`` or ``cut_time``).

    ``subsample`` (with ``count`` or ``fraction``): the encoder sees a random share of the
    observed time points of that beginning, ``max(1, floor(subsample * n))`` of its ``n``
    (the paper code's ``subsample_timepoints`` after ``split_data_extrap``), drawn per batch like
    :class:`Interpolation`'s; the model still predicts the points after the beginning only.

    ``fraction_spread`` (with ``fraction``): each series' cut is drawn uniformly from
    ``fraction +- fraction_spread`` of its span, per batch (fixed per series in validation and
    test, like the other random masks). With one cut for every series of a shared grid, an
    autoregressive model learns where the cut is and extrapolates well from there only.
    """

    fraction: float | None = None
    count: int | None = None
    cut_time: float | str | None = None
    subsample: float | None = None
    fraction_spread: float | None = None

    def __post_init__(self) -> None:
        options = {"fraction": self.fraction, "count": self.count, "cut_time": self.cut_time}
        _check_choice("Extrapolation", options)
        _check_sizes(self.fraction, self.count, whole_allowed=False)
        if self.subsample is not None:
            if not 0 < self.subsample <= 1:
                raise ValueError(f"subsample must be in (0, 1], got {self.subsample}.")
            if self.cut_time is not None:
                raise ValueError("subsample works with count= or fraction=, not cut_time=.")
        if self.fraction_spread is not None:
            if self.fraction is None:
                raise ValueError("fraction_spread draws a cut around fraction=; set fraction.")
            _check_spread("fraction_spread", self.fraction_spread, "fraction", self.fraction,
                          "cuts within the series")
            if self.subsample is not None:
                raise ValueError("fraction_spread does not combine with subsample.")

    def encoder_points(
        self, points: Points, rng: np.random.Generator, transform: TimeTransform | None = None
    ) -> np.ndarray:
        prefix = self._prefix(points, transform, rng)
        if self.subsample is None:
            return prefix
        n = np.add.reduceat(prefix.astype(np.int64), points.starts)
        keep = np.minimum(n, np.maximum(1, np.floor(self.subsample * n).astype(np.int64)))
        return _random_subset(prefix, keep, points, rng)

    def _prefix(self, points: Points, transform: TimeTransform | None,
                rng: np.random.Generator | None = None) -> np.ndarray:
        """The beginning of each series that the encoder may see (before ``subsample``)."""
        point_obs = np.any(points.observed, axis=1)
        if self.count is not None:
            chosen = point_obs & (points.cumulative(point_obs) <= self.count)
        elif self.fraction is not None:
            first = np.minimum.reduceat(np.where(point_obs, points.times, np.inf), points.starts)
            last = np.maximum.reduceat(np.where(point_obs, points.times, -np.inf), points.starts)
            fraction = np.full(len(points.starts), self.fraction)
            if self.fraction_spread and rng is not None:  # one cut per series
                fraction += rng.uniform(-self.fraction_spread, self.fraction_spread,
                                        len(points.starts))
            cut = first + fraction * (last - first)
            chosen = point_obs & (points.times <= cut[points.rows])
        else:
            if transform is None:
                raise ValueError("cut_time needs the dataset's time transform.")
            if transform.kind == "datetime" and isinstance(
                    self.cut_time, (int, float, np.integer, np.floating)):
                raise ValueError(
                    f"cut_time={self.cut_time!r} is a number, but this dataset's times are "
                    "datetimes: give a date ('2024-03-02 08:00') in the time column's terms."
                )
            try:
                when = (transform.local(self.cut_time) if transform.kind == "datetime"
                        else self.cut_time)
                cut = float(transform.to_model(pd.Series([when]))[0])
            except (TypeError, ValueError) as err:
                raise ValueError(
                    f"cut_time={self.cut_time!r} does not fit this dataset's {transform.kind} "
                    "times; give it in the same units as the time column."
                ) from err
            chosen = point_obs & (points.times <= cut)
        return _with_at_least_one(chosen, points, point_obs)

    def targets(self, points: Points, encoder: np.ndarray) -> np.ndarray:
        if self.subsample is not None:  # the points after the beginning, not the ones left out
            encoder = self._prefix(points, None)
        return points.observed.any(1) & ~encoder


@dataclass(frozen=True)
class Mixed:
    """Per series and batch, an :class:`Interpolation` mask or an :class:`Extrapolation` cut.

    A share ``extrapolation_share`` of the series (drawn per series and batch, fixed in
    validation and test) shows the encoder its beginning, cut at ``cut_fraction +-
    cut_spread`` of its span; the others a random ``fraction +- fraction_spread`` (or
    ``count``) of their observed times. Every observed point is a target, as under
    ``Interpolation``: the model reconstructs what the encoder saw and fills or forecasts
    the rest.

    Why: ``LatentODEForecaster`` does both, from *all* of a series' points. Trained on half of
    each series only (the earlier default), its forecasts of damped oscillators cut at 25 / 50 /
    75% of their spans erred 0.119 / 0.067 / 0.045 (three seeds) and were covered 0.81 / 0.85 /
    0.90 by 90% intervals; trained on this task 0.063 / 0.035 / 0.033, covered 0.91 / 0.92 /
    0.91 (docs/results.md, *Training task of the forecaster*). ``extrapolation_share=0`` is
    ``Interpolation(fraction, count, fraction_spread)``; with ``fraction=0.5,
    fraction_spread=0`` too, the earlier default.
    """

    fraction: float | None = 0.75
    count: int | None = None
    fraction_spread: float | None = 0.25
    cut_fraction: float = 0.5
    cut_spread: float = 0.3
    extrapolation_share: float = 0.5

    def __post_init__(self) -> None:
        if not _real(self.extrapolation_share) or not 0 <= self.extrapolation_share <= 1:
            raise ValueError(f"extrapolation_share must be in [0, 1] (the share of series cut "
                             f"rather than subsampled), got {self.extrapolation_share!r}.")
        if not _real(self.cut_fraction) or not 0 < self.cut_fraction < 1:
            raise ValueError(f"cut_fraction must be in (0, 1) (where the cut series are cut, as "
                             f"a share of their spans), got {self.cut_fraction!r}.")
        _check_spread("cut_spread", self.cut_spread, "cut_fraction", self.cut_fraction,
                      "cuts within the series")
        try:
            self.interpolation()
        except ValueError as err:
            raise ValueError(
                f"Mixed's subsample (fraction={self.fraction!r}, count={self.count!r}, "
                f"fraction_spread={self.fraction_spread!r}): {err} A count of points instead: "
                "data.task.fraction=null data.task.fraction_spread=null data.task.count=N."
            ) from None

    def interpolation(self) -> Interpolation:
        """The mask of the series that are subsampled."""
        return Interpolation(fraction=self.fraction, count=self.count,
                             fraction_spread=self.fraction_spread)

    def extrapolation(self) -> Extrapolation:
        """The cut of the series that are forecast."""
        return Extrapolation(fraction=self.cut_fraction, fraction_spread=self.cut_spread)

    def encoder_points(
        self, points: Points, rng: np.random.Generator, transform: TimeTransform | None = None
    ) -> np.ndarray:
        # every part draws for every series (a series' mask depends on its own streams only)
        subset = self.interpolation().encoder_points(points, rng, transform)
        prefix = self.extrapolation().encoder_points(points, rng, transform)
        cut = rng.uniform(0.0, 1.0, len(points.starts)) < self.extrapolation_share
        return np.where(cut[points.rows], prefix, subset)

    def targets(self, points: Points, encoder: np.ndarray) -> None:
        """Every observed point is a target (None: the batch reuses its observation mask)."""
        return None


@dataclass(frozen=True)
class Folds:
    """Fold ``fold`` of ``folds``: the encoder sees every observed time point of each series but
    those dealt to fold ``fold``.

    Each series' observed time points are dealt into ``folds`` folds of (nearly) equal size in
    a random order drawn from the series' stream, so with a fixed collator (validation, test,
    calibration: ``Collator(fixed=True)``) the ``folds`` passes hold out every point exactly
    once while the encoder sees ``(folds - 1) / folds`` of the series. That is the density
    ``LatentODEForecaster``'s predict and impute condition on (all of a series' points) more
    nearly than a training task's subsample: the in-series noise is calibrated on it
    (``latentode.forecast.calibration``). A series keeps at least one point for the encoder
    (a one-point series is never held out). Every observed point is a target.
    """

    folds: int = 5
    fold: int = 0

    def __post_init__(self) -> None:
        if not _whole(self.folds) or self.folds < 2:
            raise ValueError(f"folds must be an integer >= 2, got {self.folds!r}.")
        if not _whole(self.fold) or not 0 <= self.fold < self.folds:
            raise ValueError(f"fold must be an integer in [0, {self.folds - 1}], "
                             f"got {self.fold!r}.")

    def encoder_points(
        self, points: Points, rng: np.random.Generator, transform: TimeTransform | None = None
    ) -> np.ndarray:
        point_obs = np.any(points.observed, axis=1)
        rank = _random_ranks(point_obs, points, rng)  # dealt round-robin in a random order
        chosen = point_obs & (rank % self.folds != self.fold)
        return _with_at_least_one(chosen, points, point_obs)

    def targets(self, points: Points, encoder: np.ndarray) -> None:
        """Every observed point is a target (None: the batch reuses its observation mask)."""
        return None


def interpolation_task(task: Any) -> Any:
    """The task whose held-out points lie inside the series, for the in-series noise, its
    coverage and the held-out checks: a ``Mixed`` task's interpolation part (the held-out
    points of the series it cuts are forecasts: counted as in-series points, a fit on 30
    series left no held-out point inside the span of its 3 validation series), any other task
    itself."""
    return task.interpolation() if isinstance(task, Mixed) else task


def _whole(value: object) -> bool:
    """An integer (not a bool)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _real(value: object) -> bool:
    """A number (not a bool, not None)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value,
                                                                                       bool)
