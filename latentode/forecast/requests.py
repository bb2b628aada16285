"""Which times to answer, per series: given times, a per-series mapping or a forecast grid.

Times stay in the user's units throughout (numbers, or datetimes as a ``DatetimeIndex``), so the
rows handed back carry exactly the times asked for; the forecaster maps them to model times.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias

import numpy as np
import pandas as pd

from latentode.data import IrregularDataset
from latentode.data.dataset import (
    later_on_a_change,
    localize_wall_clock,
    parse_duration,
    zone_for_naive_data,
)

Times: TypeAlias = np.ndarray | pd.DatetimeIndex


def as_times(raw: Any, kind: str, what: str = "times", tz: Any = None) -> Times:
    """User times as a 1-D array: numbers (``kind="numeric"``) or a ``DatetimeIndex``.

    For datetimes, strings pandas can parse are accepted; ``tz`` is the data's time zone (None:
    naive): naive times are read in it, others converted to it, so the answer's times compare
    with the data's.
    """
    if isinstance(raw, (str, bytes)) or np.ndim(raw) == 0:
        raw = [raw]
    if kind == "datetime":
        seq = raw if isinstance(raw, pd.Series) else pd.Series(
            raw if isinstance(raw, (pd.Index, np.ndarray)) else list(raw))
        if pd.api.types.is_numeric_dtype(seq.dtype) or pd.api.types.is_bool_dtype(seq.dtype):
            raise ValueError(
                f"the model was trained on datetime times; {what} must be datetimes (or date "
                f"strings), got numbers ({seq.dtype})."
            )
        try:
            mixed = pd.api.types.is_object_dtype(seq.dtype) or pd.api.types.is_string_dtype(
                seq.dtype)
            index = pd.DatetimeIndex(pd.to_datetime(seq, format="mixed" if mixed else None))
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"the model was trained on datetime times; {what} could not be read as "
                f"datetimes ({err})."
            ) from err
        if index.hasnans:
            raise ValueError(f"{what} has missing (NaT) times.")
        return align_tz(index, tz)
    arr = np.asarray(raw)
    if arr.dtype.kind not in "iuf":
        raise ValueError(
            f"the model was trained on numeric times; {what} must be numbers, got "
            f"{arr.dtype} values such as {arr.ravel()[:1].tolist()}."
        )
    arr = arr.ravel()
    if not np.isfinite(arr.astype(np.float64)).all():
        raise ValueError(f"{what} has a non-finite time; every time must be a finite number.")
    return arr


def align_tz(index: pd.DatetimeIndex, tz: Any) -> pd.DatetimeIndex:
    """``index`` in time zone ``tz``: naive times are taken to be in it, aware ones converted.
    With ``tz`` None (data on a naive clock) aware times are refused, as ``TimeTransform``
    refuses them in a history: which zone the naive clock was in cannot be known, and reading it
    as UTC moved every answer by the clock's offset, silently."""
    if tz is None:
        if index.tz is not None:
            raise ValueError(zone_for_naive_data(index.tz))
        return index
    if index.tz is None:  # wall-clock times there, as a naive history is read
        return localize_wall_clock(index, tz)
    return index.tz_convert(tz)


def data_tz(ds: IrregularDataset) -> Any:
    """The time zone of a dataset's datetimes (None when naive or numeric)."""
    dtype = ds.raw_time_dtype
    return getattr(dtype, "tz", None)


def series_times(ds: IrregularDataset, i: int, kind: str) -> Times:
    """Series ``i``'s own time stamps (every row, observed or not) in user units."""
    lo, hi = ds.offsets[i], ds.offsets[i + 1]
    raw = ds.raw_times[lo:hi]
    return as_times(raw, kind, tz=data_tz(ds)) if kind == "datetime" else np.asarray(raw)


