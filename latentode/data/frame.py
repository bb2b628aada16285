"""pandas in: ``from_dataframe`` turns what users have into an ``IrregularDataset``.

Wide format (default): one row per (series, time), one column per channel, NaN = not observed.
Tidy format: ``channel_col=`` and ``value_col=``, one row per observation. Bad input is refused
with a ``ValueError`` that names the column, series and value and says what to do; anything
skipped or merged on purpose is counted in a warning, never dropped silently.
"""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .dataset import IrregularDataset, TimeTransform


def from_dataframe(
    df: pd.DataFrame,
    id_col: str = "series_id",
    time_col: str = "time",
    value_cols: Sequence[str] | None = None,
    *,
    channel_col: str | None = None,
    value_col: str | None = None,
    static_cols: Sequence[str] | None = None,
    label_col: str | None = None,
    label_per: str = "auto",
    time_unit: str | None = None,
    time_scale: float | None = None,
    duplicates: str = "mean",
    empty_channels: str = "error",
    uncertainty_cols: Mapping[str, str] | None = None,
    uncertainty_col: str | None = None,
) -> IrregularDataset:
    """Build an :class:`IrregularDataset` from a long-format DataFrame.

    Args:
        df: one row per (series, time) (wide) or per observation (tidy).
        id_col, time_col: the series id and time stamp columns. Times may be numbers or
            datetimes (datetimes become ``time_unit``s, default hours, before rescaling); text
            in ISO 8601 (``2024-03-01T14:05``, as ``pd.read_csv`` leaves it) is read as
            datetimes, other text is refused. Numbers are used as they are: a ``time_unit``
            given for them is warned about (rescale the column yourself).
        time_scale: model time = (time - first time) / time_scale, in the times' units (hours for
            datetimes); e.g. 48 puts 48-hour records on [0, 1]. None: 1 when the longest series
            spans 0.01 to 10 units, else that span. Returned times are always in the user's
            units.
        value_cols: channel columns (wide format); None = every numeric column but the others.
        channel_col, value_col: tidy format instead: channel name and value columns.
        static_cols: per-series covariates (must be constant within each series).
        label_col: labels; per series (constant within a series) or per time point. Rows that
            share a (series, time) (tidy rows, duplicates) take the label they know (NaN on the
            others is fine); different known labels there are refused, as are different known
            labels within a series under ``label_per="series"``. Static covariates likewise.
        label_per: "series", "time" or "auto" (series if constant within every series).
        duplicates: "mean" averages repeated (series, time) rows per channel; "error" refuses.
        empty_channels: a channel with no observed value at all: "error" (the default: a model
            cannot learn it, and would answer for it with untrained guesses) or "warn" (kept, for
            a fixed channel list of which a subset may lack some, e.g. PhysioNet's labs) or
            "ignore" (frames to condition predictions on: nothing measured yet is fine).
        uncertainty_cols: wide format: ``{channel: column}``, the column holding each value's
            measurement uncertainty (one standard deviation, in the channel's units; e.g.
            ``{"flux": "flux_err"}``). The models' Gaussian likelihood then weighs each point
            by ``1 / (obs_std^2 + error^2)``, relative to its series' others by default
            (``latentode.models.inputs.point_noise``), so noisy points weigh less in training,
            and a latent ODE's encoder reads each value with a confidence that falls with its
            uncertainty (``encoder_error_scale``). Not every channel needs one. An observed
            value without its uncertainty (NaN) is read as having none beyond ``obs_std``
            (counted in a warning); negative or infinite ones are refused.
        uncertainty_col: tidy format: the column holding each observation's uncertainty.
            Averaged duplicates get the uncertainty of their mean, ``sqrt(sum e^2) / k`` (a
            value without one counted as exact, as it is read alone).
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"from_dataframe needs a pandas DataFrame, got {type(df).__name__}.")
    if duplicates not in ("mean", "error"):
        raise ValueError(f"duplicates must be 'mean' or 'error', got {duplicates!r}.")
    if empty_channels not in ("error", "warn", "ignore"):
        raise ValueError(
            f"empty_channels must be 'error', 'warn' or 'ignore', got {empty_channels!r}.")
    if label_per not in ("auto", "series", "time"):
        raise ValueError(f"label_per must be 'auto', 'series' or 'time', got {label_per!r}.")
    static_cols = list(static_cols or [])
    tidy = channel_col is not None or value_col is not None
    if tidy and (channel_col is None or value_col is None):
        raise ValueError("tidy format needs both channel_col= and value_col=.")
    if tidy and channel_col == value_col:
        raise ValueError(f"channel_col and value_col are both {channel_col!r}: tidy format names "
                         "each row's channel in one column and holds its value in another.")
    if tidy and uncertainty_cols is not None:
        raise ValueError(f"uncertainty_cols= is for wide frames (a column per channel); tidy "
                         f"data hold each observation's uncertainty in one column: "
                         f"uncertainty_col='<its name>' beside value_col={value_col!r} "
                         "(latentode-train: data.dataset.uncertainty_col=<its name>).")
    if not tidy and uncertainty_col is not None:
        raise ValueError("uncertainty_col= is for tidy frames (channel_col=, value_col=); a "
                         "wide frame names each channel's uncertainty column: "
                         "uncertainty_cols={'<channel>': '<its uncertainty column>'} "
                         "(latentode-train: data.dataset.uncertainty_cols='{<channel>:<column>}').")
    roles = {"the id column": [id_col], "the time column": [time_col],
             "the channel column": [channel_col], "the value column": [value_col],
             "the label column": [label_col], "a static covariate": static_cols}
    errors_of = _check_uncertainty_names(uncertainty_cols, value_cols, roles)
    if uncertainty_col is not None:
        _check_uncertainty_names({"each observation": uncertainty_col}, None, roles)
    extra = [c for c in (channel_col, value_col, label_col, uncertainty_col) if c is not None]
    _require_columns(df, [id_col, time_col, *extra, *static_cols, *(value_cols or []),
                          *errors_of.values()])
    if df.empty:
        raise ValueError("the DataFrame has no rows.")
    _check_ids(df, id_col)
    df = iso_times(df, time_col)
    _check_times(df, id_col, time_col)
    if time_unit is not None and not pd.api.types.is_datetime64_any_dtype(df[time_col].dtype):
        warnings.warn(
            f"column {time_col!r} holds numbers, and time_unit={time_unit!r} applies to "
            "datetimes only: the numbers are used as they are, in their own units (time_scale= "
            "and windows are in those units too). To work in other units rescale the column "
            f"first, e.g. df[{time_col!r}] = df[{time_col!r}] / 3600 for seconds to hours, "
            "and leave time_unit out.",
            stacklevel=2,
        )

    if tidy:
        assert channel_col is not None and value_col is not None  # (refused above otherwise)
        wide, channels = _pivot_tidy(df, id_col, time_col, channel_col, value_col,
                                     duplicates, uncertainty_col)
        _warn_uncertainty_columns(channels, str(channel_col))
        carried = [c for c in (*static_cols, label_col) if c is not None]
        if carried:  # one row per observation: each (series, time) takes its known label
            keys = _carried_per_time(df, id_col, time_col, carried, label_col, tidy=True)
            wide = wide.merge(keys, on=[id_col, time_col], how="left")
    else:
        reserved = {id_col, time_col, *static_cols, *([] if label_col is None else [label_col]),
                    *errors_of.values()}
        if value_cols is None:
            value_cols = [
                c for c in df.columns
                if c not in reserved and (
                    (pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]))
                    or _mostly_numeric(df[c])  # numbers with a stray string: checked below
                )
            ]
            skipped = [c for c in df.columns if c not in reserved and c not in value_cols]
            _refuse_tidy_as_wide(df, id_col, time_col, skipped, value_cols)
            if skipped:
                warnings.warn(
                    f"{len(skipped)} non-numeric column(s) were not used as channels: "
                    f"{[str(c) for c in skipped[:10]]}. Pass value_cols=[...] to choose channels "
                    "explicitly.",
                    stacklevel=2,
                )
            _warn_constant_within_series(df, id_col, value_cols)
            _warn_uncertainty_columns(value_cols, given=errors_of)
            if not value_cols:
                raise ValueError(
                    f"no numeric value columns found besides {sorted(map(str, reserved))}; "
                    "pass value_cols=[...] or use channel_col=/value_col= for tidy data."
                )
        channels = [str(c) for c in value_cols]
        _check_uncertainty_channels(errors_of, channels)
        wide = df[[id_col, time_col, *value_cols, *static_cols,
                   *([] if label_col is None else [label_col])]].copy()
        for col in value_cols:
            wide[col] = _numeric_column(wide, col, id_col)
        pairs = {}
        for col in value_cols:  # each channel's errors under a name of ours (one column may
            if str(col) in errors_of:  # serve two channels)
                pairs[col] = _error_key(str(col))
                wide[pairs[col]] = _error_column(df, errors_of[str(col)], id_col, time_col)
        wide = _merge_duplicates(wide, id_col, time_col, list(value_cols), duplicates, label_col,
                                 pairs)
        wide = wide.rename(columns={c: str(c) for c in value_cols})

    wide = wide.sort_values([id_col, time_col], kind="stable").reset_index(drop=True)
    values = wide[channels].to_numpy(dtype=np.float64)
    _check_finite(values, wide, id_col, time_col, channels)
    _check_channels_observed(values, channels, empty_channels)
    errors = _read_errors(wide, values, id_col, time_col, channels,
                          errors_of if uncertainty_col is None else str(uncertainty_col))
    codes, uniques = pd.factorize(wide[id_col], sort=False)
    counts = np.bincount(codes, minlength=len(uniques))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    observed = (~np.isnan(values)).any(axis=1)
    per_series = np.add.reduceat(observed.astype(np.int64), offsets[:-1])
    empty = [uniques[i] for i in np.nonzero(per_series == 0)[0]]
    if empty:
        raise ValueError(
            f"{len(empty)} series have no observed value in any channel (e.g. {id_col} = "
            f"{_plain(empty[0])!r}); drop them, or check value_cols / the NaN encoding."
        )
    # zone-aware times stay a DatetimeArray (8 bytes each): to_numpy makes Timestamp objects
    aware = isinstance(wide[time_col].dtype, pd.DatetimeTZDtype)
    raw_times = wide[time_col].array if aware else wide[time_col].to_numpy()
    transform = TimeTransform.fit(wide[time_col], unit=time_unit, scale=time_scale,
                                  starts=offsets[:-1])
    model_times = transform.to_model(wide[time_col])
    _check_resolution(model_times, offsets, wide, id_col, time_col)
    dataset = IrregularDataset(
        ids=list(uniques),
        offsets=offsets,
        times=model_times,
        raw_times=raw_times,
        values=values,
        channels=channels,
        time_transform=transform,
        id_col=id_col,
        time_col=time_col,
        label_col=label_col,
        id_dtype=df[id_col].dtype,
        raw_time_dtype=df[time_col].dtype,
    )
    if errors is not None:
        dataset.errors = errors
        dataset.error_names = [errors_of.get(c) for c in channels]
    if static_cols:
        dataset.static = _per_series(wide, static_cols, offsets, id_col, "static covariate")
        dataset.static_names = list(static_cols)
        dataset.static_dtypes = [df[c].dtype for c in static_cols]
    if label_col is not None:
        _attach_labels(dataset, wide, label_col, offsets, id_col, label_per)
    return dataset


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact equality, NaN equal to NaN (a covariate or label is constant or it is not)."""
    return (a == b) | (np.isnan(a) & np.isnan(b))


