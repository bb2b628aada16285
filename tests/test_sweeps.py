"""Sweeps (``latentode-train -m``): grid and Optuna searches, summary.csv, failed jobs, resumed
studies, launcher configs, seeds. The sweeps run the real console script on tiny configs."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict
from test_cli import CONF, TINY, compose_train, run_main

from latentode.cli import sweep as sweep_cli
from latentode.cli import train as train_cli

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*treespec, LeafSpec"),
    # train() called directly, without the CLI's filter: the EMA callback is left out of the
    # test of a checkpoint on purpose (latentode.cli.train.quiet_known_warnings)
    pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`, callbacks"),
]

SHORT = [*TINY, "trainer.max_epochs=1", "trainer.limit_train_batches=2", "plots.n_series=0"]
SEARCHES = sorted(p.stem for p in (CONF / "hparams_search").glob("*.yaml"))


def latentode_train(args: list[str], root: Path, timeout: int = 180) -> subprocess.CompletedProcess:
    """Run the ``latentode-train`` console script with ``LATENTODE_ROOT=root``."""
    script = Path(sys.executable).parent / "latentode-train"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "latentode.cli.train"]
    env = {**os.environ, "LATENTODE_ROOT": str(root)}
    result = subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout,
                            env=env, cwd=root)
    return result


def stopped_by(signal_number: int, args: list[str], root: Path, checkpoint: Path
               ) -> subprocess.CompletedProcess:
    """``latentode-train args`` sent ``signal_number`` once ``checkpoint`` is written."""
    script = Path(sys.executable).parent / "latentode-train"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "latentode.cli.train"]
    env = {**os.environ, "LATENTODE_ROOT": str(root)}
    proc = subprocess.Popen([*command, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=root)
    deadline = time.monotonic() + 150
    while not checkpoint.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal_number)
    out, err = proc.communicate(timeout=150)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def summary(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def show(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


# -- grid sweeps --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """One grid sweep of three tiny jobs; the middle one (latents=-1) fails while the model is
    built, so the sweep must record it and go on to the third."""
    root = tmp_path_factory.mktemp("grid")
    sweep = root / "sweep"
    result = latentode_train(["-m", "model.latents=3,-1,4", *SHORT, f"hydra.sweep.dir={sweep}"],
                             root)
    return sweep, result


def test_grid_sweep_writes_run_dirs_and_summary(grid):
    sweep, result = grid
    assert result.returncode == 1, show(result)  # one job failed (its test below)
    for job in ("0", "2"):
        assert (sweep / job / "test_metrics.json").is_file()
        assert (sweep / job / ".hydra" / "config.yaml").is_file()
    rows = summary(sweep)
    assert [r["job"] for r in rows] == ["0", "1", "2"]
    assert [r["model.latents"] for r in rows] == ["3", "-1", "4"]
    done = [rows[0], rows[2]]
    assert [r["status"] for r in done] == ["completed", "completed"]
    for row in done:
        run = Path(row["output_dir"])
        assert run == sweep / row["job"]
        tested = json.loads((run / "test_metrics.json").read_text())["metrics"]
        assert float(row["test/mse"]) == pytest.approx(tested["test/mse"])
        assert float(row["val/mse"]) > 0 and float(row["wall_time_s"]) > 0
        assert row["error"] == "" and "model.latents=" in row["overrides"]
        assert json.loads((run / "job_status.json").read_text())["status"] == "completed"
    assert not any(k.startswith("train/") for k in rows[0])
    # a job that learned little names its own command to train longer (one epoch here), with
    # the new length in place of the job's
    job = sweep / "0"
    said = re.search(r"After 1 epochs: train longer or with another seed\. To go on with this "
                     r"job: latentode-train (.*) \(without -m\)\.",
                     (job / "train.log").read_text())
    assert said, (job / "train.log").read_text()[-2000:]
    command = shlex.split(said.group(1))
    assert "model.latents=3" in command and "trainer.max_epochs=1" not in command
    assert command[-4:] == ["hydra.mode=RUN", "ckpt_path=last", f"hydra.run.dir={job}",
                            "trainer.max_epochs=2"]
    # the log names the best job by the optimised metric (val/mse), the failed one never
    best = min(done, key=lambda r: float(r["val/mse"]))
    assert f"best job by val/mse (lowest): {best['job']} ({best['val/mse']}) in " \
        f"{sweep / best['job']}" \
        in result.stdout + result.stderr


LONG = [*TINY, "trainer.max_epochs=1000", "plots.n_series=0"]


@pytest.mark.parametrize(("stop", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_run_stopped_by_a_signal_says_so_and_exits_with_it(tmp_path, stop, status):
    # SIGTERM (a scheduler's preemption) exited 0 with nothing in the log: it looked finished
    run = tmp_path / "run"
    result = stopped_by(stop, [*LONG, f"hydra.run.dir={run}"], tmp_path,
                        run / "checkpoints" / "last.ckpt")
    assert result.returncode == status, show(result)
    log_text = (run / "train.log").read_text()
    name = signal.Signals(stop).name
    here = re.escape(str(run))
    assert re.search(rf"training stopped by {name} during epoch \d+, not tested: "
                     rf"{here}/checkpoints/last.ckpt holds \d+ epochs\. To go on, run the same "
                     rf"command with ckpt_path=last hydra.run.dir={here}",
                     log_text), log_text[-2000:]
    assert not (run / "test_metrics.json").exists()


def test_a_sweep_stopped_by_sigterm_records_the_job_and_stops(tmp_path):
    # the interrupted job was missing from summary.csv and the command exited 0
    sweep = tmp_path / "sweep"
    result = stopped_by(signal.SIGTERM, ["-m", *LONG, "model.latents=3,4",
                                         f"hydra.sweep.dir={sweep}"], tmp_path,
                        sweep / "0" / "checkpoints" / "last.ckpt")
    assert result.returncode == 143, show(result)
    rows = summary(sweep)
    assert [(r["job"], r["status"]) for r in rows] == [("0", "interrupted")], rows
    assert "training stopped by SIGTERM" in rows[0]["error"]
    # the job's own command: "the same command" with -m started the sweep afresh elsewhere
    logged = (sweep / "0" / "train.log").read_text()
    job = re.escape(str(sweep / "0"))
    said = re.search(rf"To go on with this job: latentode-train (.*model\.latents=3 "
                     rf"hydra\.mode=RUN ckpt_path=last hydra\.run\.dir={job}) \(without -m; "
                     rf"the sweep's later jobs did not run\)", logged)
    assert said, logged[-2000:]
    assert not (sweep / "1").exists()  # the sweep stopped with it
    # the command resumes that job in place (a search's MULTIRUN config made it a new sweep)
    trained = torch.load(sweep / "0" / "checkpoints" / "last.ckpt", weights_only=False)["epoch"]
    args = [a.replace("trainer.max_epochs=1000", f"trainer.max_epochs={trained + 2}")
            for a in shlex.split(said.group(1))]
    again = latentode_train(args, tmp_path)
    assert again.returncode == 0, show(again)
    assert json.loads((sweep / "0" / "test_metrics.json").read_text())["epochs"] == trained + 2
    assert not (tmp_path / "outputs").exists()  # no new run or sweep elsewhere


def test_best_job_reads_the_direction_and_skips_what_has_no_value(tmp_path):
    from latentode.cli.sweep import best_job

    path = tmp_path / "summary.csv"
    path.write_text("job,status,val/mse\n0,completed,0.5\n1,failed,\n2,unrecorded,0.2\n"
                    "3,completed,nan\n4,completed,0.9\n")
    assert best_job(path, "val/mse") == ("2", "0.2")
    assert best_job(path, "val/mse", "maximize") == ("4", "0.9")
    assert best_job(path, "val/acc") is None and best_job(path, None) is None
    assert best_job(path, "val/mse", ["minimize", "maximize"]) is None  # several objectives
    from latentode.cli.sweep import metric_direction

    assert [metric_direction(m) for m in ("val/mse", "val/auc", "val/accuracy", None)] == \
        ["minimize", "maximize", "maximize", "minimize"]


def test_failed_job_is_recorded_and_the_sweep_goes_on(grid):
    sweep, result = grid
    assert result.returncode == 1, show(result)  # the sweep ran on; its status says one failed
    assert "1 of 3 jobs failed" in result.stdout + result.stderr
    assert "Traceback" in result.stdout + result.stderr  # logged with its traceback
    failed = summary(sweep)[1]
    assert (failed["status"], failed["model.latents"], failed["test/mse"]) == ("failed", "-1", "")
    # (torch's "negative dimension" from the encoder before its sizes were checked)
    assert "latent_dim must be a whole number >= 1, got -1" in failed["error"]
    assert "Traceback" in (sweep / "1" / "train.log").read_text()
    assert json.loads((sweep / "1" / "job_status.json").read_text())["status"] == "failed"
    assert not (sweep / "1" / "test_metrics.json").exists()
    assert (sweep / "2" / "test_metrics.json").is_file()  # the job after it ran


def test_single_run_errors_still_propagate(tmp_path, monkeypatch):
    with pytest.raises(SystemExit) as exit_info:
        run_main(train_cli, ["latentode-train", "model.latents=-1", *SHORT,
                             f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch)
    assert exit_info.value.code != 0
    assert not (tmp_path / "run" / "job_status.json").exists()


# -- Optuna -------------------------------------------------------------------------------------

def test_optuna_search_stores_its_study_and_resumes(tmp_path):
    optuna = pytest.importorskip("optuna")
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "sweep"
    args = ["hparams_search=periodic_optuna", "hydra.sweeper.n_trials=2", *SHORT,
            f"hydra.sweep.dir={sweep}"]
    first = latentode_train(args, tmp_path)
    assert first.returncode == 0, show(first)
    assert (sweep / "optuna.db").is_file()
    url = f"sqlite:///{sweep / 'optuna.db'}"
    assert [t.number for t in optuna.load_study(study_name="train", storage=url).trials] == [0, 1]

    again = latentode_train(args, tmp_path)  # same sweep dir: the study goes on
    assert again.returncode == 0, show(again)
    study = optuna.load_study(study_name="train", storage=url)
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    rows = summary(sweep)
    assert [r["job"] for r in rows] == ["0", "1", "2", "3"]  # job k is trial k
    for trial, row in zip(study.trials, rows, strict=True):
        assert (sweep / row["job"] / "test_metrics.json").is_file()
        assert float(row["val/mse"]) == pytest.approx(trial.value)
        lr = trial.params["module.optimizer.lr"]
        assert float(row["module.optimizer.lr"]) == pytest.approx(lr)


@pytest.mark.slow
def test_failed_optuna_trial_is_failed_and_the_search_goes_on(tmp_path):
    optuna = pytest.importorskip("optuna")
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "sweep"
    common = ["hparams_search=periodic_optuna", *SHORT, f"hydra.sweep.dir={sweep}"]
    result = latentode_train([*common, "hydra.sweeper.n_trials=1"], tmp_path)
    assert result.returncode == 0, show(result)
    result = latentode_train([*common, "hydra.sweeper.n_trials=2", "model.latents=-1"], tmp_path)
    assert result.returncode == 1, show(result)
    study = optuna.load_study(study_name="train", storage=f"sqlite:///{sweep / 'optuna.db'}")
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE] + [optuna.trial.TrialState.FAIL] * 2
    assert [r["status"] for r in summary(sweep)] == ["completed", "failed", "failed"]


@pytest.mark.parametrize("search", SEARCHES)
def test_search_configs_compose_and_name_existing_keys(search):
    assert set(SEARCHES) >= {"periodic_optuna", "hopper_optuna", "physionet_optuna"}
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"hparams_search={search}"],
                      return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert "OptunaSweeper" in sweeper._target_ and sweeper.direction == "minimize"
    assert str(sweeper.storage).endswith("/optuna.db") and sweeper.study_name
    assert sweeper.sampler.seed is None
    assert cfg.optimized_metric == "val/mse"
    assert cfg.trainer.limit_val_batches is None  # a validation set to optimise on
    for key in sweeper.params:
        assert OmegaConf.select(cfg, key, default="missing") != "missing", key
    assert search.split("_")[0] in cfg.data.dataset.name


def test_a_search_space_the_chosen_model_lacks_stops_before_any_trial(tmp_path, capsys):
    """hparams_search=periodic_optuna model=odernn: every trial died in Hydra's "+model.gen_units"
    advice and stayed RUNNING in the study; now the search stops first, naming the keys."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cfg = compose_hydra(["hparams_search=periodic_optuna", "model=odernn",
                         f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    with pytest.raises(SystemExit) as stop:
        sweep_cli.SweepSummary().on_multirun_start(cfg)
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert ("names model.gen_units (did you mean model.ode_units?); model.encoder.hidden, which "
            "the composed config (model=odernn) does not have") in err
    assert not (tmp_path / "sweep").exists()  # nothing made: no study, no trial RUNNING
    sweep_cli.check_search_space(compose_hydra(["hparams_search=periodic_optuna"]))  # fits
    # keys under a searched group belong to each trial's choice; + keys are the user's
    with open_dict(cfg):
        cfg.hydra.sweeper.params["model"] = "choice(latent_ode,odernn)"
        cfg.hydra.sweeper.params["+model.extra"] = "choice(1,2)"
    sweep_cli.check_search_space(cfg)
    # a group swept on the command line: each option is checked (the check saw the default
    # model and passed, and trial 0, model=odernn, died in Hydra's advice)
    swept = compose_hydra(["hparams_search=periodic_optuna",
                           f"hydra.sweep.dir={tmp_path / 'sweep2'}"])
    with open_dict(swept):
        swept.hydra.overrides.task = ["hparams_search=periodic_optuna", "model=odernn,latent_ode"]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        sweep_cli.check_search_space(swept)
    assert ("model.gen_units is a key of the config with model=latent_ode but not with "
            "model=odernn") in capsys.readouterr().err
    with open_dict(swept):
        swept.hydra.overrides.task = ["hparams_search=periodic_optuna",
                                      "model=latent_ode,hopper_latent_ode"]
    sweep_cli.check_search_space(swept)  # both have every key searched
    # a model of the user's own config directory (hydra.searchpath): composed with it, not
    # refused as "not an option of the config group model"
    own = tmp_path / "own_conf" / "model"
    own.mkdir(parents=True)
    (own / "my_model.yaml").write_text("defaults:\n  - latent_ode\n  - _self_\nlatents: 5\n")
    with open_dict(swept):
        swept.hydra.overrides.task = ["hparams_search=periodic_optuna", "model=latent_ode,my_model"]
        swept.hydra.overrides.hydra = [f"hydra.searchpath=[file://{own.parent}]"]
    sweep_cli.check_search_space(swept)
    with open_dict(swept):
        swept.hydra.overrides.task = ["hparams_search=periodic_optuna", "model=odernn,my_model"]
    with pytest.raises(SystemExit):
        sweep_cli.check_search_space(swept)
    assert "with model=my_model but not with model=odernn" in capsys.readouterr().err


