"""Data-parallel training: ``trainer=ddp`` (GPUs) and ``trainer=ddp_cpu`` (2 CPU processes, gloo).

Two processes with ``b`` series each per step must train exactly as one process with ``2 b``:

* the loaders (``SeriesSampler``) give the two processes, step by step, the two halves of the
  single process's batch, and every series its own training mask (seeded by the series and the
  epoch, not by the batch or the process); validation and test read every series once;
* DDP averages the processes' gradients, which equals the gradient of the single process's
  loss because the loss is a mean over series (``-bound.mean()``, plus the mean label loss);
* epoch metrics are sums and counts reduced over the processes, AUC/accuracy gathered.

The one draw the processes cannot share is the posterior noise (``torch.randn`` of the batch's
shape); the parity test's model draws it per series instead (``SeriesNoiseLatentODE``), and
everything runs in float64 with a fixed-step solver, so parity is exact up to rounding. The
optimiser is plain SGD: Adamax's per-parameter normalisation would hide gradients that are off
by a constant factor (e.g. averaged with a process that sent zeros).

Where a CUDA device exists the parity test runs on it too: two processes that share the one GPU
(two "nodes" of one device each, gloo all-reducing CUDA tensors; NCCL refuses two ranks on one
GPU) against one process on that GPU, and ``latentode-train trainer=ddp`` (NCCL) trains there.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir
from lightning.pytorch.strategies import DDPStrategy

from latentode.cli import config_dir
from latentode.data import Interpolation, LatentODEDataModule, load_dataset
from latentode.data.batch import Collator, stream_seed
from latentode.data.datamodule import SeriesSampler
from latentode.lit import LatentODELightning
from latentode.models import LatentODE
from latentode.models.latent_ode import LatentODEOutput
from latentode.nn import ODERNNEncoder

pytestmark = pytest.mark.filterwarnings("ignore:.*treespec, LeafSpec")

MODES = ("backprop", "adjoint", "checkpoint")
WORLD = 2
PER_PROCESS = 2  # series per process and step; the single process takes WORLD * PER_PROCESS
STAGES = {"train": 1, "val": 2, "test": 3}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# ------------------------------------------------------------------------------ the pieces
def _dataset():
    """16 periodic series on one grid (so a batch's union of times is the same in any split),
    with a binary label each; 8 train (2 global batches of 4), 5 val and 3 test (odd sizes)."""
    data = load_dataset("periodic", n_series=16, n_points=16, seed=3)
    labels = (np.arange(16) % 2).astype(np.float64)
    split = np.array(["train"] * 8 + ["val"] * 5 + ["test"] * 3)
    return dataclasses.replace(data, labels=labels, label_kind="series", split=split)


@dataclasses.dataclass(frozen=True)
class _LastPointSeen(Interpolation):
    """``Interpolation(count=6)`` whose encoder also sees each series' last point.

    The backward encoders start at the batch's last observation (README, *Models*), which is a
    property of the batch: with it on the grid's last time in every series, each process's
    half-batch starts where the whole batch does, so one process and two walk alike and the
    test isolates what it is about (synchronised gradients and metrics)."""

    def encoder_points(self, points, rng, transform=None):
        seen = super().encoder_points(points, rng, transform)
        last = np.append(points.starts[1:], len(seen)) - 1
        seen[last] |= points.observed[last].any(1)
        return seen


def _datamodule(batch_size: int) -> LatentODEDataModule:
    return LatentODEDataModule(_dataset(), task=_LastPointSeen(count=6), batch_size=batch_size,
                               train_seed=11, seed=5)


class SeriesNoiseLatentODE(LatentODE):
    """``LatentODE`` whose posterior noise is drawn per series (from the series' index, the stage
    and the epoch, which ``SeriesNoiseLightning`` sets) instead of one ``torch.randn`` for the
    batch: one and two processes then sample the same ``z0`` for a series. The rest is
    ``LatentODE.forward`` (no Poisson process; a label per series)."""

    noise_key: tuple[int, ...] = (0,)
    series: tuple[int, ...] = ()

    def forward(self, times, values, encoder_mask, n_samples=None, pred_times=None):
        mean, std = self.encode(times, values, encoder_mask)
        n = n_samples or self.n_samples
        assert len(self.series) == mean.shape[0]
        eps = torch.stack([
            torch.randn((n, mean.shape[-1]), dtype=mean.dtype,
                        generator=torch.Generator().manual_seed(stream_seed(*self.noise_key, i)))
            for i in self.series
        ], 1).to(mean.device)
        z0 = mean + std * eps
        z = self.latent_paths(z0, times if pred_times is None else pred_times)
        out = LatentODEOutput(self.decoder(z), mean, std)
        if self.classifier is not None:
            out.logits = self.classifier(z0)
        return out


class SeriesNoiseLightning(LatentODELightning):
    """Sets the model's noise key per batch; records the series and the gradients of each step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[list[int]] = []
        self.grads: list[dict[str, torch.Tensor]] = []

    def _terms(self, stage, batch, batch_idx, kl_weight, n_samples):
        self.model.series = tuple(batch.index.tolist())
        self.model.noise_key = (STAGES[stage], self.current_epoch)
        if stage == "train":
            self.seen.append(batch.index.tolist())
        return super()._terms(stage, batch, batch_idx, kl_weight, n_samples)

    def on_after_backward(self) -> None:  # after DDP's all-reduce
        self.grads.append({name: p.grad.detach().cpu().clone()
                           for name, p in self.named_parameters() if p.grad is not None})


def _module(gradient: str) -> SeriesNoiseLightning:
    torch.manual_seed(0)
    encoder = ODERNNEncoder(1, 3, hidden=6, ode_units=8, z0_units=8)
    model = SeriesNoiseLatentODE(
        1, latents=3, encoder=encoder, gen_units=8, obs_std=0.1, n_samples=2, n_labels=1,
        label_units=8, label_weight=1.0, solver={"method": "rk4", "gradient": gradient},
    )
    return SeriesNoiseLightning(
        model, optimizer=functools.partial(torch.optim.SGD, lr=2e-3), scheduler=None,
        kl_weight=1.0,
    )


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def _placement(accelerator: str, processes: int) -> dict:
    """Trainer placement: one process, ``trainer=ddp_cpu``'s two CPU processes, or on the GPU
    two processes sharing device 0 as two one-device nodes (gloo, which takes CUDA tensors)."""
    if processes == 1:
        return {"accelerator": accelerator, "devices": 1}
    if accelerator == "gpu":
        return {"accelerator": "gpu", "devices": 1, "num_nodes": processes,
                "strategy": DDPStrategy(process_group_backend="gloo")}
    config = _compose(["trainer=ddp_cpu"]).trainer
    placement = {k: config[k] for k in ("accelerator", "devices", "num_nodes", "strategy")}
    assert placement["devices"] == processes
    return placement


def _fit(gradient: str, processes: int, accelerator: str = "cpu") -> dict:
    """Train 2 epochs (4 steps) and test; what the parity test compares, from this process."""
    module = _module(gradient)
    initial = {k: v.detach().clone().double() for k, v in module.state_dict().items()}
    dm = _datamodule(PER_PROCESS * WORLD // processes)
    placement = _placement(accelerator, processes)
    trainer = L.Trainer(
        **placement, precision="64-true", max_epochs=2, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=dm)
    fitted = {k: float(v) for k, v in trainer.callback_metrics.items()}
    tested = trainer.test(module, datamodule=dm, verbose=False)[0]
    return {
        "initial": initial,
        "final": {k: v.detach().cpu().clone() for k, v in module.state_dict().items()},
        "grads": module.grads, "seen": module.seen, "metrics": {**fitted, **tested},
        "rank": trainer.global_rank, "world": trainer.world_size,
    }


def _worker(rank: int, port: int, out: str, accelerator: str = "cpu") -> None:
    """One of two processes started as torchrun would (Lightning's ``ddp`` then launches
    nothing and joins the group, as in the processes it starts itself): every gradient mode in
    turn, in one launch. On the GPU each process is a node of its own (see ``_placement``)."""
    local, node = (0, rank) if accelerator == "gpu" else (rank, 0)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD),
                      RANK=str(rank), LOCAL_RANK=str(local), NODE_RANK=str(node))
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")  # the parent's pytest filters do not reach this process
    results = {mode: _fit(mode, WORLD, accelerator) for mode in MODES}
    torch.save(results, Path(out) / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------ fixtures
def _launch(out: Path, accelerator: str) -> list[dict]:
    """Both processes' results of a 2-process DDP run of every gradient mode (one launch)."""
    mp.start_processes(_worker, args=(_free_port(), str(out), accelerator), nprocs=WORLD,
                       join=True, start_method="spawn")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _single(accelerator: str) -> dict[str, dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {mode: _fit(mode, 1, accelerator) for mode in MODES}
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory) -> list[dict]:
    return _launch(tmp_path_factory.mktemp("ddp"), "cpu")


@pytest.fixture(scope="module")
def single_runs() -> dict[str, dict]:
    return _single("cpu")


@pytest.fixture(scope="module")
def ddp_runs_gpu(tmp_path_factory) -> list[dict]:
    return _launch(tmp_path_factory.mktemp("ddp_gpu"), "gpu")


@pytest.fixture(scope="module")
def single_runs_gpu() -> dict[str, dict]:
    return _single("gpu")


# ------------------------------------------------------------------------------ parity
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("gradient", MODES)
def test_two_processes_train_as_one(gradient, ddp_runs, single_runs):
    _check_parity(gradient, single_runs[gradient], [run[gradient] for run in ddp_runs])


@cuda
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("gradient", MODES)
def test_two_processes_on_a_gpu_train_as_one(gradient, ddp_runs_gpu, single_runs_gpu):
    _check_parity(gradient, single_runs_gpu[gradient], [run[gradient] for run in ddp_runs_gpu])


def _check_parity(gradient: str, single: dict, ranks: list[dict]) -> None:
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world"] for r in ranks} == {WORLD}
    assert single["world"] == 1

    # the processes read disjoint halves of the single process's batches, step by step
    assert len(single["seen"]) == 4 and all(len(b) == WORLD * PER_PROCESS for b in single["seen"])
    for step, batch in enumerate(single["seen"]):
        halves = [r["seen"][step] for r in ranks]
        assert all(len(h) == PER_PROCESS for h in halves)
        assert sorted(halves[0] + halves[1]) == sorted(batch)

    # same start; gradients of every step synchronised (equal on both ranks) and equal to the
    # single process's; the ODE's own parameters get a real gradient in every mode
    for name, value in single["initial"].items():
        torch.testing.assert_close(ranks[0]["initial"][name], value, rtol=0, atol=0)
    assert len(single["grads"]) == 4
    for step, grads in enumerate(single["grads"]):
        field = [v for k, v in grads.items() if k.startswith("model.field.")]
        assert field and all(float(g.abs().max()) > 1e-6 for g in field), step
        assert set(grads) == set(ranks[0]["grads"][step]) == set(ranks[1]["grads"][step])
        for name, value in grads.items():
            for r in ranks:
                torch.testing.assert_close(r["grads"][step][name], value, rtol=1e-9,
                                           atol=1e-12, msg=f"{gradient} step {step} {name}")

    # the final parameters agree, and training moved them
    moved = 0.0
    for name, value in single["final"].items():
        for r in ranks:
            torch.testing.assert_close(r["final"][name], value, rtol=1e-9, atol=1e-12,
                                       msg=f"{gradient} {name}")
        moved = max(moved, float((value - single["initial"][name]).abs().max()))
    assert moved > 1e-4

    # metrics: epoch sums reduced over the processes (train, odd-sized val and test splits
    # without padding), labels gathered for AUC/accuracy; Lightning stores logged values in
    # float32, hence the tolerance (a series counted twice or missed would be far off)
    metrics = single["metrics"]
    for key in ("train/loss_epoch", "train/mse_epoch", "train/ce_epoch", "val/loss", "val/mse",
                "val/mse_unseen", "val/ce", "val/auc", "val/accuracy", "test/loss", "test/mse",
                "test/auc", "test/accuracy"):
        assert key in metrics, (key, sorted(metrics))
        for r in ranks:
            assert r["metrics"][key] == pytest.approx(metrics[key], rel=1e-6, abs=1e-9), key


# ------------------------------------------------------------------------------ loaders
def test_series_sampler_splits_the_global_batch():
    n, b = 11, 3
    one = list(SeriesSampler(n, 1, 0, shuffle=True, seed=4))
    parts = [list(SeriesSampler(n, WORLD, r, shuffle=True, seed=4)) for r in range(WORLD)]
    assert sorted(i for i, _ in one) == list(range(n)) and {e for _, e in one} == {0}
    assert len(parts[0]) == len(parts[1]) == 6  # padded to 12 by repeating a series
    assert sorted(i for p in parts for i, _ in p) == sorted([*range(n), one[0][0]])
    for k in range(2):  # global batch k of WORLD processes = batch k of one process
        merged = sorted(i for p in parts for i, _ in p[k * b : (k + 1) * b])
        alone = [i for i, _ in one[k * WORLD * b : (k + 1) * WORLD * b]]
        padding = [one[0][0]] if k == 1 else []  # the last global batch: 5 series + 1 repeat
        assert merged == sorted(alone + padding)
    # a new epoch, set by Lightning or not, reshuffles; set_epoch makes it reproducible
    sampler = SeriesSampler(n, 1, 0, shuffle=True, seed=4)
    first, second = list(sampler), list(sampler)
    assert first == one and {e for _, e in second} == {1} and second != first
    sampler.set_epoch(1)
    assert list(sampler) == second
    # evaluation: every series once over the processes, no padding
    evals = [list(SeriesSampler(n, WORLD, r)) for r in range(WORLD)]
    assert evals == [list(range(0, n, 2)), list(range(1, n, 2))]
    assert [len(SeriesSampler(n, WORLD, r)) for r in range(WORLD)] == [6, 5]


def test_masks_belong_to_series_not_batches():
    data = _dataset()
    task = Interpolation(count=6)
    for collator, items in ((Collator(data, task, fixed=True, seed=5), list(range(8))),
                            (Collator(data, task, seed=11), [(i, 3) for i in range(8)])):
        whole = collator(items)
        halves = [collator(items[0::2]), collator(items[1::2][::-1])]
        for half in halves:
            for row, index in enumerate(half.index.tolist()):
                assert torch.equal(half.encoder_mask[row], whole.encoder_mask[index])
    train = Collator(data, task, seed=11)
    assert not torch.equal(train([(i, 0) for i in range(8)]).encoder_mask,
                           train([(i, 1) for i in range(8)]).encoder_mask)  # fresh per epoch
    with pytest.raises(ValueError, match="mixes epochs"):
        train([(0, 0), (1, 1)])


def test_loader_workers_draw_what_the_main_process_draws():
    """The epoch reaches the masks through the sampler's keys, so worker processes (which keep
    their own copy of the collator) draw the same masks, epoch after epoch."""
    runs = []
    for workers in (0, 1):
        dm = _datamodule(3)
        dm.num_workers = workers
        loader = dm.train_dataloader()
        epochs = []
        for epoch in range(2):
            loader.sampler.set_epoch(epoch)
            epochs.append([(b.index, b.encoder_mask) for b in loader])
        runs.append(epochs)
    for main, worker in zip(runs[0], runs[1], strict=True):
        for (index, mask), (index_w, mask_w) in zip(main, worker, strict=True):
            assert torch.equal(index, index_w) and torch.equal(mask, mask_w)
    assert not torch.equal(runs[0][0][0][1], runs[0][1][0][1])  # fresh masks per epoch


def test_loaders_take_one_draw_of_the_global_stream_per_pass_with_or_without_workers():
    """Each loader iterator drew a worker base seed from the global stream, which the training
    posterior samples read next: one draw per epoch, or one per fit with persistent workers,
    so data.num_workers and runs in chunks changed the training (a review). Now one draw per
    pass either way, as without workers before (drawing none moved the quick start's default
    seed onto a stream that stays at the mean)."""
    states = []
    for workers in (0, 1):
        dm = _datamodule(3)
        dm.num_workers = workers
        torch.manual_seed(0)
        for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
            for _ in range(2):
                list(loader)
        states.append(torch.get_rng_state())
    torch.manual_seed(0)
    for _ in range(6):
        torch.empty((), dtype=torch.int64).random_()
    assert torch.equal(states[0], states[1]) and torch.equal(states[0], torch.get_rng_state())


def test_eval_split_smaller_than_the_processes_is_refused():
    dm = _datamodule(2)
    dm.setup()
    dm.splits["val"] = dm.splits["val"].subset(np.arange(1))
    dm._processes = lambda: (2, 1)  # as under a 2-process trainer
    with pytest.raises(ValueError, match="val split has 1 series for 2 processes"):
        dm.val_dataloader()


# ------------------------------------------------------------------------------ configs
def test_ddp_configs_compose():
    gpu = _compose(["trainer=ddp"]).trainer
    assert (gpu.accelerator, gpu.devices, gpu.strategy, gpu.sync_batchnorm) == (
        "gpu", "auto", "ddp", False)
    cpu = _compose(["trainer=ddp_cpu"]).trainer
    assert (cpu.accelerator, cpu.devices, cpu.strategy) == ("cpu", 2, "ddp")
    assert cpu.max_epochs == _compose([]).trainer.max_epochs  # the rest is trainer/default


def _train_cli(run: Path, *overrides: str) -> str:
    """Runs ``latentode-train`` on tiny data into ``run``; its output."""
    script = Path(sys.executable).parent / "latentode-train"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "latentode.cli.train"]
    tiny = ["trainer.max_epochs=1", "data.dataset.n_series=24", "data.dataset.n_points=30",
            "data.batch_size=4", "model.gen_units=8", "model.encoder.hidden=6",
            "model.encoder.z0_units=8", "plots.n_series=1", "plots.n_samples=2",
            "callbacks.progress_bar.refresh_rate=0", "trainer.log_every_n_steps=1", "solver=rk4",
            f"hydra.run.dir={run}"]
    result = subprocess.run([*command, *tiny, *overrides], capture_output=True, text=True,
                            timeout=300, cwd=run.parent)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    return output


