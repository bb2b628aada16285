"""How honest are forecast intervals for series cut early, midway and late?

    python scripts/study_forecast_cut.py [--seed 0] [--epochs 100] [--cuts 0.25 0.5 0.75]
        [--val-fraction 0.1] [--no-history-factor]

The predictive noise of forecasts (``latentode.forecast.calibration``) is calibrated on
validation series cut at random points between 20% and 80% of their spans, so its intervals
are right on average over where series are cut. This study asks whether they are right for a
given cut. Damped oscillators (two channels, ``x`` and ``v``, each observed at its own 25-44
random times in [0, 10], noise sd 0.1, frequency 1-2, damping 0.05-0.2, amplitude 0.5-1.5):
300 series, 240 given to ``LatentODEForecaster.fit`` (which holds 10% out for calibration),
the other 60 cut at each ``--cuts`` fraction of their spans and forecast over the next 2.5
time units with ``predict`` at the observed times. Printed per cut, pooled and per third of
the lead times: points, MSE, the MSE of two naive forecasts (the channel's last seen value,
the mean of its seen values), coverage of the central 90% and 50% intervals, the 90%
interval's mean width, and the width a Gaussian of the points' own MSE would need
(``2 * 1.645 * rmse``). Results: docs/results.md, *Forecast coverage by where the series is
cut*.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import pandas as pd

SPAN, NOISE, AHEAD = 10.0, 0.1, 2.5
LEVELS = (0.05, 0.25, 0.5, 0.75, 0.95)


def oscillators(n: int, seed: int, points: tuple[int, int] = (25, 45)) -> pd.DataFrame:
    """Tidy frame (series_id, time, channel, value) of ``n`` damped oscillators, each channel
    on its own random times (``points``: from ``points[0]`` to ``points[1] - 1`` of them)."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        omega, damping = rng.uniform(1.0, 2.0), rng.uniform(0.05, 0.2)
        amplitude, phase = rng.uniform(0.5, 1.5), rng.uniform(0, 2 * np.pi)
        for name, wave in (("x", np.cos), ("v", lambda a: -np.sin(a))):
            t = np.sort(rng.uniform(0, SPAN, int(rng.integers(*points))))
            clean = amplitude * np.exp(-damping * t) * wave(omega * t + phase)
            frames.append(pd.DataFrame({"series_id": i, "time": t, "channel": name,
                                        "value": clean + rng.normal(0, NOISE, len(t))}))
    return pd.concat(frames, ignore_index=True)


def wide(df: pd.DataFrame) -> pd.DataFrame:
    """One column per channel, NaN where a channel was not observed."""
    out = df.pivot_table(index=["series_id", "time"], columns="channel", values="value")
    return out.reset_index().rename_axis(columns=None)


def scores(points: pd.DataFrame) -> dict[str, float]:
    """MSE, 90% / 50% coverage and 90% widths of forecast points with their quantiles, and
    the MSE of the naive forecasts (``last``: the channel's last seen value, ``hmean``: the
    mean of its seen values) where the frame has them."""
    r = points["value"] - points["mean"]
    mse = float((r**2).mean())
    naive = {f"{name} mse": float(((points["value"] - points[name]) ** 2).mean())
             for name in ("last", "hmean") if name in points}
    return {
        "points": len(points), "mse": mse, **naive,
        "cover90": float(points["value"].between(points["q0.05"], points["q0.95"]).mean()),
        "cover50": float(points["value"].between(points["q0.25"], points["q0.75"]).mean()),
        "width90": float((points["q0.95"] - points["q0.05"]).mean()),
        "gauss90": 2 * 1.6449 * np.sqrt(mse),
    }


def forecast_at_cut(forecaster, test: pd.DataFrame, cut: float) -> pd.DataFrame:
    """Each test series cut at ``cut`` of its span: the forecast points of the next
    ``AHEAD`` time units with the predictions there, each point's lead past its channel's last
    observation and the naive forecasts (``last`` and ``hmean``, see :func:`scores`)."""
    span = test.groupby("series_id")["time"].agg(["min", "max"])
    at = test["series_id"].map(span["min"] + cut * (span["max"] - span["min"]))
    history = test[test["time"] <= at]
    future = test[(test["time"] > at) & (test["time"] <= at + AHEAD)]
    asked = {s: np.unique(g["time"].to_numpy()) for s, g in future.groupby("series_id")}
    pred = forecaster.predict(wide(history), asked, quantiles=LEVELS)
    out = future.merge(pred, on=["series_id", "time", "channel"], how="left")
    if out["mean"].isna().any():
        raise RuntimeError("a forecast point has no prediction")
    seen = history.sort_values("time").groupby(["series_id", "channel"])
    out = out.join(seen["time"].max().rename("last_time"), on=["series_id", "channel"])
    out = out.join(seen["value"].last().rename("last"), on=["series_id", "channel"])
    out = out.join(seen["value"].mean().rename("hmean"), on=["series_id", "channel"])
    out["lead"] = out["time"] - out["last_time"]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--series", type=int, default=300)
    parser.add_argument("--cuts", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="fit's val_fraction: the share of the fit series held out for "
                             "calibration")
    parser.add_argument("--no-history-factor", action="store_true",
                        help="also score the forecasts without the calibration's factor by "
                             "history length (one curve over lead time for every series)")
    parser.add_argument("--overrides", nargs="*", default=[],
                        help="more LatentODEForecaster config overrides (key=value)")
    args = parser.parse_args(argv)

    import torch

    from latentode.forecast import LatentODEForecaster

    torch.set_num_threads(1)
    data = oscillators(args.series, args.seed)
    fit_ids = int(0.8 * args.series)
    train, test = data[data["series_id"] < fit_ids], data[data["series_id"] >= fit_ids]
    start = time.perf_counter()
    forecaster = LatentODEForecaster([f"trainer.max_epochs={args.epochs}",
                                      f"seed={args.seed}", *args.overrides]
                                     ).fit(wide(train), val_fraction=args.val_fraction)
    calibration = forecaster.calibration
    print(f"fit: {time.perf_counter() - start:.0f} s, {fit_ids} series "
          f"({args.val_fraction:.0%} held out for calibration), {args.epochs} epochs, seed "
          f"{args.seed}; history factor {np.round(calibration.history_factor, 3).tolist()} "
          f"at {np.round(calibration.history_counts, 1).tolist()} times")
    variants = {"calibrated": calibration}
    if args.no_history_factor:
        variants["no history factor"] = dataclasses.replace(
            calibration, history_counts=[], history_factor=[])
    rows = []
    for variant, noise in variants.items():
        forecaster.calibration = noise
        for cut in args.cuts:
            points = forecast_at_cut(forecaster, test, cut)
            rows.append({"noise": variant, "cut": cut, "part": "all", **scores(points)})
            thirds = pd.qcut(points["lead"], 3, labels=["lead1/3", "lead2/3", "lead3/3"])
            for name, part in points.groupby(thirds, observed=True):
                rows.append({"noise": variant, "cut": cut, "part": str(name), **scores(part)})
    forecaster.calibration = calibration
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
