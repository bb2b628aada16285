"""The paper's experiment recipes (conf/experiment/*.yaml): each composes and runs end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixtures.make_physionet_fixture import write_fixture
from hydra.utils import instantiate
from omegaconf import open_dict
from test_cli import CONF, TINY, compose_train

from latentode.cli import train as train_cli
from latentode.data.sources import physionet

pytestmark = pytest.mark.filterwarnings("ignore:.*treespec, LeafSpec")

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
ISSUE_EXPERIMENTS = {"periodic_interp", "periodic_extrap", "hopper_interp", "hopper_extrap",
                     "physionet_interp", "co2"}

# Small networks and plots for every family (the recipes' sizes are the paper's).
TINY_MODEL = [
    "model.gen_units=16",
    "model.encoder.hidden=8",
    "model.encoder.z0_units=16",
    "plots.n_series=2",
    "plots.n_samples=5",
    "callbacks.progress_bar.refresh_rate=0",
    "trainer.log_every_n_steps=1",
]
TINY_ODE_RNN = ["model.gen_layers=1", "model.encoder.ode_units=16", "model.encoder.ode_layers=1",
                "model.encoder.gru_units=16"]


@pytest.fixture(scope="module")
def hopper_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for both hopper recipes: the 5 trajectories are simulated once."""
    return tmp_path_factory.mktemp("hopper_cache")


def tiny_overrides(experiment: str, tmp_path: Path, request: pytest.FixtureRequest) -> list[str]:
    """Per-family overrides that make ``experiment`` run in seconds on a CPU."""
    family = experiment.split("_")[0]
    if family == "periodic":
        return TINY
    if family == "hopper":
        pytest.importorskip("dm_control")
        pytest.importorskip("mujoco")
        cache = request.getfixturevalue("hopper_cache")
        # 5 trajectories: 4 train, 1 test (the source's in-order 80/20 split)
        return ["data.dataset.n_trajectories=5", f"data.dataset.cache_dir={cache}",
                "data.dataset.progress=false", "data.batch_size=4", *TINY_MODEL, *TINY_ODE_RNN]
    if family == "physionet":
        write_fixture(tmp_path / "physionet")  # 4 patients, the challenge's file format
        return [f"data.dataset.root={tmp_path / 'physionet'}", "data.batch_size=2",
                *TINY_MODEL, *TINY_ODE_RNN]
    if family == "csv":  # unaligned series, each on its own clock: what the recipe is for
        path = tmp_path / "own.csv"
        write_unaligned_csv(path)
        return [f"data.dataset.path={path}", "data.batch_size=4", *TINY_MODEL, *TINY_ODE_RNN]
    if family == "co2":
        pytest.importorskip("statsmodels")
        return [*TINY_MODEL, "model.latents=4"]
    pytest.fail(f"no tiny overrides for experiment {experiment!r}: add its family here.")


def write_unaligned_csv(path: Path, n_series: int = 12) -> None:
    """A long-format CSV of series that share no time stamp, with a gappy second channel."""
    rng = np.random.default_rng(0)
    frames = []
    for i in range(n_series):
        t = np.sort(rng.uniform(0, 10, 15)) + rng.uniform(0, 100)
        b = np.where(rng.random(t.size) < 0.7, np.cos(t), np.nan)
        frames.append(pd.DataFrame({"series_id": f"s{i}", "time": t, "a": np.sin(t), "b": b}))
    pd.concat(frames).to_csv(path, index=False)


def test_csv_recipe_walks_each_series_on_its_own_clock(tmp_path):
    cfg = compose_train(["experiment=csv", "data.dataset.path=own.csv"])
    assert cfg.data.dataset.name == "csv" and cfg.data.time_origin == "series"
    assert cfg.model.encoder.schedule == "series"
    assert compose_train(["experiment=csv", "model/encoder=rnn"]).model.encoder.schedule == \
        "series"


def test_csv_recipe_with_a_baseline_is_refused_with_the_way_out(tmp_path):
    path = tmp_path / "own.csv"
    write_unaligned_csv(path)
    cfg = compose_train(["experiment=csv", "model=odernn", f"data.dataset.path={path}"],
                        tmp_path / "run")
    datamodule = train_cli.build_datamodule(cfg)
    with pytest.raises(ValueError, match=r"model\.encoder is not an option of "
                                         r"latentode\.models\.ODERNN .*experiment=csv: with a "
                                         r"model without an encoder, use data=csv instead"):
        train_cli.build_model(cfg, datamodule)


