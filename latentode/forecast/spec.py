"""What a forecaster remembers about its training data, and how it reads new frames with it.

``DataSpec`` holds the columns (id, time, channels; wide or tidy), the time transform (user time
<-> model time) and the channel scaler's statistics, all plain numbers and strings so they are
saved as JSON, never pickled. ``DataSpec.dataset`` turns a user's DataFrame into an
``IrregularDataset`` on the *training* time scale and channel order, refusing frames whose time
type or channels differ from training, with messages that name both sides.
"""

from __future__ import annotations

import difflib
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from latentode.data import IrregularDataset, TimeTransform, from_dataframe
from latentode.data.scaling import errors_to_model
from latentode.utils.stack import user_stacklevel

SPEC_VERSION = 1


@dataclass
class DataSpec:
    """Columns, time transform and channel scaling of the data a model was trained on.

    Attributes:
        id_col, time_col: the series id and time columns.
        channels: channel names (strings) in the model's channel order.
        value_cols: the wide value columns named at fit (as strings), or None when they were
            inferred (every numeric column but id and time): then a frame must have exactly the
            training channels as numeric columns.
        channel_col, value_col: tidy format (one row per observation) instead of wide.
        time_unit: unit of datetimes before rescaling (``TimeTransform``).
        time: user time <-> model time.
        mean, scale: per-channel scaler statistics (data = model * scale + mean); None when the
            model was trained on unscaled values.
        log: per channel, whether it is standardised as ``log(value)`` (``data.log_channels``:
            data = exp(model * scale + mean) there); None: none is.
        walk_grid, walk_origin: for a model whose encoder was trained on the union walk of
            data on a shared grid (the paper's periodic and hopper recipes), that grid's model
            times (``walk_origin="series"``: from each series' first time; ``"batch"``: as
            stored). Prediction walks each series alone through its observations and these
            points, the Euler steps the union walk gave it in training. None: its observations
            only (a model trained on the series walk, or on unaligned data).
        value_range: per channel ``[lowest, highest]`` of the training values in model units
            (None for a channel never observed; the field None: not recorded, forecasters saved
            before 2026-12-07): histories far outside it are warned about.
        train_columns: the columns of the wide frame ``fit`` was given (None: unknown, tidy, or
            saved before 2026-12-07): a later frame's numeric columns beyond them are warned
            about (a new vital added to the table was silently unused).
        uncertainty_cols, uncertainty_col: the columns of the values' measurement
            uncertainties fit read (wide ``{channel: column}``, tidy one column; None: none).
            A validation frame's are read where it has them (its points weigh as training's
            do), and a history's when the model's encoder reads them
            (``encoder_error_scale``); they are never channels.
        subsets: ``Subsets.to_json()`` of the forecaster's subset conditioning (each posterior
            sample conditioned on a random subset of a series' points drawn as in training:
            ``latentode.forecast.subsets``), or None: on all of them.
    """

    id_col: Any
    time_col: Any
    channels: list[str]
    time: TimeTransform
    value_cols: list[str] | None = None
    channel_col: Any = None
    value_col: Any = None
    time_unit: str | None = None
    mean: list[float] | None = None
    scale: list[float] | None = None
    train_span: float | None = None  # longest training series' span, model units (None: unknown)
    label_names: list[str] | None = None  # class names of labels given as names (predict_proba)
    log: list[bool] | None = None
    walk_grid: list[float] | None = None
    walk_origin: str = "batch"
    subsets: dict[str, Any] | None = None
    value_range: list[list[float] | None] | None = None
    train_columns: list[str] | None = None
    uncertainty_cols: dict[str, Any] | None = None
    uncertainty_col: Any = None

    def check_output_names(self) -> None:
        """Refuse id, time or (tidy) channel columns named like a column the forecasts add
        (``mean``, ``sample``, ``value``, a quantile's ``q0.9``; ``channel`` for wide data):
        an id column called ``channel`` was overwritten by the channel names, every series' id
        lost without a word. Checked where a forecaster is made from the user's frames (fit,
        from_model); one loaded or made from a run says so in the method whose frame clashes
        (:meth:`check_no_clash`)."""
        ours = ["mean", "sample", "value", "q0.05, q0.95 ..."]
        if not self.tidy:
            ours.insert(0, "channel")
        for role, name in self._named_columns():
            if _output_name(str(name), wide=not self.tidy):
                raise ValueError(
                    f"{role}={name!r} is also the name of a column of the forecasts' frames "
                    f"({', '.join(ours)}), which would overwrite it: rename that column of the "
                    f"data (df.rename(columns={{{str(name)!r}: 'series'}}) or another name) "
                    "and fit on it.")
        if not self.tidy:
            self.check_no_clash(self.impute_columns(), "impute")

    def impute_columns(self, quantiles: Sequence[float] | None = None) -> list[str]:
        """The columns impute adds to a wide frame: ``<channel>_imputed`` and one per quantile
        (any level when ``quantiles`` is None: those channels' names that look so)."""
        added = [f"{c}_imputed" for c in self.channels]
        if quantiles is not None:
            return added + [f"{c}_{quantile_name(q)}" for c in self.channels for q in quantiles]
        return added + [c for c in self.channels if self._ours(c) and not c.startswith("level_")]

    def check_no_clash(self, added: Sequence[str], method: str) -> None:
        """Refuse to build ``method``'s frame when one of its ``added`` columns (and, for
        wide data, ``channel``) would overwrite the id or time column or, for impute, a
        channel (``x_q0.1`` beside ``x``)."""
        taken = [*([] if self.tidy else ["channel"]), *map(str, added)]
        roles = self._named_columns()
        if method == "impute":
            roles += [("channel", c) for c in self.channels]
        for role, name in roles:
            if str(name) in taken:
                raise ValueError(
                    f"{method}: this forecaster's {role} {name!r} is a name its frame gives "
                    f"to a column of its own ({', '.join(taken[:8])}): its values would be "
                    "lost. Rename that column of the training data and fit again (a run: "
                    "train it again on the renamed file).")

    def _warn_new_columns(self, df: pd.DataFrame, what: str) -> None:
        """Numeric columns of ``df`` the training frame did not have: not channels, unused."""
        if self.train_columns is None:
            return
        known = {*self.train_columns, str(self.id_col), str(self.time_col), "index"}
        new = [str(c) for c in df.columns if str(c) not in known and not self._ours(str(c))
               and pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])]
        if new:
            warnings.warn(
                f"{what} has numeric column(s) {new[:8]} that the frame the model was fitted on "
                f"had not: they are not channels of the model and are not used (its channels: "
                f"{self.channels}); to model them, fit again with them.",
                stacklevel=user_stacklevel())

    def _ours(self, name: str) -> bool:
        """Whether ``name`` is a column impute adds to a wide frame (``x_q0.05``, ``x_imputed``)
        or pandas' ``reset_index`` does (``level_0``)."""
        if name.startswith("level_") and name[6:].isdigit():
            return True
        for channel in self.channels:
            rest = name[len(channel):] if name.startswith(channel) else None
            if rest == "_imputed" or (rest and rest.startswith("_")
                                      and _quantile_column(rest[1:])):
                return True
        return False

    def _named_columns(self) -> list[tuple[str, Any]]:
        roles = [("id_col", self.id_col), ("time_col", self.time_col)]
        if self.tidy:
            roles.append(("channel_col", self.channel_col))
        return roles

    # ----------------------------------------------------------------------------- basics
    @property
    def tidy(self) -> bool:
        return self.channel_col is not None

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    def to_model_values(self, values: np.ndarray) -> np.ndarray:
        """Data units to the model's (scaled) units."""
        values = np.array(values, dtype=np.float64)
        if self.mean is None or self.scale is None:
            return values
        if self.log is not None and any(self.log):
            log = np.asarray(self.log, dtype=bool)
            with np.errstate(invalid="ignore"):
                bad = values[..., log] <= 0
            if bad.any():
                name = np.asarray(self.channels, dtype=object)[log][np.argwhere(bad)[0][-1]]
                raise ValueError(
                    f"channel {name!r} was trained on a log scale (log_channels) but the frame "
                    f"has {int(bad.sum())} value(s) <= 0 there; a log scale needs positive "
                    "values.")
            values[..., log] = np.log(values[..., log])
        return (values - np.asarray(self.mean)) / np.asarray(self.scale)

    def to_model_errors(self, errors: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Measurement uncertainties of ``values`` (both in data units) in the model's units,
        as the training data's scaler put them (:func:`~latentode.data.scaling.errors_to_model`)."""
        if self.mean is None or self.scale is None:
            return np.array(errors, dtype=np.float64)
        return errors_to_model(errors, values, self.scale, self.log)

    def to_user_values(self, values: np.ndarray) -> np.ndarray:
        """Model units back to data units (increasing in each channel, so quantiles map)."""
        if self.mean is None or self.scale is None:
            return np.asarray(values, dtype=np.float64)
        out = np.asarray(values, dtype=np.float64) * np.asarray(self.scale) + np.asarray(
            self.mean)
        if self.log is not None and any(self.log):
            log = np.asarray(self.log, dtype=bool)
            with np.errstate(over="ignore"):
                out[..., log] = np.exp(out[..., log])
        return out

    # ----------------------------------------------------------------------------- JSON
    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["time"] = asdict(self.time)
        out["version"] = SPEC_VERSION
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DataSpec:
        data = without_version(data, SPEC_VERSION, "transforms")
        data["time"] = TimeTransform(**data["time"])
        return cls(**data)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> DataSpec:
        return cls.from_json(json.loads(path.read_text()))

    # ----------------------------------------------------------------------------- frames
    def missing_uncertainties(self, df: pd.DataFrame) -> list[str]:
        """The uncertainty columns fit read that ``df`` lacks, for channels ``df`` observes
        (a channel given as all-NaN needs none)."""
        by_name = {str(c): c for c in df.columns}

        def observed(column: str) -> bool:
            return column in by_name and bool(
                pd.to_numeric(df[by_name[column]], errors="coerce").notna().any())

        if self.tidy:
            col = self.uncertainty_col
            if col is None or str(col) in by_name or not observed(str(self.value_col)):
                return []
            return [str(col)]
        return [str(col) for channel, col in (self.uncertainty_cols or {}).items()
                if str(col) not in by_name and observed(str(channel))]

    def dataset(self, df: pd.DataFrame, what: str = "df", errors: bool = False
                ) -> IrregularDataset:
        """``df`` as an ``IrregularDataset`` with the training channels (order and names) and
        model times on the training time scale; values stay in data units. ``errors``: read
        the measurement uncertainties too (frames to train or validate on, and histories
        when the model's encoder reads them; otherwise they are passed over unread)."""
        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"{what} must be a pandas DataFrame, got {type(df).__name__}.")
        if self.tidy:
            error_col = (self.uncertainty_col if errors and self.uncertainty_col is not None
                         and self.uncertainty_col in df.columns else None)
            ds = from_dataframe(df, self.id_col, self.time_col, channel_col=self.channel_col,
                                value_col=self.value_col, time_unit=self.time_unit,
                                empty_channels="ignore", uncertainty_col=error_col)
            unknown = [c for c in ds.channels if c not in self.channels]
            if unknown:
                raise ValueError(
                    f"{what} has channel(s) {unknown} in column {self.channel_col!r} that the "
                    f"model was not trained on; trained on {self.channels}, {what} has "
                    f"{ds.channels}."
                )
            order = [self.channels.index(name) for name in ds.channels]
            values = np.full((len(ds.values), self.n_channels), np.nan)
            values[:, order] = ds.values
            uncertain = None
            if ds.errors is not None:
                uncertain = np.full(values.shape, np.nan)
                uncertain[:, order] = ds.errors
            ds = replace(ds, values=values, channels=list(self.channels), errors=uncertain,
                         error_names=None)
        else:
            columns = self._value_columns(df, what)
            present = {str(c) for c in df.columns}
            errors_of = {channel: column for channel, column in
                         (self.uncertainty_cols or {}).items()
                         if errors and str(column) in present}
            ds = from_dataframe(df, self.id_col, self.time_col, columns,
                                time_unit=self.time_unit, empty_channels="ignore",
                                uncertainty_cols=errors_of or None)
        if ds.time_transform.kind != self.time.kind:  # numbers, datetimes or ISO date text
            advice = ("convert it with pd.to_datetime" if self.time.kind == "datetime"
                      else "pass the same time units as in training")
            raise ValueError(
                f"the model was trained on {self.time.kind} times, but {what}'s column "
                f"{self.time_col!r} holds {ds.time_transform.kind} ones (first: "
                f"{ds.raw_times[0]!s}); {advice}."
            )
        return replace(ds, times=self.time.to_model(ds.raw_times), time_transform=self.time)

    def _value_columns(self, df: pd.DataFrame, what: str) -> list[Any]:
        """The columns of ``df`` holding the training channels, in the model's order."""
        by_name = {str(c): c for c in df.columns}
        if self.value_cols is not None:
            missing = [c for c in self.value_cols if c not in by_name]
            if missing:
                raise ValueError(
                    f"{what} lacks value column(s) {missing}: the model was trained on channels "
                    f"{self.channels}; {what} has columns {[str(c) for c in df.columns]}."
                    f"{_did_you_mean(missing, list(by_name))} A "
                    "channel not measured in these series is an all-NaN column: "
                    f"df[{str(missing[0])!r}] = float('nan')."
                    + (" A tidy frame (one row per observation) needs a forecaster made for "
                       "tidy frames: fit or from_model with channel_col= and value_col=."
                       if len(missing) == len(self.value_cols) else "")
                )
            self._warn_new_columns(df, what)
            return [by_name[c] for c in self.value_cols]
        reserved = {str(self.id_col), str(self.time_col),
                    *(str(c) for c in (self.uncertainty_cols or {}).values())}
        # a training channel is taken whatever its dtype: fit reads numbers kept as text (a
        # CSV's "80.5"), and a stray '?' is named by from_dataframe, not called a missing column
        # (impute's own columns, x_q0.1 and x_imputed, are passed over: predict on its output)
        numeric = [
            str(c) for c in df.columns
            if str(c) not in reserved and (
                str(c) in self.channels
                or (pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])
                    and not self._ours(str(c))))
        ]
        if set(numeric) != set(self.channels):
            missing = [c for c in self.channels if c not in numeric]
            extra = [c for c in numeric if c not in self.channels]
            detail = "; ".join(
                part for part in (
                    f"missing {missing}" if missing else "",
                    f"not in training {extra}" if extra else "",
                ) if part
            )
            raise ValueError(
                f"{what}'s value channels {numeric} differ from the channels the model was "
                f"trained on {self.channels} ({detail}); give {what} the same numeric value "
                "columns (fit with value_cols=[...] to ignore other columns)"
                + (f"; a channel not measured in these series is an all-NaN column: "
                   f"df[{missing[0]!r}] = float('nan')." if missing else ".")
                + _did_you_mean(missing, extra)
            )
        return [by_name[c] for c in self.channels]


