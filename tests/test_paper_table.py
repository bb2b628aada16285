"""The paper's hopper table: model presets (conf/model/hopper_*.yaml) on both hopper experiments,
the extrapolation's observed share (Extrapolation.subsample), and scripts/paper_table.py (the
commands it prints compose; the collector on a synthetic tree and on a real tiny sweep)."""

from __future__ import annotations

import csv
import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict
from scripts_loader import load_script
from test_cli import CONF, compose_train

from latentode.data import Extrapolation
from latentode.data.tasks import Points

pytestmark = pytest.mark.filterwarnings("ignore:.*treespec, LeafSpec")

PRESETS = ["hopper_latent_ode", "hopper_latent_ode_rnn", "hopper_odernn", "hopper_rnn_vae",
           "hopper_gru_dt"]
TASKS = ["hopper_interp", "hopper_extrap"]
CHANNELS = 14  # hopper: 7 qpos + 7 qvel


paper_table = load_script("paper_table")


def latentode_train(args: list[str], root: Path, timeout: int = 300
                    ) -> subprocess.CompletedProcess:
    """Run the ``latentode-train`` console script in ``root`` (outputs under it)."""
    script = Path(sys.executable).parent / "latentode-train"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "latentode.cli.train"]
    env = {**os.environ, "LATENTODE_ROOT": str(root)}
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=root)


