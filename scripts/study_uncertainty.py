"""Per-point measurement uncertainties in the likelihood: does weighing noisy points less help?

    python scripts/study_uncertainty.py [--noise loguniform mixture equal] [--epochs 100]
        [--seeds 0 1 2] [--series 300] [--overrides KEY=VALUE ...]

Sines of random frequency (0.5-1.5 rad per unit), phase and amplitude (0.5-1.5), each series
observed at 30 random times in [0, 10]; every value carries its own Gaussian noise, of a std
known to the user and given beside it as ``y_err``:

- ``loguniform``: each point's std drawn log-uniformly from 0.02 to 1 (light curves, sensors
  whose precision varies);
- ``mixture``: 80% of the points at std 0.05, 20% at std 1 (a good instrument and a poor one,
  or points flagged as unreliable);
- ``equal``: every std 0.3 (the control: the uncertainties say nothing a per-channel noise
  level does not).

240 series train ``LatentODEForecaster.fit`` twice with one seed, once reading the
uncertainties (``uncertainty_cols={"y": "y_err"}``: each point weighs ``1 / (obs_std^2 +
err^2)`` relative to its series' others, ``model.error_weighting: relative``) and once without
(every point weighs the same). Of the other 60
series, one in five interior points is held out and predicted from the rest (``inside``), and
the last quarter of each series' span is forecast from the first three quarters (``ahead``).
Printed: the MSE of the predicted means against the noiseless sine at those times (not
against the noisy values, whose noise neither model can predict), per noise kind and seed,
and the ratio with / without. ``--overrides model.error_weighting=absolute`` weighs by the
variances themselves instead of relative to each other. Results: docs/results.md,
*Measurement uncertainties*.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

NOISES = ("loguniform", "mixture", "equal")


def sines(n: int, seed: int, noise: str, points: int = 30) -> pd.DataFrame:
    """Wide frame ``series_id, time, y, y_err, truth`` (``truth``: the noiseless sine)."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        t = np.sort(rng.uniform(0, 10, points))
        freq, phase, amp = rng.uniform(0.5, 1.5), rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 1.5)
        truth = amp * np.sin(freq * t + phase)
        if noise == "loguniform":
            err = np.exp(rng.uniform(np.log(0.02), np.log(1.0), points))
        elif noise == "mixture":
            err = np.where(rng.random(points) < 0.2, 1.0, 0.05)
        elif noise == "equal":
            err = np.full(points, 0.3)
        else:
            raise ValueError(f"noise must be one of {NOISES}, got {noise!r}")
        frames.append(pd.DataFrame({"series_id": i, "time": t, "y": truth + err * rng.normal(
            size=points), "y_err": err, "truth": truth}))
    return pd.concat(frames, ignore_index=True)


def holdouts(test: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, dict, pd.DataFrame, dict]:
    """(seen, asked) for interior points held out and for the last quarter forecast."""
    rng = np.random.default_rng(seed + 1000)
    hold = pd.Series(False, index=test.index)
    for _, group in test.groupby("series_id"):
        inner = group.index[1:-1]
        hold[rng.choice(inner, max(1, len(inner) // 5), replace=False)] = True
    start, end = test.groupby("series_id")["time"].transform("min"), test.groupby(
        "series_id")["time"].transform("max")
    late = test["time"] > start + 0.75 * (end - start)
    out = []
    for held in (hold, late):
        seen, asked = test[~held], test[held]
        out += [seen, asked]
    return out[0], out[1], out[2], out[3]


def mse_truth(forecaster, seen: pd.DataFrame, asked: pd.DataFrame, columns: list[str]) -> float:
    times = {s: g["time"].to_numpy() for s, g in asked.groupby("series_id")}
    pred = forecaster.predict(seen[columns], times, quantiles=None)
    got = asked.merge(pred, on=["series_id", "time"], how="left")
    if got["mean"].isna().any():
        raise RuntimeError("a held-out point has no prediction")
    return float(((got["mean"] - got["truth"]) ** 2).mean())


def study(noise: str, seed: int, n: int, epochs: int, overrides: list[str]) -> list[dict]:
    from latentode.forecast import LatentODEForecaster

    data = sines(n, seed, noise)
    cut = int(0.8 * n)
    train, test = data[data["series_id"] < cut], data[data["series_id"] >= cut]
    seen_in, asked_in, seen_end, asked_end = holdouts(test, seed)
    rows = []
    for weighted in (True, False):
        columns = ["series_id", "time", "y", *(["y_err"] if weighted else [])]
        start = time.perf_counter()
        forecaster = LatentODEForecaster([f"trainer.max_epochs={epochs}", f"seed={seed}",
                                          *overrides])
        forecaster.fit(train[columns], uncertainty_cols={"y": "y_err"} if weighted else None)
        fit = time.perf_counter() - start
        rows.append({"noise": noise, "seed": seed, "errors": "read" if weighted else "not read",
                     "fit s": fit,
                     "inside": mse_truth(forecaster, seen_in, asked_in, columns),
                     "ahead": mse_truth(forecaster, seen_end, asked_end, columns)})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--noise", nargs="+", default=list(NOISES), choices=NOISES)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--series", type=int, default=300)
    parser.add_argument("--overrides", nargs="*", default=[])
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    rows = [row for noise in args.noise for seed in args.seeds
            for row in study(noise, seed, args.series, args.epochs, args.overrides)]
    table = pd.DataFrame(rows)
    print(f"{args.epochs} epochs, {args.series} series (80% train), overrides "
          f"{args.overrides or 'none'}; MSE of the predicted mean against the noiseless sine")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    wide = table.pivot_table(index=["noise", "seed"], columns="errors",
                             values=["inside", "ahead"])
    ratios = pd.DataFrame({f"{part} {how}": wide[(part, how)] for part in ("inside", "ahead")
                           for how in ("read", "not read")})
    for part in ("inside", "ahead"):
        ratios[f"{part} ratio"] = ratios[f"{part} read"] / ratios[f"{part} not read"]
    print("\nwith / without the uncertainties (ratio below 1: reading them helped)")
    print(ratios.to_string(float_format=lambda v: f"{v:.3f}"))
    print(ratios.groupby("noise").mean().to_string(float_format=lambda v: f"{v:.3f}"))

if __name__ == "__main__":
    main()
