"""``IrregularDataset``: many series, each observed at its own times, channels missing freely.

Storage is columnar and ragged: every point of every series lives in flat arrays (``times``,
``values`` with NaN for "not observed") with ``offsets`` marking where each series starts, so that
collating a batch is a handful of vectorised numpy operations rather than a Python loop.
The user's original time stamps are kept beside the model's rescaled times, so everything handed
back to the user (``to_dataframe``, predictions) is in original units, exactly.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class TimeTransform:
    """Maps user times to the solver's well-conditioned model times and back.

    Numeric times: ``model = (t - offset) / scale``. Datetimes are first turned into a number of
    ``unit`` since the epoch (e.g. hours), then the same. ``scale`` is 1 when the longest
    series' span is already moderate (0.01 to 10 units) and that span otherwise, so each
    series' model times live in at most ``[0, 1]``: large raw time ranges made the research
    code's solver produce NaNs, and an untrained latent ODE drifts over a long span (48 hours
    since admission in hours: test MSE ~10x worse after 8 epochs than on ``[0, 1]``, synthetic
    ICU-like CSV, 2026-12-05). A given ``scale`` (in the same units) replaces that choice, e.g.
    48 for 48-hour ICU stays: the model then sees each stay on ``[0, 1]``, as the paper's code
    does for PhysioNet.
    """

    kind: str  # "numeric" or "datetime"
    offset: float
    scale: float
    unit: str | None = None  # pandas unit for datetimes ("h", "D", "s", ...)
    auto: bool = False  # the scale was chosen from the data (no time_scale given)
    tz: str | None = None  # the data's time zone (aware datetimes): where a naive time given
    # in the data's terms (a cut_time) is read

    @staticmethod
    def automatic_scale(span: float) -> float:
        """The scale chosen for a longest span of ``span`` units (see the class docstring)."""
        return 1.0 if 0.01 <= span <= 10 or span == 0 else float(span)

    @classmethod
    def fit(cls, raw: np.ndarray | pd.Series, unit: str | None = None,
            scale: float | None = None, starts: np.ndarray | None = None) -> TimeTransform:
        """The transform for times ``raw``: offset at their first, ``scale`` as given or chosen
        from their span (see the class docstring). With ``starts`` (where each series begins in
        ``raw``, series stored one after another) the span is the longest series' own: series
        recorded on one absolute clock (admissions on different days) each get up to
        ``[0, 1]``, not a sliver of the whole calendar."""
        if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale)
                                      and scale > 0):
            raise ValueError(f"time_scale must be a positive number of time units (e.g. 48 for "
                             f"48-hour records), got {scale!r}.")
        kind = "datetime" if _is_datetime(raw) else "numeric"
        unit = (unit or "h") if kind == "datetime" else unit
        tz = getattr(getattr(raw, "dtype", None), "tz", None) if kind == "datetime" else None
        tz = None if tz is None else str(tz)
        base = cls(kind=kind, offset=0.0, scale=1.0, unit=unit, tz=tz)._to_number(raw)
        lo, hi = float(np.min(base)), float(np.max(base))
        span = hi - lo
        if starts is not None and len(base):
            span = float(np.max(np.maximum.reduceat(base, starts)
                                - np.minimum.reduceat(base, starts)))
        auto = scale is None
        if scale is None:
            scale = cls.automatic_scale(span)
        return cls(kind=kind, offset=lo, scale=float(scale), unit=unit, auto=auto, tz=tz)

    def local(self, when: Any) -> pd.Timestamp:
        """A time stamp given in the data's terms: a naive one is taken to be in the data's
        zone (not UTC, which the numbers are counted in)."""
        stamp = pd.Timestamp(when)
        if self.tz is not None and stamp.tzinfo is None:
            stamp = localize_wall_clock(pd.DatetimeIndex([stamp]), self.tz)[0]
        return stamp

    def _to_number(self, raw: Any) -> np.ndarray:
        if self.kind == "datetime":
            # pandas containers as they are: np.asarray of zone-aware times is an object array
            # of Timestamps, parsed back one by one (10x the time of the numbers at 1e6 rows)
            keep = isinstance(raw, (pd.Series, pd.Index, pd.api.extensions.ExtensionArray))
            stamps = pd.to_datetime(pd.Series(raw if keep else np.asarray(raw), copy=False))
            if self.tz is not None and stamps.dt.tz is None:
                # naive stamps given to data in a zone (a forecaster fitted on aware times,
                # asked with a naive frame) are wall-clock times there, as :meth:`local` reads
                # a naive ``times=``: read as UTC, a daylight-saving change inside a history
                # vanished and the answer moved, silently
                stamps = pd.Series(localize_wall_clock(pd.DatetimeIndex(stamps), self.tz),
                                   index=stamps.index)
            if stamps.dt.tz is not None:
                if self.tz is None:  # which zone were the data's naive times in? unknowable
                    raise ValueError(zone_for_naive_data(stamps.dt.tz, ".dt"))
                stamps = stamps.dt.tz_convert("UTC").dt.tz_localize(None)
            early, late = stamps.min(), stamps.max()
            if early < pd.Timestamp.min or late > pd.Timestamp.max:  # they wrapped around
                raise ValueError(
                    f"times from {early} to {late} reach outside the datetimes latentode "
                    f"counts in nanoseconds ({pd.Timestamp.min.date()} to "
                    f"{pd.Timestamp.max.date()}): give such times as numbers (e.g. years, or "
                    "days since a date of yours)."
                )
            nanos = stamps.to_numpy(dtype="datetime64[ns]").astype(np.int64).astype(np.float64)
            return nanos / pd.Timedelta(1, unit=self.unit).value
        return np.asarray(raw, dtype=np.float64)

    def to_model(self, raw: Any) -> np.ndarray:
        """User times (numbers or datetimes) to model times (float64)."""
        return (self._to_number(raw) - self.offset) / self.scale

    def to_user(self, model: Any) -> np.ndarray:
        """Model times back to user units (float64 numbers, or ``datetime64[ns]``)."""
        number = np.asarray(model, dtype=np.float64) * self.scale + self.offset
        if self.kind == "datetime":
            nanos = np.round(number * pd.Timedelta(1, unit=self.unit).value).astype(np.int64)
            return nanos.astype("datetime64[ns]")
        return number


def zone_for_naive_data(tz: Any, accessor: str = "") -> str:
    """The refusal of zone-aware times given to data on a naive clock (a history frame, or a
    forecaster's ``times=``): which zone that clock was in cannot be known, and reading it as
    UTC moved every answer by the clock's offset, silently."""
    return (f"times in zone {tz} given to data whose times carry no zone (the model was fitted "
            "on naive datetimes): give naive times on the training data's clock, e.g. "
            f"times{accessor}.tz_convert('<that zone>'){accessor}.tz_localize(None).")


def later_on_a_change(index: pd.DatetimeIndex, tz: Any) -> pd.DatetimeIndex:
    """Naive wall-clock times placed in zone ``tz`` without a word: one the clocks skipped
    reads as just after the gap, one they show twice as the later, standard-time one."""
    return index.tz_localize(tz, ambiguous=np.zeros(len(index), bool),
                             nonexistent="shift_forward")


def localize_wall_clock(index: pd.DatetimeIndex, tz: Any) -> pd.DatetimeIndex:
    """Naive wall-clock times in zone ``tz``. A time the clocks skipped (spring forward) is
    moved forward by the gap, a time they show twice (fall back) is read as the later, standard-
    time one; either is warned about, naming the first such time: pandas refused them with
    advice of arguments no caller of ours can pass, and the history path shifted them unsaid."""
    try:
        strict = index.tz_localize(tz, ambiguous="NaT", nonexistent="NaT")
    except TypeError:  # aware already: nothing to localize
        return index
    odd = np.asarray(strict.isna() & ~index.isna())
    if not odd.any():
        return strict
    kept = later_on_a_change(index, tz)
    shifted = odd & np.asarray(kept.tz_localize(None) != index)
    first = index[int(np.argmax(odd))]
    skipped, repeated = int(shifted.sum()), int(odd.sum() - shifted.sum())
    parts = [f"{skipped} the clocks skipped, read as just after the gap" if skipped else "",
             f"{repeated} the clocks show twice, read as the later (standard-time) one"
             if repeated else ""]
    warnings.warn(
        f"naive times on a daylight-saving change in {tz} (first: {first}): "
        f"{'; '.join(p for p in parts if p)}. Give zone-aware times (or UTC) to say which was "
        "meant.",
        stacklevel=4,
    )
    return kept


def parse_duration(value: Any, what: str) -> pd.Timedelta:
    """A positive duration for datetime times (``"24h"``, ``"7D"``, a ``pd.Timedelta``); a bare
    number is refused, never guessed (``pd.Timedelta(12)`` would be 12 nanoseconds)."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
            value, (bool, np.timedelta64)):  # a numpy timedelta64 is an np.integer too
        raise ValueError(
            f"{what}={value!r} is a bare number, but the times are datetimes: give a duration "
            f"with its unit, e.g. '{value}h' or '{value}D' (or a pd.Timedelta)."
        )
    try:
        span = pd.Timedelta(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be a duration for datetime times (e.g. '7D', '12h' or a "
                         f"pd.Timedelta), got {value!r}.") from err
    if span <= pd.Timedelta(0):
        raise ValueError(f"{what} must be a positive time span, got {value!r}.")
    return span


def _as_read(column: np.ndarray, dtype: Any) -> Any:
    """A static covariate stored as floats, back in the dtype it was read with (an int age
    came back as float64) where that holds its values exactly (not with NaN in an int)."""
    if dtype is None:
        return column
    try:
        cast = pd.array(column).astype(dtype)
        back = pd.array(cast).to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError):
        return column
    return cast if np.array_equal(back, column, equal_nan=True) else column


def _is_datetime(raw: Any) -> bool:
    dtype = getattr(raw, "dtype", None)
    return dtype is not None and (
        pd.api.types.is_datetime64_any_dtype(dtype) or isinstance(dtype, pd.DatetimeTZDtype)
    )


@dataclass
class IrregularDataset:
    """A collection of irregularly sampled multichannel series (see the module docstring).

    Attributes:
        ids: one id per series (the user's, any hashable), in storage order.
        offsets: ``(n_series + 1,)``; series ``i`` owns points ``offsets[i]:offsets[i+1]``.
        times: ``(N,)`` model times (float64), sorted within each series.
        raw_times: ``(N,)`` the user's time stamps, original dtype (exact round trips).
        values: ``(N, D)`` float64, NaN where a channel was not observed.
        channels: the ``D`` channel names.
        time_transform: user <-> model time mapping.
        static: ``(n_series, S)`` per-series covariates or None; ``static_names`` their names.
        labels: per-series ``(n_series,)`` or per-time-point ``(N,)`` labels, or None;
            ``label_kind`` is "series" or "time"; NaN marks an unknown label. Labels read
            from names (text, categories) are class numbers ``k`` for ``label_names[k]``.
        errors: ``(N, D)`` each value's measurement uncertainty (one standard deviation, in the
            values' units: scaled with them), NaN where none was given, or None (no
            uncertainties at all). The models' likelihood then weighs a point by
            ``1 / (obs_std^2 + error^2)`` (relative to its series' others by default:
            ``latentode.models.inputs.point_noise``), so noisy points weigh less;
            ``error_names`` are the columns they were read from (per channel, None: none).
        id_col, time_col, label_col: column names used by ``to_dataframe``.
    """

    ids: list
    offsets: np.ndarray
    times: np.ndarray
    raw_times: np.ndarray
    values: np.ndarray
    channels: list[str]
    time_transform: TimeTransform
    static: np.ndarray | None = None
    static_names: list[str] | None = None
    static_dtypes: list[Any] | None = None  # the static columns' dtypes, for to_dataframe
    labels: np.ndarray | None = None
    label_kind: str | None = None
    id_col: str = "series_id"
    time_col: str = "time"
    label_col: str | None = None
    label_names: list[str] | None = None
    id_dtype: Any = None
    raw_time_dtype: Any = None
    split: np.ndarray | None = None  # per-series "train"/"val"/"test" fixed by a source
    window: Any = None  # the window length split_windows cut the series into (None: whole)
    errors: np.ndarray | None = None  # (N, D) per-point measurement uncertainty, NaN: none given
    error_names: list[str | None] | None = None  # the column each channel's errors came from

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        """A summary, not the arrays: sizes, channels, observed share, time range."""
        channels = self.channels if len(self.channels) <= 8 else [*self.channels[:8], "..."]
        extras = [name for name, on in (("static", self.static is not None),
                                        (f"labels per {self.label_kind}", self.labels is not None),
                                        ("fixed split", self.split is not None)) if on]
        span = (f", times {self.raw_times.min()!s} to {self.raw_times.max()!s}"
                if len(self.raw_times) else "")
        observed = float(self.mask.mean()) if self.values.size else 0.0
        return (f"IrregularDataset({len(self)} series, {len(self.times)} time points, "
                f"channels={channels}, {observed:.0%} of values observed{span}"
                + "".join(f", {e}" for e in extras) + ")")

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def mask(self) -> np.ndarray:
        """``(N, D)`` True where a value was observed."""
        return ~np.isnan(self.values)

    def channel_mean_mse(self) -> float:
        """MSE of predicting each channel's mean at every observed value, pooled over values
        as the models' ``mse`` is: what a model that learned nothing more scores (about 1 on
        standardised data). NaN without observed values."""
        values = np.asarray(self.values, dtype=np.float64)
        seen = ~np.isnan(values)
        if not seen.any():
            return float("nan")
        counts = seen.sum(0)
        means = np.divide(np.nansum(values, 0), counts, out=np.zeros(values.shape[1]),
                          where=counts > 0)
        return float(np.nansum((values - means) ** 2) / seen.sum())

    @property
    def observed_times(self) -> np.ndarray:
        """``(n_series,)`` how many of each series' times observe any channel (0 for none)."""
        seen = np.concatenate([[0], np.cumsum(self.mask.any(1))])
        return seen[self.offsets[1:]] - seen[self.offsets[:-1]]

    def series(self, i: int) -> dict[str, Any]:
        """One series as arrays: ``id``, ``times``, ``raw_times``, ``values``, ``mask``..."""
        lo, hi = self.offsets[i], self.offsets[i + 1]
        out = {
            "id": self.ids[i],
            "times": self.times[lo:hi],
            "raw_times": self.raw_times[lo:hi],
            "values": self.values[lo:hi],
            "mask": ~np.isnan(self.values[lo:hi]),
        }
        if self.static is not None:
            out["static"] = self.static[i]
        if self.labels is not None:
            out["label"] = self.labels[i] if self.label_kind == "series" else self.labels[lo:hi]
        if self.errors is not None:
            out["errors"] = self.errors[lo:hi]
        return out

    def point_index(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat point positions of series ``indices`` and the batch row of each point."""
        indices = np.asarray(indices, dtype=np.int64)
        starts, lengths = self.offsets[indices], self.lengths[indices]
        rows = np.repeat(np.arange(len(indices)), lengths)
        within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return np.repeat(starts, lengths) + within, rows

    def subset(self, indices: Any) -> IrregularDataset:
        """The series ``indices`` (in that order) as a new dataset sharing nothing mutable."""
        indices = np.asarray(indices, dtype=np.int64)
        points, _ = self.point_index(indices)
        lengths = self.lengths[indices]
        labels = self.labels
        if labels is not None:
            labels = labels[indices] if self.label_kind == "series" else labels[points]
        return replace(
            self,
            ids=[self.ids[i] for i in indices],
            offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            times=self.times[points],
            raw_times=self.raw_times[points],
            values=self.values[points].copy(),
            errors=None if self.errors is None else self.errors[points].copy(),
            static=None if self.static is None else self.static[indices],
            labels=labels,
            split=None if self.split is None else self.split[indices],
        )

    def with_time_scale(self, scale: float) -> IrregularDataset:
        """The same series with model times in units of ``scale`` data time units."""
        old = self.time_transform
        transform = replace(old, scale=float(scale), auto=False)
        return replace(self, times=self.times * (old.scale / transform.scale),
                       time_transform=transform)

    def with_values(self, values: np.ndarray, errors: np.ndarray | None = None
                    ) -> IrregularDataset:
        """The same series with other values (e.g. scaled), NaN pattern unchanged; ``errors``
        (the uncertainties in the new values' units) replace the old ones when given (keep
        them in step: scaled values need scaled errors)."""
        if values.shape != self.values.shape:
            raise ValueError(f"values must have shape {self.values.shape}, got {values.shape}")
        if errors is not None and errors.shape != values.shape:
            raise ValueError(f"errors must have shape {values.shape}, got {errors.shape}")
        return replace(self, values=values, errors=self.errors if errors is None else errors)

    def error_columns(self) -> list[str | None]:
        """The column of each channel's uncertainties in :meth:`to_dataframe` (None: none):
        the names they were read from, else ``<channel>_err``."""
        if self.errors is None:
            return [None] * self.n_channels
        names = list(self.error_names or [None] * self.n_channels)
        given = (~np.isnan(self.errors)).any(0)
        return [name if name is not None else (f"{channel}_err" if has else None)
                for name, channel, has in zip(names, self.channels, given, strict=True)]

    def to_dataframe(self) -> pd.DataFrame:
        """The data back in wide format, original ids, time stamps, channels and columns."""
        n = self.lengths
        ids = np.repeat(np.asarray(self.ids, dtype=object), n)
        frame = {self.id_col: pd.Series(ids, dtype=self.id_dtype) if self.id_dtype else ids}
        frame[self.time_col] = pd.array(self.raw_times, dtype=self.raw_time_dtype) if (
            self.raw_time_dtype is not None
        ) else self.raw_times
        for d, name in enumerate(self.channels):
            frame[name] = self.values[:, d]
        for d, error_name in enumerate(self.error_columns()):
            if error_name is not None and self.errors is not None:  # a column two channels
                have = frame.get(error_name)  # share: each row's from the channel with one
                frame[error_name] = self.errors[:, d] if have is None else np.where(
                    np.isnan(have), self.errors[:, d], have)
        if self.static is not None:
            for s, name in enumerate(self.static_names or []):
                dtypes = self.static_dtypes or []
                dtype = dtypes[s] if s < len(dtypes) else None
                frame[name] = _as_read(np.repeat(self.static[:, s], n), dtype)
        if self.labels is not None and self.label_col:
            labels = np.repeat(self.labels, n) if self.label_kind == "series" else self.labels
            if self.label_names is not None:  # back to the names they were read from
                names = np.array([*self.label_names, None], dtype=object)
                labels = names[np.where(np.isnan(labels), len(self.label_names),
                                        np.nan_to_num(labels)).astype(np.int64)]
            frame[self.label_col] = labels
        return pd.DataFrame(frame)