def _plain(value: Any) -> Any:
    """numpy scalars as plain Python values, so messages read ``2`` and not ``np.int64(2)``."""
    return value.item() if isinstance(value, np.generic) else value


def _require_columns(df: pd.DataFrame, names: Sequence[Any]) -> None:
    have = list(df.columns)
    for name in names:
        if name not in have:
            close = difflib.get_close_matches(str(name), [str(c) for c in have], n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"column {name!r} is not in the DataFrame.{hint} Columns: {have[:20]}"
            )


def _check_ids(df: pd.DataFrame, id_col: str) -> None:
    missing = df[id_col].isna()
    if missing.any():
        row = df.index[np.argmax(missing.to_numpy())]
        raise ValueError(
            f"{int(missing.sum())} rows have no series id in column {id_col!r} (first: row "
            f"{row!r}); give every row an id."
        )
    column = df[id_col]
    if column.dtype == object or (isinstance(column.dtype, pd.CategoricalDtype)
                                  and column.cat.categories.dtype == object):
        # mixed types: 1 and "1" are two series that print alike
        ids = pd.unique(column.astype(object))
        text = pd.Series([str(i) for i in ids])
        twins = text.duplicated(keep=False).to_numpy()
        if twins.any():
            same = [ids[k] for k in np.nonzero(twins)[0] if text[k] == text[twins].iloc[0]]
            shown = " and ".join(f"{_plain(v)!r} ({type(v).__name__})" for v in same)
            raise ValueError(
                f"column {id_col!r} holds series ids {shown}: different values, so different "
                "series, that read the same as text (every output and CSV would show them as "
                f"one id; {int(text[twins].nunique())} such id(s)). Give the column one type, "
                f"e.g. df[{id_col!r}] = df[{id_col!r}].astype(str) if they are one series."
            )


