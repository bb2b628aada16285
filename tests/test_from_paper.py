"""latentode-from-paper: run_models.py command lines as latentode-train runs of the same model."""

from __future__ import annotations

import math
import shlex

import pytest
from fixtures.make_physionet_fixture import write_fixture
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict
from test_cli import compose_train
from test_experiments import _paper_mlp_params

from latentode.cli import from_paper
from latentode.cli import train as train_cli
from latentode.cli.from_paper import PaperFlagError, translate

pytestmark = pytest.mark.filterwarnings("ignore:.*treespec, LeafSpec")

# the paper README's commands (github.com/YuliaRubanova/latent_ode)
HOPPER = ("--niters 300 -n 10000 -l 15 --dataset hopper --latent-ode --rec-dims 30 --gru-units 100 "
          "--units 300 --gen-layers 3 --rec-layers 3")
PERIODIC = "--niters 500 -n 1000 -s 50 -l 10 --dataset periodic --latent-ode --noise-weight 0.01"


def composed(args: str, extra: list[str] | None = None, output_dir=None):
    return compose_train([*translate(shlex.split(args)).overrides, *(extra or [])], output_dir)


def sections(cfg) -> dict:
    return {k: OmegaConf.to_container(cfg[k], resolve=False)
            for k in ("model", "data", "module", "trainer", "solver")}


def test_the_papers_hopper_command_is_the_hopper_recipe():
    # conf/model/hopper_latent_ode.yaml and the hopper experiments were written from this
    # command (tests/test_experiments.py checks them against the paper's parameter counts); the
    # translation differs only where the command does: no -s (the encoder sees every point), its
    # default seed 1991 (model and windows) and the paper code's scaling over its whole file
    ours = composed(HOPPER)
    recipe = compose_train(["experiment=hopper_interp", "observed_fraction=1.0", "seed=1991",
                            "data.dataset.window_seed=1991",
                            "data.dataset.scale_trajectories=10000"])
    assert sections(ours) == sections(recipe)
    assert ours.seed == 1991 and ours.task_name == "hopper_interp"
    extrap = composed(HOPPER + " --extrap -s 0.3")
    recipe = compose_train(["experiment=hopper_extrap", "observed_fraction=0.3", "seed=1991",
                            "data.dataset.window_seed=1991",
                            "data.dataset.scale_trajectories=10000"])
    assert sections(extrap) == sections(recipe)


def test_the_papers_physionet_command_is_the_physionet_recipe_with_its_split():
    cmd = ("--niters 100 -n 8000 -l 20 --dataset physionet --latent-ode --rec-dims 40 "
           "--rec-layers 3 --gen-layers 3 --units 50 --gru-units 50 --quantization 0.016 --classif")
    ours = composed(cmd)
    recipe = compose_train(["experiment=physionet_interp", "model=hopper_latent_ode",
                            "model.n_labels=1", "model.z0_at=start", "seed=1991",
                            "data.val_fraction=0", "data.test_fraction=0.2",
                            "trainer.limit_val_batches=0", "data.dataset.variables=paper",
                            "data.dataset.labels=true"])
    assert sections(ours) == sections(recipe)  # with --classif: set-a alone (its labels)
    # the recipe's own model, plus the label head the command asks for and the paper code's
    # mean-and-std encoder state (conf/experiment/physionet_interp.yaml keeps a plain GRU state)
    # (and the hopper model's output_bias=null, the same start as "auto" on standardised data)
    plain = compose_train(["experiment=physionet_interp", "model.n_labels=1", "model.z0_at=start",
                           "model.encoder.std_state=true", "model.output_bias=null"])
    assert sections(ours)["model"] == sections(plain)["model"]
    assert ours.model.n_labels == 1 and ours.callbacks.model_checkpoint is None


