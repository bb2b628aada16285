"""PNG plots of predictions on test series: observations, encoder points, mean and a band.

Everything is drawn in the user's units: values through the data module's scaler (inverse),
times through the dataset's time transform (numbers or datetimes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from latentode.data import Batch, collate
from latentode.data.batch import Collator
from latentode.data.windows import window_owner
from latentode.models.inputs import encoder_error_kwargs
from latentode.models.latent_ode import first_target


@torch.no_grad()
def predict_paths(
    model: nn.Module, batch: Batch, n_samples: int = 30, n_grid: int = 200, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior sample paths on a dense grid over the batch's time span.

    Returns ``grid (G,)`` and ``paths (S, B, G, D)`` in model units. The grid holds the batch's
    own times as well, so the curves pass through the scored points; for a model trained with
    ``z0_at="first_target"`` it starts at the first target time, where that model's ``z0`` is.
    """
    times = batch.times
    dense = torch.linspace(float(times[0]), float(times[-1]), n_grid, dtype=times.dtype,
                           device=times.device)
    grid = torch.unique(torch.cat([times, dense]))  # sorted, starts at times[0]
    if getattr(model, "z0_at", "start") == "first_target":  # z0 where training put it
        grid = grid[grid >= times[first_target(batch.target_mask)]]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = model(times, batch.values, batch.encoder_mask, n_samples=n_samples,
                    pred_times=grid,
                    **encoder_error_kwargs(model, getattr(batch, "errors", None)))
    return grid, out.pred


def _to_user_times(transform: Any, model_times: np.ndarray) -> np.ndarray:
    return transform.to_user(model_times) if transform is not None else model_times


def plot_batch(
    batch: Batch,
    grid: torch.Tensor,
    paths: torch.Tensor,
    mean: np.ndarray | None = None,
    scale: np.ndarray | None = None,
    time_transform: Any = None,
    channels: list[str] | None = None,
    titles: list[str] | None = None,
    max_channels: int = 4,
    band: tuple[float, float] = (5.0, 95.0),
    log: np.ndarray | None = None,
) -> plt.Figure:
    """One row per series, one column per channel (up to ``max_channels``).

    Observations are grey points, the ones the encoder saw are ringed, the target points the
    model was scored on are filled; the line is the mean over posterior samples and the band
    spans the ``band`` percentiles of the samples (the paths' spread, without observation
    noise), both over the series' own first to last observation. ``log``: channels the scaler
    standardised as ``log(value)`` (drawn as ``exp``).
    """
    values = batch.values.cpu().numpy().astype(np.float64)
    paths_np = paths.cpu().numpy().astype(np.float64)
    dims = values.shape[-1]
    mean = np.zeros(dims) if mean is None else np.asarray(mean, dtype=np.float64)
    scale = np.ones(dims) if scale is None else np.asarray(scale, dtype=np.float64)
    values = values * scale + mean
    paths_np = paths_np * scale + mean
    if log is not None and np.any(log):
        log = np.asarray(log, dtype=bool)
        values[..., log] = np.exp(values[..., log])
        paths_np[..., log] = np.exp(paths_np[..., log])
    # rows moved to start at 0 (time_origin="series") go back to their own clock: one time
    # axis per row then, as series on an absolute clock may lie days apart
    shift = (np.zeros(values.shape[0]) if batch.origin is None
             else batch.origin.cpu().numpy().astype(np.float64))
    model_obs = batch.times.cpu().numpy().astype(np.float64)
    model_grid = grid.cpu().numpy().astype(np.float64)
    t_obs = [_to_user_times(time_transform, model_obs + s) for s in shift]
    t_grid = [_to_user_times(time_transform, model_grid + s) for s in shift]
    obs, enc = batch.mask.cpu().numpy(), batch.encoder_mask.cpu().numpy()
    tgt = batch.target_mask.cpu().numpy()
    n_series, n_ch = values.shape[0], min(dims, max_channels)
    height = 2.4 * n_series + 0.7
    fig, axes = plt.subplots(n_series, n_ch, figsize=(max(8.0, 5.0 * n_ch), height),
                             squeeze=False, sharex=batch.origin is None)
    lo, hi = np.percentile(paths_np, band, axis=0)
    centre = paths_np.mean(0)
    legend: dict[str, Any] = {}
    for b in range(n_series):
        # each series' curves over its own span, not over the longest series of the batch
        own = obs[b].any(-1)
        span = (slice(None) if not own.any() else
                (model_grid >= model_obs[own].min()) & (model_grid <= model_obs[own].max()))
        t_row = np.asarray(t_grid[b])[span]
        for d in range(n_ch):
            ax = axes[b, d]
            legend[f"{band[0]:g}-{band[1]:g}% of latent paths (no obs. noise)"] = ax.fill_between(
                t_row, lo[b, span, d], hi[b, span, d], color="C0", alpha=0.25, lw=0)
            (legend["mean prediction"],) = ax.plot(t_row, centre[b, span, d], color="C0",
                                                   lw=1.5)
            o, e, g = obs[b, :, d], enc[b, :, d], tgt[b, :, d]
            for label, sel, style in (
                ("observed, not scored", o & ~g, {"s": 8, "color": "0.6"}),
                ("target", g, {"s": 10, "color": "k"}),
                ("seen by encoder", e, {"s": 40, "facecolors": "none", "edgecolors": "C3",
                                        "linewidths": 1.0}),
            ):
                if sel.any():
                    legend[label] = ax.scatter(t_obs[b][sel], values[b, sel, d], **style)
            name = channels[d] if channels else f"channel {d}"
            ax.set_title(f"{titles[b]}: {name}" if titles else name, fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("time", fontsize=8)
    dated = n_series and np.issubdtype(np.asarray(t_grid[0]).dtype, np.datetime64)
    if n_series and not dated:  # numbers such as MJD 59012.5 in narrow axes: fewer, smaller
        for ax in axes.flat:
            ax.locator_params(axis="x", nbins=5)
            ax.tick_params(axis="x", labelsize=7)
    if dated:
        if batch.origin is None:
            fig.autofmt_xdate()  # dates on the shared axis: slanted and thinned, not overlapping
        else:  # every row its own dates (autofmt_xdate would hide all but the last row's)
            for ax in axes.flat:
                ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    fig.legend(list(legend.values()), list(legend), loc="upper center", ncol=3, fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.55 / height))
    return fig


