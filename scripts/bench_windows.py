"""Whole series against windows: 6-hour forecasts of held-out sensors, trained both ways.

    python scripts/bench_windows.py [--epochs 100] [--seeds 1 2] [--csv sensors.csv]
        [--overrides KEY=VALUE ...]

Writes (or reads, with ``--csv``) a synthetic sensor table: 40 sensors installed at random
times over three months, each recording every 5-20 minutes for 2-5 days with occasional
outages of hours, three channels missing apart (temperature with a daily cycle of random level
and amplitude, humidity following it, vibration louder in working hours), ISO time stamps.
Eight sensors are held out: each is conditioned on all but its last 6 hours and forecast there.
Two ``LatentODEForecaster``s with the same settings are trained on the other 32, on whole series
and with ``data.window=24h``, per seed; the table gives the forecast MSE per channel in units
of the training data's standard deviation (1.0: no better than the channel's mean level), the
fit time, and the windows' MSE as a ratio of the whole series'.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

CHANNELS = ["temperature_c", "humidity_pct", "vibration_g"]


def make_sensors(n: int = 40, seed: int = 42) -> pd.DataFrame:
    """The synthetic sensor table described in the module docstring."""
    rng = np.random.default_rng(seed)
    frames = []
    for s in range(n):
        installed = (pd.Timestamp("2025-03-01") + pd.Timedelta(days=float(rng.uniform(0, 90)))
                     + pd.Timedelta(minutes=int(rng.integers(0, 1440))))
        hours, t, end = [], 0.0, rng.uniform(48, 120)
        while t < end:
            hours.append(t)
            t += rng.uniform(5, 20) / 60 + (rng.uniform(1, 6) if rng.random() < 0.01 else 0.0)
        stamps = installed + pd.to_timedelta(np.array(hours), unit="h")
        hod = np.asarray(stamps.hour + stamps.minute / 60, dtype=float)
        level, amplitude = rng.uniform(15, 25), rng.uniform(3, 8)
        temp = level + amplitude * np.sin(2 * np.pi * (hod - 9) / 24) + rng.normal(0, 0.3,
                                                                                   len(hod))
        hum = 60 - 2 * (temp - level) + rng.normal(0, 2, len(hod)) + rng.uniform(-10, 10)
        vib = np.abs(rng.normal(0.5, 0.1, len(hod))) * (1 + 0.5 * ((hod > 8) & (hod < 18)))
        for values, p in ((temp, 0.2), (hum, 0.3), (vib, 0.4)):
            values[rng.random(len(hod)) < p] = np.nan
        frames.append(pd.DataFrame({
            "sensor_id": f"sensor-{s:03d}", "timestamp": stamps.strftime("%Y-%m-%dT%H:%M:%S"),
            "temperature_c": temp.round(2), "humidity_pct": hum.round(1),
            "vibration_g": vib.round(3)}))
    return pd.concat(frames, ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--csv", type=Path, default=None, help="read this table instead")
    parser.add_argument("--overrides", nargs="*", default=[],
                        help="config overrides for both fits, e.g. data.task.extrapolation_share=0")
    args = parser.parse_args()
    from latentode import LatentODEForecaster

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    df = pd.read_csv(args.csv) if args.csv else make_sensors()
    df["timestamp"] = pd.to_datetime(df["timestamp"])
    ids = sorted(df.sensor_id.unique())
    held = set(np.random.default_rng(0).choice(ids, 8, replace=False).tolist())
    train, test = df[~df.sensor_id.isin(held)], df[df.sensor_id.isin(held)]
    cut = test.groupby("sensor_id").timestamp.transform("max") - pd.Timedelta(hours=6)
    history, future = test[test.timestamp <= cut], test[test.timestamp > cut]
    sd = train[CHANNELS].std()
    truth = future.set_index(["sensor_id", "timestamp"])[CHANNELS]
    times = {k: g.timestamp.to_numpy() for k, g in future.groupby("sensor_id")}
    rows = []
    for seed in args.seeds:
        for name, extra in (("whole series", {}), ("24 h windows", {"data.window": "24h"})):
            start = time.perf_counter()
            fc = LatentODEForecaster({"trainer.max_epochs": args.epochs, "data.batch_size": 8,
                                      "seed": seed, "callbacks.progress_bar.refresh_rate": 0,
                                      **extra, **dict(o.split("=", 1) for o in args.overrides)}
                                     ).fit(train, id_col="sensor_id",
                                                    time_col="timestamp")
            seconds = time.perf_counter() - start
            pred = fc.predict(history, times=times, num_samples=50)
            mean = pred.pivot_table(index=["sensor_id", "timestamp"], columns="channel",
                                    values="mean")
            err = ((mean[CHANNELS] - truth) / sd).pow(2)
            rows.append({"seed": seed, "training": name, "fit s": round(seconds),
                         "all": np.nanmean(err.to_numpy()),
                         **{c: np.nanmean(err[c]) for c in CHANNELS}})
    table = pd.DataFrame(rows)
    print(f"6-hour forecasts of {len(held)} held-out sensors, MSE in training std units, "
          f"{args.epochs} epochs, batch 8, one thread")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    means = table.groupby("training")[["all", *CHANNELS]].mean()
    ratio = means.loc["24 h windows"] / means.loc["whole series"]
    print("windows / whole series (mean over seeds): "
          + ", ".join(f"{k} {v:.2f}x" for k, v in ratio.items()))


if __name__ == "__main__":
    main()
