"""Held-out scores of a forecaster on series it was not trained on, in the data's units.

Part of each series is hidden, predicted from the rest with the forecaster's own ``predict``
(its scaler, clock and calibrated noise), and compared with what was hidden: per channel the
mean squared and absolute error of the posterior mean, the coverage and mean width of the
central predictive interval, and the squared error of a naive answer from the same history
(linear interpolation of the channel's own history, its last value held beyond it), so that a
number has something to stand against. ``holdout="points"`` hides a random ``fraction`` of each
series' observation times (imputation); ``"end"`` the last ``fraction`` of its span
(forecasting).

A forecaster trained with measurement uncertainties predicts the quantity itself (its noise is
calibrated with the known measurement noise left out); a hidden value is one measurement of it,
so its interval is that of the mixture with the value's own uncertainty added,
``N(path_s, sigma^2 + e^2)`` (:func:`observed_with_errors`): a precise value is held to a
narrow interval, a noisy one gets a wide one.
"""

from __future__ import annotations

import numbers
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from latentode.data.frame import iso_times

from .quantiles import mixture_quantiles
from .spec import quantile_name

if TYPE_CHECKING:
    from .forecaster import LatentODEForecaster

HOLDOUTS = ("points", "end")


def _check(holdout: str, fraction: float, level: float) -> None:
    if holdout not in HOLDOUTS:
        raise ValueError(f"holdout must be one of {HOLDOUTS} (points: a random fraction of each "
                         f"series' times; end: the last fraction of its span), got {holdout!r}.")
    check_fraction_and_level(fraction, level)


def check_fraction_and_level(fraction: Any, level: Any,
                             names: tuple[str, str] = ("fraction", "level")) -> None:
    """:meth:`LatentODEForecaster.score`'s ``fraction`` and ``level``, each a number in (0, 1);
    ``names``: what the caller calls them (``latentode-predict``'s ``score_fraction``)."""
    for value, name, what in ((fraction, names[0], "the share of each series hidden"),
                              (level, names[1], "0.9: the 5th to 95th percentile")):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
                0 < float(value) < 1):
            raise ValueError(f"{name} must be a number in (0, 1) ({what}), got {value!r}.")


def hidden_times(times: pd.Series, ids: pd.Series, holdout: str, fraction: float,
                 seed: int, observed: pd.Series | None = None) -> pd.Series:
    """Per row, whether its (series, time) is hidden, among the times ``observed`` (rows
    holding a value; default all). Every series keeps its first observed time; a series
    observed at one time only hides nothing. ``times`` must have a unique index."""
    rng = np.random.default_rng(seed)
    hide = pd.Series(False, index=times.index)
    seen = times if observed is None else times[observed.to_numpy(dtype=bool)]
    for _, rows in seen.groupby(ids.loc[seen.index], sort=True):
        distinct = np.unique(rows.to_numpy())
        if len(distinct) < 2:
            continue
        if holdout == "points":
            k = min(max(1, round(fraction * len(distinct))), len(distinct) - 1)
            chosen = rng.choice(distinct[1:], size=k, replace=False)
        else:
            span = distinct[-1] - distinct[0]
            cut = distinct[0] + (1 - fraction) * span
            chosen = distinct[1:][distinct[1:] > cut]
            if not len(chosen):
                chosen = distinct[-1:]
        hide.loc[rows.index] = rows.isin(chosen).to_numpy()
    return hide


def observed_with_errors(forecaster: LatentODEForecaster) -> bool:
    """Whether ``score`` adds each hidden value's own measurement uncertainty to its interval:
    the forecaster reads uncertainty columns and its predictive noise leaves them out (a
    calibration that subtracted them, or none: the model's ``obs_std``, which its likelihood
    adds them to). A calibration of an older latentode, which counted them in its noise on
    average, is left as it is."""
    spec = forecaster.spec
    if spec is None or (spec.uncertainty_cols is None and spec.uncertainty_col is None):
        return False
    calibration = forecaster.calibration
    return calibration is None or bool(calibration.error_rms)


