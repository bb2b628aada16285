"""Time the paper's own code (github.com/YuliaRubanova/latent_ode) per epoch, on our hopper data.

The reference for issue #7's speed comparison. We do not ship that code: point ``--paper-dir`` at
a checkout of it. The script

1. writes ``<paper-dir>/data/HopperPhysics/training.pt`` (the raw trajectories its
   ``mujoco_physics.HopperPhysics`` loads, a float32 tensor ``(n, 200, 14)``) from our generator
   (``latentode.data.sources.hopper``: same recipe and seed as the paper's, see that module) if
   the file is not there;
2. runs its ``run_models.py`` unmodified with the arguments after ``--``, timing each epoch's
   training (from the end of one test evaluation to the start of the next; the first epoch from
   the first training batch) and each evaluation, waiting for the GPU before each clock reading.
   Only two functions of its ``lib.utils`` are wrapped, for the clock: ``get_next_batch`` (to see
   the first batch) and ``compute_loss_all_batches`` (the per-epoch test evaluation).

The paper code picks ``cuda:0`` when a GPU is visible, else the CPU. Example (the latent ODE
of the hopper table, 10% observed, 2 epochs)::

    python scripts/bench_paper_code.py --paper-dir ../latent_ode --stop-after 2 -- -n 10000 \\
        -s 0.1 -l 15 --dataset hopper --latent-ode --rec-dims 30 --gru-units 100 --units 300 \\
        --gen-layers 3 --rec-layers 3 --random-seed 1

Compare with ``scripts/bench_training.py --protocol hopper_interp data.dataset.n_trajectories=
10000 seed=1 [trainer=gpu]`` (the same work in latentode).
"""

from __future__ import annotations

import argparse
import os
import runpy
import statistics
import sys
import time
from pathlib import Path

import torch

from latentode.utils.flops import CountFlops


def write_data(paper_dir: Path, n: int) -> Path:
    """The paper code's ``training.pt`` from our generator, unless it exists already."""
    path = paper_dir / "data" / "HopperPhysics" / "training.pt"
    if not path.exists():
        from latentode.data.sources import hopper

        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(torch.from_numpy(hopper.generate(n_trajectories=n)), path)
    return path


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StopRun(BaseException):
    """Raised after the last epoch to time: the paper code's loop runs ``niters`` epochs and
    then ``n_batches - 1`` more steps that no evaluation closes."""


class EpochClock:
    """Wraps the paper code's batch and evaluation functions to time its epochs."""

    def __init__(self, stop_after: int | None = None, count_flops: bool = False) -> None:
        self.stop_after = stop_after
        self.counter = CountFlops() if count_flops else None
        self.batches = 0  # training batches drawn before the first evaluation
        self.evaluating = False  # the evaluation draws its test batches through the same function
        self.last_end: float | None = None
        self.train: list[float] = []
        self.evals: list[float] = []
        self.mse: list[float] = []

    def wrap(self, utils) -> None:
        next_batch, evaluate = utils.get_next_batch, utils.compute_loss_all_batches

        def get_next_batch(*args, **kwargs):
            if self.last_end is None:
                _sync()
                self.last_end = time.perf_counter()
                if self.counter is not None:
                    self.counter.__enter__()
            if not self.evals and not self.evaluating:
                self.batches += 1
            return next_batch(*args, **kwargs)

        def compute_loss_all_batches(*args, **kwargs):
            if self.counter is not None and not self.evals:
                self.counter.__exit__(None, None, None)
                print(f"[flops] first epoch: {self.counter.total / 1e9 / self.batches:.2f} GFLOP "
                      f"per training step (matrix products; {self.batches} steps; this epoch's "
                      f"time includes the counting)", flush=True)
            _sync()
            start = time.perf_counter()
            self.evaluating = True
            try:
                result = evaluate(*args, **kwargs)
            finally:
                self.evaluating = False
            _sync()
            end = time.perf_counter()
            self.train.append(start - self.last_end)
            self.evals.append(end - start)
            self.mse.append(float(result["mse"]))
            print(f"[clock] epoch {len(self.train)}: train {self.train[-1]:.2f} s, test "
                  f"evaluation {self.evals[-1]:.2f} s, test MSE {self.mse[-1]:.5f}", flush=True)
            self.last_end = end
            if self.stop_after and len(self.train) >= self.stop_after:
                raise StopRun
            return result

        utils.get_next_batch = get_next_batch
        utils.compute_loss_all_batches = compute_loss_all_batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paper-dir", type=Path, required=True,
                        help="a checkout of github.com/YuliaRubanova/latent_ode")
    parser.add_argument("--n-data", type=int, default=10_000,
                        help="trajectories written to training.pt (the paper's 10,000)")
    parser.add_argument("--stop-after", type=int, default=None,
                        help="end the run after this many epochs (each closed by its test)")
    parser.add_argument("args", nargs=argparse.REMAINDER,
                        help="-- then run_models.py's arguments")
    parser.add_argument("--count-flops", action="store_true",
                        help="count the first epoch's matrix-product FLOPs per training step")
    args = parser.parse_args()
    paper_dir = args.paper_dir.resolve()
    if not (paper_dir / "run_models.py").is_file():
        parser.error(f"{paper_dir} has no run_models.py: point --paper-dir at a checkout of "
                     "github.com/YuliaRubanova/latent_ode")
    run_args = args.args[1:] if args.args[:1] == ["--"] else args.args
    print(f"data: {write_data(paper_dir, args.n_data)}")

    os.chdir(paper_dir)
    sys.path.insert(0, str(paper_dir))
    import lib.utils  # the paper code's package, from --paper-dir

    clock = EpochClock(args.stop_after, args.count_flops)
    clock.wrap(lib.utils)
    sys.argv = ["run_models.py", *run_args]
    gpu = torch.cuda.is_available()
    print(f"device: {'cuda:0 ' + torch.cuda.get_device_name(0) if gpu else 'cpu'}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    try:
        runpy.run_path("run_models.py", run_name="__main__")
    except StopRun:
        print(f"[clock] stopped after epoch {len(clock.train)} (--stop-after)")
    if clock.train:
        print(f"\npaper code: training time per epoch (median of {len(clock.train)}, evaluations "
              f"excluded): {statistics.median(clock.train):.2f} s (each: "
              f"{' '.join(f'{t:.2f}' for t in clock.train)}); test MSE after epoch "
              f"{len(clock.mse)}: {clock.mse[-1]:.5f}")


if __name__ == "__main__":
    main()