@pytest.mark.parametrize("n_labels, outcome", [
    (2, r"model\.n_labels=2 but label column 'kind' holds classes 0\.\.2: set model\.n_labels=3"),
    (1, r"model\.n_labels=1 but label column 'kind' holds classes 0\.\.2"),
    (0, "warning"),
])
def test_a_label_head_that_does_not_fit_the_labels_is_named_before_training(
        tmp_path, n_labels, outcome):
    """Three classes: a head of 2 failed in the loss (IndexError), a head of 1 in the metrics
    (sklearn), and none left the labels unused without a word."""
    path = tmp_path / "own.csv"
    write_unaligned_csv(path)
    df = pd.read_csv(path)
    df["kind"] = df["series_id"].str[1:].astype(int) % 3
    df.to_csv(path, index=False)
    cfg = compose_train(["experiment=csv", f"data.dataset.path={path}",
                         "data.dataset.label_col=kind", f"model.n_labels={n_labels}"],
                        tmp_path / "run")
    datamodule = train_cli.build_datamodule(cfg)
    if outcome == "warning":
        with pytest.warns(UserWarning, match=r"labels of column 'kind' are loaded, but "
                                             r"model\.n_labels=0.*Add model\.n_labels=3"):
            train_cli.build_model(cfg, datamodule)
    else:
        with pytest.raises(ValueError, match=outcome):
            train_cli.build_model(cfg, datamodule)


def test_labels_that_change_within_a_series_or_that_no_model_part_reads_are_named(tmp_path):
    path = tmp_path / "own.csv"
    write_unaligned_csv(path)
    df = pd.read_csv(path)
    df["died"] = df["series_id"].str[1:].astype(int) % 2
    df.loc[df.index[3], "died"] = 1 - df.loc[df.index[3], "died"]  # one wrong row in series s0
    df.to_csv(path, index=False)
    common = ["experiment=csv", f"data.dataset.path={path}", "data.dataset.label_col=died"]
    cfg = compose_train([*common, "model.n_labels=1"], tmp_path / "run")
    with pytest.raises(ValueError, match=r"label column 'died' changes within series 's0' "
                                         r"\(values \[0\.0, 1\.0\]\).*model\.label_type=time"):
        train_cli.build_model(cfg, train_cli.build_datamodule(cfg))
    cfg = compose_train(["data=csv", "model=gru_dt", *common[1:]], tmp_path / "run2")
    with pytest.warns(UserWarning, match=r"labels of column 'died' are loaded, but "
                                         r"latentode\.models\.GRUDT has no classifier"):
        train_cli.build_model(cfg, train_cli.build_datamodule(cfg))


def test_experiments_exist():
    assert set(EXPERIMENTS) >= ISSUE_EXPERIMENTS


@pytest.mark.filterwarnings("ignore:.*have no observed value")  # the 3-record fixture
@pytest.mark.filterwarnings("ignore:physionet. (dropped|skipped)")
@pytest.mark.filterwarnings("ignore:Total length of .DataLoader. across ranks is zero")
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_runs_fast_dev_run(experiment, tmp_path, request):
    overrides = tiny_overrides(experiment, tmp_path, request)
    out = tmp_path / "run"
    cfg = compose_train([f"experiment={experiment}", "trainer.fast_dev_run=true", *overrides],
                        out)
    assert cfg.task_name == experiment
    metrics = train_cli.train(cfg)
    assert metrics["test/mse"] == pytest.approx(metrics["test/mse"])  # finite, not NaN
    assert (out / "plots" / "test_series.png").is_file()


def _paper_mlp_params(n_in: int, n_out: int, units: int, n_layers: int) -> int:
    """Parameters of the paper's ``utils.create_net(n_in, n_out, n_layers, units)``: a first
    linear map to ``units``, ``n_layers`` more ``units -> units`` maps, then one to ``n_out``."""
    return (n_in + 1) * units + n_layers * (units + 1) * units + (units + 1) * n_out


