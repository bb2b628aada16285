"""Forecaster throughput: series answered in batches against one at a time, in the same run.

    python scripts/bench_forecast.py [--series 300] [--batch-sizes 1 16 64 256] [--epochs 3]

Workload: ``--series`` irregular series on their own clocks (random starts over 1000 time
units), 40-400 observation times each (uniform on a span of 5-20 units), two channels, each
value 20% missing; a ``LatentODEForecaster`` fitted for ``--epochs`` epochs with its defaults
(the own-data recipe; batch 16) on those series, one thread. Then, for each batch size:
``predict(horizon=1.0, n=24, num_samples=100)`` (forecasts), ``impute(num_samples=100)`` (every
series at all its own times) and ``predict_proba``-free ``sample(n=24, num_samples=10)``.
Printed: wall time per series, the ratio to batch size 1 (the old one-at-a-time path) measured
in the same run, and how far the batched answers move from the one-at-a-time ones: the largest
change of the posterior mean, as a share of the median 90% predictive interval width.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd
import torch

from latentode import LatentODEForecaster


def make_series(n: int, seed: int = 0) -> pd.DataFrame:
    """The workload described in the module docstring (wide: id, time, x, y)."""
    rng = np.random.default_rng(seed)
    frames = []
    for s in range(n):
        k = int(rng.integers(40, 401))
        span = rng.uniform(5, 20)
        t = np.sort(rng.uniform(0, span, k)) + rng.uniform(0, 1000)
        f, phase = rng.uniform(0.2, 0.6), rng.uniform(0, 2 * np.pi)
        x = np.sin(2 * np.pi * f * t + phase) + 0.1 * rng.normal(size=k)
        y = np.cos(2 * np.pi * f * t + phase) + 0.1 * rng.normal(size=k)
        x[rng.random(k) < 0.2] = np.nan
        y[rng.random(k) < 0.2] = np.nan
        frames.append(pd.DataFrame({"series_id": f"m{s:04d}", "time": t, "x": x, "y": y}))
    return pd.concat(frames, ignore_index=True).dropna(subset=["x", "y"], how="all")


def timed(fn, *args, **kwargs) -> tuple[pd.DataFrame, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=300)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    df = make_series(args.series)
    n = df.series_id.nunique()
    print(f"{n} series, {len(df)} rows, {df.groupby('series_id').size().median():.0f} "
          f"times per series (median); fitting {args.epochs} epochs...", flush=True)
    fc, fit_s = timed(LatentODEForecaster({"trainer.max_epochs": args.epochs,
                                           "callbacks.progress_bar.refresh_rate": 0,
                                           "+trainer.enable_model_summary": False}).fit, df)
    print(f"fit: {fit_s:.1f} s", flush=True)
    tasks = {
        "predict (24 ahead, 100 samples)": lambda bs: fc.predict(
            df, horizon=1.0, n=24, num_samples=100, batch_size=bs),
        "impute (own times, 100 samples)": lambda bs: fc.impute(
            df, quantiles=[0.05, 0.95], num_samples=100, batch_size=bs),
        "sample (24 ahead, 10 paths)": lambda bs: fc.sample(
            df, horizon=1.0, n=24, num_samples=10, batch_size=bs),
    }
    sizes = sorted(set(args.batch_sizes) | {1})
    print("\n| task | batch_size | ms / series | vs batch_size 1 | max mean change "
          "/ median 90% width |\n|---|---|---|---|---|")
    for name, run in tasks.items():
        base, base_s = None, None
        for bs in sizes:
            out, secs = timed(run, bs)
            if bs == 1:
                base, base_s = out, secs
            change = "-"
            if base is not None and bs != 1:
                if name.startswith("impute"):
                    moved = np.nanmax(np.abs(out[["x", "y"]].to_numpy()
                                             - base[["x", "y"]].to_numpy()))
                    width = np.nanmedian(base["x_q0.95"] - base["x_q0.05"])
                elif name.startswith("predict"):
                    moved = np.abs(out["mean"] - base["mean"]).max()
                    width = (base["q0.95"] - base["q0.05"]).median()
                else:
                    moved = np.abs(out["value"] - base["value"]).max()
                    width = base.groupby(["series_id", "time", "channel"])["value"].agg(
                        lambda v: v.quantile(0.95) - v.quantile(0.05)).median()
                change = f"{moved / width:.1e}"
            ratio = f"{secs / base_s:.2f}x" if base_s else "-"
            print(f"| {name} | {bs} | {1000 * secs / n:.2f} | {ratio} | {change} |", flush=True)


if __name__ == "__main__":
    main()