def last_observed_row(ds: IrregularDataset, i: int) -> int | None:
    """The row (within series ``i``) of its last observation, a row with any observed channel
    (None for a series without one)."""
    lo, hi = ds.offsets[i], ds.offsets[i + 1]
    observed = np.nonzero(~np.isnan(ds.values[lo:hi]).all(1))[0]
    return int(observed[-1]) if len(observed) else None


def last_observed(ds: IrregularDataset, i: int, kind: str) -> Any:
    """The time of series ``i``'s last observation (a row with any observed channel)."""
    row = last_observed_row(ds, i)
    if row is None:  # (from_dataframe refuses such series; a dataset built by hand may not)
        raise ValueError(f"series {ds.ids[i]!r} has no observation: no last one to start from.")
    return series_times(ds, i, kind)[row]


def last_window(t: np.ndarray, observed: np.ndarray, window: float) -> np.ndarray:
    """The observations a windowed model's forecast is conditioned on: those within ``window``
    (model units) of the last one (``t`` model times, ``observed`` rows with a value)."""
    return observed & (t >= t[observed][-1] - window)


def forecast_grid(last: Any, kind: str, horizon: Any, freq: Any, n: Any) -> Times:
    """Times strictly after ``last``: ``n`` steps of ``freq``, steps of ``freq`` up to
    ``last + horizon``, or ``n`` equal steps over ``horizon``."""
    given = {"horizon": horizon, "freq": freq, "n": n}
    if sum(v is not None for v in given.values()) != 2:
        named = [k for k, v in given.items() if v is not None]
        raise ValueError(
            "a forecast grid needs two of horizon=, freq= and n= (horizon with n or freq, or "
            f"freq with n); got {named or 'none'}."
        )
    if n is not None and (isinstance(n, bool) or int(n) != n or int(n) < 1):
        raise ValueError(f"n must be a positive integer (number of forecast times), got {n!r}.")
    if kind == "datetime":
        return _datetime_grid(pd.Timestamp(last), horizon, freq, n)
    for name, value in (("horizon", horizon), ("freq", freq)):
        if value is not None and (not isinstance(value, (int, float, np.integer, np.floating))
                                  or isinstance(value, bool) or not value > 0):
            raise ValueError(f"{name} must be a positive number in the data's time units, got "
                             f"{value!r}.")
    if freq is None:
        assert n is not None  # two of the three were given
        return _clean(last + horizon * np.arange(1, int(n) + 1) / int(n))
    if n is None:
        count = int(np.floor(horizon / freq * (1 + 1e-12)))
        if count < 1:
            raise ValueError(f"horizon={horizon!r} is shorter than one step of freq={freq!r}.")
        return _clean(last + freq * np.arange(1, count + 1))
    return _clean(last + freq * np.arange(1, int(n) + 1))


def _clean(times: np.ndarray) -> np.ndarray:
    """Grid times to 15 significant digits: 0.7 + 0.1 is written 0.8, not the float sum's
    0.7999999999999999 (a change below 1e-15 relative)."""
    return np.array([float(f"{t:.15g}") for t in np.asarray(times, dtype=np.float64)])