def concat_datasets(a: IrregularDataset, b: IrregularDataset) -> IrregularDataset:
    """``a``'s series then ``b``'s, sharing ``a``'s channels and time transform (ids may repeat:
    the data module addresses series by position)."""
    raw = np.concatenate([np.asarray(a.raw_times, dtype=object),
                          np.asarray(b.raw_times, dtype=object)])
    return IrregularDataset(
        ids=[*a.ids, *b.ids],
        offsets=np.concatenate([a.offsets, b.offsets[1:] + a.offsets[-1]]).astype(np.int64),
        times=np.concatenate([a.times, b.times]),
        raw_times=raw,
        values=np.concatenate([a.values, b.values]),
        errors=None if a.errors is None and b.errors is None else np.concatenate(
            [_errors_of(a), _errors_of(b)]),
        error_names=a.error_names or b.error_names,
        channels=list(a.channels),
        time_transform=a.time_transform,
        id_col=a.id_col,
        time_col=a.time_col,
        labels=None if a.labels is None else np.concatenate(  # b's unknown unless it has them
            [a.labels, b.labels if b.labels is not None else np.full(len(b), np.nan)]),
        label_kind=a.label_kind,
        label_col=a.label_col,
        label_names=a.label_names,
    )


def _errors_of(ds: IrregularDataset) -> np.ndarray:
    """``ds``'s uncertainties, NaN (none given) where it has none."""
    return ds.errors if ds.errors is not None else np.full(ds.values.shape, np.nan)


