"""Offline study: a shrunk per-series factor on the in-series predictive noise.

    python scripts/study_series_noise.py --points 4-9 --seed 0 [--cal-draws 5] [--test-draws 4]
        [--models DIR] [--out DIR]

Fits (once; saved under ``--models``) the forecaster of scripts/study_impute.py on series
0-239 of oscillators(400, seed, points), 100 epochs, 4-8 minutes on one CPU thread.
Results: docs/results.md, *In-series noise: a factor per series*.
Calibration set: series 300-399, test set: series 240-299; held-out points by
study_impute.held_out (one in ten interior observations per series and channel, at least one),
several draws each (cal: held_out seeds 1000.., test: 123.. , 123 being study_impute's draw).

Per held-out point: the S=100 noiseless posterior paths (forecaster.sample(noise=False), the
same seeded paths as predict's), and for its (series, channel) the seen-point mean squared
residual m (posterior mean of the same paths at the seen times, conditioned on all seen points)
over n seen points. Factor g = (n m + kappa mbar) / ((n + kappa) mbar), mbar the channel's
median m over the calibration (series, channel) pairs. Predictive: (1/S) sum_s N(path_s,
sigma_c^2 g). sigma_c^2 = max(0, mean((r^2 - s^2) / g)) on the calibration points ("mm"), and
"mm+floor": max of that and the least sigma_c whose 90% intervals cover 0.9 of the calibration
points (as the forecaster's sigma_90 floor). Writes a CSV of rows per (variant, kappa, set).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import logsumexp, ndtr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_forecast_cut import oscillators, wide
from study_impute import held_out

S = 100
KAPPAS = [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, np.inf]
LOG2PI = np.log(2 * np.pi)


def gather(forecaster, part: pd.DataFrame, draw_seed: int, timings: dict) -> pd.DataFrame:
    """One row per held-out point: series, channel, y, paths (S,), n seen, m seen, and the
    forecaster's own predict quantiles."""
    hold = held_out(part, seed=draw_seed)
    seen, held = part[~hold], part[hold]
    asked_held = {s: np.unique(g["time"].to_numpy()) for s, g in held.groupby("series_id")}
    asked_seen = {s: np.unique(g["time"].to_numpy()) for s, g in seen.groupby("series_id")}
    t0 = time.process_time()
    pred = forecaster.predict(wide(seen), asked_held, quantiles=(0.05, 0.95))
    timings["predict_held"] = timings.get("predict_held", 0) + time.process_time() - t0
    t0 = time.process_time()
    pmean = forecaster.predict(wide(seen), asked_seen, quantiles=None)
    timings["predict_seen_mean"] = timings.get("predict_seen_mean", 0) + time.process_time() - t0
    asked_both = {s: np.union1d(asked_held.get(s, []), asked_seen.get(s, []))
                  for s in asked_seen}
    t0 = time.process_time()
    forecaster.predict(wide(seen), asked_both, quantiles=(0.05, 0.95))
    timings["predict_held+seen"] = timings.get("predict_held+seen", 0) + time.process_time() - t0
    t0 = time.process_time()
    smp = forecaster.sample(wide(seen), asked_held, num_samples=S, seed=0, noise=False)
    timings["sample_held"] = timings.get("sample_held", 0) + time.process_time() - t0
    # seen-point residuals
    sr = seen.merge(pmean, on=["series_id", "time", "channel"], how="left")
    if sr["mean"].isna().any():
        raise RuntimeError("seen point without prediction")
    sr["r2"] = (sr["value"] - sr["mean"]) ** 2
    stats = sr.groupby(["series_id", "channel"])["r2"].agg(["mean", "size"]).rename(
        columns={"mean": "m", "size": "n"}).reset_index()
    # paths at held-out points
    smp = smp.sort_values(["series_id", "time", "channel", "sample"])
    wide_paths = smp.pivot_table(index=["series_id", "time", "channel"], columns="sample",
                                 values="value").reset_index()
    got = held.merge(wide_paths, on=["series_id", "time", "channel"], how="left")
    got = got.merge(pred, on=["series_id", "time", "channel"], how="left")
    got = got.merge(stats, on=["series_id", "channel"], how="left")
    paths = got[list(range(S))].to_numpy()
    if np.isnan(paths).any() or got["mean"].isna().any():
        raise RuntimeError("held-out point without paths")
    out = got[["series_id", "time", "channel", "value", "mean", "q0.05", "q0.95", "n", "m"]].copy()
    out["draw"] = draw_seed
    out["paths"] = list(paths)
    # consistency: predict's mean vs the sampled paths' mean
    timings["max_mean_gap"] = max(timings.get("max_mean_gap", 0),
                                  float(np.abs(paths.mean(1) - out["mean"]).max()))
    return out


def fitted(where: Path, points: tuple[int, int], seed: int):
    """The study's forecaster: loaded from ``where``, else fitted (as study_impute.py fits
    its) and saved there."""
    import torch

    from latentode.forecast import LatentODEForecaster

    if (where / "weights.pt").exists():
        return LatentODEForecaster.load(where)
    torch.set_num_threads(1)
    data = oscillators(400, seed, points)
    forecaster = LatentODEForecaster(["trainer.max_epochs=100", f"seed={seed}"]).fit(
        wide(data[data["series_id"] < 240]))
    forecaster.save(where)
    return forecaster