def test_hopper_search_carves_validation_from_training_series():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")  # hparams_search selects it
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True,
                      overrides=["hparams_search=hopper_optuna", "data.dataset.n_trajectories=50"])
    labels = instantiate(cfg.data.split)
    # the source's split: first 40 train, last 10 test; the last 4 training series validate
    assert list(labels[:36]) == ["train"] * 36 and list(labels[36:40]) == ["val"] * 4
    assert list(labels[40:]) == ["test"] * 10
    with pytest.raises(ValueError, match="no training series"):
        sweep_cli.carve_validation(10, 0.8, 1.0)


def test_hopper_search_trains_and_validates_on_the_carved_split(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    pytest.importorskip("dm_control")
    pytest.importorskip("mujoco")
    cfg = compose_train(
        ["hparams_search=hopper_optuna", "data.dataset.n_trajectories=10",
         f"data.dataset.cache_dir={tmp_path / 'cache'}", "data.dataset.progress=false",
         "data.batch_size=4", "model.gen_units=16", "model.gen_layers=1", "model.encoder.hidden=8",
         "model.encoder.z0_units=16", "model.encoder.ode_units=16", "model.encoder.ode_layers=1",
         "model.encoder.gru_units=16", "plots.n_series=0", "callbacks.progress_bar.refresh_rate=0",
         "trainer.log_every_n_steps=1",
         "trainer.max_epochs=1"], tmp_path / "run")
    metrics = train_cli.train(cfg)
    assert metrics["val/mse"] > 0 and metrics["test/mse"] > 0


# -- launchers ----------------------------------------------------------------------------------

def compose_hydra(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def test_submitit_and_joblib_launcher_configs_compose():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    cfg = compose_hydra(["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
                         "hydra.launcher.gpus_per_node=4", "hydra.launcher.tasks_per_node=4",
                         "hydra.launcher.nodes=2", "hydra.launcher.timeout_min=240",
                         "hydra.launcher.mem_gb=64", "trainer=gpu"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node) == ("gpu", 4, 4)
    assert (launcher.nodes, launcher.timeout_min, launcher.mem_gb) == (2, 240, 64)
    assert compose_hydra(["hydra/launcher=submitit_local"]).hydra.launcher._target_.endswith(
        "LocalLauncher")
    joblib = compose_hydra(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]).hydra.launcher
    assert joblib._target_.endswith("JoblibLauncher") and joblib.n_jobs == 2


def test_ray_launcher_config_composes():
    """conf/hydra/launcher/ray.yaml composes without the plugin (ray is not in [sweeps])."""
    cfg = compose_hydra(["hydra/launcher=ray", "hydra.launcher.ray.init.address=auto",
                         "hydra.launcher.ray.remote.num_gpus=1", "trainer=gpu"])
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"
    assert launcher.ray.init.address == "auto" and launcher.ray.remote.num_gpus == 1


def test_submitit_local_runs_a_tiny_job(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    result = latentode_train(["-m", "hydra/launcher=submitit_local",
                              "hydra.launcher.timeout_min=5", *SHORT, f"hydra.sweep.dir={sweep}"],
                             tmp_path)
    if result.returncode != 0 and "submitit" in result.stderr.lower():
        pytest.skip(f"submitit's local executor does not run here:\n{result.stderr[-1500:]}")
    assert result.returncode == 0, show(result)
    assert (sweep / "0" / "test_metrics.json").is_file()
    assert [r["status"] for r in summary(sweep)] == ["completed"]


# -- seeds --------------------------------------------------------------------------------------

def tiny_run(tmp_path: Path, name: str, seed: int) -> dict[str, float]:
    cfg = compose_train([*SHORT, f"seed={seed}"], tmp_path / name)
    return train_cli.train(cfg)


def test_same_seed_reproduces_metrics(tmp_path):
    first, again = tiny_run(tmp_path, "a", 7), tiny_run(tmp_path, "b", 7)
    assert set(first) == set(again) and "test/mse" in first
    for key, value in first.items():
        assert again[key] == value, key


def test_other_seeds_give_other_runs(tmp_path):
    runs = [tiny_run(tmp_path, str(seed), seed) for seed in (1, 2)]
    assert runs[0]["test/mse"] != runs[1]["test/mse"]
    assert runs[0]["val/loss"] != runs[1]["val/loss"]


def first_train_batch_and_model(seed: int):
    cfg = compose_train([*SHORT, f"seed={seed}"])
    train_cli.setup_runtime(cfg)
    datamodule = train_cli.build_datamodule(cfg)
    model = train_cli.build_model(cfg, datamodule)
    batch = next(iter(datamodule.train_dataloader()))
    val = next(iter(datamodule.val_dataloader()))
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    return datamodule, batch, val, weights


def test_seed_moves_init_order_and_masks_not_the_data():
    data1, batch1, val1, w1 = first_train_batch_and_model(1)
    data2, batch2, val2, w2 = first_train_batch_and_model(2)
    _, batch1b, _, w1b = first_train_batch_and_model(1)
    # the data, the split and the validation masks are the data config's (data.dataset.seed, ...)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(data1.split_index[name], data2.split_index[name])
        np.testing.assert_array_equal(data1.splits[name].values, data2.splits[name].values)
    assert torch.equal(val1.encoder_mask, val2.encoder_mask) and torch.equal(val1.index, val2.index)
    # initial weights, training order and training masks are the run's seed's
    assert torch.equal(w1, w1b) and not torch.equal(w1, w2)
    assert torch.equal(batch1.index, batch1b.index)
    assert torch.equal(batch1.encoder_mask, batch1b.encoder_mask)
    assert not torch.equal(batch1.index, batch2.index) or not torch.equal(
        batch1.encoder_mask, batch2.encoder_mask)


def test_a_resumed_sweep_reports_only_its_own_failures(tmp_path):
    """A sweep dir resumed (an Optuna search continued): the summary keeps every job, but the
    exit status is this call's. It counted an earlier call's failure, so every resume of a
    search with one failed trial exited 1."""
    from hydra.core.utils import JobReturn, JobStatus
    from hydra.types import RunMode

    from latentode.cli.sweep import SweepSummary, failed_jobs, write_job_record

    def cfg(num: int):
        return OmegaConf.create({"hydra": {
            "mode": RunMode.MULTIRUN, "sweep": {"dir": str(tmp_path)}, "sweeper": {},
            "runtime": {"output_dir": str(tmp_path / f"run{num}")}, "job": {"num": num}}})

    def call(statuses: list[str]) -> int:
        summary = SweepSummary()
        failed_jobs(reset=True)
        summary.on_multirun_start(cfg(0))
        for num, status in enumerate(statuses):
            (tmp_path / f"run{num}").mkdir(exist_ok=True)
            summary.on_job_start(cfg(num))
            write_job_record(str(tmp_path / f"run{num}"), status,
                             metrics={"val/mse": 0.1} if status == "completed" else None,
                             error=None if status == "completed" else RuntimeError("boom"))
            summary.on_job_end(cfg(num), JobReturn(overrides=[f"seed={num}"],
                                                   status=JobStatus.COMPLETED))
        summary.on_multirun_end(cfg(0))
        return failed_jobs()

    assert call(["completed", "failed"]) == 1
    assert call(["completed", "completed"]) == 0
    with open(tmp_path / "summary.csv") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["completed", "failed", "completed",
                                                            "completed"]


# -- job numbering in a sweep dir that already holds jobs ---------------------------------------

def fake_finished_run(run: Path, overrides: list[str], test_mse: float, val_mse: float) -> None:
    """A run dir as a finished ``latentode-train`` leaves it, without a sweep's record."""
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (run / "metrics.csv").write_text(f"epoch,step,train/loss,val/mse\n0,1,2.0,\n0,1,,{val_mse}\n")
    (run / "test_metrics.json").write_text(json.dumps({"metrics": {"test/mse": test_mse}}))


def test_new_jobs_are_numbered_after_every_job_dir_recorded_or_not(tmp_path):
    """Jobs were numbered after the recorded ones only: a job interrupted (no record), then
    resumed in place with hydra.run.dir=SWEEP/1, was written over by the next job added."""
    from hydra.core.utils import JobReturn, JobStatus
    from hydra.types import RunMode

    from latentode.cli.sweep import SweepSummary, job_number, job_offset, write_job_record

    sweep = tmp_path / "sweep"

    def cfg(num: int, sweeper: dict | None = None):
        return OmegaConf.create({"hydra": {
            "mode": RunMode.MULTIRUN, "sweep": {"dir": str(sweep)}, "sweeper": sweeper or {},
            "runtime": {"output_dir": str(sweep / str(job_number(str(sweep), num)))},
            "job": {"num": num}}})

    first = SweepSummary()
    first.on_multirun_start(cfg(0))
    (sweep / "0").mkdir()
    first.on_job_start(cfg(0))
    write_job_record(sweep / "0", "completed", metrics={"val/mse": 0.5, "test/mse": 0.6})
    first.on_job_end(cfg(0), JobReturn(overrides=["model.latents=4"], status=JobStatus.COMPLETED))
    # job 1 was killed before its record, then resumed in place and finished there
    fake_finished_run(sweep / "1", ["model.latents=8", "ckpt_path=last"], 0.25, 0.125)
    (sweep / "2").mkdir()  # interrupted and left so: no finished run
    (sweep / "3").write_text("")  # any entry named by a job number takes that number
    for other in ("-7", "9x", "10.5", "notes"):
        (sweep / other).mkdir()

    again = SweepSummary()
    again.on_multirun_start(cfg(0))
    assert job_offset(sweep) == 4 and job_number(str(sweep), 1) == 5
    assert OmegaConf.create({"d": str(sweep), "s": "${latentode.job_num:${d},0}"}).s == "4"
    (sweep / "4").mkdir()
    again.on_job_start(cfg(0))
    write_job_record(sweep / "4", "completed", metrics={"val/mse": 0.3, "test/mse": 0.4})
    again.on_job_end(cfg(0), JobReturn(overrides=["model.latents=16"],
                                       status=JobStatus.COMPLETED))
    again.on_multirun_end(cfg(0))

    rows = summary(sweep)  # job 1's finished run is listed; job 2 (no run) and file 3 are not
    assert [(r["job"], r["status"]) for r in rows] == [("0", "completed"), ("1", "unrecorded"),
                                                       ("4", "completed")]
    assert [r["model.latents"] for r in rows] == ["4", "8", "16"]
    resumed = rows[1]
    assert float(resumed["test/mse"]) == 0.25 and float(resumed["val/mse"]) == 0.125
    assert resumed["output_dir"] == str(sweep / "1") and resumed["wall_time_s"] == ""
    assert resumed["overrides"] == "model.latents=8 ckpt_path=last"


def test_a_job_resumed_or_rerun_in_place_after_its_record_shows_its_new_run(tmp_path):
    """The table kept a recorded job's first outcome after the job dir was trained on
    (``ckpt_path=last hydra.run.dir=SWEEP/0``) or a failed job was fixed and rerun there: its
    old metrics, overrides and status stayed, and the best-job line was computed from them."""
    import os
    import time

    from hydra.core.utils import JobReturn, JobStatus
    from hydra.types import RunMode

    from latentode.cli.sweep import (
        SweepSummary,
        best_job,
        refresh_enclosing_sweep,
        refresh_summary,
        write_job_record,
    )

    sweep = tmp_path / "sweep"

    def cfg(num: int):
        return OmegaConf.create({"hydra": {
            "mode": RunMode.MULTIRUN, "sweep": {"dir": str(sweep)}, "sweeper": {},
            "runtime": {"output_dir": str(sweep / str(num))}, "job": {"num": num}}})

    summary_cb = SweepSummary()
    summary_cb.on_multirun_start(cfg(0))
    for num, status in enumerate(["completed", "failed"]):
        (sweep / str(num)).mkdir(parents=True)
        summary_cb.on_job_start(cfg(num))
        if status == "completed":
            (sweep / "0" / "test_metrics.json").write_text(
                json.dumps({"metrics": {"test/mse": 0.9}}))
        write_job_record(sweep / str(num), status,
                         metrics={"val/mse": 0.8, "test/mse": 0.9} if num == 0 else None,
                         error=None if num == 0 else RuntimeError("dopri6"))
        summary_cb.on_job_end(cfg(num), JobReturn(
            overrides=[f"model.latents={4 * (num + 1)}"], status=JobStatus.COMPLETED))
    summary_cb.on_multirun_end(cfg(0))
    assert [r["status"] for r in summary(sweep)] == ["completed", "failed"]
    # a copy of the sweep dir (cp -r: every file's time new, the job dirs after .sweep/) is
    # not a rerun: the record keeps a hash of test_metrics.json, not its time
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(sweep, copy, copy_function=shutil.copy)
    os.utime(copy / "0" / "test_metrics.json", (later := time.time() + 60, later))
    assert [r["status"] for r in summary(refresh_summary(copy).parent)] == ["completed",
                                                                             "failed"]
    # job 0 trained on in place, job 1 fixed and rerun there: newer test metrics in each dir
    later = (sweep / ".sweep" / "jobs" / "1.json").stat().st_mtime + 5
    for num, (mse, overrides) in enumerate([(0.3, ["model.latents=4", "trainer.max_epochs=3",
                                                   "ckpt_path=last"]),
                                            (0.2, ["model.latents=8", "solver.method=rk4"])]):
        run = sweep / str(num)
        (run / ".hydra").mkdir(exist_ok=True)
        (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        (run / "test_metrics.json").write_text(json.dumps({"metrics": {"test/mse": mse}}))
        os.utime(run / "test_metrics.json", (later, later))
    assert refresh_enclosing_sweep(sweep / "1") == sweep / "summary.csv"
    rows = summary(sweep)
    assert [(r["status"], r["test/mse"]) for r in rows] == [("rerun", "0.3"), ("rerun", "0.2")]
    assert rows[0]["trainer.max_epochs"] == "3" and rows[1]["solver.method"] == "rk4"
    assert rows[1]["error"] == ""  # the stale job_status.json (failed) is not read
    assert best_job(refresh_summary(sweep), "test/mse") == ("1", "0.2")
    assert refresh_enclosing_sweep(tmp_path) is None  # not a sweep's job dir


def test_optuna_jobs_are_numbered_after_job_dirs_and_trials(tmp_path):
    """The Optuna sweeper's calls number their jobs the same way: after the study's trials, and
    after job dirs the study does not know (a grid sweep run into the same dir)."""
    optuna = pytest.importorskip("optuna")
    from latentode.cli.sweep import SweepSummary, job_offset

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    url = f"sqlite:///{sweep / 'optuna.db'}"
    sweeper = {"_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
               "storage": url, "study_name": "train"}
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}, "sweeper": sweeper}})
    study = optuna.create_study(study_name="train", storage=url)
    study.ask()
    study.ask()  # trials 0 and 1, still running (a search that was killed)
    (sweep / "0").mkdir()
    SweepSummary().on_multirun_start(config)
    assert job_offset(sweep) == 2  # trial k is job k
    (sweep / "2").mkdir()
    (sweep / "3").mkdir()
    SweepSummary().on_multirun_start(config)
    assert job_offset(sweep) == 4  # no job dir is written twice