def _check_resolution(times: np.ndarray, offsets: np.ndarray, wide: pd.DataFrame, id_col: str,
                      time_col: str) -> None:
    """Refuse distinct times of a series that became one model time (float64 counts of
    nanoseconds since 1970 resolve ~256 ns): a point would be lost silently."""
    same = np.diff(times) <= 0
    same[offsets[1:-1] - 1] = False  # a new series may start anywhere
    if not same.any():
        return
    i = int(np.argmax(same))
    raise ValueError(
        f"column {time_col!r}: times {_plain(wide[time_col].iloc[i])!r} and "
        f"{_plain(wide[time_col].iloc[i + 1])!r} of series {_plain(wide[id_col].iloc[i])!r} "
        f"are distinct but equal as model times ({int(same.sum())} such pairs): they differ "
        "by less than float64 resolves at that size. Subtract an origin first (e.g. times - "
        "times.min()), or use a coarser unit."
    )


def iso_times(df: pd.DataFrame, time_col: str) -> pd.DataFrame:
    """``df`` with a text time column of ISO 8601 dates (``2024-03-01 14:05``, as ``read_csv``
    leaves them) read as datetimes, as ``latentode-train data=csv`` reads a file; other text is
    left for :func:`_check_times` to refuse (day-first or month-first dates are ambiguous).
    Offsets that differ between rows (``+01:00`` in winter, ``+02:00`` in summer) are read as
    the same instants in UTC, with a warning (answers then come back in UTC); text mixing times
    with and without an offset is refused (a naive time's zone cannot be known; it was read as
    UTC)."""
    col = df[time_col]
    if not (pd.api.types.is_object_dtype(col.dtype) or pd.api.types.is_string_dtype(col.dtype)):
        return df
    present = col.dropna()
    if present.empty or not present.map(lambda v: isinstance(v, str)).all():
        return df
    try:
        parsed = pd.to_datetime(col, format="ISO8601")
    except (ValueError, TypeError):
        parsed = None
    # offsets that change (a zone's clock change): the same instants, in UTC. pandas >= 2.1
    # raises on mixed offsets; 2.0 returns them as an object column of datetimes
    if parsed is None or not pd.api.types.is_datetime64_any_dtype(parsed.dtype):
        try:
            parsed = pd.to_datetime(col, format="ISO8601", utc=True)
        except (ValueError, TypeError):
            return df
        _check_offsets(present, parsed[col.notna().to_numpy()], time_col)  # by position
    return df.assign(**{time_col: parsed})


# an ISO time's UTC offset (Z, +01, +0100, +01:00) ends the text right after a digit of its time
# of day (which a "T" or a space opens: a date alone, 2024-03-30, has none)
_ZONE = r"Z|[+-]\d{2}(?::?\d{2})?"
_OFFSET = rf"\d\s*(?:{_ZONE})$"


def _check_offsets(present: pd.Series, parsed: pd.Series, time_col: str) -> None:
    """ISO times whose offsets differ, read as UTC by :func:`iso_times` (``parsed``, row for row
    with ``present``): refuse a mix of times with and without an offset, warn where the offsets
    differ (a clock change). Text that reads as no time (empty, ``NaT``) is left to the
    missing-time check."""
    text = present.str.strip()
    valid = parsed.notna().to_numpy()  # row for row with present (labels may repeat)
    aware = (text.str.contains(r"[T ]", regex=True)
             & text.str.contains(_OFFSET, regex=True)).to_numpy(dtype=bool)
    if not aware[valid].any():
        return
    if aware[valid].all():
        offsets = text.str.extract(rf"({_ZONE})$")[0].to_numpy()
        other = int(np.argmax(valid & (offsets != offsets[np.argmax(valid)])))
        warnings.warn(
            f"column {time_col!r} holds times with different UTC offsets (e.g. "
            f"{present.iloc[int(np.argmax(valid))]!r} and {present.iloc[other]!r}; a "
            "daylight-saving change writes them so): read as the same instants in UTC, so times "
            "come back in UTC. To keep the local clock, parse the column with its zone first, "
            f"e.g. pd.to_datetime(df[{time_col!r}], utc=True).dt.tz_convert('Europe/Berlin').",
            stacklevel=3,
        )
        return
    naive = int(np.argmax(valid & ~aware))
    i = int(np.argmax(valid & aware))
    raise ValueError(
        f"column {time_col!r} mixes times with a UTC offset ({present.iloc[i]!r}, row "
        f"{_plain(present.index[i])!r}) and without one ({present.iloc[naive]!r}, row "
        f"{_plain(present.index[naive])!r}): which zone the times without one are in cannot be "
        "known. Write every time with its offset, or none."
    )


def iso_separator(column: pd.Series) -> str | None:
    """``"T"`` or ``" "``: how a column of ISO date text separates date and time (its first
    value), so that times written back keep its style; None for anything but text."""
    if not (pd.api.types.is_object_dtype(column.dtype)
            or pd.api.types.is_string_dtype(column.dtype)):
        return None
    present = column.dropna()
    if present.empty or not isinstance(present.iloc[0], str):
        return None
    return "T" if "T" in present.iloc[0] else " "