@pytest.mark.parametrize("experiment", ["hopper_interp", "hopper_extrap"])
def test_hopper_recipes_carry_the_paper_hyperparameters(experiment):
    cfg = compose_train([f"experiment={experiment}"])
    model, enc = cfg.model, cfg.model.encoder
    assert model._target_ == "latentode.models.LatentODE"
    assert enc._target_ == "latentode.nn.ODERNNEncoder"
    assert (model.latents, enc.hidden, enc.gru_units) == (15, 30, 100)  # -l, --rec-dims, -g
    assert (model.gen_units, enc.ode_units) == (300, 300)  # --units
    # --gen-layers 3 / --rec-layers 3: create_net(n_layers=3), 4 hidden layers (here: layers=4)
    assert (model.gen_layers, enc.ode_layers) == (4, 4)
    assert (model.obs_std, model.n_samples, model.dec_layers) == (1e-3, 3, 0)
    assert cfg.trainer.max_epochs == 300  # --niters 300
    assert cfg.data.batch_size == 50 and cfg.data.scale is False
    assert cfg.data.dataset.name == "hopper" and cfg.data.dataset.n_trajectories == 10_000
    assert cfg.module.optimizer._target_ == "torch.optim.Adamax" and cfg.module.optimizer.lr == 1e-2
    assert (cfg.module.scheduler.gamma, cfg.module.scheduler.min_factor) == (0.999, 0.1)
    assert (cfg.module.kl_wait_epochs, cfg.module.kl_rate) == (10, 0.99)
    if experiment == "hopper_interp":
        assert cfg.data.dataset.task == "interp" and cfg.data.dataset.window == 100
        assert cfg.data.task._target_.endswith("Interpolation") and cfg.data.task.fraction == 0.1
        assert compose_train([f"experiment={experiment}", "observed_fraction=0.3"]
                             ).data.task.fraction == 0.3
    else:
        assert cfg.data.dataset.task == "extrap"
        assert cfg.data.task._target_.endswith("Extrapolation") and cfg.data.task.count == 66

    # The networks built from the recipe have exactly the paper's parameter counts.
    with open_dict(cfg):
        cfg.model.input_dim = 14
    built = instantiate(cfg.model)
    count = sum(p.numel() for p in built.field.parameters())
    assert count == _paper_mlp_params(15, 15, 300, n_layers=3)
    count = sum(p.numel() for p in built.encoder.ode.parameters())
    assert count == _paper_mlp_params(30, 30, 300, n_layers=3)


def test_physionet_recipe_carries_the_paper_hyperparameters():
    cfg = compose_train(["experiment=physionet_interp"])
    model, enc, data = cfg.model, cfg.model.encoder, cfg.data
    assert (model.latents, enc.hidden, enc.gru_units) == (20, 40, 50)
    assert (model.gen_units, enc.ode_units, model.gen_layers, enc.ode_layers) == (50, 50, 4, 4)
    assert (model.obs_std, model.n_samples, cfg.trainer.max_epochs) == (0.01, 3, 100)
    # each patient on its own clock, a stay on [0, 1] (the paper code divides each batch's times
    # by its last), Euler steps of at most 1/50 of a stay (its minimum_step)
    assert (enc.schedule, enc.max_step, data.dataset.time_scale) == ("series", 0.02, 48)
    assert data.dataset.quantization == 0.016 and data.batch_size == 50
    assert data.dataset.variables is None  # the 37 time series (conf/data/physionet.yaml)
    assert data.task._target_.endswith("Interpolation") and data.task.fraction == 1.0
    assert Path(data.dataset.root).parts[-2:] == ("data", "physionet")


@pytest.mark.filterwarnings("ignore:physionet. (dropped|skipped|no outcomes)")
def test_physionet_pooled_sets_and_the_papers_channels_from_the_command_line(tmp_path):
    """data.dataset.subset=[a,b] data.dataset.variables=paper: the paper code's interpolation
    data (set-a and set-b pooled, its 41 channels) through the config."""
    root = tmp_path / "physionet"
    fixture = write_fixture(root)
    (root / "set-b").mkdir()
    for path in fixture["set_dir"].glob("*.txt"):  # set-b: the same records, other RecordIDs
        rid = int(path.stem)
        (root / "set-b" / f"{rid + 10_000}.txt").write_text(
            path.read_text().replace(f"RecordID,{rid}", f"RecordID,{rid + 10_000}"))
    cfg = compose_train(["experiment=physionet_interp", f"data.dataset.root={root}",
                         "data.dataset.subset=[a,b]", "data.dataset.variables=paper"],
                        tmp_path / "run")
    datamodule = train_cli.build_datamodule(cfg)
    ids = sorted(int(i) for i in datamodule.dataset.ids)
    every = fixture["record_ids"] + fixture["empty_ids"]  # descriptors are channels here
    assert ids == sorted(every + [r + 10_000 for r in every])
    assert list(datamodule.dataset.channels) == physionet.PAPER_PARAMS


