"""Collation benchmark: batches per second on one core, against a per-series Python loop.

Workload (issue #3): batches of 50 series drawn from 500, each 100 points x 14 channels, half
the channels missing at random,
interpolation task (half the time points shown to the encoder). Three time layouts, since the
union of a batch's times decides the batch size: a shared grid (union 100, as the paper's
periodic and hopper data), times on a 1000-point grid (union ~1000) and continuous random times
(union 5000). The baseline is a straightforward per-series loop doing the same work, timed in the
same run.

    python scripts/bench_data.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch

from latentode.data import Interpolation, collate, from_dataframe

N_SERIES, N_POINTS, N_CHANNELS, BATCH = 500, 100, 14, 50


def make_frame(layout: str, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    grid = np.sort(rng.uniform(0, 5, N_POINTS))
    frames = []
    for s in range(N_SERIES):
        if layout == "shared grid":
            t = grid
        elif layout == "1000-point grid":
            t = np.sort(rng.choice(1000, N_POINTS, replace=False)) / 200.0
        else:
            t = np.sort(rng.uniform(0, 5, N_POINTS))
        v = rng.normal(size=(N_POINTS, N_CHANNELS))
        v[rng.random(v.shape) < 0.5] = np.nan
        v[:, 0] = np.where(np.isnan(v).all(1), 0.0, v[:, 0])
        frame = pd.DataFrame(v, columns=[f"c{i}" for i in range(N_CHANNELS)])
        frame.insert(0, "time", t)
        frame.insert(0, "series_id", s)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def loop_collate(dataset, indices, rng) -> dict:
    """The obvious implementation: one series at a time."""
    series = [dataset.series(i) for i in indices]
    times = np.unique(np.concatenate([s["times"] for s in series]))
    values = np.zeros((len(series), len(times), dataset.n_channels), dtype=np.float32)
    mask = np.zeros(values.shape, dtype=bool)
    encoder = np.zeros(values.shape, dtype=bool)
    for b, s in enumerate(series):
        pos = np.searchsorted(times, s["times"])
        values[b, pos] = np.nan_to_num(s["values"])
        mask[b, pos] = s["mask"]
        observed = np.nonzero(s["mask"].any(1))[0]
        keep = rng.permutation(observed)[: max(1, round(0.5 * len(observed)))]
        encoder[b, pos[keep]] = s["mask"][keep]
    return {
        "times": torch.as_tensor(times), "values": torch.from_numpy(values),
        "mask": torch.from_numpy(mask), "encoder": torch.from_numpy(encoder),
    }


def rate(fn, seconds: float = 1.5) -> float:
    fn()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        count += 1
    return count / (time.perf_counter() - start)


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()  # --help
    torch.set_num_threads(1)
    task = Interpolation(fraction=0.5)
    print(f"{N_SERIES} series x {N_POINTS} points x {N_CHANNELS} channels, batch {BATCH}, 1 thread")
    print("\n| time layout | union T | latentode batches/s | per-series loop batches/s | ratio |")
    print("|---|---|---|---|---|")
    for layout in ("shared grid", "1000-point grid", "continuous"):
        print(measure(layout, task))


def measure(layout: str, task: Interpolation) -> str:
    dataset = from_dataframe(make_frame(layout))
    rng = np.random.default_rng(0)

    def pick() -> np.ndarray:
        return rng.choice(len(dataset), BATCH, replace=False)

    union = collate(dataset, pick()).times.shape[0]
    ours = rate(lambda: collate(dataset, pick(), task, rng))
    loop = rate(lambda: loop_collate(dataset, pick(), rng))
    return f"| {layout} | {union} | {ours:.0f} | {loop:.0f} | {ours / loop:.1f}x |"


if __name__ == "__main__":
    main()