def _check_times(df: pd.DataFrame, id_col: str, time_col: str) -> None:
    col = df[time_col]
    missing = col.isna().to_numpy()
    if missing.any():
        i = int(np.argmax(missing))
        raise ValueError(
            f"column {time_col!r} has {int(missing.sum())} missing times (first: series "
            f"{_plain(df[id_col].iloc[i])!r}, row {_plain(df.index[i])!r}); every row needs a time."
        )
    if pd.api.types.is_timedelta64_dtype(col.dtype):
        raise ValueError(
            f"column {time_col!r} holds durations (timedelta64): make them numbers in the unit "
            f"you mean, e.g. df[{time_col!r}] = df[{time_col!r}].dt.total_seconds() (seconds; "
            "/ 3600 for hours). Not pd.to_numeric: that gives nanoseconds."
        )
    if pd.api.types.is_datetime64_any_dtype(col.dtype) or pd.api.types.is_numeric_dtype(col.dtype):
        if pd.api.types.is_bool_dtype(col.dtype):
            raise ValueError(f"column {time_col!r} holds booleans, not times.")
        if pd.api.types.is_numeric_dtype(col.dtype) and not np.isfinite(
            col.to_numpy(dtype=np.float64)
        ).all():
            i = int(np.argmax(~np.isfinite(col.to_numpy(dtype=np.float64))))
            raise ValueError(
                f"column {time_col!r} has a non-finite time {_plain(col.iloc[i])!r} (series "
                f"{_plain(df[id_col].iloc[i])!r}, row {_plain(df.index[i])!r}); times must be "
                "finite."
            )
        return
    kinds = col.map(_time_kind)
    bad = kinds == "other"
    if bad.any():
        i = int(np.argmax(bad.to_numpy()))
        raise ValueError(
            f"column {time_col!r} has a value {_plain(col.iloc[i])!r} that is neither a number "
            "nor a "
            f"datetime (series {_plain(df[id_col].iloc[i])!r}, row {_plain(df.index[i])!r})."
        )
    if kinds.nunique() > 1:
        i = int(np.argmax((kinds != kinds.iloc[0]).to_numpy()))
        raise ValueError(
            f"column {time_col!r} mixes time types: {_plain(col.iloc[0])!r} ({kinds.iloc[0]}) and "
            f"{_plain(col.iloc[i])!r} ({kinds.iloc[i]}, series {_plain(df[id_col].iloc[i])!r}); "
            "convert the "
            "column to one type (pd.to_datetime or pd.to_numeric) first."
        )
    if kinds.iloc[0] == "text":
        numbers = pd.to_numeric(col, errors="coerce")
        bad = numbers.isna().to_numpy()
        i = int(np.argmax(bad))
        where = f"series {_plain(df[id_col].iloc[i])!r}, row {_plain(df.index[i])!r}"
        if 0 < bad.mean() < 0.5:  # numbers with strays ('?', 'n/a')
            raise ValueError(
                f"column {time_col!r} has a non-numeric time {_plain(col.iloc[i])!r} ({where}"
                f"; {int(bad.sum())} such rows): fix or drop them, every row needs a time."
            )
        if bad.any():
            raise ValueError(
                f"column {time_col!r} holds text times that are not ISO 8601, e.g. "
                f"{_plain(col.iloc[i])!r} ({where}): text is read as datetimes only in ISO "
                "8601 ('2024-03-01 14:05', '2024-03-01T14:05+01:00'), since other formats are "
                "ambiguous (day-first or month-first, no date). Convert the column with "
                f"pd.to_datetime(df[{time_col!r}], format=...) or write the file's times in "
                "ISO 8601."
            )
    raise ValueError(
        f"column {time_col!r} has dtype {col.dtype} ({kinds.iloc[0]} values); convert it with "
        "pd.to_datetime(...) or pd.to_numeric(...) first so every time has one type."
    )


def _time_kind(value: Any) -> str:
    if isinstance(value, (pd.Timestamp, np.datetime64)) or hasattr(value, "isoformat"):
        return "datetime"
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return "number"
    if isinstance(value, str):
        return "text"
    return "other"


def _mostly_numeric(column: pd.Series) -> bool:
    """A text column whose values are mostly numbers: a channel with stray strings ('?', 'n/a',
    '72,5'), to be refused by name rather than silently dropped from the channels."""
    if not (pd.api.types.is_object_dtype(column.dtype)
            or pd.api.types.is_string_dtype(column.dtype)):
        return False
    present = column.dropna()
    if present.empty or not present.map(lambda v: isinstance(v, (str, int, float))).all():
        return False
    numeric = pd.to_numeric(present, errors="coerce").notna()
    return bool(numeric.mean() >= 0.5)


_UNCERTAINTY = re.compile(
    r"^(?:(?P<base>.+?)(?:[_\-. ](?:err|error|errors|sigma|unc|uncert|uncertainty|stderr|ivar|"
    r"variance)|(?:err|error|sigma|unc|ivar))|(?:err|error|e|sigma|unc)[_\-. ](?P<after>.+))$",
    re.IGNORECASE)
"""Names of uncertainties: a suffix or prefix (``flux_err``, ``magerr``, ``flux_ivar``,
``e_flux``, ``sigma_y``). Not ``d`` / ``std`` / ``sd`` / ``_e``: deltas and spreads of a
channel (``d_hr``, ``hr_std``) are features as often as not."""


def uncertainty_pairs(columns: Sequence[Any]) -> list[tuple[str, str]]:
    """``(column, channel)`` pairs where a column is named as the measurement uncertainty of
    another (``flux_err`` / ``flux``, ``magerr`` / ``mag``, ``sigma_y`` / ``y``)."""
    names = {str(c).lower(): str(c) for c in columns}
    pairs = []
    for column in map(str, columns):
        match = _UNCERTAINTY.match(column)
        base = match and (match.group("base") or match.group("after"))
        if base and base.lower() in names and names[base.lower()] != column:
            pairs.append((column, names[base.lower()]))
    return pairs