def show(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def _paper_mlp_params(n_in: int, n_out: int, units: int, n_layers: int) -> int:
    """Parameters of the paper's ``utils.create_net(n_in, n_out, n_layers, units)``."""
    return (n_in + 1) * units + n_layers * (units + 1) * units + (units + 1) * n_out


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _gru_cell_params(n_in: int, hidden: int) -> int:
    return 3 * hidden * (n_in + hidden + 2)


# -- presets ------------------------------------------------------------------------------------

def test_presets_are_the_table_rows():
    assert sorted(p.stem for p in (CONF / "model").glob("hopper_*.yaml")) == sorted(PRESETS)
    assert list(paper_table.ROWS) == PRESETS


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes_with_the_experiment_and_builds_for_14_channels(preset, task):
    cfg = compose_train([f"experiment={task}", f"model={preset}", "observed_fraction=0.3"])
    assert cfg.task_name == task and cfg.trainer.max_epochs == paper_table.RECIPE_EPOCHS == 300
    assert cfg.model.latents == 15 and cfg.model.obs_std == 1e-3
    if task == "hopper_interp":
        assert cfg.data.task.fraction == 0.3
    else:
        assert cfg.data.task.subsample == 0.3 and cfg.data.task.count == 66
    with open_dict(cfg):
        cfg.model.input_dim = CHANNELS
    model = instantiate(cfg.model)  # an experiment key left under model: would fail here
    times = torch.linspace(0, 0.5, 12)
    values = torch.rand(3, 12, CHANNELS)
    seen = torch.zeros(3, 12, CHANNELS, dtype=torch.bool)
    seen[:, ::3] = True
    out = model.loss(times, values, seen, torch.ones_like(seen), kl_weight=1.0, n_samples=2)
    assert out["pred"].shape[-3:] == (3, 12, CHANNELS)
    assert math.isfinite(float(out["loss"].detach()))


def test_hopper_experiment_alone_is_the_latent_ode_preset():
    alone = compose_train(["experiment=hopper_interp"])
    explicit = compose_train(["experiment=hopper_interp", "model=hopper_latent_ode"])
    assert OmegaConf.to_container(alone) == OmegaConf.to_container(explicit)
    extrap = compose_train(["experiment=hopper_extrap"])
    assert extrap.observed_fraction is None and extrap.data.task.subsample is None
    assert OmegaConf.to_container(extrap.model) == OmegaConf.to_container(alone.model)


def _built(preset: str):
    cfg = compose_train(["experiment=hopper_interp", f"model={preset}"])
    with open_dict(cfg):
        cfg.model.input_dim = CHANNELS
    return instantiate(cfg.model)


def test_baseline_presets_have_the_paper_code_networks():
    """Parts built exactly as run_models.py builds them with the hopper flags."""
    # ODE-RNN: create_net(15, 15, n_layers=3, n_units=300); ODE_RNN's decoder 15 -> 100 -> 14
    odernn = _built("hopper_odernn")
    assert _count(odernn.ode) == _paper_mlp_params(15, 15, 300, n_layers=3)
    assert _count(odernn.out) == (15 + 1) * 100 + (100 + 1) * CHANNELS
    # its GRU_unit (Encoder_z0_ODE_RNN's, n_gru_units=100) over [mean, std, data, mask]:
    # update and reset gates 58 -> 100 -> 15, new state 58 -> 100 -> 2 * 15
    gate = (2 * 15 + 2 * CHANNELS + 1) * 100 + (100 + 1) * 15
    assert odernn.std_state and _count(odernn.cell) == 2 * gate + gate + (100 + 1) * 15
    # GRU-dt (Classic_RNN): GRUCell(2 * 14 + 1, 15), decoder 15 -> 300 -> 14
    grudt = _built("hopper_gru_dt")
    assert _count(grudt.cell) == _gru_cell_params(2 * CHANNELS + 1, 15)
    assert _count(grudt.out) == (15 + 1) * 300 + (300 + 1) * CHANNELS
    # RNN-VAE: GRUCell(29, rec_dims 30), z0_net 30 -> 300 -> 2 * 15, decoder 15 -> 300 -> 14
    vae = _built("hopper_rnn_vae")
    assert _count(vae.encoder.cell) == _gru_cell_params(2 * CHANNELS + 1, 30)
    # + 1 input beside the state: the series' lead (lead_gap; the paper's RNN steps instead
    # through every point of the batch)
    assert _count(vae.encoder.to_z0) == (30 + 1 + 1) * 300 + (300 + 1) * 30
    assert _count(vae.out) == (15 + 1) * 300 + (300 + 1) * CHANNELS
    # Latent ODE, RNN encoder (Encoder_z0_RNN): GRU(29, 30), hiddens_to_z0 30 -> 50 -> 2 * 15
    rnn_enc = _built("hopper_latent_ode_rnn").encoder
    assert _count(rnn_enc.cell) == _gru_cell_params(2 * CHANNELS + 1, 30)
    assert _count(rnn_enc.to_z0) == (30 + 1 + 1) * 50 + (50 + 1) * 30  # + the lead


# -- the extrapolation's observed share --------------------------------------------------------

def _points(n_series: int = 4, length: int = 200) -> Points:
    rows = np.repeat(np.arange(n_series), length)
    starts = np.arange(n_series) * length
    times = np.tile(np.arange(length) / length, n_series)
    return Points(rows=rows, starts=starts, times=times,
                  observed=np.ones((n_series * length, CHANNELS), dtype=bool))


@pytest.mark.parametrize(("share", "kept"), [(0.1, 6), (0.2, 13), (0.3, 19), (0.5, 33),
                                             (1.0, 66)])
def test_extrapolation_subsample_keeps_the_paper_count_of_the_first_66(share, kept):
    """int(66 * s) of the first 66 points, as the paper's subsample_timepoints after
    split_data_extrap; the targets stay the 134 points after them."""
    pts = _points()
    task = Extrapolation(count=66, subsample=share)
    encoder = task.encoder_points(pts, np.random.default_rng(0))
    per_row = encoder.reshape(4, 200)
    assert (per_row.sum(1) == kept).all() and not per_row[:, 66:].any()
    targets = task.targets(pts, encoder).reshape(4, 200)
    assert not targets[:, :66].any() and targets[:, 66:].all()
    if share < 1:  # drawn per series and per batch
        assert len({tuple(np.flatnonzero(r)) for r in per_row}) > 1
        again = task.encoder_points(pts, np.random.default_rng(1))
        assert not np.array_equal(encoder, again)


def test_extrapolation_without_subsample_is_unchanged():
    pts = _points()
    full = Extrapolation(count=66)
    encoder = full.encoder_points(pts, np.random.default_rng(0)).reshape(4, 200)
    assert encoder[:, :66].all() and not encoder[:, 66:].any()
    assert np.array_equal(full.targets(pts, encoder.ravel()), ~encoder.ravel())


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"count": 66, "subsample": 0.0}, r"subsample must be in \(0, 1\]"),
    ({"count": 66, "subsample": 1.5}, r"subsample must be in \(0, 1\]"),
    ({"cut_time": 0.3, "subsample": 0.5}, "not cut_time"),
])
def test_extrapolation_subsample_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Extrapolation(**kwargs)