def test_console_script_trains_with_ddp_cpu(tmp_path):
    """``latentode-train trainer=ddp_cpu``: Lightning re-runs the command for rank 1 in the same
    Hydra run directory; the two processes train and test together."""
    run = tmp_path / "run"
    output = _train_cli(run, "trainer=ddp_cpu")
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in output
    assert (run / ".hydra" / "config.yaml").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert not list(tmp_path.glob("outputs"))  # rank 1 wrote into the same run dir
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("train/loss_epoch") for r in rows) and any(r.get("val/mse") for r in rows)
    metrics = json.loads((run / "test_metrics.json").read_text())["metrics"]
    assert {"test/loss", "test/mse"} <= set(metrics)


@cuda
def test_console_script_trains_with_ddp_on_a_gpu(tmp_path):
    """``latentode-train trainer=ddp`` (NCCL) on one GPU trains as ``trainer=gpu`` does."""
    metrics = {}
    for name in ("gpu", "ddp"):
        run = tmp_path / name
        _train_cli(run, f"trainer={name}", "trainer.devices=1")
        metrics[name] = json.loads((run / "test_metrics.json").read_text())["metrics"]
        assert (run / "checkpoints" / "last.ckpt").is_file()
    for key, value in metrics["gpu"].items():
        assert np.isfinite(value), key
        assert metrics["ddp"][key] == pytest.approx(value, rel=1e-3, abs=1e-6), key


@pytest.mark.slow  # three DDP runs, ~33 s; the one-process resume is tested by default (test_cli)
def test_a_resumed_ddp_run_draws_what_the_run_would_have_drawn(tmp_path):
    """1 + 1 epochs equal 2 straight under ``trainer=ddp_cpu``: the checkpoint keeps each
    process's random stream (it kept rank 0's, which then reseeded every process from it)."""
    straight, chunked = tmp_path / "straight", tmp_path / "chunked"
    _train_cli(straight, "trainer=ddp_cpu", "trainer.max_epochs=2")
    for epochs in (1, 2):
        _train_cli(chunked, "trainer=ddp_cpu", "ckpt_path=last", f"trainer.max_epochs={epochs}")

    def losses(run: Path) -> list[str]:
        with open(run / "metrics.csv") as f:
            return [r["train/loss_epoch"] for r in csv.DictReader(f) if r.get("train/loss_epoch")]

    assert len(losses(straight)) == 2 and losses(chunked) == losses(straight)
    saved = torch.load(chunked / "checkpoints" / "last.ckpt", weights_only=False)
    ranks = saved["latentode_rng"]["ranks"]
    assert len(ranks) == 2 and not torch.equal(ranks[0]["torch"], ranks[1]["torch"])