def _warn_uncertainty_columns(columns: list, channel_col: str | None = None,
                              given: Mapping[str, Any] | None = None) -> None:
    """A light curve's ``flux_err`` was modelled as a data channel of its own without a word
    (its forecasts' intervals even went below zero). ``channel_col``: tidy data's channels;
    ``given``: the uncertainty columns the caller named (not channels: not warned of)."""
    used = {str(c) for c in (given or {}).values()}
    pairs = [(c, b) for c, b in uncertainty_pairs(columns) if c not in used]
    if pairs:
        shown = ", ".join(f"{c!r} of {b!r}" for c, b in pairs[:4])
        given = {b: c for c, b in pairs[:4] if not looks_like_variance(c, b)}
        converted = [_as_std(c, b) for c, b in pairs[:4] if looks_like_variance(c, b)]
        what, remedy = (("column(s)", (f"give them as uncertainty_cols={given} " if given else
                                       "give them as uncertainty_cols ")
                         + "(each value's standard deviation: noisy points then weigh less in "
                         "the likelihood; latentode-train: data.dataset.uncertainty_cols"
                         + (f"; variances first as standard deviations: {'; '.join(converted)}"
                            if converted else "")
                         + "), or leave them out with value_cols=[...] "
                         "(LatentODEForecaster.fit: ignore_cols=[...])")
                        if channel_col is None else
                        (f"channel(s) of {channel_col!r}", "they belong beside the values, "
                         "one uncertainty_col= per observation row (a pivot of these rows), or "
                         "leave their rows out: "
                         f"df[~df[{channel_col!r}].isin({[c for c, _ in pairs[:4]]})]"))
        warnings.warn(
            f"{what} named like measurement uncertainties ({shown}) are modelled as data "
            f"channels of their own. If they are uncertainties: {remedy}.",
            stacklevel=3,
        )


def _error_key(channel: str) -> str:
    """The working column of ``channel``'s uncertainties (a name no user column has)."""
    return f"\0error\0{channel}"


_VARIANCE = re.compile(r"^(?:ivar|invvar|inv_var|var|variance|weight|weights|wt)$|ivar$",
                       re.IGNORECASE)


def looks_like_variance(column: Any, channel: str) -> bool:
    """Whether uncertainty column ``column`` of ``channel`` is named as a variance, inverse
    variance or weight (``flux_ivar``, ``var_flux``, ``flux_weight``) rather than a standard
    deviation: judged on the name without the channel's (``sigma_w`` of ``w`` is a std)."""
    name = str(column)
    at = name.lower().find(channel.lower()) if channel else -1
    rest = name[:at] + name[at + len(channel):] if at >= 0 else name
    return bool(_VARIANCE.search(rest.strip("_-. ")))


def _check_uncertainty_names(uncertainty_cols: Any, value_cols: Sequence[Any] | None,
                             others: dict[str, Any] | None = None) -> dict[str, Any]:
    """``uncertainty_cols`` as ``{channel name: column}``, or a ``ValueError`` saying how to
    give it; columns named like variances or weights are warned about (standard deviations
    are read: a variance taken for one weighs a point by its square root)."""
    if uncertainty_cols is None:
        return {}
    if not isinstance(uncertainty_cols, Mapping):
        raise ValueError(
            f"uncertainty_cols must map each channel to the column of its uncertainties, e.g. "
            f"{{'flux': 'flux_err'}} (latentode-train: data.dataset.uncertainty_cols="
            f"{{flux:flux_err}}), got {uncertainty_cols!r}.")
    out = {str(channel): column for channel, column in uncertainty_cols.items()}
    values = {str(c) for c in value_cols or []}
    roles = {str(c): role for role, cs in (others or {}).items() for c in cs if c is not None}
    for channel, column in out.items():
        if str(column) in roles:
            raise ValueError(
                f"column {_plain(column)!r} is given as the uncertainty of {channel!r} and as "
                f"{roles[str(column)]}: a column holds one thing; name the uncertainty column.")
        if str(column) in values or str(column) == channel:
            raise ValueError(
                f"column {_plain(column)!r} is given as a channel and as the uncertainty of "
                f"{channel!r}: an uncertainty column is not a channel; leave it out of "
                "value_cols.")
        if looks_like_variance(column, channel):
            warnings.warn(
                f"uncertainty column {_plain(column)!r} of {channel!r} is named like a variance "
                "or weight, but uncertainties are read as standard deviations in the channel's "
                "units: if it holds variances give np.sqrt of it, if inverse variances "
                f"1 / np.sqrt of it (e.g. {_as_std(str(column), channel)}).",
                stacklevel=3)
    return out


def _check_uncertainty_channels(errors_of: dict[str, Any], channels: list[str]) -> None:
    unknown = [c for c in errors_of if c not in channels]
    if unknown:
        near = difflib.get_close_matches(unknown[0], channels, n=1)
        raise ValueError(
            f"uncertainty_cols names channel(s) {unknown} that are not channels of the data "
            f"({channels[:10]}{'...' if len(channels) > 10 else ''})"
            + (f"; did you mean {near[0]!r}?" if near else
               ": its keys are channels, its values the columns of their uncertainties."))


def _error_column(df: pd.DataFrame, col: Any, id_col: str, time_col: str) -> pd.Series:
    """Uncertainty column ``col`` as float64, negative or infinite values refused by series and
    time (before any averaging squares the sign away)."""
    errs = _numeric_column(df, col, id_col, way_out="(an uncertainty unknown: NaN; a limit "
                           "such as '<0.1' is not a standard deviation)")
    with np.errstate(invalid="ignore"):
        bad = (np.isinf(errs) | (errs < 0)).to_numpy()
    if bad.any():
        r = int(np.argmax(bad))
        raise ValueError(
            f"uncertainty column {_plain(col)!r} holds {errs.iloc[r]} (series "
            f"{_plain(df[id_col].iloc[r])!r}, time {_plain(df[time_col].iloc[r])!r}): "
            "uncertainties are standard deviations, finite and >= 0. Give 0 for an exact "
            "value, or leave a value you cannot trust out (NaN: not observed).")
    return errs


def _read_errors(wide: pd.DataFrame, values: np.ndarray, id_col: str, time_col: str,
                 channels: list[str], source: dict[str, Any] | str) -> np.ndarray | None:
    """The ``(N, D)`` uncertainties of ``values`` from the working columns (NaN where none was
    given, or no value observed); observed values without one counted in a warning."""
    keys = [_error_key(c) for c in channels]
    if not any(k in wide.columns for k in keys):
        return None
    errors = np.column_stack([wide[k].to_numpy(dtype=np.float64) if k in wide.columns
                              else np.full(len(wide), np.nan) for k in keys])
    observed = ~np.isnan(values)
    errors[~observed] = np.nan  # an uncertainty of nothing measured says nothing

    def column(j: int) -> str:
        if isinstance(source, str):
            return f"column {_plain(source)!r} (channel {channels[j]!r})"
        return f"column {_plain(source[channels[j]])!r}"

    has = np.array([k in wide.columns for k in keys])
    missing = observed & np.isnan(errors) & has
    if missing.any():
        r, j = np.argwhere(missing)[0]
        warnings.warn(
            f"{int(missing.sum())} observed value(s) have no uncertainty (NaN), e.g. "
            f"{column(int(j))} of series {_plain(wide[id_col].iloc[r])!r} at time "
            f"{_plain(wide[time_col].iloc[r])!r}: read as having none beyond the model's "
            "obs_std, its series' most precise kind of point (give the value NaN instead if it "
            "is not to be trusted).",
            stacklevel=3)
    return errors


