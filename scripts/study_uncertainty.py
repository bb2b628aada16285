"""Per-point measurement uncertainties in the likelihood: does weighing noisy points less help?

    python scripts/study_uncertainty.py [--noise loguniform mixture equal] [--epochs 100]
        [--seeds 0 1 2] [--series 300] [--arms read weights "not read"]
        [--overrides KEY=VALUE ...]

Sines of random frequency (0.5-1.5 rad per unit), phase and amplitude (0.5-1.5), each series
observed at 30 random times in [0, 10]; every value carries its own Gaussian noise, of a std
known to the user and given beside it as ``y_err``:

- ``loguniform``: each point's std drawn log-uniformly from 0.02 to 1 (light curves, sensors
  whose precision varies);
- ``mixture``: 80% of the points at std 0.05, 20% at std 1 (a good instrument and a poor one,
  or points flagged as unreliable);
- ``equal``: every std 0.3 (the control: the uncertainties say nothing a per-channel noise
  level does not).

240 series train ``LatentODEForecaster.fit`` with one seed in up to three arms (``--arms``):

- ``read``: the uncertainties given (``uncertainty_cols={"y": "y_err"}``) and read both ways,
  as shipped: each point weighs ``1 / (obs_std^2 + err^2)`` relative to its series' others in
  the likelihood (``model.error_weighting: relative``), and the encoder reads each value with
  confidence ``1 / (1 + err^2)`` in model units (``model.encoder_error_scale: 1.0``) divided by
  its series' best, in training and in every forecast from a history that carries them;
- ``weights``: given, weighing the likelihood only (``model.encoder_error_scale=null``);
- ``not read``: not given (every point weighs the same, the encoder reads all alike).

Of the other 60 series, one in five interior points is held out and predicted from the rest
(``inside``), and the last quarter of each series' span is forecast from the first three
quarters (``ahead``), by the forecaster, from histories with their ``y_err`` where the arm
gives them. Printed: the MSE of the predicted means against the noiseless sine at those
times (not against the noisy values, whose noise no model can predict), per noise kind and
seed, and each arm's ratio to ``not read``. ``--overrides model.error_weighting=absolute``
weighs by the variances themselves instead of relative to each other. Results:
docs/results.md, *Measurement uncertainties*.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

NOISES = ("loguniform", "mixture", "equal")
ARMS = {"read": [], "weights": ["model.encoder_error_scale=null"], "not read": []}


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


def study(noise: str, seed: int, n: int, epochs: int, overrides: list[str],
          arms: list[str]) -> list[dict]:
    from latentode.forecast import LatentODEForecaster

    data = sines(n, seed, noise)
    cut = int(0.8 * n)
    train, test = data[data["series_id"] < cut], data[data["series_id"] >= cut]
    seen_in, asked_in, seen_end, asked_end = holdouts(test, seed)
    rows = []
    for arm in arms:
        given = arm != "not read"
        columns = ["series_id", "time", "y", *(["y_err"] if given else [])]
        start = time.perf_counter()
        forecaster = LatentODEForecaster([f"trainer.max_epochs={epochs}", f"seed={seed}",
                                          *ARMS[arm], *overrides])
        forecaster.fit(train[columns], uncertainty_cols={"y": "y_err"} if given else None)
        fit = time.perf_counter() - start
        rows.append({"noise": noise, "seed": seed, "errors": arm, "fit s": fit,
                     "inside": mse_truth(forecaster, seen_in, asked_in, columns),
                     "ahead": mse_truth(forecaster, seen_end, asked_end, columns)})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--noise", nargs="+", default=list(NOISES), choices=NOISES)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--series", type=int, default=300)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--overrides", nargs="*", default=[])
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    rows = [row for noise in args.noise for seed in args.seeds
            for row in study(noise, seed, args.series, args.epochs, args.overrides, args.arms)]
    table = pd.DataFrame(rows)
    print(f"{args.epochs} epochs, {args.series} series (80% train), overrides "
          f"{args.overrides or 'none'}; MSE of the predicted mean against the noiseless sine")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if "not read" not in args.arms or len(args.arms) < 2:
        return
    wide = table.pivot_table(index=["noise", "seed"], columns="errors",
                             values=["inside", "ahead"])
    ratios = pd.DataFrame({f"{part} {arm}": wide[(part, arm)] / wide[(part, "not read")]
                           for part in ("inside", "ahead") for arm in args.arms
                           if arm != "not read"})
    print("\neach arm / not read (below 1: reading the uncertainties helped)")
    print(ratios.to_string(float_format=lambda v: f"{v:.3f}"))
    print(ratios.groupby("noise").mean().to_string(float_format=lambda v: f"{v:.3f}"))

if __name__ == "__main__":
    main()