def factor(n, m, mbar, kappa):
    if np.isinf(kappa):
        return np.ones_like(m)
    return (n * m + kappa * mbar) / ((n + kappa) * mbar)


def cdf(y, paths, sd):
    return ndtr((y[:, None] - paths) / sd[:, None]).mean(1)


def loglik(y, paths, sd):
    z = (y[:, None] - paths) / sd[:, None]
    return logsumexp(-0.5 * z**2, axis=1) - np.log(paths.shape[1]) - np.log(sd) - 0.5 * LOG2PI


def covered(y, paths, sd):
    f = cdf(y, paths, sd)
    return (f >= 0.05) & (f <= 0.95)


def width90(paths, sd):
    from latentode.forecast.quantiles import mixture_quantiles
    q = mixture_quantiles(paths.T[:, :, None], sd[:, None], (0.05, 0.95))
    return (q[1] - q[0])[:, 0]


def floor_scale(y, paths, sd_unit, sigma0):
    """Least sigma >= 0 with coverage >= 0.9 of the (1/S) sum N(path, sigma^2 g) intervals,
    sd_unit = sqrt(g); bisection (coverage is not monotone in general but nearly)."""
    lo, hi = 0.0, max(sigma0, 1e-3)
    while covered(y, paths, hi * sd_unit).mean() < 0.9 and hi < 1e3:
        hi *= 2
    if covered(y, paths, 1e-9 + 0 * sd_unit).mean() >= 0.9:
        return 0.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if covered(y, paths, mid * sd_unit).mean() >= 0.9:
            hi = mid
        else:
            lo = mid
    return hi


def arrays(df):
    return (df["value"].to_numpy(), np.stack(df["paths"].to_numpy()), df["n"].to_numpy(float),
            df["m"].to_numpy(float))


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--points", default="4-9")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cal-draws", type=int, default=5)
    p.add_argument("--test-draws", type=int, default=4)
    p.add_argument("--out", default="series_noise_results")
    p.add_argument("--models", default="series_noise_models")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    lo, hi = (int(v) for v in args.points.split("-"))
    f = fitted(Path(args.models) / f"p{lo}-{hi}_s{args.seed}", (lo, hi), args.seed)
    data = oscillators(400, args.seed, (lo, hi))
    cal_part = data[data["series_id"] >= 300]
    test_part = data[(data["series_id"] >= 240) & (data["series_id"] < 300)]
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    cache = out / f"gathered_p{args.points}_s{args.seed}.pkl"
    if cache.exists():
        cal, test, timings, tcal = pd.read_pickle(cache)
    else:
        timings: dict = {}
        cal = pd.concat([gather(f, cal_part, 1000 + d, timings) for d in range(args.cal_draws)],
                        ignore_index=True)
        tcal = dict(timings)
        test = pd.concat([gather(f, test_part, 123 + d, timings)
                          for d in range(args.test_draws)], ignore_index=True)
        pd.to_pickle((cal, test, timings, tcal), cache)
    # the forecaster's own validation series (fit: val_fraction=0.1 of the 240, seeded rng(0)),
    # held out the same way (draws 2000..): what an implementation in fit would calibrate on
    vcache = out / f"gathered_val_p{args.points}_s{args.seed}.pkl"
    if vcache.exists():
        val = pd.read_pickle(vcache)
    else:
        val_ids = np.sort(np.random.default_rng(0).permutation(240)[:24])
        val_part = data[data["series_id"].isin(val_ids)]
        val = pd.concat([gather(f, val_part, 2000 + d, {}) for d in range(args.cal_draws)],
                        ignore_index=True)
        pd.to_pickle(val, vcache)
    spec = f.spec
    own_sd = dict(zip(spec.channels, np.asarray(f.calibration.std) * np.asarray(spec.scale),
                      strict=True))
    base = {"points": args.points, "seed": args.seed}
    rows = own_rows(base, cal, test, own_sd)
    # calibration sets: all 100 series, and four disjoint sets of 24 (the forecaster's own
    # validation count at val_fraction=0.1 of 240 series)
    calsets = {"cal100": cal, "val24": val}
    for k in range(4):
        ids = range(300 + 24 * k, 300 + 24 * (k + 1))
        calsets[f"cal24_{k}"] = cal[cal["series_id"].isin(ids)].reset_index(drop=True)
    for calset, cal_sub in calsets.items():
        rows += evaluate({**base, "calset": calset}, cal_sub, test)
    res = pd.DataFrame(rows)
    res.to_csv(out / f"p{args.points}_s{args.seed}.csv", index=False)
    from scipy.stats import spearmanr
    t = test.assign(h2=(test["value"] - test["mean"]) ** 2).groupby(
        ["series_id", "channel"])[["m", "h2"]].mean()
    rho = spearmanr(t["m"], t["h2"]).correlation
    timings_test = {k: timings[k] - tcal.get(k, 0) for k in timings if k != "max_mean_gap"}
    print(f"points {args.points} seed {args.seed}: cal points {len(cal)}, test points "
          f"{len(test)}; own sigma {own_sd}")
    print(f"CPU s, cal ({args.cal_draws} draws x 100 series) {tcal}\n test ({args.test_draws} "
          f"draws x 60 series) {timings_test}; max |predict mean - paths mean| "
          f"{timings['max_mean_gap']:.2e}; spearman over test (series, channel) of seen m vs "
          f"mean held r^2 over draws: {rho:.3f}")
    r = res[(res["calset"].isin(["own", "cal100"])) & (res["variant"] != "mm+floor")]
    show = r[r["set"] == "test"][["calset", "variant", "kappa", "cover90", "width90", "loglik"]]
    calshow = r[r["set"] == "cal"][["calset", "variant", "kappa", "cover90", "loglik"]]
    print(show.merge(calshow, on=["calset", "variant", "kappa"], suffixes=("", "_cal")).to_string(
        index=False, float_format=lambda v: f"{v:.3f}"))