def _as_std(column: str, channel: str) -> str:
    """The line that turns variance-like column ``column`` into ``channel``'s standard
    deviations (inverse variances and weights: ``1 / sqrt``; variances: ``sqrt``)."""
    inverse = any(k in column.lower() for k in ("ivar", "inv", "weight", "wt"))
    how = "1 / np.sqrt" if inverse else "np.sqrt"
    return f"df['{channel}_err'] = {how}(df[{column!r}])"


def _warn_constant_within_series(df: pd.DataFrame, id_col: str, columns: list) -> None:
    """Columns picked as channels that never change within a series look like static
    covariates or labels (age, outcome): say so, rather than model them as time series."""
    if not columns or len(df) < 2:
        return
    groups = df.groupby(id_col, sort=False)[list(columns)]
    try:  # max > min: what nunique > 1 says for numbers, at a fraction of its cost (1e7 rows:
        # nunique took 16 s of a 36 s from_dataframe)
        varying = (groups.max() > groups.min()).any()
    except TypeError:  # a column with a stray string (refused by name later)
        varying = groups.nunique(dropna=True).gt(1).any()
    repeated = groups.count().gt(1).any()  # seen twice in some series: constancy means something
    constant = [c for c in columns if repeated[c] and not varying[c]]
    if constant:
        warnings.warn(
            f"column(s) {[str(c) for c in constant[:10]]} never change within a series: static "
            "covariates or labels? Pass them as static_cols=[...] / label_col=... (or choose "
            "the channels with value_cols=[...]) rather than model them as time series.",
            stacklevel=3,
        )


def _check_channels_observed(values: np.ndarray, channels: list[str], how: str) -> None:
    seen = (~np.isnan(values)).any(0)
    empty = [name for name, ok in zip(channels, seen, strict=True) if not ok]
    if not empty or how == "ignore":
        return
    message = (f"{len(empty)} channel(s) have no observed value in any series: {empty[:10]}. "
               "A model cannot learn them; drop the column(s) or pass value_cols=[...] without "
               "them (or check the NaN encoding); empty_channels='warn' keeps them.")
    if how == "error":
        raise ValueError(message)
    warnings.warn(message, stacklevel=3)


def _numeric_column(df: pd.DataFrame, col: Any, id_col: str,
                    way_out: str = "(or leave the column out of value_cols=[...])") -> pd.Series:
    series = df[col]
    if pd.api.types.is_bool_dtype(series.dtype):
        return series.astype(np.float64)
    converted = pd.to_numeric(series, errors="coerce")
    bad = converted.isna() & series.notna()
    if bad.any():
        i = int(np.argmax(bad.to_numpy()))
        raise ValueError(
            f"column {_plain(col)!r} has a non-numeric value {_plain(series.iloc[i])!r} (series "
            f"{_plain(df[id_col].iloc[i])!r}, row {_plain(df.index[i])!r}); clean it, or leave it "
            f"empty (NaN) if it was not observed {way_out}."
        )
    return converted.astype(np.float64)


def _check_finite(
    values: np.ndarray, wide: pd.DataFrame, id_col: str, time_col: str, channels: list[str]
) -> None:
    inf = np.isinf(values)
    if inf.any():
        r, c = np.argwhere(inf)[0]
        raise ValueError(
            f"column {channels[c]!r} has an infinite value {values[r, c]} (series "
            f"{_plain(wide[id_col].iloc[r])!r}, time {_plain(wide[time_col].iloc[r])!r}); replace "
            "it with a "
            "finite number or NaN (not observed)."
        )


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def _refuse_tidy_as_wide(df: pd.DataFrame, id_col: str, time_col: str, text_cols: list,
                         value_cols: list) -> None:
    """Refuse a tidy frame read as wide: a text column that tells apart rows sharing their
    (series, time) names channels; averaging those rows would mix the channels into one."""
    if not text_cols:
        return
    shared = df.duplicated([id_col, time_col], keep=False)
    if not shared.any():
        return
    rows = df.loc[shared]
    for col in text_cols:
        if rows.groupby([id_col, time_col], sort=False)[col].nunique().max() > 1:
            value = f"value_col={str(value_cols[0])!r}" if len(value_cols) == 1 else "value_col=..."
            examples = sorted(map(str, df[col].dropna().unique()))[:3]
            raise ValueError(
                f"the frame looks tidy (one row per observation): {int(shared.sum())} rows share "
                f"their ({id_col}, {time_col}) and column {str(col)!r} tells them apart "
                f"({df[col].nunique()} values, e.g. {examples}), so they are different "
                "channels, not duplicates to average. Pass "
                f"channel_col={str(col)!r} {value} (latentode-train: "
                f"data.dataset.channel_col={col} data.dataset.value_col="
                f"{value_cols[0] if len(value_cols) == 1 else '...'}), or value_cols=[...] "
                "if that column is not a channel name."
            )