def check_quantiles(quantiles: Sequence[float] | None) -> list[float]:
    """``quantiles`` as a list of floats in (0, 1), or a ``ValueError`` naming the bad one."""
    if quantiles is None:
        return []
    if isinstance(quantiles, (int, float)):
        quantiles = [quantiles]
    out = []
    for q in quantiles:
        try:
            value = float(q)
        except (TypeError, ValueError) as err:
            raise ValueError(f"quantiles must be numbers in (0, 1), got {q!r}.") from err
        if not 0.0 < value < 1.0:
            raise ValueError(
                f"quantiles must lie strictly between 0 and 1 (e.g. 0.05, 0.5, 0.95), got {q!r}."
            )
        out.append(value)
    return out


def _did_you_mean(missing: Sequence[str], present: Sequence[str]) -> str:
    """`` Did you mean 'spo2' for 'SpO2'?`` for missing columns close to present ones (case
    aside), or ''."""
    lower = {p.lower(): p for p in map(str, present)}
    pairs = []
    for name in missing:
        close = difflib.get_close_matches(str(name).lower(), list(lower), n=1)
        if close:
            pairs.append(f"{lower[close[0]]!r} for {str(name)!r}")
    return f" Did you mean {', '.join(pairs)}?" if pairs else ""


def _output_name(name: str, wide: bool) -> bool:
    """Whether ``name`` is one of the columns forecasts add: ``mean``, ``sample``, ``value``,
    a quantile's (:func:`quantile_name`), and, for wide data, ``channel``."""
    if name in ("mean", "sample", "value") or (wide and name == "channel"):
        return True
    return _quantile_column(name)