# -- commands -----------------------------------------------------------------------------------

def test_commands_take_the_fractions_to_run(capsys):
    assert paper_table.main(["commands", "--protocol", "reduced", "--fractions", "0.1,0.5",
                             "--models", "hopper_gru_dt", "--tasks", "hopper_interp"]) == 0
    (line, _collect) = capsys.readouterr().out.strip().splitlines()
    assert "observed_fraction=0.1,0.5" in shlex.split(line)
    assert "experiment=hopper_interp" in shlex.split(line)


@pytest.mark.parametrize("args, message", [
    (["--tasks", "interp"], "unknown task 'interp': the table's are hopper_interp, hopper_extrap"),
    (["--models", "hopper_ode"], "unknown model preset 'hopper_ode'"),
    (["--fractions", "10"], "observed fractions must lie in (0, 1], got [10.0]"),
])
def test_commands_refuse_what_the_table_has_not(args, message, capsys):
    # --tasks interp printed experiment=interp, a command that failed only when run
    with pytest.raises(SystemExit) as stop:
        paper_table.main(["commands", *args])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_commands_write_under_latentode_root(monkeypatch, tmp_path):
    """Sweeps go where every other run's outputs go: under $LATENTODE_ROOT when it is set."""
    monkeypatch.setenv("LATENTODE_ROOT", str(tmp_path))
    lines = paper_table.commands("reduced", presets=["hopper_gru_dt"], tasks=["hopper_interp"])
    sweep = [a for a in shlex.split(lines[0]) if a.startswith("hydra.sweep.dir=")]
    assert sweep == [f"hydra.sweep.dir={tmp_path}/outputs/paper_table/reduced/hopper_interp/"
                     "hopper_gru_dt"]
    assert shlex.split(lines[-1])[3] == f"{tmp_path}/outputs/paper_table/reduced"
    monkeypatch.delenv("LATENTODE_ROOT")
    assert "hydra.sweep.dir=outputs/paper_table/reduced/hopper_interp/hopper_gru_dt" in (
        shlex.split(paper_table.commands("reduced", presets=["hopper_gru_dt"],
                                         tasks=["hopper_interp"])[0]))


@pytest.mark.parametrize("protocol", ["full", "reduced"])
def test_printed_commands_compose(protocol, tmp_path):
    lines = paper_table.commands(protocol, root=str(tmp_path))
    assert len(lines) == len(PRESETS) * len(TASKS) + 1
    assert lines[-1].startswith("python scripts/paper_table.py collect")
    for line in lines[:-1]:
        args = shlex.split(line)
        assert args[:2] == ["latentode-train", "-m"]
        overrides = [a for a in args[2:] if not a.startswith("hydra.")]
        for key in paper_table.PROTOCOLS[protocol]:
            assert key in overrides
        assert "observed_fraction=0.1,0.2,0.3,0.5" in overrides and "seed=1,2,3" in overrides
        first = [a.split("=", 1)[0] + "=" + a.split("=", 1)[1].split(",")[0] for a in overrides]
        cfg = compose_train(first)
        assert cfg.model.latents == 15
        if protocol == "reduced":  # the README's reduced table: in the paper's units
            assert cfg.data.dataset.n_trajectories == 1000 and cfg.trainer.max_epochs == 40
            assert cfg.data.dataset.scale_trajectories == 10_000
            assert cfg.trainer.accelerator == "cpu"
        else:
            assert cfg.data.dataset.n_trajectories == 10_000 and cfg.trainer.max_epochs == 300
            assert cfg.trainer.accelerator == "gpu"
        graphed = protocol == "full" and cfg.model._target_ == "latentode.models.LatentODE"
        assert ("model.encoder.cuda_graph=true" in overrides) == graphed
        assert paper_table.protocol_of(overrides) == tuple(sorted(paper_table.PROTOCOLS[protocol]))