def _merge_duplicates(
    wide: pd.DataFrame, id_col: str, time_col: str, value_cols: list, how: str,
    label_col: str | None = None, errors: Mapping[Any, str] | None = None,
) -> pd.DataFrame:
    """Repeated (series, time) rows averaged per channel (``how="mean"``) or refused;
    ``errors`` (value column: its uncertainty column) become the uncertainty of the mean."""
    errors = dict(errors or {})
    dup = wide.duplicated([id_col, time_col], keep=False)
    if not dup.any():
        return wide
    if how == "error":
        i = int(np.argmax(dup.to_numpy()))
        raise ValueError(
            f"series {_plain(wide[id_col].iloc[i])!r} has several rows at time "
            f"{_plain(wide[time_col].iloc[i])!r}"
            f" ({int(dup.sum())} rows share their (series, time) with another row); pass "
            "duplicates='mean' to average them "
            "per channel, or remove them."
        )
    others = [c for c in wide.columns
              if c not in (id_col, time_col, *value_cols, *errors.values())]
    # labels and static covariates cannot be averaged: the known one (two different: refused)
    if others:
        _carried_per_time(wide.loc[dup], id_col, time_col, others, label_col, tidy=False)
    agg = {c: "mean" for c in value_cols} | {c: "first" for c in others}  # "first" skips NaN
    # only the duplicated rows are grouped (the caller sorts the result by series and time)
    rows = wide.loc[dup]
    if errors:  # per group: sum of known values' e^2, count of known values, known e's
        rows = rows.copy()
        for value, error in errors.items():
            known = rows[value].notna()
            given = known & rows[error].notna()
            rows[error] = rows[error].where(given, 0.0).pow(2)
            rows[error + "\0n"] = known.astype(np.float64)
            rows[error + "\0given"] = given.astype(np.float64)
            agg |= {error: "sum", error + "\0n": "sum", error + "\0given": "sum"}
    averaged = rows.groupby([id_col, time_col], sort=False, dropna=False).agg(agg)
    # the mean of k values with errors e_i: sqrt(sum e_i^2) / k, a value without one counted
    # as exact (0), as a lone value without one is read; NaN where none of them has one
    for error in errors.values():
        n = averaged.pop(error + "\0n")
        given = averaged.pop(error + "\0given")
        averaged[error] = np.sqrt(averaged[error]).div(n).where((given > 0) & (n > 0))
    merged = pd.concat([wide.loc[~dup], averaged.reset_index()[list(wide.columns)]],
                       ignore_index=True)
    first = int(np.argmax(dup.to_numpy()))
    warnings.warn(
        f"{int(dup.sum())} rows share their (series, time) with another row, e.g. series "
        f"{_plain(wide[id_col].iloc[first])!r} at time {_plain(wide[time_col].iloc[first])}: "
        f"averaged per channel into {_rows(int(dup.sum()) - (len(wide) - len(merged)))} "
        f"(duplicates='mean'; duplicates='error' refuses them)."
        f"{_float32_hint(wide[time_col], time_col)}",
        stacklevel=3,
    )
    return merged


def _carried_per_time(
    df: pd.DataFrame, id_col: str, time_col: str, cols: list, label_col: str | None, tidy: bool,
) -> pd.DataFrame:
    """One row per (series, time) of the label and static covariate columns ``cols``: each the
    value its rows know (NaN on some rows, as tidy rows of other channels often leave it, is no
    conflict; NaN where no row knows one). Rows of one (series, time) with different known
    values are refused: a time point holds one label, and a covariate one value per series."""
    groups = df.groupby([id_col, time_col], sort=False, dropna=False)[list(cols)]
    known = groups.nunique(dropna=True)
    for col in cols:
        several = known[col].to_numpy() > 1
        if not several.any():
            continue
        series, time = known.index[int(np.argmax(several))]
        rows = df[(df[id_col] == series) & (df[time_col] == time)]
        values = [_plain(v) for v in pd.unique(rows[col].dropna())]
        where = (f"series {_plain(series)!r} at time {_plain(time)!r} ({_rows(len(rows))}"
                 f"{', one per channel' if tidy else ' merged as duplicates'})")
        n = int(several.sum())
        others = f"; {n - 1} more (series, time) like it" if n > 1 else ""
        if col == label_col:
            raise ValueError(
                f"label column {_plain(col)!r} has different labels {values} for {where}"
                f"{others}: a time point holds one label. Give each (series, time) one label "
                "(leave it empty (NaN) on the other rows), or drop the rows you do not mean.")
        raise ValueError(
            f"static covariate column {_plain(col)!r} changes within series {_plain(series)!r}: "
            f"{values} at time {_plain(time)!r}{others}; a static covariate must be constant "
            "per series.")
    return groups.first().reset_index()


def _float32_hint(times: pd.Series, time_col: Any) -> str:
    """Why distinct times may have become duplicates: a float32 column resolves large times
    (MJD 59000: ~0.004 days) coarsely."""
    if times.dtype != np.float32 or times.dropna().empty:
        return ""
    step = float(np.spacing(np.abs(times.dropna()).max().astype(np.float32)))
    return (f" Column {_plain(time_col)!r} is float32, which cannot tell apart times closer than "
            f"{step:.3g} at its largest values: keep it float64 from the source (read_csv "
            "gives float64 unless told otherwise); casting it now cannot restore the digits.")


