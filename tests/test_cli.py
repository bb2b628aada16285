"""Hydra configs and the console scripts: compose, fast_dev_run, train/resume/eval end to end."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, InstantiationException
from omegaconf import OmegaConf, open_dict

from latentode.cli import config_dir, runs
from latentode.cli import evaluate as eval_cli
from latentode.cli import train as train_cli
from latentode.cli.checkpoints import read_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:.*treespec, LeafSpec")

CONF = Path(config_dir())
TINY = [
    "data.dataset.n_series=20",
    "data.dataset.n_points=60",
    "data.batch_size=8",
    "model.gen_units=16",
    "model.encoder.hidden=8",
    "model.encoder.z0_units=16",
    "plots.n_series=2",
    "plots.n_samples=5",
    "callbacks.progress_bar.refresh_rate=0",
    "trainer.log_every_n_steps=1",
]


def compose_train(overrides: list[str], output_dir: Path | None = None):
    """The train config as ``latentode-train`` would see it, with the run dir at ``output_dir``."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(output_dir)
        HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as in a latentode-train run, where the task sees no hydra node
    return cfg


def run_main(module, argv: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", argv)
    module.main()


def read_metrics(run: Path) -> dict[str, float]:
    return json.loads((run / "test_metrics.json").read_text())["metrics"]


def test_rnn_encoder_and_fixed_step_solver_run(tmp_path):
    cfg = compose_train(["model/encoder=rnn", "solver=rk4", "trainer.fast_dev_run=true", *TINY],
                        tmp_path)
    assert cfg.model.encoder._target_ == "latentode.nn.RNNEncoder"
    metrics = train_cli.train(cfg)
    assert "test/mse_unseen" in metrics


def test_defaults_are_the_documented_ones():
    cfg = compose_train([])
    assert cfg.data.dataset.name == "periodic" and cfg.data.dataset.n_series == 1000
    assert cfg.data.task._target_.endswith("Interpolation") and cfg.data.task.count == 50
    assert (cfg.data.batch_size, cfg.data.val_fraction, cfg.data.test_fraction) == (50, 0.1, 0.2)
    assert cfg.model.encoder._target_ == "latentode.nn.ODERNNEncoder"
    assert dict(cfg.solver) == {"method": "dopri5", "rtol": 1e-3, "atol": 1e-4,
                                "gradient": "checkpoint"}
    assert cfg.module.optimizer._target_ == "torch.optim.Adamax"
    # tuned on the periodic benchmark (README); the paper's 1e-2 / 0.999 / lr/10 in its recipes
    assert cfg.module.optimizer.lr == 3e-2 and cfg.module.scheduler.gamma == 0.998
    assert cfg.module.optimizer.lr * cfg.module.scheduler.min_factor == pytest.approx(1e-3, 0.01)
    assert cfg.model.objective == "elbo" and cfg.model.n_samples == 1
    for recipe in ("hopper_interp", "hopper_extrap", "physionet_interp"):
        paper = compose_train([f"experiment={recipe}"])
        assert paper.module.optimizer.lr == 1e-2 and paper.module.scheduler.gamma == 0.999
        assert paper.module.scheduler.min_factor == 0.1
        assert paper.model.objective == "batch_iwae"
    assert cfg.trainer.accelerator == "cpu"


@pytest.mark.parametrize("override", ["model.latentz=3", "trainer.max_epoch=2", "nonsense=1"])
def test_unknown_key_is_an_error(override):
    with pytest.raises(ConfigCompositionException, match=r"not in struct|Could not override"):
        compose_train([override])


def test_console_script_rejects_unknown_key(tmp_path):
    script = Path(sys.executable).parent / "latentode-train"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "latentode.cli.train"]
    result = subprocess.run([*command, "model.latentz=3", f"hydra.run.dir={tmp_path}"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "latentz" in result.stderr + result.stdout


@pytest.mark.filterwarnings("ignore:The dirpath has changed")  # resuming into a new run dir
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")  # same dir
def test_train_resume_and_eval_end_to_end(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run_main(train_cli, ["latentode-train", f"hydra.run.dir={run}", "trainer.max_epochs=2",
                         *TINY], monkeypatch)
    # everything a run writes
    assert (run / ".hydra" / "config.yaml").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    best = sorted((run / "checkpoints").glob("best_*.ckpt"))
    assert len(best) == 1
    png = run / "plots" / "test_series.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["epoch"] for r in rows if r.get("val/mse")} == {"0", "1"}
    trained = read_metrics(run)
    # the default run keeps a moving average of the weights: checkpoints hold it as their
    # state_dict (what test, eval and predict use) and the raw weights beside it
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    raw, averaged = saved["current_model_state"], saved["state_dict"]
    assert raw.keys() == averaged.keys()
    assert any(not torch.equal(raw[k], averaged[k]) for k in raw)
    record = json.loads((run / "test_metrics.json").read_text())
    assert record["ckpt_path"] == str(best[0])
    best_saved = torch.load(best[0], weights_only=False)  # how long the tested weights trained
    assert (record["epochs"], record["global_step"]) == (best_saved["epoch"] + 1,
                                                          best_saved["global_step"])
    assert set(trained) >= {"test/loss", "test/mse", "test/mse_data", "test/mse_seen"}

    # resume from last.ckpt: the epochs continue where the first run stopped
    resumed = tmp_path / "resumed"
    last = run / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["epoch"] == 1
    run_main(train_cli, ["latentode-train", f"hydra.run.dir={resumed}", "trainer.max_epochs=3",
                         f"ckpt_path={last}", *TINY], monkeypatch)
    with open(resumed / "metrics.csv") as f:
        epochs = {int(r["epoch"]) for r in csv.DictReader(f) if r.get("train/loss_epoch")}
    assert epochs == {2}
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 2

    # latentode-eval reproduces the test metrics of the checkpoint train tested
    evaluated = tmp_path / "eval"
    run_main(eval_cli, ["latentode-eval", f"ckpt_path={best[0]}", f"hydra.run.dir={evaluated}"],
             monkeypatch)
    again = read_metrics(evaluated)
    assert json.loads((evaluated / "test_metrics.json").read_text())["epochs"] == record["epochs"]
    assert set(again) == set(trained)
    for key, value in trained.items():
        assert again[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert (evaluated / "plots" / "test_series.png").is_file()
    # TINY holds out 2 validation series: too few to calibrate the coverage's noise on
    logs = "".join(f.read_text() for f in evaluated.glob("*.log"))
    assert "calibrated on 2 series (the run's validation split): with fewer than 10" in logs

    # resumed into its own dir (a preempted job, a run in chunks) the run continues metrics.csv:
    # every epoch once, steps in order, the first run's test row kept
    run_main(train_cli, ["latentode-train", f"hydra.run.dir={run}", "trainer.max_epochs=3",
                         f"ckpt_path={last}", *TINY], monkeypatch)
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    epoch_rows = [int(r["epoch"]) for r in rows if r.get("train/loss_epoch")]
    assert epoch_rows == [0, 1, 2]
    assert sorted(int(r["epoch"]) for r in rows if r.get("val/mse")) == [0, 1, 2]
    steps = [int(r["step"]) for r in rows if r.get("train/loss_step")]
    assert steps == sorted(steps) and len(steps) == len(set(steps))
    assert len([r for r in rows if r.get("test/mse")]) == 2
    assert not list(run.glob("metrics.*.csv"))


def test_a_resumed_run_draws_what_the_run_would_have_drawn(tmp_path, monkeypatch, capsys):
    """1 + 2 epochs equal 3 straight: the checkpoint keeps the random stream of the posterior
    samples (a resume re-ran seed_everything, so the chunks drew other samples)."""
    straight, chunked = tmp_path / "straight", tmp_path / "chunked"
    run_main(train_cli, ["latentode-train", f"hydra.run.dir={straight}",
                         "trainer.max_epochs=3", *TINY], monkeypatch)
    for epochs in (1, 3):
        run_main(train_cli, ["latentode-train", f"hydra.run.dir={chunked}", "ckpt_path=last",
                             f"trainer.max_epochs={epochs}", *TINY], monkeypatch)

    def losses(run):
        with open(run / "metrics.csv") as f:
            return [r["train/loss_epoch"] for r in csv.DictReader(f) if r.get("train/loss_epoch")]

    assert len(losses(straight)) == 3 and losses(chunked) == losses(straight)
    # fewer epochs than it trained: refused before Lightning's traceback, the run's files kept
    capsys.readouterr()
    with pytest.raises(SystemExit):
        run_main(train_cli, ["latentode-train", f"hydra.run.dir={chunked}", "ckpt_path=last",
                             "trainer.max_epochs=2", *TINY], monkeypatch)
    assert "has trained 3 epochs, more than trainer.max_epochs=2: training cannot go back. To " \
           "test it again, use trainer.max_epochs=3" in capsys.readouterr().err
    assert "trainer.max_epochs=3" in (chunked / ".hydra" / "overrides.yaml").read_text()


def test_a_run_in_chunks_with_loader_workers_trains_as_one_straight_run(tmp_path, monkeypatch):
    """With data.num_workers=2 a resumed run trained its second epoch on the first epoch's
    batches and masks: Lightning makes the loader's iterator before it sets the sampler's
    epoch, and worker processes fetch their first batches at once (a review)."""
    straight, chunked = tmp_path / "straight", tmp_path / "chunked"
    workers = ["data.num_workers=2", "test=false", "plots.n_series=0"]
    run_main(train_cli, ["latentode-train", f"hydra.run.dir={straight}",
                         "trainer.max_epochs=2", *TINY, *workers], monkeypatch)
    for epochs in (1, 2):
        run_main(train_cli, ["latentode-train", f"hydra.run.dir={chunked}", "ckpt_path=last",
                             f"trainer.max_epochs={epochs}", *TINY, *workers], monkeypatch)
    a, b = (torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
            for run in (straight, chunked))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_copied_run_resumed_in_place_keeps_to_its_own_checkpoints(tmp_path, monkeypatch):
    # Lightning kept the saved best_model_path, an absolute path into the original directory:
    # the copy tested the original's checkpoint, or died (FileNotFoundError) once it was gone
    original, copy = tmp_path / "original", tmp_path / "copy"
    run_main(train_cli, ["latentode-train", f"hydra.run.dir={original}",
                         "trainer.max_epochs=2", *TINY], monkeypatch)
    shutil.copytree(original, copy)
    original.rename(tmp_path / "elsewhere")
    run_main(train_cli, ["latentode-train", f"hydra.run.dir={copy}", "ckpt_path=last",
                         "trainer.max_epochs=3", *TINY], monkeypatch)
    record = json.loads((copy / "test_metrics.json").read_text())
    best = sorted((copy / "checkpoints").glob("best_*.ckpt"))
    assert len(best) == 1 and record["ckpt_path"] == str(best[0])  # one best, its own
    saved = torch.load(copy / "checkpoints" / "last.ckpt", weights_only=False)
    states = [v for k, v in saved["callbacks"].items() if "val/mse" in k]
    assert states[0]["best_model_path"] == str(best[0])
    assert str(tmp_path / "original") not in json.dumps(states, default=str)


def test_a_run_written_with_lightnings_model_checkpoint_resumes_with_its_record(
        tmp_path, monkeypatch):
    # RunModelCheckpoint's state is saved under ModelCheckpoint's key: runs written before it
    # (Lightning's class in the config) kept no best score, and a worse epoch became "best"
    run = tmp_path / "run"
    lightnings = [f"callbacks.{name}._target_=lightning.pytorch.callbacks.ModelCheckpoint"
                  for name in ("model_checkpoint", "last_checkpoint")]
    run_main(train_cli, ["latentode-train", f"hydra.run.dir={run}", "trainer.max_epochs=2",
                         *TINY, *lightnings], monkeypatch)
    before = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["callbacks"]
    best = next(v for k, v in before.items() if "val/mse" in k)
    run_main(train_cli, ["latentode-train", f"hydra.run.dir={run}", "trainer.max_epochs=3",
                         "ckpt_path=last", *TINY], monkeypatch)
    after = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["callbacks"]
    state = next(v for k, v in after.items() if "val/mse" in k)
    assert state["best_model_score"] <= best["best_model_score"]  # the record carried over
    assert len(list((run / "checkpoints").glob("best_*.ckpt"))) == 1


def test_ckpt_path_last_starts_a_run_and_resumes_it_with_the_same_command(
    tmp_path, monkeypatch, recwarn
):
    # a requeued job runs the same command line: fresh the first time, resumed after that
    run = tmp_path / "run"

    def launch(epochs: int) -> None:
        run_main(train_cli, ["latentode-train", f"hydra.run.dir={run}", "ckpt_path=last",
                             f"trainer.max_epochs={epochs}", *TINY], monkeypatch)

    launch(1)
    assert json.loads((run / "test_metrics.json").read_text())["epochs"] == 1
    recwarn.clear()
    launch(2)
    assert not [w for w in recwarn if "is not empty" in str(w.message)]  # resuming is intended
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows if r.get("train/loss_epoch")] == [0, 1]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 1
    assert json.loads((run / "test_metrics.json").read_text())["epochs"] == 2
    launch(2)  # already trained that far: tests again, trains nothing
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows if r.get("train/loss_epoch")] == [0, 1]
    # the same step tested again: its row replaced, not repeated
    assert len([r for r in rows if r.get("test/mse")]) == 2
    assert json.loads((run / "test_metrics.json").read_text())["epochs"] == 2
    # the same dir without ckpt_path (a new run by mistake) replaced the checkpoints, test
    # metrics, plots and .hydra files silently: refused, the run left as it was
    kept = {p: p.read_bytes() for p in [run / "test_metrics.json", *run.glob(".hydra/*.yaml"),
                                        *run.glob("checkpoints/*.ckpt")]}
    with pytest.raises(SystemExit) as stop:
        run_main(train_cli, ["latentode-train", f"hydra.run.dir={run}", "model.latents=6",
                             "trainer.max_epochs=1", *TINY], monkeypatch)
    assert stop.value.code == 1
    log_text = (run / "train.log").read_text()
    assert re.search(r"latentode-train: error: .*run holds a run already \(best_epoch\d+\.ckpt, "
                     r".*last\.ckpt, test_metrics\.json\): a new run there would replace",
                     log_text)
    assert {p: p.read_bytes() for p in kept} == kept
    # without checkpoints (deleted to save space) the .hydra files are kept all the same
    bare = tmp_path / "bare"
    shutil.copytree(run, bare)
    shutil.rmtree(bare / "checkpoints")
    kept = {p: p.read_bytes() for p in bare.glob(".hydra/*.yaml")}
    with pytest.raises(SystemExit):
        run_main(train_cli, ["latentode-train", f"hydra.run.dir={bare}", "model.latents=5",
                             "trainer.max_epochs=1", *TINY], monkeypatch)
    assert {p: p.read_bytes() for p in kept} == kept
    # ckpt_path=last where only a best checkpoint is left: said so, not "use ckpt_path=last"
    (run / "checkpoints" / "last.ckpt").unlink()
    with pytest.raises(SystemExit):
        run_main(train_cli, ["latentode-train", f"hydra.run.dir={run}", "ckpt_path=last",
                             "trainer.max_epochs=3", *TINY], monkeypatch)
    assert "ckpt_path=last found no checkpoints/last.ckpt there" in (
        run / "train.log").read_text()

    cfg = compose_train(["ckpt_path=last", "~callbacks.last_checkpoint"], tmp_path / "other")
    with pytest.raises(ValueError, match=r"callbacks\.last_checkpoint is switched off"):
        train_cli.resolve_last_checkpoint(cfg)
    cfg = compose_train(["ckpt_path=last", "train=false"], tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"train=false: no checkpoint at .*last\.ckpt"):
        train_cli.resolve_last_checkpoint(cfg)


def test_eval_overrides_are_checked(tmp_path):
    cfg = compose_train(["trainer.max_epochs=1"])
    runs.apply_overrides(cfg, ["data.batch_size=7"])
    assert cfg.data.batch_size == 7
    with pytest.raises(ValueError, match="batchsize"):
        runs.apply_overrides(cfg, ["data.batchsize=7"])
    with pytest.raises(FileNotFoundError, match=r"\.hydra/config\.yaml"):
        runs.find_run_config(tmp_path / "checkpoints" / "x.ckpt")


_UNPICKLED: list[str] = []


def _record_unpickling(what: str) -> str:
    _UNPICKLED.append(what)
    return what


class _Payload:
    """An object whose unpickling calls a function: what a tampered checkpoint could carry."""

    def __reduce__(self):
        return (_record_unpickling, ("ran",))


def test_runs_are_loaded_weights_only(tmp_path, monkeypatch):
    """latentode-eval read checkpoints with weights_only=False, so evaluating a checkpoint ran
    whatever it pickled. Every rebuild of a run (eval, from_run, the study scripts) now goes
    through load_run, which reads tensors and plain containers only and loads the run's
    weights into its model."""
    run = tmp_path / "run"
    run_main(train_cli, ["latentode-train", f"hydra.run.dir={run}", *TINY,
                         "trainer.max_epochs=1", "plots.n_series=0"], monkeypatch)
    loaded = runs.load_run(run, use="this test")
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert loaded.ckpt == (run / "checkpoints" / "last.ckpt").resolve()
    assert loaded.checkpoint["epoch"] == saved["epoch"]
    for name, value in loaded.model.state_dict().items():
        assert torch.equal(value, saved["state_dict"][f"model.{name}"]), name
    saved["extra"] = _Payload()
    tampered = tmp_path / "tampered.ckpt"
    torch.save(saved, tampered)
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text(
        (run / ".hydra" / "config.yaml").read_text())
    with pytest.raises(ValueError, match=r"tampered\.ckpt holds objects other than tensors.*"
                                         r"weights_only=False"):
        eval_cli.evaluate(OmegaConf.create({"ckpt_path": str(tampered), "overrides": [],
                                            "paths": {"output_dir": str(tmp_path / "eval")}}))
    assert _UNPICKLED == []


def test_a_run_config_that_is_not_a_mapping_is_refused_by_name(tmp_path):
    """A run's .hydra/config.yaml holding a list failed deep in OmegaConf (ListConfig indices
    must be integers); it is refused naming the file (found by type checking)."""
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": {}}, ckpt)
    (tmp_path / "run" / ".hydra").mkdir()
    (tmp_path / "run" / ".hydra" / "config.yaml").write_text("- a\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"config\.yaml holds a list, not a mapping"):
        eval_cli.evaluate(OmegaConf.create({"ckpt_path": str(ckpt), "overrides": []}))


def test_resume_from_a_missing_or_foreign_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ckpt_path=.*no such checkpoint file"):
        train_cli.checkpoint_step(str(tmp_path / "nope.ckpt"))
    foreign = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match="not a Lightning training checkpoint"):
        train_cli.checkpoint_step(str(foreign))
    # a file cut short (a run killed while writing it): torch's bare OSError / RuntimeError
    run = tmp_path / "run" / "checkpoints"
    run.mkdir(parents=True)
    torch.save({"epoch": 0, "global_step": 1, "state_dict": {"w": torch.zeros(500)}},
               run / "best_epoch000.ckpt")
    whole = (run / "best_epoch000.ckpt").read_bytes()
    (run / "last.ckpt").write_bytes(whole[: len(whole) // 2])
    cut = (r"last\.ckpt cannot be read as a checkpoint: the file is cut short or damaged .*"
           r"other checkpoints: best_epoch000\.ckpt \(pass one as ckpt_path=\)")
    with pytest.raises(ValueError, match=cut):
        train_cli.checkpoint_step(str(run / "last.ckpt"))
    with pytest.raises(ValueError, match=cut):  # latentode-eval / predict read it so too
        read_checkpoint(run / "last.ckpt", weights_only=True, mmap=False)
    # text in its place (a Git LFS pointer): torch's bare KeyError 101; an empty file
    (run / "last.ckpt").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab")
    for weights_only in (True, False):
        with pytest.raises(ValueError, match=r"cannot be read as a checkpoint: the file is cut"):
            read_checkpoint(run / "last.ckpt", weights_only=weights_only, mmap=False)
    (run / "last.ckpt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"cannot be read as a checkpoint \(an empty file\)"):
        read_checkpoint(run / "last.ckpt")


def test_options_added_since_a_run_are_not_listed_as_its_differences(tmp_path):
    from latentode.cli.checkpoints import config_differences

    cfg = compose_train(TINY, tmp_path)
    saved = OmegaConf.to_container(cfg, resolve=True)
    del saved["model"]["rate_latents"]  # a run from before the option existed
    saved["data"]["batch_size"] = 3
    assert config_differences(saved, cfg) == ["data.batch_size: 3 in the run, 8 now"]


def test_a_damaged_last_checkpoint_leaves_the_runs_config_as_it_was(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run_main(train_cli, ["latentode-train", f"hydra.run.dir={run}", "trainer.max_epochs=1",
                         *TINY], monkeypatch)
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    kept = {p.name: p.read_text() for p in (run / ".hydra").iterdir()}
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ValueError, match=r"last\.ckpt cannot be read as a checkpoint.*other "
                                         r"checkpoints: best_epoch000\.ckpt"):
        run_main(train_cli, ["latentode-train", f"hydra.run.dir={run}", "ckpt_path=last",
                             "trainer.max_epochs=2", *TINY], monkeypatch)
    assert {p.name: p.read_text() for p in (run / ".hydra").iterdir()} == kept


def test_a_classifier_without_labels_in_the_data_is_refused(tmp_path):
    cfg = compose_train([*TINY, "model.n_labels=1"], tmp_path / "run")
    datamodule = train_cli.build_datamodule(cfg)
    with pytest.raises(ValueError, match=r"model\.n_labels=1 asks for a classifier, but the data "
                                         r"have no labels"):
        train_cli.build_model(cfg, datamodule)


@pytest.mark.parametrize("override, pattern", [
    ("+model.encoder.hiden=8", r"model\.encoder\.hiden is not an option of latentode\.nn\."
                               r"ODERNNEncoder .* Did you mean model\.encoder\.hidden\?"),
    ("+model.latent=8", r"model\.latent is not an option of latentode\.models\.LatentODE .*"
                        r"Did you mean model\.latents\?"),
])
def test_an_added_key_the_model_does_not_take_is_named_before_instantiation(
        tmp_path, override, pattern):
    cfg = compose_train([*TINY, override], tmp_path / "run")
    datamodule = train_cli.build_datamodule(cfg)
    with pytest.raises(ValueError, match=pattern):
        train_cli.build_model(cfg, datamodule)
    train_cli.check_arguments(compose_train(TINY).model, "model")  # the defaults pass


@pytest.mark.parametrize("model, says", [
    ("odernn", r"solver=rk4 does not reach latentode\.models\.ODERNN: .*model\.solver"),
    ("gru_dt", r"solver=rk4 does not reach latentode\.models\.GRUDT: it solves no ODE"),
    ("latent_ode", None),
])
def test_a_solver_choice_the_model_does_not_read_is_said(tmp_path, model, says):
    cfg = compose_train([*TINY[:3], f"model={model}", "solver=rk4"], tmp_path / "run")
    datamodule = train_cli.build_datamodule(cfg)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        train_cli.build_model(cfg, datamodule)
    text = " ".join(str(w.message) for w in seen)
    if says is None:
        assert "does not reach" not in text
    else:
        assert re.search(says, text), text


def test_the_progress_bar_shows_where_someone_watches(monkeypatch, tmp_path):
    """refresh_rate: auto -- a line per batch flooded the logs of batch jobs."""
    callbacks = compose_train([], tmp_path / "run").callbacks
    assert callbacks.progress_bar.refresh_rate == "auto"
    for watched, rate in ((True, 1), (False, 0)):
        monkeypatch.setattr(train_cli, "interactive", lambda watched=watched: watched)
        (bar,) = [c for c in train_cli.build_group(callbacks) if "ProgressBar" in type(c).__name__]
        assert bar.refresh_rate == rate
    assert compose_train(["callbacks.progress_bar.refresh_rate=5"]).callbacks.progress_bar \
        .refresh_rate == 5


def test_trainer_counts_of_the_wrong_type_are_refused_by_name(tmp_path):
    cfg = compose_train(["trainer.max_epochs=ten"], tmp_path / "run")
    with pytest.raises(ValueError, match=r"trainer\.max_epochs must be a whole number, got 'ten'"):
        train_cli.train(cfg)
    train_cli.check_trainer_counts(compose_train(["trainer.max_epochs=3"]))


def test_resuming_with_other_model_options_is_refused_and_the_run_kept(tmp_path, monkeypatch,
                                                                       capfd):
    """A resume that forgets one of the run's options (model.latents=6) failed with a state-dict
    size mismatch from inside Lightning, after Hydra had rewritten the run's config in place:
    latentode-eval and latentode-predict then failed on the run too. Checkpoints now carry
    their run's config: the resume is refused by name and the run's config put back."""
    run = tmp_path / "run"
    run_main(train_cli, ["latentode-train", f"hydra.run.dir={run}", "trainer.max_epochs=1",
                         "model.latents=6", *TINY], monkeypatch)
    last = run / "checkpoints" / "last.ckpt"
    assert "model.latents=6" in torch.load(last, weights_only=False)["latentode_run"]["overrides"]
    # testing it again (train=false) logs no val/ metric: outside a sweep nothing to warn about
    run_main(train_cli, ["latentode-train", f"hydra.run.dir={tmp_path / 'test_only'}",
                         "train=false", f"ckpt_path={last}", "model.latents=6", *TINY],
             monkeypatch)
    logged = capfd.readouterr()
    assert "test/mse" in logged.out + logged.err  # the test table: the log is captured here
    assert "optimized_metric" not in logged.out + logged.err
    hydra_files = {p.name: p.read_text() for p in (run / ".hydra").iterdir()}
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # the app's exception itself, not exit(1)
    # (the hint asks for this command's length, trainer.max_epochs=2, not the run's 1)
    with pytest.raises(ValueError, match=r"(?s)holds a different model than this command "
                       r"builds.*model\.latents: 6 in the run, \d+ now.*own overrides: .*"
                       r"trainer\.max_epochs=2 model\.latents=6.* hydra\.run\.dir=\S+ "
                       r"ckpt_path=last\n"
                       r".*are restored from the checkpoint"):
        run_main(train_cli, ["latentode-train", f"hydra.run.dir={run}", "trainer.max_epochs=2",
                             f"ckpt_path={last}", *TINY], monkeypatch)
    # a command that gives no length keeps the run's (not the default's 40: a review)
    with pytest.raises(ValueError, match=r"(?s)own overrides: .*trainer\.max_epochs=1 "
                                         r"model\.latents=6"):
        run_main(train_cli, ["latentode-train", f"hydra.run.dir={run}", f"ckpt_path={last}",
                             *TINY], monkeypatch)
    config = run / ".hydra" / "config.yaml"
    assert {p.name: p.read_text() for p in (run / ".hydra").iterdir()} == hydra_files
    with pytest.raises(FileNotFoundError, match=r"ckpt_path=.*nope\.ckpt: no such checkpoint"):
        run_main(train_cli, ["latentode-train", f"hydra.run.dir={tmp_path / 'x'}",
                             f"ckpt_path={tmp_path / 'nope.ckpt'}", *TINY], monkeypatch)
    # any resume in place that fails before training leaves the run's files as they were
    with pytest.raises(InstantiationException, match="batch_size must be at least 1"):
        run_main(train_cli, ["latentode-train", f"hydra.run.dir={run}", "trainer.max_epochs=2",
                             f"ckpt_path={last}", "model.latents=6", *TINY,
                             "data.batch_size=0"], monkeypatch)
    assert {p.name: p.read_text() for p in (run / ".hydra").iterdir()} == hydra_files
    # another learning rate was ignored without a word (Lightning loads the saved optimiser
    # state, its lr included) while the run's config claimed it
    with pytest.raises(ValueError, match=r"(?s)loads the checkpoint's optimiser state.*would "
                       r"not take effect:\n  module\.optimizer\.lr: \S+ in the run, 0\.5 now"):
        run_main(train_cli, ["latentode-train", f"hydra.run.dir={run}", "trainer.max_epochs=2",
                             f"ckpt_path={last}", "model.latents=6", *TINY,
                             "module.optimizer.lr=0.5"], monkeypatch)
    assert {p.name: p.read_text() for p in (run / ".hydra").iterdir()} == hydra_files
    # the same model on other data settings resumes, and says what differs
    other = tmp_path / "other_data"
    run_main(train_cli, ["latentode-train", f"hydra.run.dir={other}", "trainer.max_epochs=2",
                         f"ckpt_path={last}", "model.latents=6", *TINY,
                         "data.dataset.n_points=50"], monkeypatch)
    logged = capfd.readouterr()
    assert re.search(r"settings that differ from the run's.*\n.*data\.dataset\.n_points: 60 in "
                     r"the run, 50 now", logged.out + logged.err)
    run_main(eval_cli, ["latentode-eval", f"ckpt_path={last}",
                        f"hydra.run.dir={tmp_path / 'eval'}"], monkeypatch)
    assert read_metrics(tmp_path / "eval")["test/mse"] > 0
    # a run config changed behind the checkpoint's back: said plainly by eval and predict
    config.write_text(config.read_text().replace("latents: 6", "latents: 7"))
    with pytest.raises(ValueError, match=r"does not fit the model that its run's config"):
        run_main(eval_cli, ["latentode-eval", f"ckpt_path={last}",
                            f"hydra.run.dir={tmp_path / 'eval2'}"], monkeypatch)
    from latentode import LatentODEForecaster

    with pytest.raises(ValueError, match=r"field\.net\.0\.weight: \[\d+, 6\] in the checkpoint"):
        LatentODEForecaster.from_run(last)


@pytest.mark.parametrize(("override", "says"), [
    ("+trainer.precison=bf16-mixed", r"trainer\.precison is not an option of "
                                     r"lightning\.pytorch\.Trainer .*Did you mean "
                                     r"trainer\.precision\?"),
    ("+callbacks.model_checkpoint.save_top_kk=2", r"callbacks\.model_checkpoint\.save_top_kk is "
                                                  r"not an option .*save_top_k\?"),
    ("+data.batch_sizee=3", r"data\.batch_sizee is not an option of "
                            r"latentode\.data\.LatentODEDataModule .*data\.batch_size\?"),
    ("+module.kl_wiat_epochs=3", r"module\.kl_wiat_epochs .*module\.kl_wait_epochs\?"),
])
def test_a_misspelt_key_of_any_group_is_named_before_the_data_is_built(tmp_path, override,
                                                                        says):
    """Only model keys were checked up front: a trainer or callback typo built the data and
    the model first, then failed in Lightning (a callback's only in its setup)."""
    cfg = compose_train([override, *TINY], tmp_path)
    with pytest.raises(ValueError, match=says):
        train_cli.train(cfg)
    assert not (tmp_path / "checkpoints").exists()


def test_the_resume_hint_keeps_the_runs_own_config_directory(tmp_path, monkeypatch):
    """A run composed from a user's config directory (hydra.searchpath) was told to resume
    with model=my_model alone, which cannot be composed without that directory."""
    own = tmp_path / "conf" / "model"
    own.mkdir(parents=True)
    own.joinpath("my_model.yaml").write_text(
        "defaults:\n  - latent_ode\n  - _self_\nlatents: 6\n")
    search = f"hydra.searchpath=[file://{tmp_path / 'conf'}]"
    run = tmp_path / "run"
    run_main(train_cli, ["latentode-train", search, "model=my_model", f"hydra.run.dir={run}",
                         "trainer.max_epochs=1", *TINY], monkeypatch)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ValueError, match=r"own overrides: hydra\.searchpath=\[file://.*conf\] "
                                         r"model=my_model"):
        run_main(train_cli, ["latentode-train", f"hydra.run.dir={run}", "trainer.max_epochs=2",
                             f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", *TINY],
                 monkeypatch)


def test_a_run_without_validation_series_warns_that_its_intervals_are_narrow(tmp_path,
                                                                             monkeypatch):
    """from_run and latentode-eval calibrate on the training split when the run has no
    validation series; on series the model trained on the noise comes out narrow, which fit
    and from_model say too."""
    from latentode import LatentODEForecaster

    run_main(train_cli, ["latentode-train", f"hydra.run.dir={tmp_path / 'run'}", *TINY,
                         "data.val_fraction=0", "trainer.max_epochs=1", "plots.n_series=0"],
             monkeypatch)
    with pytest.warns(UserWarning, match=r"calibrated on the run's training series \(it has no "
                                         r"validation split\).* Train with data\.val_fraction"):
        LatentODEForecaster.from_run(tmp_path / "run")


def test_the_calibration_series_study_script_scores_each_draw(tmp_path, monkeypatch):
    """scripts/study_calibration_series.py on a tiny run: all its validation series drawn at
    once calibrate exactly as the whole split does, so their coverage is the whole split's."""
    from scripts_loader import load_script

    run = tmp_path / "run"
    run_main(train_cli, ["latentode-train", f"hydra.run.dir={run}", *TINY,
                         "data.val_fraction=0.2", "trainer.max_epochs=1", "plots.n_series=0"],
             monkeypatch)
    script = load_script("study_calibration_series")
    model, datamodule = script.load_trained(run)
    n = len(datamodule.splits["val"])
    everything, rows = script.study(model, datamodule, [1, n], draws=2)
    assert everything["series"] == n and [r["k"] for r in rows] == [1, n]
    assert rows[1]["mean"] == rows[1]["min"] == rows[1]["max"] == everything["coverage"]
    assert rows[1]["std_spread"] == 0.0
    assert all(0.0 <= r["min"] <= r["max"] <= 1.0 for r in rows)


def test_a_run_with_its_own_output_dir_can_be_evaluated(tmp_path, monkeypatch):
    """``paths.output_dir=`` apart from Hydra's run dir: the checkpoints went there and the
    run's config stayed in Hydra's dir, so latentode-eval found no config above the
    checkpoint; the record is copied beside the outputs."""
    out, hydra_dir = tmp_path / "mine", tmp_path / "hydra"
    run_main(train_cli, ["latentode-train", f"hydra.run.dir={hydra_dir}",
                         f"paths.output_dir={out}", "trainer.max_epochs=1", *TINY], monkeypatch)
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / ".hydra" / "config.yaml").read_text() == (
        hydra_dir / ".hydra" / "config.yaml").read_text()
    run_main(eval_cli, ["latentode-eval", f"ckpt_path={out}/checkpoints/last.ckpt",
                        f"hydra.run.dir={tmp_path / 'eval'}", "plot=false",
                        "coverage.enabled=false"], monkeypatch)
    assert "test/mse" in json.loads((tmp_path / "eval" / "test_metrics.json").read_text())[
        "metrics"]


def test_a_run_that_learned_little_says_so_with_the_command_to_go_on(tmp_path, monkeypatch):
    """A run at the channel means' level (the default recipe's plateau: 1 seed in 24 stayed
    there for 40 epochs, test MSE 0.88 normalised) printed its metrics like any other."""
    run = tmp_path / "run"
    run_main(train_cli, ["latentode-train", f"hydra.run.dir={run}", "trainer.max_epochs=1",
                         "test=false", *TINY], monkeypatch)
    log_text = (run / "train.log").read_text()
    said = re.search(r"WARNING\] - the model has learned little beyond the channel means: "
                     r"val/mse (\S+) is (\S+) of what predicting each channel's mean scores on "
                     r"the validation split \((\S+)\)\. .* After 1 epochs: train longer or with "
                     r"another seed\. To go on, run the same command with ckpt_path=last "
                     rf"hydra\.run\.dir={re.escape(str(run))} trainer\.max_epochs=2\.",
                     log_text)
    assert said, log_text[-2000:]
    val, share, baseline = (float(v) for v in said.groups())
    assert share == pytest.approx(val / baseline, abs=0.01) and share >= train_cli.LEARNED_LITTLE


def test_learned_little_compares_with_the_channel_means_score():
    from types import SimpleNamespace

    from latentode.data import from_dataframe
    from latentode.data.sources import periodic

    data = SimpleNamespace(splits={"val": from_dataframe(periodic.load(n_series=5, n_points=20),
                                                         id_col="series_id", time_col="time")})
    baseline = data.splits["val"].channel_mean_mse()
    said = train_cli.learned_little
    assert said(0.5 * baseline, data) is None and said(0.69 * baseline, data) is None
    assert said(0.7 * baseline, data).startswith("the model has learned little beyond the "
                                                 "channel means: val/mse")
    assert said(float("nan"), data) is None and said(float("inf"), data) is None  # diverged
    # a classifier trained on its labels alone (reconstruct=false): its MSE means nothing
    assert said(baseline, data, SimpleNamespace(reconstruct=False)) is None
    assert said(baseline, data, SimpleNamespace(reconstruct=True)) is not None
    assert said(baseline, SimpleNamespace(splits={})) is None  # no validation split


@pytest.mark.parametrize("callbacks, advice", [
    (["callbacks=none"], r"After 2 epochs: train again with another seed or "
                         r"trainer\.max_epochs=4 \(this run keeps no last\.ckpt to resume\)\."),
    (["callbacks=early_stopping", "callbacks.early_stopping.patience=1",
      "callbacks.early_stopping.min_delta=100", "trainer.max_epochs=10"],
     r"After 2 epochs: training stopped after 2 of 10 epochs \(early stopping, max_steps or "
     r"max_time\): train again "
     r"with another seed or a longer patience\."),
])
def test_learned_little_advice_where_a_resume_would_not_help(tmp_path, monkeypatch, callbacks,
                                                            advice):
    """A review: with callbacks=none the printed ckpt_path=last command failed, and an
    early-stopped run was told to resume to twice its epochs (below its max), where early
    stopping stopped it again."""
    run = tmp_path / "run"
    run_main(train_cli, ["latentode-train", f"hydra.run.dir={run}", "trainer.max_epochs=2",
                         "test=false", *[a for a in TINY if not a.startswith("callbacks.")],
                         *callbacks], monkeypatch)
    log_text = (run / "train.log").read_text()
    assert re.search(r"the model has learned little .* " + advice, log_text), log_text[-2000:]


def test_the_learning_rate_warms_up_over_module_scheduler_warmup_steps(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run_main(train_cli, ["latentode-train", f"hydra.run.dir={run}", "trainer.max_epochs=2",
                         "test=false", "module.scheduler.warmup_steps=4", *TINY], monkeypatch)
    rows = [r for r in csv.DictReader((run / "metrics.csv").open()) if r.get("lr-Adamax")]
    # logged at each epoch's start: 2 training series batches of 8 per epoch
    lrs = {int(r["step"]): float(r["lr-Adamax"]) for r in rows}
    assert lrs[0] == pytest.approx(3e-2 / 4)
    assert lrs[2] == pytest.approx(3e-2 * 3 / 4 * 0.998**2)


def test_learned_little_judges_val_mse_only(tmp_path, monkeypatch):
    """A review: with no val/mse logged and the checkpoint monitoring train/loss, the best
    train/loss (4998) was reported as "val/mse 4998 is 5147.03 of ..." """
    run = tmp_path / "run"
    run_main(train_cli, ["latentode-train", f"hydra.run.dir={run}", "trainer.max_epochs=2",
                         "test=false", "trainer.limit_val_batches=0",
                         "callbacks.model_checkpoint.monitor=train/loss", *TINY], monkeypatch)
    assert "learned little" not in (run / "train.log").read_text()


def test_a_resumed_run_keeps_its_grad_clip_unless_the_command_gives_one(tmp_path, monkeypatch):
    """A review: a run trained before module.grad_clip existed (no clip) was resumed with the
    new default 10 without a word."""
    from latentode.cli.checkpoints import RUN_RECORD

    run = tmp_path / "run"
    run_main(train_cli, ["latentode-train", f"hydra.run.dir={run}", "trainer.max_epochs=1",
                         "test=false", *TINY], monkeypatch)
    ckpt = run / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=False)
    del saved[RUN_RECORD]["config"]["module"]["grad_clip"]  # as recorded before the option
    del saved[RUN_RECORD]["config"]["model"]["encoder_error_scale"]  # (idem)
    torch.save(saved, ckpt)
    run_main(train_cli, ["latentode-train", f"hydra.run.dir={run}", "trainer.max_epochs=2",
                         "test=false", "ckpt_path=last", *TINY], monkeypatch)
    log = (run / "train.log").read_text()
    assert "module.grad_clip=None, as the run trained" in log
    assert "model.encoder_error_scale=None, as the run trained" in log
    written = OmegaConf.load(run / ".hydra" / "config.yaml")
    assert written.module.grad_clip is None and written.model.encoder_error_scale is None
    record = torch.load(ckpt, weights_only=False)[RUN_RECORD]
    assert record["config"]["module"]["grad_clip"] is None  # and so on the next resume
    assert record["config"]["model"]["encoder_error_scale"] is None
    # given on the command line, the command's value
    run_main(train_cli, ["latentode-train", f"hydra.run.dir={run}", "trainer.max_epochs=3",
                         "test=false", "ckpt_path=last", "module.grad_clip=5", *TINY],
             monkeypatch)
    assert OmegaConf.load(run / ".hydra" / "config.yaml").module.grad_clip == 5


def test_a_checkpoint_trained_with_other_settings_than_its_runs_config_says_so(
        tmp_path, monkeypatch):
    """A resume with other options of the same shapes (``model.obs_std``) rewrites the run's
    ``.hydra/config.yaml``: a checkpoint from before it was then evaluated as the new model
    without a word (the weights fit). Its own run record names what differs."""
    run = tmp_path / "run"
    run_main(train_cli, ["latentode-train", f"hydra.run.dir={run}", "trainer.max_epochs=1",
                         *TINY], monkeypatch)
    before = run / "checkpoints" / "before.ckpt"
    shutil.copy(run / "checkpoints" / "last.ckpt", before)
    run_main(train_cli, ["latentode-train", f"hydra.run.dir={run}", "trainer.max_epochs=2",
                         "ckpt_path=last", "model.obs_std=0.02", "data.batch_size=4", *TINY],
             monkeypatch)
    with pytest.warns(UserWarning, match=r"(?s)before\.ckpt was trained with settings other "
                      r"than its run's config .*config\.yaml gives.*\n  model\.obs_std: 0\.01 "
                      r"in the run, 0\.02 now\n[^ ].*overrides=\[\.\.\.\]"):
        runs.load_run(before, use="this test")  # (the batch size changes no model: unsaid)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*trained with settings other")
        runs.load_run(before, ["model.obs_std=0.01"], use="this test")  # put back: as trained
        runs.load_run(run, use="this test")  # last.ckpt: trained as the config says
        # the caller's own choice, also where it reaches the model through ${solver} (a review)
        runs.load_run(run, ["solver.rtol=0.0001"], use="this test")