def _quantile_column(name: str) -> bool:
    """Whether ``name`` is a quantile's column (:func:`quantile_name` of a level in (0, 1))."""
    try:
        q = float(name[1:])
    except ValueError:
        return False
    return name.startswith("q") and 0 < q < 1 and quantile_name(q) == name


def quantile_name(q: float) -> str:
    """Column name of a quantile: ``q0.05``, ``q0.5``, ``q0.95``."""
    return f"q{q:g}"


def without_version(data: Mapping[str, Any], expected: int, what: str) -> dict[str, Any]:
    """A copy of a saved file's fields without its ``version``, refused unless that is
    ``expected`` (``what`` names the file in the error)."""
    data = dict(data)
    version = data.pop("version", None)
    if version != expected:
        raise ValueError(f"{what} file version {version!r}; this latentode reads "
                         f"version {expected}.")
    return data


__all__ = ["DataSpec", "check_quantiles", "concat_datasets", "quantile_name"]


def value_range(ds: IrregularDataset) -> list[list[float] | None]:
    """Per channel ``[lowest, highest]`` of ``ds``'s values (None where none is observed)."""
    values = np.asarray(ds.values, dtype=np.float64)
    out: list[list[float] | None] = []
    for j in range(values.shape[1]):
        seen = values[:, j][~np.isnan(values[:, j])]
        out.append([float(seen.min()), float(seen.max())] if seen.size else None)
    return out


def longest_span(ds: IrregularDataset) -> float:
    """The longest time span of any series in ``ds`` (model units): how far the model has seen
    a path run from its first observation."""
    if len(ds) == 0:
        return 0.0
    return float(np.max(ds.times[ds.offsets[1:] - 1] - ds.times[ds.offsets[:-1]]))