@pytest.mark.parametrize("flag", ["--latent-ode", "--ode-rnn"])
def test_the_networks_have_the_paper_codes_parameter_counts(flag):
    cfg = composed(f"{PERIODIC.replace('--latent-ode', flag)} --rec-layers 2 --gen-layers 3 "
                   "-u 40 --rec-dims 12 -g 30")
    with open_dict(cfg):
        cfg.model.input_dim = 1
    model = instantiate(cfg.model)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    if flag == "--latent-ode":  # create_net(l, l, --gen-layers, -u); (rec, rec, --rec-layers, -u)
        assert count(model.field) == _paper_mlp_params(10, 10, 40, n_layers=3)
        assert count(model.encoder.ode) == _paper_mlp_params(12, 12, 40, n_layers=2)
        assert cfg.model.encoder.gru_units == 30 and cfg.model.encoder.std_state
    else:  # ODE_RNN: create_net(l, l, --rec-layers, -u), the MLP GRU of -g
        assert count(model.ode) == _paper_mlp_params(10, 10, 40, n_layers=2)
        assert cfg.model.gru_units == 30 and cfg.model.std_state
    assert cfg.model.obs_std == 0.01 and cfg.data.task.count == 50
    assert (cfg.data.dataset.n_series, cfg.data.dataset.noise_weight) == (1000, 0.01)
    assert cfg.data.scale is True  # standardised (unscaled, as run_models.py, stalls longer)
    assert cfg.module.optimizer.lr == 0.01 and cfg.trainer.max_epochs == 500


TINY = "--niters 1 -n 20 -t 30 -b 8 -l 3 -u 12 --rec-dims 6 -g 12 --dataset periodic"


@pytest.mark.parametrize("flags", [
    "--latent-ode -s 10", "--latent-ode --extrap -s 0.5", "--latent-ode --z0-encoder rnn",
    "--ode-rnn", "--rnn-vae --extrap", "--classic-rnn -s 0.5", "--latent-ode --poisson",
])
def test_translated_commands_train_and_test(flags, tmp_path):
    cfg = composed(f"{TINY} {flags}", ["plots.n_samples=3", "plots.n_series=1",
                                       "callbacks.progress_bar.refresh_rate=0"], tmp_path)
    assert cfg.data.dataset.n_points == 30 and cfg.data.batch_size == 8
    if "--extrap" in flags:  # split_data_extrap: the first half of the points to the encoder
        assert cfg.data.task._target_.endswith("Extrapolation") and cfg.data.task.count == 15
    metrics = train_cli.train(cfg)
    assert math.isfinite(metrics["test/mse"])
    assert (tmp_path / "plots" / "test_series.png").is_file()


@pytest.mark.parametrize("flags", ["--latent-ode --classif", "--ode-rnn", "--rnn-vae"])
def test_translated_physionet_commands_train_and_test(flags, tmp_path):
    # the latent ODE with its ODE-RNN encoder takes the physionet recipe; the others its data
    write_fixture(tmp_path / "physionet")  # 4 patients in the challenge's format
    pooled = "--classif" not in flags  # the paper code pools set-a and set-b then
    if pooled:  # set-b: set-a's records under other RecordIDs
        (tmp_path / "physionet" / "set-b").mkdir()
        for path in (tmp_path / "physionet" / "set-a").glob("*.txt"):
            rid = int(path.stem)
            (tmp_path / "physionet" / "set-b" / f"{rid + 10_000}.txt").write_text(
                path.read_text().replace(f"RecordID,{rid}", f"RecordID,{rid + 10_000}"))
    cfg = composed(f"--niters 1 -l 3 -u 12 --rec-dims 6 -g 12 -b 2 --dataset physionet -s 0.5 "
                   f"{flags}", [f"data.dataset.root={tmp_path / 'physionet'}",
                                "plots.n_samples=3", "plots.n_series=1",
                                "callbacks.progress_bar.refresh_rate=0"], tmp_path)
    assert cfg.data.dataset.name == "physionet" and cfg.task_name == "physionet_interp"
    assert cfg.data.task.fraction == 0.5 and cfg.data.dataset.quantization == 0.1
    assert cfg.data.dataset.variables == "paper"
    assert list(cfg.data.dataset.subset) == (["a", "b"] if pooled else ["a"])
    metrics = train_cli.train(cfg)
    assert math.isfinite(metrics["test/mse"])
    if "--classif" in flags:
        assert "test/auc" in metrics or "test/accuracy" in metrics