def _pivot_tidy(
    df: pd.DataFrame, id_col: str, time_col: str, channel_col: str, value_col: str, how: str,
    error_col: str | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """One row per (series, time), one column per channel (and, with ``error_col``, one
    working column per channel of the uncertainties, of the mean where averaged)."""
    long = df[[id_col, time_col, channel_col, value_col]].copy()
    if long[channel_col].isna().any():
        i = int(np.argmax(long[channel_col].isna().to_numpy()))
        raise ValueError(
            f"column {channel_col!r} has a missing channel name (series "
            f"{_plain(long[id_col].iloc[i])!r}, row {_plain(long.index[i])!r})."
        )
    long[value_col] = _numeric_column(long, value_col, id_col)
    long[channel_col] = long[channel_col].astype(str)  # 220045 and '220045': one channel
    # integer codes once, then counts and sums per (series, time, channel) cell by bincount:
    # pandas' duplicated + groupby-mean + unstack hashed the keys three times (1e7 rows: 35 s)
    id_codes, id_values = pd.factorize(long[id_col], use_na_sentinel=False)
    time_codes, time_values = pd.factorize(long[time_col], use_na_sentinel=False)
    channel_codes, names = pd.factorize(long[channel_col])  # first-appearance order
    pair_codes, pairs = pd.factorize(id_codes.astype(np.int64) * max(len(time_values), 1)
                                     + time_codes)
    n_channels = len(names)
    cell = pair_codes.astype(np.int64) * n_channels + channel_codes
    size = len(pairs) * n_channels
    dup = np.bincount(cell, minlength=size)[cell] > 1
    if dup.any() and how == "error":
        i = int(np.argmax(dup))
        raise ValueError(
            f"series {_plain(long[id_col].iloc[i])!r} has several values of channel "
            f"{_plain(long[channel_col].iloc[i])!r} at time {_plain(long[time_col].iloc[i])!r}; "
            "pass duplicates='mean' to average them, or remove them."
        )
    if dup.any():
        i = int(np.argmax(dup))
        warnings.warn(
            f"{int(dup.sum())} repeated (series, time, channel) observations were averaged, "
            f"e.g. series {_plain(long[id_col].iloc[i])!r}, channel "
            f"{_plain(long[channel_col].iloc[i])!r} at time {_plain(long[time_col].iloc[i])} "
            f"(duplicates='mean'; duplicates='error' refuses them)."
            f"{_float32_hint(long[time_col], time_col)}",
            stacklevel=3,
        )
    values = long[value_col].to_numpy(dtype=np.float64)
    known = ~np.isnan(values)
    counts = np.bincount(cell, weights=known, minlength=size)
    means = np.bincount(cell, weights=np.where(known, values, 0.0), minlength=size)
    with np.errstate(invalid="ignore"):  # 0 / 0: a cell of NaN values only (or none) is NaN
        np.divide(means, counts, out=means)
    spread = None
    if error_col is not None:  # the mean of k values with errors e_i: sqrt(sum e_i^2) / k
        errs = _error_column(df, error_col, id_col, time_col).to_numpy(dtype=np.float64)
        # (a value without one counted as exact, 0; NaN where none of the cell's has one)
        given = np.bincount(cell, weights=known & ~np.isnan(errs), minlength=size)
        spread = np.bincount(cell, weights=np.where(known, np.nan_to_num(errs) ** 2, 0.0),
                             minlength=size)
        with np.errstate(invalid="ignore", divide="ignore"):
            spread = np.where(given > 0, np.sqrt(spread) / counts, np.nan)
    del counts
    # only the (series, time) pairs that occur: pivot_table(dropna=False) built every series
    # x every distinct time, quadratic for series on their own clocks (1M rows: out of memory)
    pairs = np.asarray(pairs, dtype=np.int64)
    step = max(len(time_values), 1)
    table = means.reshape(len(pairs), n_channels)
    channels = [str(c) for c in names]
    wide = pd.DataFrame({id_col: id_values.take(pairs // step),
                         time_col: time_values.take(pairs % step),
                         **{name: table[:, j] for j, name in enumerate(channels)}})
    if spread is not None:
        spread = spread.reshape(len(pairs), n_channels)
        for j, name in enumerate(channels):
            wide[_error_key(name)] = spread[:, j]
    return wide, channels


def _per_series(
    wide: pd.DataFrame, cols: list, offsets: np.ndarray, id_col: str, what: str
) -> np.ndarray:
    out = np.empty((len(offsets) - 1, len(cols)), dtype=np.float64)
    for j, col in enumerate(cols):
        vals = _numeric_column(wide, col, id_col).to_numpy()
        first = vals[offsets[:-1]]
        changes = ~_same(vals, np.repeat(first, np.diff(offsets)))
        if changes.any():
            r = int(np.argmax(changes))
            raise ValueError(
                f"{what} column {_plain(col)!r} changes within series "
                f"{_plain(wide[id_col].iloc[r])!r} "
                f"({_plain(first[np.searchsorted(offsets, r, 'right') - 1])!r} then "
                f"{_plain(vals[r])!r}); a "
                f"{what} must be constant per series."
            )
        out[:, j] = first
    return out


def _class_names(column: pd.Series) -> list[Any] | None:
    """The classes of a label column of names (text, categories), in sorted order (a
    categorical's own order), or None for numbers. A column mixing numbers and text is left to
    the numeric check, which names the stray value."""
    if pd.api.types.is_bool_dtype(column.dtype) or pd.api.types.is_numeric_dtype(column.dtype):
        return None
    known = column.dropna()
    if len(known) == 0 or pd.to_numeric(known, errors="coerce").notna().any():
        return None
    if isinstance(column.dtype, pd.CategoricalDtype):
        return [c for c in column.cat.categories if (known == c).any()]
    return sorted(pd.unique(known), key=str)


def _attach_labels(
    dataset: IrregularDataset, wide: pd.DataFrame, label_col: str, offsets: np.ndarray,
    id_col: str, label_per: str,
) -> None:
    names = _class_names(wide[label_col])
    if names is not None:  # class names ('RRLyr', 'died'): their positions are the classes
        codes = wide[label_col].map({name: k for k, name in enumerate(names)})
        vals = codes.to_numpy(dtype=np.float64, na_value=np.nan)
        dataset.label_names = [str(name) for name in names]
    else:
        column = wide[label_col]
        text = pd.to_numeric(column, errors="coerce").isna() & column.notna()
        if text.any() and not pd.api.types.is_bool_dtype(column.dtype):
            i = int(np.argmax(text.to_numpy()))
            raise ValueError(
                f"label column {label_col!r} mixes class numbers and names (e.g. "
                f"{_plain(column.iloc[i])!r} in series {_plain(wide[id_col].iloc[i])!r}, row "
                f"{_plain(wide.index[i])!r}): give every class as a number 0, 1, ... or every "
                "class as a name (NaN or empty: unknown).")
        vals = _numeric_column(wide, label_col, id_col).to_numpy()
    first = np.repeat(vals[offsets[:-1]], np.diff(offsets))
    constant = bool(np.all(_same(vals, first)))
    if label_per == "series":  # each series' known label (NaN on other rows: unknown there)
        per_series = pd.Series(vals).groupby(np.repeat(np.arange(len(offsets) - 1),
                                                       np.diff(offsets)))
        several = per_series.nunique(dropna=True).to_numpy() > 1
        if several.any():
            s = int(np.argmax(several))
            seen = pd.unique(pd.Series(vals[offsets[s]:offsets[s + 1]]).dropna())
            shown = ([str(names[int(v)]) for v in seen] if names is not None
                     else [_plain(v) for v in seen])
            raise ValueError(
                f"label column {label_col!r} changes within series "
                f"{_plain(wide[id_col].iloc[offsets[s]])!r} ({shown[:5]}; "
                f"{int(several.sum())} such series); use label_per='time' for per-time-point "
                "labels, or give each series one label."
            )
        dataset.labels, dataset.label_kind = per_series.first().to_numpy(), "series"
    elif label_per == "auto" and constant:
        dataset.labels, dataset.label_kind = vals[offsets[:-1]], "series"
    else:
        dataset.labels, dataset.label_kind = vals, "time"