def _windows_of_distinct_series(part: Any, count: int) -> np.ndarray:
    """``count`` windows (ids ``"<id>#<k>"``) from as many different series as there are: each
    series' fullest window first, so the plot is not four windows of one series."""
    sizes = np.diff(part.offsets)
    best: dict[str, int] = {}
    for i, key in enumerate(part.ids):
        parent = window_owner(key)
        if parent not in best or sizes[i] > sizes[best[parent]]:
            best[parent] = i
    first = list(best.values())[:count]
    rest = [i for i in range(len(part)) if i not in set(first)][: count - len(first)]
    return np.array(sorted(first) + rest, dtype=np.int64)


def plot_test_series(
    model: nn.Module,
    datamodule: Any,
    path: str | Path,
    n_series: int = 4,
    n_samples: int = 30,
    seed: int = 0,
) -> Path:
    """Plot the first ``n_series`` test series of ``datamodule`` with the masks its test loader
    gives them (the points the encoder saw in the test metrics).

    Returns the PNG's path. The model is put in eval mode for the prediction and restored.
    """
    if not getattr(datamodule, "splits", None):
        datamodule.setup("test")
    part = datamodule.splits["test"]
    if len(part) == 0:
        raise ValueError("plot_test_series: the test split has no series (data.test_fraction=0, "
                         "or fewer than 3 series in all); nothing to plot.")
    count = min(n_series, len(part))
    chosen = (_windows_of_distinct_series(part, count)
              if getattr(datamodule, "window", None) is not None else np.arange(count))
    origin = getattr(datamodule, "time_origin", "batch")
    if hasattr(datamodule, "seed"):  # the test loader's masks: fixed per series, any batch
        batch = Collator(part, datamodule.task, fixed=True, seed=datamodule.seed,
                         origin=origin)(chosen.tolist())
    else:
        batch = collate(part, chosen, datamodule.task, np.random.default_rng(seed), origin=origin)
    device = next(model.parameters()).device
    batch = batch.to(device)
    was_training = model.training
    model.eval()
    try:
        grid, paths = predict_paths(model, batch, n_samples=n_samples, seed=seed)
    finally:
        model.train(was_training)
    scaler = getattr(datamodule, "scaler", None)
    fig = plot_batch(
        batch, grid, paths,
        mean=None if scaler is None else scaler.mean,
        scale=None if scaler is None else scaler.scale,
        log=None if scaler is None else getattr(scaler, "log", None),
        time_transform=part.time_transform,
        channels=list(part.channels),
        titles=[f"series {part.ids[i]}" for i in chosen],
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
