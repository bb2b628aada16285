"""CUDA-graph benchmark: the encoder's training pass replayed from CUDA graphs against eager.

At the paper's hopper sizes a training step launches thousands of small kernels (the ODE-RNN
encoder's Euler step and gate MLPs at each of 100 time points, forward and backward), and a GPU
spends the step waiting for Python to launch them. ``model.encoder.cuda_graph=true`` records
the encoder's forward and backward once per batch shape and replays them. This script builds a
recipe (default ``experiment=hopper_interp`` on 300 trajectories), copies the model into an
eager and a graphed version with the same weights (for the paper code's cell also a version
whose graphs record the generic static walk instead of the one written for graphs,
``latentode/nn/mean_std_walk.py``, to show what that walk gains), and on the same batches,
alternating, times (1) the encoder's forward + backward (latent ODEs; the ODE-RNN baseline
graphs its whole walk and has no encoder), (2) a training step (the loss's forward +
backward) and (3) an evaluation step (the loss in eval mode under ``torch.inference_mode``,
as the per-epoch test pass runs it; graphed, the encoder's forward alone is replayed),
synchronising the GPU around each. It prints median milliseconds, the ratio graphed / eager,
the one-off recording cost, and how far the two versions' q(z0) and losses differ.

    python scripts/bench_cuda_graph.py                          # hopper_interp, latent ODE
    python scripts/bench_cuda_graph.py model=hopper_latent_ode_rnn
    python scripts/bench_cuda_graph.py model=hopper_odernn        # the ODE-RNN's whole walk
    python scripts/bench_cuda_graph.py experiment=periodic_interp --batches 4

Without a GPU it times the eager version only (graphs need CUDA).
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("overrides", nargs="*", help="train.yaml overrides")
    args = parser.parse_args(argv)
    overrides = ["experiment=hopper_interp", "data.dataset.n_trajectories=300", *args.overrides]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    setup_runtime(cfg)
    datamodule = build_datamodule(cfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    eager = build_model(cfg, datamodule).to(device).train()
    # the latent ODEs graph their encoder; the ODE-RNN baseline its whole walk
    graphable = getattr(eager, "encoder", eager)
    if not hasattr(graphable, "cuda_graph"):
        raise SystemExit(f"{type(eager).__name__} has no cuda_graph option")
    has_encoder = graphable is not eager
    graphable.cuda_graph = False
    models = {"eager": eager}
    if device.type == "cuda":
        if getattr(graphable, "_mean_std_walk", False):
            # the same graphs recorded from the generic static walk, for the comparison
            generic = copy.deepcopy(eager)
            walker = getattr(generic, "encoder", generic)
            walker.cuda_graph = True
            walker.__class__ = type("GenericWalk", (type(walker),), {"_mean_std_walk": False})
            models["generic"] = generic
        graphed = copy.deepcopy(eager)
        getattr(graphed, "encoder", graphed).cuda_graph = True
        models["graphed"] = graphed
    loader = datamodule.train_dataloader()
    batches = [b.to(device) for _, b in zip(range(args.batches), loader, strict=False)]

    def clock(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) * 1e3

    def encoder_pass(model, batch) -> None:
        if not has_encoder:
            return
        mean, std = model.encode(batch.times, batch.values, batch.encoder_mask)
        (mean.square().sum() + std.sum()).backward()
        model.zero_grad(set_to_none=True)

    def step(model, batch) -> None:
        model.loss(batch.times, batch.values, batch.encoder_mask, batch.target_mask
                   )["loss"].backward()
        model.zero_grad(set_to_none=True)

    def evaluate(model, batch) -> None:
        model.eval()
        with torch.inference_mode():
            model.loss(batch.times, batch.values, batch.encoder_mask, batch.target_mask)
        model.train()

    first_pass = encoder_pass if has_encoder else step  # the call that records the graph
    first = {name: clock(lambda m=m: first_pass(m, batches[0])) for name, m in models.items()}
    for batch in batches:  # warm-up (and every batch shape recorded)
        for model in models.values():
            encoder_pass(model, batch)
            step(model, batch)
            evaluate(model, batch)
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for batch in batches:
            for name, model in models.items():
                times.setdefault((name, "encoder"), []).append(
                    clock(lambda m=model, b=batch: encoder_pass(m, b)))
                times.setdefault((name, "step"), []).append(
                    clock(lambda m=model, b=batch: step(m, b)))
                times.setdefault((name, "eval"), []).append(
                    clock(lambda m=model, b=batch: evaluate(m, b)))
    median = {key: statistics.median(v) for key, v in times.items()}
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"{' '.join(overrides)}\ndevice {name}, torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}, batch {cfg.data.batch_size}, time points "
          f"{[len(b.times) for b in batches]}, {args.repeats} repeats x {len(batches)} batches")
    print(f"{'version':<9} {'encoder fwd+bwd ms':>19} {'step fwd+bwd ms':>16} "
          f"{'eval step ms':>13} {'first call ms':>14}")
    for label in models:
        enc = f"{median[(label, 'encoder')]:.1f}" if has_encoder else "-"
        print(f"{label:<9} {enc:>19} {median[(label, 'step')]:>16.1f} "
              f"{median[(label, 'eval')]:>13.1f} {first[label]:>14.0f}")
    if "graphed" in models:
        stp = median[("graphed", "step")] / median[("eager", "step")]
        enc = (f"encoder {median[('graphed', 'encoder')] / median[('eager', 'encoder')]:.2f}x, "
               if has_encoder else "")
        evl = median[("graphed", "eval")] / median[("eager", "eval")]
        print(f"graphed / eager: {enc}training step {stp:.2f}x, evaluation step {evl:.2f}x")
        if "generic" in models:
            ratio = {k: median[("graphed", k)] / median[("generic", k)]
                     for k in ("encoder", "step", "eval")}
            print(f"graph walk / generic walk, both graphed: encoder {ratio['encoder']:.2f}x, "
                  f"training step {ratio['step']:.2f}x, evaluation step {ratio['eval']:.2f}x")
        batch = batches[-1]
        if has_encoder:
            with torch.no_grad():
                a = models["eager"].encode(batch.times, batch.values, batch.encoder_mask)[0]
            b = models["graphed"].encode(batch.times, batch.values, batch.encoder_mask)[0]
            what = "q(z0) mean"
        else:
            with torch.no_grad():
                a = models["eager"](batch.times, batch.values, batch.encoder_mask).pred
            b = models["graphed"](batch.times, batch.values, batch.encoder_mask).pred
            what = "prediction"
        print(f"largest |{what}| difference graphed vs eager: "
              f"{float((a - b.detach()).abs().max()):.2e}")
    else:
        print("no CUDA device: the graphed version was not timed")


if __name__ == "__main__":
    main()