@pytest.mark.filterwarnings("ignore:physionet. (dropped|skipped)")
@pytest.mark.filterwarnings("ignore:.*have no observed value")
def test_physionet_recipe_carries_no_labels_or_statics_unless_asked(tmp_path):
    """Every physionet_interp run warned twice that the labels and the descriptors were loaded
    but unread; they are left out unless asked for (data.dataset.labels=true classifies)."""
    import warnings

    root = tmp_path / "physionet"
    write_fixture(root)
    common = ["experiment=physionet_interp", f"data.dataset.root={root}", *TINY_MODEL,
              *TINY_ODE_RNN]
    cfg = compose_train(common, tmp_path / "run")
    datamodule = train_cli.build_datamodule(cfg)
    assert datamodule.dataset.labels is None and datamodule.dataset.static is None
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*(are loaded|loaded and batched)")
        train_cli.build_model(cfg, datamodule)
    cfg = compose_train([*common, "data.dataset.labels=true", "data.dataset.static=true",
                         "model.n_labels=1"], tmp_path / "run2")
    datamodule = train_cli.build_datamodule(cfg)
    assert datamodule.dataset.label_col == "label" and datamodule.dataset.labels is not None
    assert datamodule.dataset.static_names == physionet.STATIC_COLUMNS
    with pytest.warns(UserWarning, match="loaded and batched"):
        train_cli.build_model(cfg, datamodule)
    cfg = compose_train([*common, "model.n_labels=1"], tmp_path / "run3")
    with pytest.raises(ValueError, match=r"data\.dataset\.labels=true for data=physionet"):
        train_cli.build_model(cfg, train_cli.build_datamodule(cfg))


def test_physionet_without_data_names_the_directory(tmp_path):
    missing = tmp_path / "no_physionet_here"
    cfg = compose_train(["experiment=physionet_interp", f"data.dataset.root={missing}"],
                        tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="no_physionet_here"):
        train_cli.train(cfg)


def test_two_series_train_on_both_say_so_and_skip_the_test(tmp_path, monkeypatch):
    """2 series leave nothing to hold out: the split said nothing, training went on without
    validation, and the test crashed in the test plot (numpy IndexError on an empty split).
    Now the split warns naming the way out, the test is skipped, eval refuses by name."""
    from test_cli import run_main

    from latentode.cli import evaluate as eval_cli
    from latentode.lit.plots import plot_test_series

    path = tmp_path / "two.csv"
    write_unaligned_csv(path, n_series=2)
    common = ["experiment=csv", f"data.dataset.path={path}"]
    cfg = compose_train(common, tmp_path / "run")
    with pytest.warns(UserWarning, match=r"2 series are too few to hold out validation and "
                                         r"test series .*data\.val_fraction=0 "
                                         r"data\.test_fraction=0"):
        datamodule = train_cli.build_datamodule(cfg)
    with pytest.raises(ValueError, match="the test split has no series"):
        plot_test_series(train_cli.build_model(cfg, datamodule), datamodule, tmp_path / "p.png")

    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # the app's exception itself, not exit(1)
    run = tmp_path / "run"
    import warnings

    with warnings.catch_warnings():  # nothing to validate: Lightning warned of an empty
        # loader and, every epoch, of a best checkpoint's val/mse it never found
        warnings.filterwarnings("error", message=".*(Total length of .DataLoader.|could not "
                                "find the monitored key)")
        run_main(train_cli, ["latentode-train", *common, f"hydra.run.dir={run}",
                             "trainer.max_epochs=1", "callbacks.progress_bar.refresh_rate=0"],
                 monkeypatch)
    assert not (run / "test_metrics.json").exists()
    # early stopping on val/mse: Lightning's RuntimeError after the first epoch; now refused
    with pytest.raises(ValueError, match=r"early stopping watches val/mse, but this run "
                                         r"validates nothing \(no validation series\)"):
        run_main(train_cli, ["latentode-train", *common, f"hydra.run.dir={tmp_path / 'es'}",
                             "trainer.max_epochs=1", "callbacks=early_stopping"], monkeypatch)
    ten = tmp_path / "ten.csv"  # validation series, switched off by limit_val_batches
    write_unaligned_csv(ten, n_series=10)
    for limit in ("0.0", "false"):  # (false: Lightning reads it as 0)
        with pytest.raises(ValueError, match=r"validates nothing \(trainer\.limit_val_batches="
                                             r"(0\.0|False)\): set trainer\.limit_val_batches="
                                             r"null"):
            run_main(train_cli, ["latentode-train", "experiment=csv", f"data.dataset.path={ten}",
                                 f"hydra.run.dir={tmp_path / ('es' + limit)}",
                                 "trainer.max_epochs=1", "callbacks=early_stopping",
                                 f"trainer.limit_val_batches={limit}"], monkeypatch)
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    with pytest.raises(ValueError, match=r"test split has no series \(2 series in all, "
                                         r"data\.test_fraction=0\.2\): nothing to evaluate"):
        run_main(eval_cli, ["latentode-eval", f"ckpt_path={ckpt}",
                            f"hydra.run.dir={tmp_path / 'eval'}"], monkeypatch)