@pytest.mark.slow  # ~19 s of sweep runs; job numbering on resume is tested by default (job_offset)
def test_a_job_resumed_in_place_is_not_written_over_by_jobs_added_later(tmp_path):
    """The reviewer's case with the real command: a sweep's job 1 resumed in place, then a job
    added to the sweep dir, which went into 1/ over the finished run."""
    sweep = tmp_path / "sweep"
    result = latentode_train(["-m", "model.latents=3", *SHORT, f"hydra.sweep.dir={sweep}"],
                             tmp_path)
    assert result.returncode == 0, show(result)
    result = latentode_train(["model.latents=4", *SHORT, "ckpt_path=last",
                              f"hydra.run.dir={sweep / '1'}"], tmp_path)
    assert result.returncode == 0, show(result)
    resumed = (sweep / "1" / "test_metrics.json").read_text()
    result = latentode_train(["-m", "model.latents=5", *SHORT, f"hydra.sweep.dir={sweep}"],
                             tmp_path)
    assert result.returncode == 0, show(result)
    assert "new jobs are numbered from 2" in result.stdout + result.stderr
    assert (sweep / "1" / "test_metrics.json").read_text() == resumed
    assert not (sweep / "1" / "metrics.1.csv").exists()
    assert "model.latents=5" in (sweep / "2" / ".hydra" / "overrides.yaml").read_text()
    rows = summary(sweep)
    assert [(r["job"], r["status"], r["model.latents"]) for r in rows] == [
        ("0", "completed", "3"), ("1", "unrecorded", "4"), ("2", "completed", "5")]
    tested = json.loads(resumed)["metrics"]["test/mse"]
    assert float(rows[1]["test/mse"]) == pytest.approx(tested)
    assert float(rows[1]["val/mse"]) > 0


