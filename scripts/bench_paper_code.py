"""Time the paper's own code (github.com/YuliaRubanova/latent_ode) per epoch, on our data.

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

With ``--physionet DIR`` (challenge-format records, e.g. written by
``scripts/make_icu_like.py``) the paper code reads those as its PhysioNet data instead, parsed by
its own code (run it with ``--dataset physionet``)::

    python scripts/bench_paper_code.py --paper-dir ../latent_ode --physionet data/icu_like \\
        --stop-after 2 -- -n 1000 -l 20 --dataset physionet --latent-ode --rec-dims 40 \\
        --rec-layers 3 --gen-layers 3 --units 50 --gru-units 50 --quantization 0.016

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


def write_physionet(paper_dir: Path, source: Path) -> Path:
    """The paper code's PhysioNet inputs from a challenge-format directory of ours.

    ``source/set-a/*.txt`` (all patients, e.g. from ``scripts/make_icu_like.py``) is split in
    record order into halves that become the paper code's set-a and set-b (it pools the two
    sets when it only reconstructs), packed as the archives its ``PhysioNet.download`` opens,
    beside ``Outcomes-a.txt``. Its processed cache is removed, so that its own code parses these
    files (``main`` makes its ``download_url`` a no-op: the files are there).
    """
    import shutil
    import tarfile

    records = sorted((source / "set-a").glob("*.txt"), key=lambda f: int(f.stem))
    if not records:
        raise FileNotFoundError(f"no records in {source / 'set-a'}")
    root = paper_dir / "data" / "physionet" / "PhysioNet"
    shutil.rmtree(root, ignore_errors=True)
    raw = root / "raw"
    raw.mkdir(parents=True)
    half = (len(records) + 1) // 2
    for letter, part in (("a", records[:half]), ("b", records[half:])):
        with tarfile.open(raw / f"set-{letter}.tar.gz?download", "w:gz") as tar:
            for record in part:
                tar.add(record, arcname=f"set-{letter}/{record.name}")
    shutil.copy(source / "Outcomes-a.txt", raw / "Outcomes-a.txt")
    return raw


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StopRun(BaseException):
    """Raised after the last epoch to time: the paper code's loop runs ``niters`` epochs and
    then ``n_batches - 1`` more steps that no evaluation closes."""


class EpochClock:
    """Wraps the paper code's batch and evaluation functions to time its epochs."""

    def __init__(self, stop_after: int | None = None, count_flops: bool = False,
                 log_batches: bool = False) -> None:
        self.stop_after = stop_after
        self.log_batches = log_batches  # print the time of each training batch (slow runs)
        self.batch_start: float | None = None
        self.batch_times: list[float] = []
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
            if self.log_batches and not self.evaluating:
                now = time.perf_counter()
                if self.batch_start is not None:
                    self.batch_times.append(now - self.batch_start)
                    print(f"[clock] batch {len(self.batch_times)}: {self.batch_times[-1]:.2f} s",
                          flush=True)
                self.batch_start = now
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
            if self.batch_start is not None:  # the epoch's last batch ends where its test starts
                self.batch_times.append(start - self.batch_start)
                print(f"[clock] batch {len(self.batch_times)}: {self.batch_times[-1]:.2f} s",
                      flush=True)
                self.batch_start = None
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
    parser.add_argument("--physionet", type=Path, default=None,
                        help="a challenge-format directory (set-a/, Outcomes-a.txt) to give the "
                             "paper code as its PhysioNet data (run with --dataset physionet)")
    parser.add_argument("--log-batches", action="store_true",
                        help="print each training batch's time (for epochs of many minutes)")
    parser.add_argument("--count-flops", action="store_true",
                        help="count the first epoch's matrix-product FLOPs per training step")
    args = parser.parse_args()
    paper_dir = args.paper_dir.resolve()
    if not (paper_dir / "run_models.py").is_file():
        parser.error(f"{paper_dir} has no run_models.py: point --paper-dir at a checkout of "
                     "github.com/YuliaRubanova/latent_ode")
    run_args = args.args[1:] if args.args[:1] == ["--"] else args.args
    if args.physionet is not None:
        print(f"data: {write_physionet(paper_dir, args.physionet.resolve())}")
    else:
        print(f"data: {write_data(paper_dir, args.n_data)}")

    os.chdir(paper_dir)
    sys.path.insert(0, str(paper_dir))
    import lib.utils  # the paper code's package, from --paper-dir

    if args.physionet is not None:
        import physionet  # the paper code's module: its archives are in place, nothing to fetch

        physionet.download_url = lambda *args, **kwargs: None
        # its processed files hold numpy arrays, which torch >= 2.6 refuses to load by default
        os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"

    clock = EpochClock(args.stop_after, args.count_flops, args.log_batches)
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