def test_no_held_out_series_asked_for_is_not_warned(tmp_path):
    path = tmp_path / "ten.csv"
    write_unaligned_csv(path, n_series=10)
    cfg = compose_train(["experiment=csv", f"data.dataset.path={path}", "data.val_fraction=0",
                         "data.test_fraction=0"], tmp_path / "run")
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*too few to hold out")
        datamodule = train_cli.build_datamodule(cfg)
    assert len(datamodule.splits["train"]) == 10 and len(datamodule.splits["test"]) == 0


def test_no_validation_series_is_named_before_an_experiments_own_limit():
    """The hopper recipes set trainer.limit_val_batches=0 themselves and have no validation
    series: the refusal named the setting the user never gave ("drop it"), then, once dropped,
    the missing series. The series come first, with the way that helps (data.split)."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"trainer": {"limit_val_batches": 0}})
    empty = SimpleNamespace(splits={"train": [1], "val": [], "test": [1]})
    assert train_cli._without_validation(cfg, empty) == "no validation series"
    full = SimpleNamespace(splits={"train": [1], "val": [1], "test": [1]})
    assert train_cli._without_validation(cfg, full) == "trainer.limit_val_batches=0"
    assert train_cli._without_validation(OmegaConf.create({"trainer": {"limit_val_batches":
                                                                       False}}), full)
    assert not train_cli._without_validation(OmegaConf.create({"trainer": {}}), full)
    from lightning.pytorch.callbacks import EarlyStopping

    with pytest.raises(ValueError, match=r"carve some from the training series with "
                                         r"data\.split, as hparams_search=hopper_optuna does"):
        train_cli.drop_validation_monitors([EarlyStopping(monitor="val/mse")],
                                           "no validation series")


def test_another_encoders_option_names_the_preset_made_for_the_chosen_one():
    """experiment=hopper_interp model/encoder=rnn: the hopper preset's ODE-RNN sizes reached the
    RNN encoder, and the refusal asked "did you mean model.encoder.z0_units?"."""
    cfg = compose_train(["experiment=hopper_interp", "model/encoder=rnn"])
    with pytest.raises(ValueError, match=r"ode_units is an option of model/encoder=odernn .*"
                                         r"remove it \(~model\.encoder\.ode_units\) or choose "
                                         r"the preset made for rnn: "
                                         r"model=hopper_latent_ode_rnn\.$"):
        train_cli.check_arguments(cfg.model, "model")
    cfg = compose_train(["model/encoder=rnn", "+model.encoder.z0_unit=3"])
    with pytest.raises(ValueError, match=r"Did you mean model\.encoder\.z0_units\?"):
        train_cli.check_arguments(cfg.model, "model")  # a typo stays a typo