def test_protocol_keeps_what_changes_results():
    """Runs are pooled into a cell by their protocol: the weight average (``~callbacks.ema``)
    and the number of processes (the batch is per process) change results and were ignored;
    a repeated override counts once, as Hydra applies the last."""
    base = ["experiment=hopper_interp", "seed=1", "trainer.max_epochs=40"]
    same = [*base, "callbacks.progress_bar.refresh_rate=0", "trainer=gpu", "hydra.run.dir=x"]
    assert paper_table.protocol_of(same) == paper_table.protocol_of(base)
    for changed in ("~callbacks.ema", "trainer=ddp_cpu", "trainer.devices=4"):
        assert paper_table.protocol_of([*base, changed]) != paper_table.protocol_of(base)
    assert paper_table.protocol_of([*base, "trainer.max_epochs=40"]) == \
        paper_table.protocol_of(base)


# -- collector on a synthetic tree -------------------------------------------------------------

def _fake_run(path: Path, preset: str, task: str, fraction: float | None, seed: int,
              mse: float | None, extra: tuple[str, ...] = (), n_traj: int = 10_000,
              epochs: int | None = None) -> None:
    """A run dir as latentode-train -m leaves it (only the keys the collector reads)."""
    kind = task.removeprefix("hopper_")
    data_task = ({"_target_": "latentode.data.Interpolation", "fraction": "${observed_fraction}"}
                 if kind == "interp" else
                 {"_target_": "latentode.data.Extrapolation", "count": 66,
                  "subsample": "${observed_fraction}"})
    config = {"task_name": task, "seed": seed, "observed_fraction": fraction,
              "data": {"dataset": {"name": "hopper", "task": kind, "n_trajectories": n_traj},
                       "task": data_task},
              "trainer": {"max_epochs": 300},
              "paths": {"output_dir": "${hydra:runtime.output_dir}"}}
    hydra_dir = path / ".hydra"
    hydra_dir.mkdir(parents=True)
    (hydra_dir / "config.yaml").write_text(yaml.safe_dump(config))
    overrides = [f"experiment={task}", f"model={preset}", f"observed_fraction={fraction}",
                 f"seed={seed}", "trainer=gpu", "data.dataset.cache_dir=/x", *extra]
    (hydra_dir / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (hydra_dir / "hydra.yaml").write_text(yaml.safe_dump(
        {"hydra": {"runtime": {"choices": {"model": preset, "experiment": task}},
                   "sweep": {"subdir": "${latentode.job_num:${hydra.sweep.dir},0}"}}}))
    if mse is not None:
        record: dict = {"ckpt_path": None, "metrics": {"test/mse": mse, "test/loss": 1.0}}
        if epochs is not None:  # test_metrics.json written since 2026-12-05
            record.update(epochs=epochs, global_step=epochs * 160)
        (path / "test_metrics.json").write_text(json.dumps(record))


def test_collector_aggregates_seeds_on_a_synthetic_tree(tmp_path, capsys):
    root = tmp_path / "sweeps"
    for i, (seed, mse) in enumerate([(1, 0.003), (2, 0.004), (3, 0.005)]):
        _fake_run(root / "interp" / "lode" / str(i), "hopper_latent_ode", "hopper_interp", 0.1,
                  seed, mse)
    _fake_run(root / "interp" / "lode" / "3", "hopper_latent_ode", "hopper_interp", 0.1, 4,
              None)  # still running, or failed
    _fake_run(root / "extrap" / "gru" / "0", "hopper_gru_dt", "hopper_extrap", 0.5, 1, 0.07)
    _fake_run(root / "extrap" / "gru" / "1", "hopper_gru_dt", "hopper_extrap", 0.5, 2,
              float("nan"))
    _fake_run(root / "extrap" / "gru" / "2", "hopper_gru_dt", "hopper_extrap", 0.5, 1,
              None)  # an earlier failed try of seed 1: seed 1 has a finished run
    _fake_run(root / "extrap" / "lode_all" / "0", "hopper_latent_ode", "hopper_extrap", None, 1,
              0.01)  # observed_fraction null: all 66 points, an extra column
    reduced = ("data.dataset.n_trajectories=1000", "data.dataset.scale_trajectories=10000",
               "trainer.max_epochs=40")
    _fake_run(root / "reduced" / "0", "hopper_odernn", "hopper_interp", 0.2, 1, 0.02,
              extra=reduced, n_traj=1000)
    _fake_run(root / "reduced" / "1", "hopper_odernn", "hopper_interp", 0.2, 1, 0.04,
              extra=reduced, n_traj=1000)  # the same seed again: averaged, and said
    (root / "not_a_run").mkdir()

    csv_path, md_path = tmp_path / "table.csv", tmp_path / "table.md"
    assert paper_table.main(["collect", str(root), "--csv", str(csv_path),
                             "--markdown", str(md_path)]) == 0
    text = capsys.readouterr().out
    assert md_path.read_text().strip() == text.strip()
    full, red = text.split("### MuJoCo hopper, ")[1:]
    assert full.startswith("full protocol") and "10000 trajectories, 300 epochs" in full
    assert red.startswith("REDUCED protocol: data.dataset.n_trajectories=1000 "
                          "data.dataset.scale_trajectories=10000 trainer.max_epochs=40")

    def row(section: str, first: str, second: str) -> list[str]:
        for line in section.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells[:2] == [first, second]:
                return cells[2:]
        raise AssertionError(f"no row {first} {second} in\n{section}")

    header = row(full, "model", "")
    assert header[:8] == ["interp 10%", "interp 20%", "interp 30%", "interp 50%",
                          "extrap 10%", "extrap 20%", "extrap 30%", "extrap 50%"]
    assert header[8:] == ["extrap 100%"]
    # mean 0.4, sample std 0.1 (x 10^-2) over seeds 1-3; the unfinished run is counted apart
    ours = row(full, "`hopper_latent_ode`", "ours")
    assert ours[0] == "0.400 ± 0.100 (n=3, 1 unfinished)"
    assert ours[1:8] == ["—"] * 7 and ours[8] == "1.000 (n=1)"
    assert row(full, "Latent ODE (ODE-RNN enc.)", "paper")[:8] == [
        "0.360", "0.295", "0.300", "0.285", "1.441", "1.400", "1.175", "1.258"]
    assert row(full, "`hopper_gru_dt`", "ours")[7] == "7.000 (n=1, 1 non-finite)"
    assert row(full, "RNN dt (GRU-dt)", "paper")[7] == "30.571"
    assert row(full, "`hopper_odernn`", "ours") == ["—"] * 9
    assert row(red, "`hopper_odernn`", "ours")[1] == "3.000 ± 1.414 (n=2, seed 1 repeated)"

    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    cell = next(r for r in rows if r["protocol"] == "full" and r["preset"] == "hopper_latent_ode"
                and r["task"] == "hopper_interp" and r["observed_fraction"] == "0.1")
    assert float(cell["mse_mean_1e-2"]) == pytest.approx(0.4)
    assert float(cell["mse_std_1e-2"]) == pytest.approx(0.1)
    assert (cell["n"], cell["seeds"], cell["unfinished"], cell["paper_1e-2"]) == (
        "3", "1 2 3", "1", "0.36")
    assert len([r for r in rows if r["protocol"] == "full"]) == 5 * 9
    empty = next(r for r in rows if r["preset"] == "hopper_rnn_vae" and r["protocol"] == "full"
                 and r["task"] == "hopper_extrap" and r["observed_fraction"] == "0.2")
    assert (empty["n"], empty["mse_mean_1e-2"], empty["paper_1e-2"]) == ("0", "", "2.135")


def test_runs_resumed_in_chunks_are_filed_by_the_epochs_they_were_tested_at(tmp_path, capsys):
    root = tmp_path / "chunks"
    resume = "ckpt_path=/runs/x/checkpoints/last.ckpt"
    # a run trained 100 epochs, now running its next chunk (its config says 125)
    _fake_run(root / "a", "hopper_latent_ode", "hopper_interp", 0.1, 1, 0.003,
              extra=("trainer.max_epochs=125", resume), epochs=100)
    # a run whose last chunk ended the recipe's 300 epochs: the full protocol
    _fake_run(root / "b", "hopper_latent_ode", "hopper_extrap", 0.1, 1, 0.012,
              extra=("trainer.max_epochs=300", resume), epochs=300)
    # reduced runs: the same protocol whether or not their record has the epochs
    reduced = ("data.dataset.n_trajectories=1000", "data.dataset.scale_trajectories=10000",
               "trainer.max_epochs=40")
    _fake_run(root / "c", "hopper_odernn", "hopper_interp", 0.2, 1, 0.02, extra=reduced,
              n_traj=1000, epochs=40)
    _fake_run(root / "d", "hopper_odernn", "hopper_interp", 0.2, 2, 0.04, extra=reduced,
              n_traj=1000)
    runs = paper_table.find_runs([root])
    protocols = {run.path.name: run.protocol for run in runs}
    assert protocols == {"a": ("trainer.max_epochs=100",), "b": (),
                         "c": tuple(sorted(reduced)), "d": tuple(sorted(reduced))}
    assert paper_table.main(["collect", str(root)]) == 0
    text = capsys.readouterr().out
    titles = [line for line in text.splitlines() if line.startswith("### ")]
    assert len(titles) == 3
    assert any("full protocol STOPPED EARLY, 100 of 300 epochs" in t for t in titles)
    assert any("full protocol, the recipes as they are (10000 trajectories, 300 epochs)" in t
               for t in titles)


def test_per_run_csv_round_trips_and_adds_up_with_run_dirs(tmp_path, capsys):
    root, later = tmp_path / "session1", tmp_path / "session2"
    reduced = ("data.dataset.n_trajectories=1000", "data.dataset.scale_trajectories=10000",
               "trainer.max_epochs=40")
    for seed, mse in ((1, 0.02), (2, 0.03)):
        _fake_run(root / str(seed), "hopper_odernn", "hopper_interp", 0.2, seed, mse,
                  extra=reduced, n_traj=1000)
    _fake_run(root / "9", "hopper_odernn", "hopper_interp", 0.2, 9, None, extra=reduced,
              n_traj=1000)  # unfinished: not kept in the per-run CSV
    runs_csv = tmp_path / "kept" / "runs.csv"
    assert paper_table.main(["collect", str(root), "--runs-csv", str(runs_csv)]) == 0
    from_dirs = capsys.readouterr().out
    with runs_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["seed"], float(r["test_mse"])) for r in rows] == [("1", 0.02), ("2", 0.03)]
    assert json.loads(rows[0]["protocol"]) == sorted(reduced)

    paper_table.main(["collect", str(runs_csv)])
    assert capsys.readouterr().out == from_dirs.replace(" (n=2, 1 unfinished)", " (n=2)")
    # a later session's seed 3 adds up with the kept runs; the same run seen twice counts once
    _fake_run(later / "3", "hopper_odernn", "hopper_interp", 0.2, 3, 0.04, extra=reduced,
              n_traj=1000)
    paper_table.main(["collect", str(runs_csv), str(root), str(later)])
    text = capsys.readouterr().out
    assert "3.000 ± 1.000 (n=3, 1 unfinished)" in text
    assert "repeated" not in text

    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"not a per-run CSV.*no column"):
        paper_table.main(["collect", str(bad)])