@pytest.mark.parametrize("args, message", [
    ("--dataset periodic", "no model: give one of --latent-ode"),
    ("--latent-ode --load 123", "latentode-eval ckpt_path=<run>/checkpoints/last.ckpt"),
    ("--latent-ode --dataset activity", "experiment=csv"),
    ("--latent-ode --dataset mnist", "run_models.py knows periodic, hopper"),
    ("--classic-rnn --input-decay --rnn-cell expdecay", "GRU-D"),
    ("--latent-ode --dataset hopper --classif", "no labels"),
    ("--rnn-vae --dataset physionet --classif", "only the latent ODE has a label head"),
    ("--latent-ode --ode-rnn --dataset physionet --classif", "takes --ode-rnn before"),
    ("--latent-ode --dataset physionet --extrap",
     "data.task._target_=latentode.data.Extrapolation"),
    ("--latent-ode -s 0", "a share in (0, 1] or a count"),
    ("--latent-ode --extrap -s 30", "as a fraction"),
    ("--latent-ode --z0-encoder lstm", "odernn or rnn"),
    ("--latent-ode -c 20", "cutting a stretch of points"),
    ("--latent-ode --epochs 3", "not run_models.py flags: --epochs 3"),
])
def test_what_has_no_counterpart_is_refused_with_the_way_out(args, message):
    with pytest.raises(PaperFlagError, match=None) as info:
        translate(shlex.split(args))
    assert message in str(info.value)


def test_differences_are_noted():
    notes = translate(shlex.split(
        "--dataset physionet --latent-ode --linear-classif --classif --viz -n 500")).notes
    text = "\n".join(notes)
    assert "--linear-classif" in text and "--viz" in text and "-n 500" in text
    assert "80% train, 20% test, no validation" in text
    notes = translate(shlex.split("--dataset hopper --ode-rnn --extrap --noise-weight 0.1")).notes
    assert any("refuses it" in n for n in notes) and any("--noise-weight" in n for n in notes)


def test_main_prints_the_command_runs_it_and_fails_cleanly(capsys, monkeypatch):
    assert from_paper.main(["--", *shlex.split(PERIODIC)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("latentode-train experiment=periodic_interp ") and out.count("\n") == 1
    assert "no validation" in err
    assert shlex.split(out)[1:] == translate(shlex.split(PERIODIC)).overrides

    calls = []
    monkeypatch.setattr(from_paper.subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    assert from_paper.main(["--run", "--", *shlex.split(PERIODIC)]) == 0
    assert calls[0][1:3] == ["-m", "latentode.cli.train"]
    assert calls[0][3:] == translate(shlex.split(PERIODIC)).overrides

    # latentode-train's own overrides after a second --
    calls.clear()
    assert from_paper.main(["--run", "--", *shlex.split(PERIODIC), "--", "trainer=gpu",
                            "model.encoder.cuda_graph=true"]) == 0
    assert calls[0][-2:] == ["trainer=gpu", "model.encoder.cuda_graph=true"]
    assert calls[0][3:-2] == translate(shlex.split(PERIODIC)).overrides

    assert from_paper.main(["--", "--dataset", "activity", "--latent-ode"]) == 2
    assert "latentode-from-paper: --dataset activity" in capsys.readouterr().err


def test_values_pass_exactly_and_what_differs_is_noted():
    t = translate(shlex.split("--latent-ode --lr 0.000123456789 -s 0.9999999 --max-t 2.123456789 "
                              "--poisson"))
    assert "module.optimizer.lr=0.000123456789" in t.overrides
    assert "data.task.fraction=0.9999999" in t.overrides
    assert "data.dataset.t_max=2.123456789" in t.overrides
    assert any("--poisson: the paper code scales the rate's integral" in n for n in t.notes)
    # the paper code's Poisson network: z0 and the field on 2 x -l, the rate on the last -l
    t = translate(shlex.split("--latent-ode -l 15 -u 40 --poisson"))
    assert {"model.poisson=true", "model.latents=30", "model.rate_latents=15",
            "model.rate_layers=2", "model.gen_units=40"} <= set(t.overrides)
    model = instantiate(compose_train(t.overrides).model, input_dim=3)
    assert model.decoder.in_features == 15 and model.rate[0].in_features == 15
    assert model.field.net[0].in_features == 30
    # the paper code takes the hopper file's 10,000 trajectories for any larger -n
    t = translate(shlex.split("--latent-ode --dataset hopper -n 20000"))
    assert "data.dataset.n_trajectories=10000" in t.overrides
    assert any("-n 20000" in n for n in t.notes)
    compose_train(t.overrides)
    # PhysioNet with labels: the paper code reads set-a alone
    notes = "\n".join(translate(shlex.split("--latent-ode --dataset physionet --classif")).notes)
    assert "all records of set-a (4,000 patients) are read" in notes
    assert "41 channels" in notes
    notes = "\n".join(translate(shlex.split("--latent-ode --dataset physionet")).notes)
    assert "set-a and set-b (8,000 patients)" in notes and "data.dataset.subset=a" in notes
    assert "schedule=series" in notes and "min-max" in notes