def long_values(df: pd.DataFrame, forecaster: LatentODEForecaster, errors: bool = False
                ) -> pd.DataFrame:
    """``df``'s observations as rows of id, time, channel, value (observed values only);
    ``errors``: and ``error``, each value's measurement uncertainty in data units (NaN where
    none is given)."""
    spec = forecaster.spec
    assert spec is not None
    if spec.tidy:
        out = df[[spec.id_col, spec.time_col, spec.channel_col, spec.value_col]].rename(
            columns={spec.value_col: "value"})
        out["value"] = pd.to_numeric(out["value"])
        if errors:
            col = spec.uncertainty_col
            out["error"] = (pd.to_numeric(df[col], errors="coerce") if col in df.columns
                            else np.nan)
        return out.dropna(subset=["value"])
    columns = spec._value_columns(df, "df")
    named = {c: name for c, name in zip(columns, spec.channels, strict=True)}
    # melted under names no channel has (pandas refuses value_name="value" beside a channel
    # called "value", the periodic data's), then named channel and value
    out = df[[spec.id_col, spec.time_col, *columns]].rename(columns=named).melt(
        id_vars=[spec.id_col, spec.time_col], value_vars=list(spec.channels),
        var_name=" channel", value_name=" value").rename(
        columns={" channel": "channel", " value": "value"})
    out["value"] = pd.to_numeric(out["value"])
    if errors:  # melt stacks channel after channel: their uncertainties in the same order
        by_name = {str(c): c for c in df.columns}
        of = {str(k): str(v) for k, v in (spec.uncertainty_cols or {}).items()}
        out["error"] = np.concatenate([
            pd.to_numeric(df[by_name[of[name]]], errors="coerce").to_numpy(np.float64)
            if of.get(name) in by_name else np.full(len(df), np.nan)
            for name in spec.channels])
    return out.dropna(subset=["value"])


def _numbers(times: pd.Series) -> np.ndarray:
    """Times as floats (datetimes: nanoseconds since the epoch, UTC), for interpolation."""
    if pd.api.types.is_datetime64_any_dtype(times.dtype):
        return times.array.asi8.astype(np.float64)
    return times.to_numpy(dtype=np.float64)


def score(forecaster: LatentODEForecaster, df: pd.DataFrame, holdout: str = "points",
          fraction: float = 0.2, level: float = 0.9, num_samples: int = 100, seed: int = 0,
          batch_size: int = 64) -> pd.DataFrame:
    """See :meth:`LatentODEForecaster.score`."""
    _check(holdout, fraction, level)
    spec = forecaster.spec
    if spec is None:
        raise ValueError("score needs a fitted forecaster: fit, from_run, from_model or load "
                         "first.")
    spec.check_no_clash(["value"], "score")  # (its frames hold id, time, channel, value)
    with warnings.catch_warnings():  # its warnings come once, from predict's history below
        warnings.simplefilter("ignore")
        forecaster._history(df)  # the whole frame checked as predict checks a history
    # (a concat's repeated index labels: rows are told apart by position)
    df = iso_times(df.reset_index(drop=True), spec.time_col)
    if spec.tidy:
        observed = pd.to_numeric(df[spec.value_col], errors="coerce").notna()
    else:
        values = df[spec._value_columns(df, "df")]
        observed = values.apply(pd.to_numeric, errors="coerce").notna().any(axis=1)
    hide = hidden_times(df[spec.time_col], df[spec.id_col], holdout, fraction, seed, observed)
    if not hide.any():
        raise ValueError("nothing to score: every series of df is observed at one time only "
                         "(score hides part of each series and predicts it from the rest).")
    history = df.loc[~hide]
    with_errors = observed_with_errors(forecaster)
    if with_errors:  # the hidden values' uncertainties checked as training checked them
        # (its warnings are of the hidden rows, predict's below of the history's)
        spec.dataset(df.loc[hide], errors=True)
    truth = long_values(df.loc[hide], forecaster, errors=with_errors).reset_index(drop=True)
    if truth.empty:
        raise ValueError("nothing to score: the hidden times hold no observed value.")
    requested = {key: np.unique(rows.to_numpy()) for key, rows in
                 df.loc[hide, spec.time_col].groupby(df.loc[hide, spec.id_col], sort=True)}
    low, high = (1 - level) / 2, (1 + level) / 2
    channel = spec.channel_col if spec.tidy else "channel"
    own = _OwnIntervals(forecaster, truth, channel, (low, high)) if with_errors else None
    pred = forecaster._predict(history, requested, None, None, None, num_samples, (low, high),
                               seed, True, batch_size, None if own is None else own.series)
    keys = [spec.id_col, spec.time_col, channel]
    truth = truth.rename(columns={spec.channel_col: channel} if spec.tidy else {})
    joined = truth.merge(pred, on=keys, how="left", validate="many_to_one")
    if joined["mean"].isna().any():  # (a defect, not the user's: predict answers every time)
        raise RuntimeError("score: predictions missing for some hidden rows.")
    past = long_values(history, forecaster).rename(
        columns={spec.channel_col: channel} if spec.tidy else {})
    joined["naive"] = _naive(past, joined, spec.id_col, spec.time_col, channel)
    lo, hi = quantile_name(low), quantile_name(high)
    err = joined["value"] - joined["mean"]
    joined["sq"], joined["abs"] = err.pow(2), err.abs()
    if own is not None:  # rows with an uncertainty: the interval of one measurement
        has = ~np.isnan(own.lo)
        joined.loc[has, lo], joined.loc[has, hi] = own.lo[has], own.hi[has]
    joined["inside"] = (joined["value"] >= joined[lo]) & (joined["value"] <= joined[hi])
    joined["width"] = joined[hi] - joined[lo]
    joined["naive_sq"] = (joined["value"] - joined["naive"]).pow(2)
    table = joined.groupby(channel, sort=False).agg(
        n=("sq", "size"), mse=("sq", "mean"), mae=("abs", "mean"),
        coverage=("inside", "mean"), width=("width", "mean"),
        naive_mse=("naive_sq", "mean"), naive_n=("naive_sq", "count"))
    order = [c for c in pred[channel].drop_duplicates() if c in table.index]
    table = table.loc[order]
    table.index.name = "channel"
    table.attrs.update(holdout=holdout, fraction=fraction, level=level, seed=seed,
                       series=int(df.loc[hide, spec.id_col].nunique()))
    return table


