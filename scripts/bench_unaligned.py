"""Training step on unaligned series: decoding each series' own targets against the union.

    python scripts/bench_unaligned.py [--batch-sizes 16 64 256] [--points 50] [--repeats 7]

Series observed at their own times (ICU stays, sensors) make a batch whose union of times is
about ``batch`` times longer than one series. ``LatentODE.loss`` decodes such a batch at each
series' own target times when the batch is large enough to gain
(``latentode.models.latent_ode.PACK_RATIO``, ``PACK_MIN_CELLS``); before, it decoded the
whole union, a cost quadratic in the batch size. Both are forced and timed here in one run,
alternating, on the same batches: ``LatentODE.loss`` forward and backward (ODE-RNN encoder on
the series walk, as ``experiment=csv`` trains), one CPU thread, median of ``--repeats``, and
the packed run's terms checked against the union's. Printed: the union's length, ms per batch
each way, their ratio and which one ``LatentODE.loss`` takes by default.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pandas as pd
import torch

import latentode.models.latent_ode as latent_ode
from latentode.data import Collator, Interpolation, from_dataframe
from latentode.models import LatentODE
from latentode.nn import ODERNNEncoder

UNION = {"PACK_RATIO": 10**9, "PACK_MIN_CELLS": 0}  # no batch exceeds it: the whole union
PACKED = {"PACK_RATIO": 1, "PACK_MIN_CELLS": 0}  # every batch: each series' own targets


def unaligned(series: int, points: int, dims: int, seed: int = 0) -> pd.DataFrame:
    """Wide frame of ``series`` random-walk series, each at ``points`` random times in
    [0, 10], each channel 30% missing."""
    rng = np.random.default_rng(seed)
    frames = []
    for s in range(series):
        t = np.sort(rng.uniform(0, 10, points))
        values = np.cumsum(rng.normal(size=(points, dims)) * 0.3, axis=0)
        values[rng.random(values.shape) < 0.3] = np.nan
        values[:, 0] = np.where(np.isnan(values).all(1), 0.0, values[:, 0])  # a row each
        frame = pd.DataFrame(values, columns=[f"c{j}" for j in range(dims)])
        frames.append(frame.assign(series_id=s, time=t))
    return pd.concat(frames, ignore_index=True)


def step(model: LatentODE, batch, settings: dict[str, int]) -> tuple[float, dict[str, float]]:
    """Seconds of one loss forward and backward under ``settings`` (the module's thresholds),
    and its terms."""
    for name, value in settings.items():
        setattr(latent_ode, name, value)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    start = time.perf_counter()
    out = model.loss(batch.times, batch.values, batch.encoder_mask, batch.target_mask)
    out["loss"].backward()
    seconds = time.perf_counter() - start
    return seconds, {k: float(out[k].detach()) for k in ("loss", "mse")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--points", type=int, default=50)
    parser.add_argument("--dims", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    defaults = {name: getattr(latent_ode, name) for name in PACKED}
    ds = from_dataframe(unaligned(max(args.batch_sizes), args.points, args.dims),
                        time_scale=1.0)
    torch.manual_seed(0)
    encoder = ODERNNEncoder(args.dims, 10, hidden=20, ode_units=50, z0_units=50,
                            schedule="series")
    model = LatentODE(args.dims, latents=10, encoder=encoder, gen_units=100)
    collate = Collator(ds, Interpolation(fraction=0.5), fixed=True, seed=0, origin="series")
    rows = []
    try:
        for size in args.batch_sizes:
            batch = collate(list(range(size)))
            times: dict[str, list[float]] = {"packed": [], "union": []}
            terms = {}
            for repeat in range(args.repeats + 1):  # the first of each: warm-up, not timed
                for name, settings in (("packed", PACKED), ("union", UNION)):
                    seconds, terms[name] = step(model, batch, settings)
                    if repeat:
                        times[name].append(seconds)
            gap = max(abs(terms["packed"][k] - terms["union"][k]) /
                      max(abs(terms["union"][k]), 1e-30) for k in terms["union"])
            packed, union = (1e3 * statistics.median(times[r]) for r in ("packed", "union"))
            for name, value in defaults.items():
                setattr(latent_ode, name, value)
            chosen = model._packed_targets(batch.times, batch.target_mask) is not None
            rows.append({"batch": size, "union times": int(batch.times.shape[0]),
                         "packed ms": packed, "union ms": union, "ratio": packed / union,
                         "default": "packed" if chosen else "union", "terms rel. gap": gap})
    finally:
        for name, value in defaults.items():
            setattr(latent_ode, name, value)
    print(f"LatentODE.loss forward + backward, {args.points} points per series, {args.dims} "
          f"channels, one thread, median of {args.repeats}")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    main()