# -- a real tiny sweep, collected ---------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:Total length of .DataLoader. across ranks is zero")
def test_tiny_hopper_sweep_is_collected(tmp_path, capsys):
    pytest.importorskip("dm_control")
    pytest.importorskip("mujoco")
    sweep = tmp_path / "paper_table" / "hopper_interp"
    result = latentode_train([
        "-m", "experiment=hopper_interp", "model=hopper_latent_ode,hopper_gru_dt",
        "observed_fraction=0.3", "seed=1,2",
        # 5 trajectories (4 train, 1 test), one batch of training, small networks
        "data.dataset.n_trajectories=5", f"data.dataset.cache_dir={tmp_path / 'cache'}",
        "data.dataset.progress=false", "data.batch_size=4", "trainer.fast_dev_run=true",
        "model.latents=4", "plots.n_series=0", "callbacks.progress_bar.refresh_rate=0",
        f"hydra.sweep.dir={sweep}",
    ], tmp_path, timeout=300)
    assert result.returncode == 0, show(result)
    assert len(list(sweep.glob("*/test_metrics.json"))) == 4

    paper_table.main(["collect", str(tmp_path / "paper_table"), "--csv",
                      str(tmp_path / "t.csv")])
    text = capsys.readouterr().out
    assert "MODIFIED protocol" in text and "data.dataset.n_trajectories=5" in text
    lines = {tuple(c.strip() for c in line.strip().strip("|").split("|")[:2]): line
             for line in text.splitlines() if line.startswith("|")}
    for preset, paper in (("hopper_latent_ode", "0.300"), ("hopper_gru_dt", "1.250")):
        ours = [c.strip() for c in lines[(f"`{preset}`", "ours")].strip("|").split("|")]
        assert ours[4].endswith("(n=2)") and ours[4] != "—", ours
        assert ours[2:4] + ours[5:] == ["—"] * 7
        label = paper_table.ROWS[preset]
        assert [c.strip() for c in lines[(label, "paper")].strip("|").split("|")][4] == paper
    assert lines[("`hopper_odernn`", "ours")].count("—") == 8