class _OwnIntervals:
    """The central intervals of each hidden value that has a measurement uncertainty ``e``,
    filled series by series from ``predict``'s paths and noise (model units): quantiles of
    ``(1/S) sum_s N(path_s, std^2 + e^2)`` at the value's time and channel, in data units
    (``lo``, ``hi`` per row of ``truth``; NaN for rows without one)."""

    def __init__(self, forecaster: LatentODEForecaster, truth: pd.DataFrame, channel: Any,
                 levels: tuple[float, float]):
        spec = forecaster.spec
        assert spec is not None
        self.spec, self.levels, self.time_col = spec, levels, spec.time_col
        self.lo = np.full(len(truth), np.nan)
        self.hi = np.full(len(truth), np.nan)
        error = truth["error"].to_numpy(np.float64)
        given = np.isfinite(error) & (error > 0)  # 0 or none: predict's own interval
        self.truth = truth
        self.column = np.asarray([spec.channels.index(str(c)) for c in truth[channel]],
                                 dtype=np.int64)
        self.model_error = self._per_row(spec.to_model_errors, error,
                                         truth["value"].to_numpy(np.float64))
        self.rows = {key: at[given[at]] for key, at in
                     truth.groupby(spec.id_col, sort=False).indices.items()}

    def _per_row(self, convert: Any, *columns: np.ndarray) -> np.ndarray:
        """``convert`` (of ``(n, D)`` arrays) applied to one value per row in its channel."""
        n, d = len(columns[0]), self.spec.n_channels
        wide = []
        for column in columns:
            full = np.full((n, d), np.nan)
            full[np.arange(n), self.column] = column
            wide.append(full)
        return convert(*wide)[np.arange(n), self.column]

    def series(self, key: Any, raw: Any, paths: np.ndarray, std: np.ndarray | None) -> None:
        at = self.rows.get(key)
        if at is None or not len(at):
            return
        k = pd.Index(raw).get_indexer(self.truth[self.time_col].to_numpy()[at])
        if (k < 0).any():  # (a defect: predict answers at every hidden time)
            raise RuntimeError("score: a hidden value's time is missing from predict's answer.")
        c = self.column[at]
        noise = 0.0 if std is None else std[k, c]
        total = np.sqrt(np.square(noise) + np.square(self.model_error[at]))
        levels = mixture_quantiles(paths[:, k, c][:, :, None], total[:, None], self.levels)
        n, d = len(at), self.spec.n_channels
        for out, level in zip((self.lo, self.hi), levels[:, :, 0], strict=True):
            full = np.full((n, d), np.nan)
            full[np.arange(n), c] = level
            out[at] = self.spec.to_user_values(full)[np.arange(n), c]


def _naive(past: pd.DataFrame, rows: pd.DataFrame, id_col: Any, time_col: Any,
           channel: Any) -> np.ndarray:
    """Linear interpolation of each (series, channel)'s history at ``rows``' times (its first or
    last value held beyond its ends); NaN where the history never observed it."""
    out = np.full(len(rows), np.nan)
    groups = dict(iter(past.groupby([id_col, channel], sort=False)))
    for key, hidden in rows.groupby([id_col, channel], sort=False):
        seen = groups.get(key)
        if seen is None or seen.empty:
            continue
        seen = seen.sort_values(time_col)
        out[rows.index.get_indexer(hidden.index)] = np.interp(
            _numbers(hidden[time_col]), _numbers(seen[time_col]),
            seen["value"].to_numpy(dtype=np.float64))
    return out