def test_extra(row, part, cov):
    for c in sorted(part["channel"].unique()):
        sel = (part["channel"] == c).to_numpy()
        row[f"cover90_{c}"] = cov[sel].mean()
    per = pd.Series(cov).groupby(part["draw"].to_numpy()).mean()
    row["cover90_draw_min"], row["cover90_draw_max"] = per.min(), per.max()


def own_rows(base, cal, test, own_sd):
    """(a): the forecaster's own predict intervals; its own sigma for the log-likelihood."""
    rows = []
    for setname, part in (("cal", cal), ("test", test)):
        y, paths, _, _ = arrays(part)
        sd = part["channel"].map(own_sd).to_numpy()
        cov_own = part["value"].between(part["q0.05"], part["q0.95"]).to_numpy()
        row = {**base, "calset": "own", "variant": "a_predict", "kappa": np.inf,
               "set": setname, "n_points": len(y), "cover90": cov_own.mean(),
               "loglik": loglik(y, paths, sd).mean(),
               "cover90_offline_same_sd": covered(y, paths, sd).mean(),
               **{f"sigma_{c}": v for c, v in own_sd.items()}}
        if setname == "test":
            row["width90"] = (part["q0.95"] - part["q0.05"]).mean()
            test_extra(row, part, cov_own)
        rows.append(row)
    return rows


def evaluate(base, cal, test):
    """(b)-(d): sigma_c (and mbar_c) from ``cal``, scored on ``cal`` and ``test``."""
    rows = []

    def score(name, kappa, setname, part, sd, extra):
        y, paths, _, _ = arrays(part)
        cov = covered(y, paths, sd)
        row = {**base, "variant": name, "kappa": kappa, "set": setname, "n_points": len(y),
               "cover90": cov.mean(), "loglik": loglik(y, paths, sd).mean(), **extra}
        if setname == "test":
            row["width90"] = width90(paths, sd).mean()
            test_extra(row, part, cov)
        rows.append(row)

    # mbar_c: median of m over the calibration (series, channel) pairs (one held-out point per
    # pair and draw at 4-8 points; pairs weighted by their held-out points otherwise)
    mbar = cal.groupby("channel")["m"].median().to_dict()
    for kappa in KAPPAS:
        g_cal = np.maximum(factor(cal["n"].to_numpy(float), cal["m"].to_numpy(float),
                                  cal["channel"].map(mbar).to_numpy(), kappa), 1e-6)
        g_test = np.maximum(factor(test["n"].to_numpy(float), test["m"].to_numpy(float),
                                   test["channel"].map(mbar).to_numpy(), kappa), 1e-6)
        sig_mm, sig_fl = {}, {}
        for c in sorted(cal["channel"].unique()):
            sel = (cal["channel"] == c).to_numpy()
            y, paths, _, _ = arrays(cal[sel])
            r2 = (y - paths.mean(1)) ** 2
            s2 = paths.var(1)
            sig_mm[c] = np.sqrt(max(0.0, np.mean((r2 - s2) / g_cal[sel])))
            sig_fl[c] = max(sig_mm[c], floor_scale(y, paths, np.sqrt(g_cal[sel]), sig_mm[c]))
        for name, sig in (("mm", sig_mm), ("mm+floor", sig_fl)):
            extra = {f"sigma_{c}": v for c, v in sig.items()}
            extra.update({f"mbar_{c}": v for c, v in mbar.items()})
            extra["g_test_p10"], extra["g_test_p50"], extra["g_test_p90"] = np.percentile(
                g_test, [10, 50, 90])
            sd_cal = np.sqrt(cal["channel"].map(sig).to_numpy() ** 2 * g_cal)
            sd_test = np.sqrt(test["channel"].map(sig).to_numpy() ** 2 * g_test)
            score(name, kappa, "cal", cal, sd_cal, extra)
            score(name, kappa, "test", test, sd_test, extra)
    return rows


if __name__ == "__main__":
    main()