@pytest.mark.parametrize(("task", "seen", "scored"), [("hopper_interp", 30, 100),
                                                       ("hopper_extrap", 19, 134)])
def test_hopper_batches_follow_the_paper_protocol(task, seen, scored, tmp_path):
    """observed_fraction=0.3: the encoder sees 30 of 100 (interp) or int(66 * 0.3) = 19 of the
    first 66 (extrap) points per series; the scored targets are all 100 or the last 134."""
    pytest.importorskip("dm_control")
    pytest.importorskip("mujoco")
    from latentode.cli.train import build_datamodule

    cfg = compose_train([f"experiment={task}", "observed_fraction=0.3",
                         "data.dataset.n_trajectories=5", "data.batch_size=4",
                         f"data.dataset.cache_dir={tmp_path}", "data.dataset.progress=false"])
    datamodule = build_datamodule(cfg)
    datamodule.setup("test")
    for loader in (datamodule.train_dataloader(), datamodule.test_dataloader()):
        batch = next(iter(loader))
        assert (batch.encoder_mask.any(-1).sum(1) == seen).all()
        assert (batch.target_mask.any(-1).sum(1) == scored).all()
        if task == "hopper_extrap":
            assert not batch.encoder_mask[:, 66:].any() and not batch.target_mask[:, :66].any()


