"""The forecaster's figure: history as points, the mean forecast, a quantile band, the boundary.

Built on ``matplotlib.figure.Figure`` directly (no pyplot state, no backend switch), so it works
the same in scripts, notebooks and headless test runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from latentode.data import IrregularDataset

from .requests import data_tz, last_observed, last_window, series_times
from .spec import DataSpec


def _quantile_columns(pred: pd.DataFrame) -> list[tuple[float, str]]:
    out = []
    for col in pred.columns:
        name = str(col)
        if name.startswith("q"):
            try:
                out.append((float(name[1:]), name))
            except ValueError:
                continue
    return sorted(out)


def check_channel_labels(spec: DataSpec, channel_labels: Mapping[Any, str] | None
                         ) -> dict[str, str]:
    """``channel_labels`` keyed by channel name as text; an error for names the model lacks."""
    labels = {str(k): str(v) for k, v in (channel_labels or {}).items()}
    stray = sorted(set(labels) - set(map(str, spec.channels)))
    if stray:
        raise ValueError(f"channel_labels name(s) {stray} that are not the model's channels "
                         f"{spec.channels}.")
    return labels


def plot_forecast(
    spec: DataSpec,
    ds: IrregularDataset,
    pred: pd.DataFrame,
    series: Sequence[Any] | None = None,
    channels: Sequence[str] | None = None,
    max_series: int = 4,
    window: float | None = None,
    channel_labels: Mapping[Any, str] | None = None,
) -> Any:
    """One axes per (series, channel); see ``LatentODEForecaster.plot``. ``window`` (model
    units): the model was trained on windows of this span, so its forecasts are conditioned on
    the observations of the last window alone; that span is shaded. ``channel_labels``: titles
    for channels (keys: channel names or codes, e.g. ``{220045: "heart rate"}``)."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    channel_col = spec.channel_col or "channel"
    need = [spec.id_col, spec.time_col, channel_col, "mean"]
    absent = [c for c in need if c not in pred.columns]
    if absent:
        raise ValueError(f"pred lacks column(s) {absent}; pass the frame predict() returned "
                         f"(columns {need} and quantiles).")
    position = {key: i for i, key in enumerate(ds.ids)}
    in_pred = pd.unique(pred[spec.id_col]).tolist()  # Python values: 3 in messages, not np.int64(3)
    if series is None:
        series = [s for s in in_pred if s in position][:max_series]
    series = list(series)
    unknown = [s for s in series if s not in position or s not in set(in_pred)]
    if unknown:
        raise ValueError(f"series {unknown} are not in both df and pred; pred has series "
                         f"{in_pred[:10]}.")
    if not series:
        raise ValueError("no series to plot: df and pred share no series id.")
    # names as text, as the model keeps them: integer codes read off predict's output match
    chans = [str(c) for c in channels] if channels is not None else list(spec.channels)
    bad = [c for c in chans if c not in spec.channels]
    if bad:
        raise ValueError(f"channels {bad} are not the model's channels {spec.channels}.")
    labels = check_channel_labels(spec, channel_labels)
    bands = _quantile_columns(pred)
    band = (bands[0][1], bands[-1][1]) if len(bands) >= 2 else None

    tz = data_tz(ds)
    rows, cols = len(series), len(chans)
    height = 2.4 * rows + 0.8
    fig = Figure(figsize=(max(7.0, 4.5 * cols), height))
    axes = fig.subplots(rows, cols, squeeze=False)
    handles: dict[str, Any] = {}
    for r, key in enumerate(series):
        i = position[key]
        lo, hi = ds.offsets[i], ds.offsets[i + 1]
        t_obs = series_times(ds, i, spec.time.kind)
        boundary = last_observed(ds, i, spec.time.kind)
        window_start = None
        if window is not None:  # the first observation the forecast is conditioned on
            recent = last_window(ds.times[lo:hi], ~np.isnan(ds.values[lo:hi]).all(1), window)
            window_start = t_obs[int(np.flatnonzero(recent)[0])]
        part = pred[pred[spec.id_col] == key]
        for c, name in enumerate(chans):
            ax = axes[r, c]
            # channel codes may be the frame's own type (220045, not '220045'): compare as text
            rows_c = part[part[channel_col].astype(str) == str(name)].sort_values(
                spec.time_col, kind="stable")
            t_pred = rows_c[spec.time_col].to_numpy()
            if band is not None:
                handles[f"{band[0]}-{band[1]}"] = ax.fill_between(
                    t_pred, rows_c[band[0]].to_numpy(float), rows_c[band[1]].to_numpy(float),
                    color="C0", alpha=0.25, lw=0)
            (handles["mean"],) = ax.plot(t_pred, rows_c["mean"].to_numpy(float), color="C0",
                                         lw=1.5)
            values = ds.values[lo:hi, spec.channels.index(name)]
            seen = ~np.isnan(values)
            if seen.any():
                handles["observed"] = ax.scatter(np.asarray(t_obs)[seen], values[seen], s=10,
                                                 color="k", zorder=3)
            if ds.errors is not None:  # each measurement's own +-1 std (data units)
                errors = ds.errors[lo:hi, spec.channels.index(name)]
                with np.errstate(invalid="ignore"):
                    bar = seen & np.isfinite(errors) & (errors > 0)
                if bar.any():
                    handles["measurement +-1 std"] = ax.errorbar(
                        np.asarray(t_obs)[bar], values[bar], yerr=errors[bar], fmt="none",
                        ecolor="k", elinewidth=0.8, alpha=0.5, zorder=2)
            handles["last observation"] = ax.axvline(boundary, color="0.4", ls="--", lw=1.0)
            if window_start is not None:
                handles["conditioning window"] = ax.axvspan(window_start, boundary, color="0.5",
                                                            alpha=0.12, lw=0)
            ax.set_title(f"{key}: {labels.get(str(name), name)}", fontsize=9)
            if r == len(axes) - 1:  # the bottom row names the shared axis
                ax.set_xlabel(str(spec.time_col), fontsize=8)
            if spec.time.kind == "datetime":
                locator = AutoDateLocator(tz=tz)
                ax.xaxis.set_major_locator(locator)
                ax.xaxis.set_major_formatter(ConciseDateFormatter(locator, tz=tz))
                # slanted: dense dates in narrow axes do not run into each other
                ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    fig.legend(list(handles.values()), list(handles), loc="upper center", ncol=len(handles),
               fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / height))
    return fig


__all__ = ["check_channel_labels", "plot_forecast"]
