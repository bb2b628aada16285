"""Encoder walk benchmark: the union walk against the per-series walk on unaligned series.

The ODE-RNN encoder's default walk (``model.encoder.schedule=union``, the paper code's) steps
every series of a batch through the batch's union of time points; ``schedule=series`` steps each
series through its own observations only. On data where every series has its own clock (ICU
records, sensors) the union is many times longer than one series. This script builds the default
recipe (``experiment=periodic_interp``'s data and model) on the periodic toy with one time grid
PER SERIES (``data.dataset.own_grids=true``; ``--resolution`` is the clock's tick), copies the
model into both walks with the same weights, and times a training step (forward + backward of
the loss, with the recipe's posterior samples: 3 for hopper) on the same batches, alternating the
two, one thread. It prints the walk lengths, the
median step times and their ratio, and the largest difference of the encoders' q(z0) means
(the walks differ only in the ODE's path before each series' last observation, see
latentode.nn.schedule).

    python scripts/bench_schedule.py                         # 1000 series, 100 points, tick 1e-3
    python scripts/bench_schedule.py --resolution 0.01 --repeats 11
    python scripts/bench_schedule.py --shared                # the paper's shared grid, for scale
    python scripts/bench_schedule.py --shared --max-step 0.01 experiment=hopper_interp \
        data.dataset.n_trajectories=1000                    # hopper: 10% of a shared grid
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from hydra import compose, initialize_config_dir

from latentode.cli import config_dir
from latentode.cli.train import build_datamodule, build_model, setup_runtime
from latentode.nn.schedule import series_plan


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=float, default=1e-3,
                        help="clock tick of the per-series grids on [0, 5]")
    parser.add_argument("--shared", action="store_true", help="the paper's one shared grid")
    parser.add_argument("--max-step", type=float, default=None,
                        help="the series walk's max_step (model time units)")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("overrides", nargs="*", help="more train.yaml overrides")
    args = parser.parse_args(argv)
    grid = [] if args.shared else ["data.dataset.own_grids=true",
                                   f"data.dataset.resolution={args.resolution}"]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*grid, *args.overrides])
    setup_runtime(cfg)
    datamodule = build_datamodule(cfg)
    union = build_model(cfg, datamodule)
    series = copy.deepcopy(union)
    series.encoder.schedule, series.encoder.max_step = "series", args.max_step
    loader = datamodule.train_dataloader()
    batches = [b for _, b in zip(range(args.batches), loader, strict=False)]

    def step(model, batch) -> float:
        start = time.perf_counter()
        out = model.loss(batch.times, batch.values, batch.encoder_mask, batch.target_mask)
        out["loss"].backward()
        return time.perf_counter() - start

    times = {"union": [], "series": []}
    for batch in batches:  # warm-up, and the encoders' agreement
        step(union, batch), step(series, batch)
    for _ in range(args.repeats):
        for batch in batches:
            times["union"].append(step(union, batch))
            times["series"].append(step(series, batch))
    lengths = [(len(b.times), series_plan(b.times, b.encoder_mask.any(-1), args.max_step).length)
               for b in batches]
    with torch.no_grad():
        diff = max(float((union.encode(b.times, b.values, b.encoder_mask)[0]
                          - series.encode(b.times, b.values, b.encoder_mask)[0]).abs().max())
                   for b in batches)
    print(f"threads {torch.get_num_threads()}, batch {cfg.data.batch_size}, "
          f"{'shared grid' if args.shared else f'own grids, tick {args.resolution:g}'}")
    print(f"walk length per batch: union {statistics.mean(u for u, _ in lengths):.0f}, "
          f"series {statistics.mean(s for _, s in lengths):.0f}")
    u, s = statistics.median(times["union"]), statistics.median(times["series"])
    print(f"{'walk':<8} {'step ms (median)':>17}")
    print(f"{'union':<8} {1e3 * u:>17.1f}")
    print(f"{'series':<8} {1e3 * s:>17.1f}")
    print(f"series / union: {s / u:.3f}; largest |q(z0) mean difference| {diff:.2e}")


if __name__ == "__main__":
    main()