# -- trials left RUNNING by a search that was killed --------------------------------------------

def optuna_config(sweep: Path, url: str | None = None):
    sweeper = {"_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
               "storage": url or f"sqlite:///{sweep / 'optuna.db'}", "study_name": "train"}
    return OmegaConf.create({"hydra": {"mode": "MULTIRUN", "sweep": {"dir": str(sweep)},
                                       "sweeper": sweeper}})


def dead_pid() -> int:
    """The pid of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_resumed_search_fails_the_trials_a_killed_search_left_running(tmp_path, caplog):
    """A search killed mid-trial (SIGKILL, a preempted job) left its trial RUNNING in
    optuna.db for good; resumed with no other search alive on the study, it is marked FAIL."""
    optuna = pytest.importorskip("optuna")
    from latentode.cli.sweep import SweepSummary, job_offset

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    url = f"sqlite:///{sweep / 'optuna.db'}"
    study = optuna.create_study(study_name="train", storage=url)
    study.tell(study.ask(), 1.0)  # trial 0 completed
    study.ask()  # trial 1: its search was killed
    (sweep / "0").mkdir()
    (sweep / "1").mkdir()
    summary = SweepSummary()
    summary.on_multirun_start(optuna_config(sweep))
    states = [t.state for t in optuna.load_study(study_name="train", storage=url).trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL]
    assert "trial 1 was left RUNNING" in caplog.text and "marked FAIL" in caplog.text
    assert job_offset(sweep) == 2  # numbering unchanged: job 2 is trial 2
    workers = list((sweep / ".sweep" / "workers").glob("*.json"))
    assert len(workers) == 1 and json.loads(workers[0].read_text())["pid"] == os.getpid()
    summary.on_multirun_end(optuna_config(sweep))
    assert not list((sweep / ".sweep" / "workers").glob("*.json"))


def test_trials_of_a_search_that_may_be_alive_are_only_named(tmp_path, caplog):
    """Several searches on one study (a cluster): a RUNNING trial asked after another search
    began may be that search's, so it stays RUNNING, named with the command that fails it;
    older ones cannot be its and are failed. A search elsewhere (another host) counts as alive."""
    optuna = pytest.importorskip("optuna")
    from latentode.cli.sweep import SweepSummary, register_worker

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    url = f"sqlite:///{sweep / 'optuna.db'}"
    study = optuna.create_study(study_name="train", storage=url)
    study.ask()  # trial 0: before the other search began
    # searches begun when the study held 1 trial: they ask trial 1 on
    register_worker(sweep, 1, pid=dead_pid())  # a search killed: its entry left, process gone
    register_worker(sweep, 1, pid=os.getppid())  # alive, on this host
    trial = study.ask()  # trial 1: asked since, maybe by that search
    study.ask()  # trial 2 too
    SweepSummary().on_multirun_start(optuna_config(sweep))
    states = [t.state for t in optuna.load_study(study_name="train", storage=url).trials]
    running, fail = optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL
    assert states == [fail, running, running]
    assert "trial 0 was left RUNNING" in caplog.text
    assert len(list((sweep / ".sweep" / "workers").glob("*.json"))) == 2  # the dead one's gone
    assert f"trials 1, 2 are RUNNING and may belong to a search still running (pid " \
        f"{os.getppid()} on " in caplog.text
    assert (f"optuna --storage {url} tell --study-name train --trial-number {trial.number} "
            "--state fail") in caplog.text
    # the CLI's command fails the trial indeed
    command = Path(sys.executable).parent / "optuna"
    subprocess.run([str(command), "--storage", url, "tell", "--study-name", "train",
                    "--trial-number", "2", "--state", "fail"], check=True, capture_output=True)
    assert optuna.load_study(study_name="train", storage=url).trials[2].state == fail

    # a search on another host (alive as far as this host can tell), begun when the study held
    # 1 trial: trial 1 may be its, so it stays
    for entry in (sweep / ".sweep" / "workers").glob(f"*-{os.getppid()}.json"):
        entry.unlink()  # that search ended
    other = register_worker(sweep, 1, pid=1234, host="node-elsewhere")
    assert json.loads(other.read_text())["process_start"] is None
    caplog.clear()
    SweepSummary().on_multirun_start(optuna_config(sweep))
    assert optuna.load_study(study_name="train", storage=url).trials[1].state == running
    assert "trial 1 is RUNNING" in caplog.text and "pid 1234 on node-elsewhere" in caplog.text


def test_a_live_searchs_trial_in_another_time_zone_is_left_running(tmp_path, caplog):
    """Optuna stores a trial's start in local time without its zone: a live search running
    under another TZ asked a trial that looked hours older than its registration, and a resume
    failed it (the live search then crashed telling it). Trial numbers decide now."""
    optuna = pytest.importorskip("optuna")
    from latentode.cli.sweep import SweepSummary, register_worker

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    url = f"sqlite:///{sweep / 'optuna.db'}"
    optuna.create_study(study_name="train", storage=url)
    register_worker(sweep, 0, pid=os.getppid())  # a live search, begun on the empty study
    ask = f"import optuna; optuna.load_study(study_name='train', storage={url!r}).ask()"
    subprocess.run([sys.executable, "-c", ask], check=True,  # its trial, asked 5 h "earlier"
                   env={**os.environ, "TZ": "Etc/GMT+5"})
    SweepSummary().on_multirun_start(optuna_config(sweep))
    trial = optuna.load_study(study_name="train", storage=url).trials[0]
    assert trial.state == optuna.trial.TrialState.RUNNING
    assert "trial 0 is RUNNING and may belong to a search still running" in caplog.text


class _FakeKernel32:
    """kernel32's process calls over a table ``pid -> (exit code, creation time)``."""

    def __init__(self, processes: dict[int, tuple[int, int]], denied: set[int] = frozenset()):
        self.processes, self.denied, self.error, self.open = processes, denied, 0, 0

    def OpenProcess(self, access, inherit, pid):  # noqa: N802 (Windows' names)
        if pid in self.denied or pid not in self.processes:
            self.error = 5 if pid in self.denied else 87  # access denied / no such process
            return 0
        self.open += 1
        return pid

    def GetExitCodeProcess(self, handle, code):  # noqa: N802
        code._obj.value = self.processes[handle][0]
        return 1

    def GetProcessTimes(self, handle, created, *rest):  # noqa: N802
        created._obj.value = self.processes[handle][1]
        return 1

    def CloseHandle(self, handle):  # noqa: N802
        self.open -= 1
        return 1