def _datetime_grid(last: pd.Timestamp, horizon: Any, freq: Any, n: Any) -> pd.DatetimeIndex:
    span = None if horizon is None else parse_duration(horizon, "horizon")
    if freq is None:
        steps = np.arange(1, int(n) + 1) / int(n)
        return pd.DatetimeIndex([last + span * s for s in steps])
    try:
        offset = pd.tseries.frequencies.to_offset(freq)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"freq must be a pandas frequency for datetime times (e.g. 'D', '6h', 'MS' or a "
            f"pd.Timedelta), got {freq!r}."
        ) from err
    start = last
    if last.tz is not None:
        # Steps of the wall clock ("D", "W", "MS") are laid on the wall clock and then placed
        # in the zone: "7D" of daily steps is 7 days of the wall clock, whereas across a clock
        # change a calendar day is 23 or 25 hours (the 7th step fell past 168 h), and a step on
        # a time the clocks skip or show twice raised pandas' "nonexistent time" (midnight
        # data in Santiago, Havana, Beirut). Steps of elapsed time ("6h") count elapsed time,
        # as n= does ("1D" of "6h" steps: 4, not 3 when the clocks went forward).
        start = last.tz_localize(None) if _on_the_wall(offset) else last.tz_convert("UTC")
    if span is not None:
        grid = pd.date_range(start=start, end=start + span, freq=offset)
    else:  # (spares: wall times a skipped hour merges are dropped below)
        grid = pd.date_range(start=start, periods=int(n) + 8, freq=offset)
    grid = grid[grid > start]
    if last.tz is not None:
        # (a generated step on a skipped or repeated time is placed as a naive history's is,
        # localize_wall_clock, without its warning: the user gave no such time)
        grid = (later_on_a_change(grid, last.tz) if grid.tz is None
                else grid.tz_convert(last.tz))
        grid = grid[grid > last].unique()
    if n is not None and span is None:
        grid = grid[: int(n)]
    if len(grid) == 0:
        raise ValueError(f"horizon={horizon!r} is shorter than one step of freq={freq!r}.")
    return grid


_CLOCK_UNITS = {"hours", "minutes", "seconds", "milliseconds", "microseconds", "nanoseconds"}


def _on_the_wall(offset: Any) -> bool:
    """Whether steps of ``offset`` follow the wall clock (days, weeks, months, business days)
    rather than elapsed time (hours and less, also as ``pd.DateOffset(hours=1)``)."""
    if isinstance(offset, pd.offsets.Day):
        return True
    if isinstance(offset, pd.offsets.Tick):
        return False
    kwds = set(getattr(offset, "kwds", {}) or {})
    return not (type(offset) is pd.DateOffset and kwds and kwds <= _CLOCK_UNITS)


def requested_times(
    ds: IrregularDataset, kind: str, times: Any = None, horizon: Any = None, freq: Any = None,
    n: Any = None,
) -> list[tuple[int, Times]]:
    """``(series index, times)`` for every series to answer, in the dataset's order.

    ``times`` None and no grid: each series' own time stamps. A mapping ``{id: times}``: those
    series only (an id not in ``ds`` is an error naming it). Anything else: the same times for
    every series. ``horizon``/``freq``/``n``: a grid after each series' last observation.
    """
    grid = any(v is not None for v in (horizon, freq, n))
    if grid and times is not None:
        raise ValueError("pass either times= or a forecast grid (horizon=, freq=, n=), not both.")
    tz = data_tz(ds)
    if grid:
        return [(i, align_tz(g, tz) if isinstance(g, pd.DatetimeIndex) else g)
                for i in range(len(ds))
                for g in [forecast_grid(last_observed(ds, i, kind), kind, horizon, freq, n)]]
    if times is None:
        return [(i, series_times(ds, i, kind)) for i in range(len(ds))]
    if isinstance(times, Mapping):
        position = {key: i for i, key in enumerate(ds.ids)}
        missing = [key for key in times if key not in position]
        if missing:
            known = [_plain(k) for k in ds.ids[:10]]
            raise ValueError(
                f"series {[_plain(k) for k in missing[:10]]} in times are not in df "
                f"(column {ds.id_col!r}); df has {len(ds)} series, e.g. {known}."
            )
        chosen = sorted((position[key], key) for key in times)
        return [(i, _nonempty(as_times(times[key], kind, f"times[{_plain(key)!r}]", tz),
                              f"times[{_plain(key)!r}]")) for i, key in chosen]
    shared = _nonempty(as_times(times, kind, "times", tz), "times")
    return [(i, shared) for i in range(len(ds))]


def _nonempty(times: Times, what: str) -> Times:
    if len(times) == 0:
        raise ValueError(f"{what} is empty; give at least one time.")
    return times


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


__all__ = ["as_times", "forecast_grid", "requested_times"]
