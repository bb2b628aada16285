"""How many held-out series does the predictive-noise calibration need?

    python scripts/study_calibration_series.py RUN_DIR [--draws 20] [--ks 1 2 3 5 10 20 50]

For a ``latentode-train`` run (its ``checkpoints/last.ckpt``), the noise is calibrated
(``calibrate_noise``) on ``k`` validation series drawn at random, ``--draws`` times per ``k``,
and each calibration is scored by the coverage of the central 90% interval on the held-out
points of the whole test split (``predictive_coverage``: the same sampled paths for every
draw, so draws differ by their noise only). The table gives, per ``k``, the mean coverage, its
10th percentile, its range, the share of draws below 0.80, and the spread of the calibrated
std relative to the one from all validation series. docs/results.md, *Calibration on few
series*, has two default runs' tables (where ``CALIBRATION_MIN_SERIES`` comes from).
"""

from __future__ import annotations

import argparse
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latentode.cli.runs import load_run
from latentode.cli.train import setup_runtime
from latentode.forecast.calibration import (
    calibrate_noise,
    calibration_batches,
    predictive_coverage,
)

SAMPLES, SEED, LEVEL = 100, 0, 0.9


def load_trained(run: Path) -> tuple[torch.nn.Module, Any]:
    """The run's trained model (eval mode) and its data module, rebuilt as latentode-eval
    rebuilds them (:func:`latentode.cli.runs.load_run`, with the run's threads and seed)."""
    loaded = load_run(run, use="the calibration study",
                      prepare=lambda cfg, _path: setup_runtime(cfg))
    return loaded.model.eval(), loaded.datamodule


def study(model: torch.nn.Module, datamodule: Any, ks: list[int], draws: int,
          seed: int = 0) -> tuple[dict[str, float], list[dict[str, float]]]:
    """``(all, rows)``: the calibration on every validation series and its test coverage, and
    one row per ``k`` (see the module docstring)."""
    val = datamodule.splits["val"]
    batches, _ = calibration_batches(datamodule, "val")
    full = calibrate_noise(model, batches, SAMPLES, SEED, split="val")
    rng = np.random.default_rng(seed)
    stds: dict[tuple[int, int], list[float]] = {}
    for k in ks:
        if k > len(val):
            raise ValueError(f"k={k} but the run has {len(val)} validation series.")
        for d in range(draws):
            idx = np.sort(rng.choice(len(val), size=k, replace=False))
            part = types.SimpleNamespace(  # what calibration_batches reads of a data module
                splits={"val": val.subset(idx)}, task=datamodule.task, seed=datamodule.seed,
                time_origin=datamodule.time_origin, batch_size=datamodule.batch_size)
            cal_batches, _ = calibration_batches(part, "val")
            stds[(k, d)] = calibrate_noise(model, cal_batches, SAMPLES, SEED, split="val").std
    noises: dict[str, Any] = {"all": full.std}
    noises.update({f"{k}/{d}": std for (k, d), std in stds.items()})
    coverage = predictive_coverage(model, datamodule.test_dataloader(), noises, LEVEL, SAMPLES,
                                   SEED)
    rows = []
    for k in ks:
        c = np.array([coverage[f"{k}/{d}"] for d in range(draws)])
        s = np.array([stds[(k, d)][0] for d in range(draws)])
        rows.append({"k": k, "mean": float(c.mean()), "p10": float(np.quantile(c, 0.1)),
                     "min": float(c.min()), "max": float(c.max()),
                     "below_0.80": float((c < 0.80).mean()),
                     "std_spread": float(s.std() / full.std[0])})
    return {"series": len(val), "coverage": float(coverage["all"])}, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a latentode-train run directory (or checkpoint)")
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3, 5, 10, 20, 50])
    args = parser.parse_args()
    model, datamodule = load_trained(args.run)
    everything, rows = study(model, datamodule, args.ks, args.draws)
    print(f"| k series | coverage {LEVEL:g}, mean | 10th percentile | min - max | draws below "
          "0.80 | calibrated std's spread (x all) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['k']} | {r['mean']:.3f} | {r['p10']:.3f} | {r['min']:.2f}-{r['max']:.2f} | "
              f"{100 * r['below_0.80']:.0f}% | {r['std_spread']:.2f} |")
    print(f"| all {everything['series']} | {everything['coverage']:.3f} | | | | |")


if __name__ == "__main__":
    main()