def test_liveness_on_windows_asks_the_process_table_not_a_signal(monkeypatch):
    """os.kill(pid, 0) sends CTRL_C_EVENT on Windows: a live search would be interrupted, so
    every search there counted as live and a killed search's trials stayed RUNNING. Now
    OpenProcess/GetExitCodeProcess say whether it runs and its creation time tells a reused pid."""
    import ctypes

    from latentode.cli import sweep as sweep_module

    def kill(*args):
        raise AssertionError("os.kill called")

    running, exited, reused, denied = 101, 102, 103, 104
    kernel = _FakeKernel32({running: (259, 7), exited: (0, 7), reused: (259, 9)}, {denied})
    monkeypatch.setattr(sweep_module, "_kernel32", lambda: kernel)
    monkeypatch.setattr(ctypes, "get_last_error", lambda: kernel.error, raising=False)
    monkeypatch.setattr(sweep_module.os, "kill", kill)
    host = sweep_module._host()
    entry = lambda pid, start="7": {"host": host, "pid": pid, "process_start": start}  # noqa: E731
    monkeypatch.setattr(sweep_module.os, "name", "nt")
    try:
        answers = {
            "running": sweep_module._alive(entry(running)),
            "exited": sweep_module._alive(entry(exited)),
            "reused": sweep_module._alive(entry(reused)),
            "no such pid": sweep_module._alive(entry(999)),
            "access denied": sweep_module._alive(entry(denied)),
            "unrecorded start": sweep_module._alive(entry(reused, None)),
            "recorded": sweep_module._process_start(running),
        }
        monkeypatch.setattr(sweep_module, "_kernel32", lambda: (_ for _ in ()).throw(
            AttributeError("no windll")))
        answers["no kernel32"] = sweep_module._alive(entry(exited))
    finally:
        monkeypatch.undo()  # pytest's own paths need the real os.name
    assert answers == {"running": True, "exited": False, "reused": False,
                       "no such pid": False, "access denied": True,
                       "unrecorded start": True, "recorded": "7", "no kernel32": True}
    assert kernel.open == 0  # every handle closed


