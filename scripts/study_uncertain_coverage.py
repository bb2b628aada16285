"""Intervals with measurement uncertainties: do they cover the quantity, and each measurement?

    python scripts/study_uncertain_coverage.py [--noise mixture loguniform] [--epochs 100]
        [--seeds 0 1] [--series 300] [--level 0.9]

The data of ``scripts/study_uncertainty.py`` (noisy sines whose every value carries its own
known std ``y_err``): 240 series train ``LatentODEForecaster.fit(uncertainty_cols={"y":
"y_err"})``; of the other 60, one in five interior points is held out and predicted from the
rest (``inside``) and the last quarter of each span is forecast (``ahead``). Printed per noise
kind and seed, for both:

- ``truth``: the share of the noiseless sine's values inside ``predict``'s central ``level``
  intervals (what a user reading the intervals as "where the quantity is" expects: ``level``);
- ``precise`` / ``poor``: the share of the held-out *measurements* inside their own interval,
  for the points whose ``y_err`` is below / above the median; with the noise calibrated without
  the known measurement noise (latentode after 2409334) a measurement's interval is the
  mixture with its own ``y_err^2`` added, as ``score`` scores it; before, ``predict``'s
  interval was the only one (its noise held the uncertainties on average);
- ``width``: mean width of ``predict``'s interval.

Results: docs/results.md, *Measurement uncertainties: calibrated intervals*.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_uncertainty import holdouts, sines


def coverage(forecaster, seen: pd.DataFrame, asked: pd.DataFrame, level: float) -> dict:
    """The shares above for the held-out rows ``asked`` predicted from ``seen``."""
    from latentode.forecast import scoring
    from latentode.forecast.spec import quantile_name

    columns = ["series_id", "time", "y", "y_err"]
    times = {s: g["time"].to_numpy() for s, g in asked.groupby("series_id")}
    low, high = (1 - level) / 2, (1 + level) / 2
    truth = asked.reset_index(drop=True).rename(columns={"y": "value", "y_err": "error"})
    truth["channel"] = "y"
    own = None
    if getattr(scoring, "observed_with_errors", lambda f: False)(forecaster):
        own = scoring._OwnIntervals(forecaster, truth, "channel", (low, high))
        pred = forecaster._predict(seen[columns], times, None, None, None, 100, (low, high), 0,
                                   True, 64, own.series)
    else:
        pred = forecaster.predict(seen[columns], times, quantiles=(low, high))
    got = truth.merge(pred, on=["series_id", "time"], how="left", validate="many_to_one")
    lo, hi = got[quantile_name(low)].to_numpy(), got[quantile_name(high)].to_numpy()
    if np.isnan(lo).any():
        raise RuntimeError("a held-out point has no prediction")
    o_lo, o_hi = (lo, hi) if own is None else (own.lo, own.hi)
    inside = (got["value"] >= o_lo) & (got["value"] <= o_hi)
    poor = got["error"].to_numpy() > np.median(got["error"])
    return {"truth": float(((got["truth"] >= lo) & (got["truth"] <= hi)).mean()),
            "precise": float(inside[~poor].mean()), "poor": float(inside[poor].mean()),
            "width": float((hi - lo).mean())}


def study(noise: str, seed: int, n: int, epochs: int, level: float) -> list[dict]:
    from latentode.forecast import LatentODEForecaster

    data = sines(n, seed, noise)
    cut = int(0.8 * n)
    train, test = data[data["series_id"] < cut], data[data["series_id"] >= cut]
    seen_in, asked_in, seen_end, asked_end = holdouts(test, seed)
    start = time.perf_counter()
    forecaster = LatentODEForecaster([f"trainer.max_epochs={epochs}", f"seed={seed}"])
    forecaster.fit(train[["series_id", "time", "y", "y_err"]], uncertainty_cols={"y": "y_err"})
    fit = time.perf_counter() - start
    rows = []
    for part, seen, asked in (("inside", seen_in, asked_in), ("ahead", seen_end, asked_end)):
        rows.append({"noise": noise, "seed": seed, "part": part, "fit s": fit,
                     **coverage(forecaster, seen, asked, level)})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--noise", nargs="+", default=["mixture", "loguniform"],
                        choices=["mixture", "loguniform", "equal"])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--series", type=int, default=300)
    parser.add_argument("--level", type=float, default=0.9)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    rows = [row for noise in args.noise for seed in args.seeds
            for row in study(noise, seed, args.series, args.epochs, args.level)]
    table = pd.DataFrame(rows)
    print(f"{args.epochs} epochs, {args.series} series (80% train), level {args.level}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("\nmean over seeds")
    print(table.groupby(["noise", "part"])[["truth", "precise", "poor", "width"]].mean()
          .to_string(float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