def test_reference_predictors_read_no_data(monkeypatch):
    from latentode.data.sources import hopper

    def fake_load(task, n_trajectories, cache_dir, progress, scale_trajectories=None):
        length = hopper.WINDOW if task == "interp" else hopper.N_STEPS
        level = {"train": [1.0, 3.0], "test": [5.0]}  # constant series; test one at 5
        rows = []
        for split, values in level.items():
            for v in values:
                ramp = np.linspace(0.0, 1.0, length)[:, None]  # the same ramp in every series
                block = pd.DataFrame(v + ramp * np.ones((1, len(hopper.CHANNELS))),
                                     columns=hopper.CHANNELS)
                block["split"] = split
                rows.append(block)
        return pd.concat(rows, ignore_index=True)

    monkeypatch.setattr(hopper, "load", fake_load)
    ref = paper_table.reference(3)
    # mean trajectory: 2 + ramp, test 5 + ramp: error 3 everywhere
    assert ref["hopper_interp mean trajectory"] == pytest.approx(9.0)
    assert ref["hopper_extrap mean trajectory"] == pytest.approx(9.0)
    # channel means over the scored steps: the ramp's own spread adds to the error
    scored = np.linspace(0.0, 1.0, hopper.N_STEPS)[hopper.ENCODER_STEPS_EXTRAP:]
    expected = ((3.0 + scored - scored.mean()) ** 2).mean()
    assert ref["hopper_extrap channel means"] == pytest.approx(expected)


def test_the_earlier_reduced_protocol_in_own_units_is_labelled_modified():
    """The reduced commands now run the README's table (paper units, scale_trajectories=10000);
    runs of the earlier reduced protocol (the data's own units) are not the same protocol."""
    earlier = ("data.dataset.n_trajectories=1000", "trainer.max_epochs=40")
    assert paper_table.protocol_title(earlier, []).startswith("MODIFIED protocol")
    assert paper_table.protocol_title(tuple(sorted(paper_table.PROTOCOLS["reduced"])),
                                      []).startswith("REDUCED protocol")