def test_a_study_in_other_storage_is_never_changed(tmp_path, caplog):
    """Storage outside the sweep dir (a shared database): searches of other sweep dirs may run
    on it unseen, so its RUNNING trials are named, not failed."""
    optuna = pytest.importorskip("optuna")
    from latentode.cli.sweep import SweepSummary

    sweep = tmp_path / "sweep"
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    optuna.create_study(study_name="train", storage=url).ask()
    SweepSummary().on_multirun_start(optuna_config(sweep, url))
    trial = optuna.load_study(study_name="train", storage=url).trials[0]
    assert trial.state == optuna.trial.TrialState.RUNNING
    assert "trial 0 is RUNNING" in caplog.text and "tell --study-name train" in caplog.text


@pytest.mark.slow
def test_resumed_search_after_a_kill_fails_the_stale_trial_end_to_end(tmp_path):
    """The real command: a search killed mid-trial, then resumed in its sweep dir."""
    optuna = pytest.importorskip("optuna")
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    import signal
    import time

    sweep = tmp_path / "sweep"
    args = ["hparams_search=periodic_optuna", "hydra.sweeper.n_trials=1", *SHORT,
            f"hydra.sweep.dir={sweep}"]
    script = Path(sys.executable).parent / "latentode-train"
    env = {**os.environ, "LATENTODE_ROOT": str(tmp_path)}
    first = subprocess.Popen([str(script), *args, "trainer.max_epochs=100000",
                              "trainer.limit_train_batches=1"], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (sweep / "0" / "metrics.csv").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    url = f"sqlite:///{sweep / 'optuna.db'}"
    assert [t.state for t in optuna.load_study(study_name="train", storage=url).trials] == \
        [optuna.trial.TrialState.RUNNING]
    again = latentode_train(args, tmp_path)
    assert again.returncode == 0, show(again)
    assert "trial 0 was left RUNNING" in again.stdout + again.stderr
    states = [t.state for t in optuna.load_study(study_name="train", storage=url).trials]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]


def test_sweep_records_get_the_permissions_of_ordinary_files(tmp_path):
    """summary.csv and the job records were 0600 (mkstemp's) whatever the umask: the group of
    a shared cluster could not read the table."""
    import os
    import stat

    from latentode.cli.sweep import refresh_summary, write_job_record

    old = os.umask(0o022)
    try:
        path = write_job_record(tmp_path, "completed", metrics={"val/mse": 1.0})
        (tmp_path / ".sweep" / "jobs").mkdir(parents=True)
        table = refresh_summary(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(table.stat().st_mode) == 0o644


def test_a_search_whose_metric_is_never_logged_stops_after_its_first_trial(tmp_path):
    """optimized_metric=val/mes: every trial trained, then Optuna ended with a traceback
    ("Record does not exist"): 30 trainings for nothing by default."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "sweep"
    result = latentode_train(["hparams_search=periodic_optuna", "hydra.sweeper.n_trials=3",
                              "optimized_metric=val/mes", *SHORT, f"hydra.sweep.dir={sweep}"],
                             tmp_path)
    err = result.stdout + result.stderr
    assert result.returncode == 1, err
    assert ("latentode-train: error: optimized_metric=val/mes was not logged by this trial, so "
            "the search has nothing to optimise") in err
    assert "Did you mean val/mse?" in err and "Record does not exist" not in err
    assert sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == ["0"]
    assert json.loads((sweep / "0" / "job_status.json").read_text())["status"] == "failed"
    # the table as at any job's end (the stop passes by Hydra's): the job, failed, and why
    (row,) = summary(sweep)
    assert row["status"] == "failed" and "optimized_metric=val/mes" in row["error"]
    # its trial is FAIL in the study (it stayed RUNNING until the next resume failed it)
    import optuna

    storage = f"sqlite:///{sweep / 'optuna.db'}"
    (name,) = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    (trial,) = optuna.load_study(study_name=name, storage=storage).trials
    assert trial.state == optuna.trial.TrialState.FAIL
    assert "stopped the search" in trial.user_attrs["latentode_failed"]


def test_a_trial_that_did_not_validate_fails_alone(tmp_path, monkeypatch):
    """Only a misspelt metric stops a search (the trial validated under other names); a trial
    without any validation metric (max_epochs below check_val_every_n_epoch, say) fails as
    before and the search goes on."""
    from latentode.cli import train as train_cli

    monkeypatch.setattr(train_cli, "_searching", lambda: True)
    cfg = OmegaConf.create({"optimized_metric": "val/mse"})
    monkeypatch.setattr(train_cli, "train", lambda c: {"train/loss": 1.0, "test/mse": 2.0})
    assert train_cli.sweep_job(cfg, tmp_path) is None  # no SystemExit
    assert json.loads((tmp_path / "job_status.json").read_text())["status"] == "completed"
    monkeypatch.setattr(train_cli, "train", lambda c: {"val/loss": 1.0})
    monkeypatch.setattr(train_cli, "record_stopped_job", lambda run_dir, error: None)
    with pytest.raises(SystemExit, match=r"optimized_metric=val/mse was not logged"):
        train_cli.sweep_job(cfg, tmp_path)
