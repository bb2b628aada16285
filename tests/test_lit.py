"""The LightningModule on tiny data: logged keys, NaN stops the run, KL annealing, LR floor."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from latentode.data import Interpolation, LatentODEDataModule, collate, load_dataset
from latentode.lit import LatentODELightning, exponential_decay, kl_weight_schedule
from latentode.lit.module import SOLVER_COUNTS
from latentode.models import LatentODE
from latentode.nn import ODERNNEncoder

pytestmark = [pytest.mark.filterwarnings("ignore:.*treespec, LeafSpec"),
              pytest.mark.usefixtures("one_thread")]

TERMS = ("loss", "loglik", "kl", "mse", "mse_data", "mse_seen", "mse_unseen")


def tiny_model(seed: int = 0) -> LatentODE:
    torch.manual_seed(seed)
    encoder = ODERNNEncoder(1, 3, hidden=8, ode_units=16, z0_units=16)
    return LatentODE(1, latents=3, encoder=encoder, gen_units=16, obs_std=0.1, n_samples=2)


def tiny_datamodule() -> LatentODEDataModule:
    return LatentODEDataModule(
        lambda: load_dataset("periodic", n_series=20, n_points=25),
        task=Interpolation(count=10), batch_size=8,
    )


def tiny_trainer(**kwargs) -> L.Trainer:
    options = {"max_epochs": 1, "accelerator": "cpu", "logger": False,
               "enable_checkpointing": False, "enable_progress_bar": False,
               "enable_model_summary": False, "num_sanity_val_steps": 0}
    return L.Trainer(**{**options, **kwargs})


def test_training_logs_finite_terms_for_every_stage():
    dm = tiny_datamodule()
    dm.setup()
    module = LatentODELightning(tiny_model(), scale=dm.scaler.scale)
    trainer = tiny_trainer()
    trainer.fit(module, datamodule=dm)
    logged = trainer.callback_metrics
    for stage in ("train", "val"):
        for term in TERMS:
            key = f"{stage}/{term}" + ("_epoch" if stage == "train" else "")
            assert key in logged, (key, sorted(logged))
            assert math.isfinite(float(logged[key])), key
    assert float(logged["train/kl_weight"]) == 0.0
    # data units: the scaler's scale^2 per channel (one channel here)
    ratio = float(logged["val/mse_data"]) / float(logged["val/mse"])
    assert ratio == pytest.approx(float(dm.scaler.scale[0]) ** 2, rel=1e-5)
    test = trainer.test(module, datamodule=dm, verbose=False)[0]
    per_channel = {f"test/mse_data/{c}" for c in dm.dataset.channels}
    assert set(test) == ({f"test/{t}" for t in (*TERMS, "mse_sample")}
                         | {f"test/solver_{n}" for n in SOLVER_COUNTS} | per_channel)
    (one,) = per_channel  # one channel: its own MSE is the whole data-unit MSE
    assert test[one] == pytest.approx(test["test/mse_data"], rel=1e-6)
    assert "val/mse_sample" in logged and "train/mse_sample_epoch" not in logged
    assert test["test/mse_sample"] >= test["test/mse"]  # the samples' spread on top


def test_predict_step_returns_each_rows_origin_on_series_clocks():
    """With ``time_origin="series"`` every row of ``pred`` sits on its own clock; the shift was
    not returned, so predictions could not be put back on the data's time stamps."""
    import pandas as pd

    from latentode.data import from_dataframe

    starts = [0.0, 100.0, 250.0, 400.0, 555.0, 700.0, 820.0, 900.0, 950.0, 990.0]
    frame = pd.DataFrame([(s, start + 3 * k, math.sin(k)) for s, start in enumerate(starts)
                          for k in range(10)], columns=["series_id", "time", "v"])
    dm = LatentODEDataModule(from_dataframe(frame), task=Interpolation(fraction=0.5),
                             batch_size=4, time_origin="series", val_fraction=0.2,
                             test_fraction=0.2)
    dm.setup()
    batch = next(iter(dm.test_dataloader()))
    out = LatentODELightning(LatentODE(1, 4)).predict_step(batch, 0)
    part = dm.splits["test"]
    for row, i in enumerate(out["index"].tolist()):
        model_time = (out["times"][0] + out["origin"][row]).double().numpy().reshape(1)
        first = part.time_transform.to_user(model_time)[0]
        assert first == pytest.approx(part.raw_times[part.offsets[i]])


def test_under_a_users_own_trainer_scale_comes_from_the_datamodule_and_predict_works():
    dm = tiny_datamodule()
    module = LatentODELightning(tiny_model())  # no scale=: taken from dm's scaler at setup
    trainer = tiny_trainer(limit_train_batches=1)
    trainer.fit(module, datamodule=dm)
    ratio = float(trainer.callback_metrics["val/mse_data"]) / float(
        trainer.callback_metrics["val/mse"])
    assert ratio == pytest.approx(float(dm.scaler.scale[0]) ** 2, rel=1e-5)
    batches = trainer.predict(module, dataloaders=dm.test_dataloader())
    n_test = len(dm.split_index["test"])
    assert sum(len(b["index"]) for b in batches) == n_test
    first = batches[0]
    assert first["pred"].shape == (2, len(first["index"]), len(first["times"]), 1)
    assert torch.isfinite(first["pred"]).all()


@pytest.mark.parametrize("gradient", ["checkpoint", "backprop"])
def test_solver_counts_are_logged_per_batch(gradient):
    """``{stage}/solver_*``: the generative ODE's evaluations and steps per batch, as the
    model's own counters add them up; the backward's only where it integrates (checkpoint)."""
    dm = tiny_datamodule()
    dm.setup()
    model = tiny_model()
    model.solver["gradient"] = gradient
    module = LatentODELightning(model)
    trainer = tiny_trainer(max_epochs=2, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    train = {n: float(trainer.callback_metrics[f"train/solver_{n}"]) for n in SOLVER_COUNTS}
    assert train["nfe_forward"] >= 6 * train["steps_accepted"] > 0
    assert (train["nfe_backward"] > 0) == (gradient == "checkpoint")
    model.solver_stats.reset()
    test = trainer.test(module, datamodule=dm, verbose=False)[0]
    batches = len(dm.test_dataloader())
    for name in SOLVER_COUNTS:
        assert test[f"test/solver_{name}"] == pytest.approx(
            getattr(model.solver_stats, name) / batches), name
    assert test["test/solver_nfe_backward"] == 0 and test["test/solver_nfe_forward"] > 0


def test_step_values_are_logged_on_the_steps_the_logger_writes(tmp_path):
    """log_every_n_steps=2: step values on every second step; epoch values every epoch."""
    import pandas as pd
    from lightning.pytorch.loggers import CSVLogger

    dm = tiny_datamodule()
    dm.setup()
    module = LatentODELightning(tiny_model(), scale=dm.scaler.scale)
    logger = CSVLogger(tmp_path, name="run", version=0)
    trainer = tiny_trainer(max_epochs=3, logger=logger, log_every_n_steps=2,
                           limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    steps = trainer.global_step
    frame = pd.read_csv(tmp_path / "run" / "version_0" / "metrics.csv")
    assert frame["train/mse_step"].notna().sum() == steps // 2
    assert frame["train/loss_step"].notna().sum() == steps // 2
    assert frame["train/mse_epoch"].notna().sum() == 3
    assert sorted(frame["train/kl_weight"].dropna()) == [0.0, 0.0, 0.0]


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_training_step_on_one_batch_returns_finite_loss_with_gradients():
    dm = tiny_datamodule()
    dm.setup()
    batch = collate(dm.splits["train"], np.arange(4), dm.task, np.random.default_rng(0))
    module = LatentODELightning(tiny_model())
    loss = module.training_step(batch, 0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in module.parameters())


def test_evaluation_is_deterministic():
    dm = tiny_datamodule()
    module = LatentODELightning(tiny_model())
    first = tiny_trainer().validate(module, datamodule=dm, verbose=False)[0]
    torch.manual_seed(123)  # the global RNG state must not matter
    second = tiny_trainer().validate(module, datamodule=dm, verbose=False)[0]
    assert first == second


def test_seen_and_unseen_split_the_targets():
    dm = tiny_datamodule()
    dm.setup()
    batch = collate(dm.splits["val"], np.arange(2), dm.task, np.random.default_rng(1))
    module = LatentODELightning(tiny_model(), scale=[3.0])
    pred = torch.randn(2, *batch.values.shape)
    errors = module._errors(batch, pred)
    total, count = errors["mse"]
    seen, unseen = errors["mse_seen"], errors["mse_unseen"]
    torch.testing.assert_close(seen[0] + unseen[0], total)
    assert float(seen[1] + unseen[1]) == float(count) == float(batch.target_mask.sum())
    assert float(seen[1]) == float((batch.encoder_mask & batch.target_mask).sum()) > 0
    torch.testing.assert_close(errors["mse_data"][0], 9.0 * total)
    module.channels = ["x"]
    by_channel = module._errors(batch, pred, per_channel=True)["mse_data/x"]
    torch.testing.assert_close(by_channel[0], errors["mse_data"][0])
    assert float(by_channel[1]) == float(count)
    assert "mse_sample" not in errors  # training steps skip it
    # the paper code's test MSE: each sample's error, then the mean over samples
    each = module._errors(batch, pred, per_sample=True)["mse_sample"]
    tf = batch.target_mask.float()
    expected = torch.stack([((p - batch.values).square() * tf).sum() for p in pred]).mean()
    torch.testing.assert_close(each[0], expected)
    assert float(each[1]) == float(count) and float(each[0]) >= float(total)


@pytest.mark.parametrize("term", ["loss", "loglik", "kl"])
def test_nan_stops_the_run_naming_batch_and_term(monkeypatch, term):
    model = tiny_model()
    original = model.loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        out = original(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:  # the second training batch of the first epoch
            out[term] = out[term] * float("nan") if term != "kl" else out[term] + float("inf")
        return out

    monkeypatch.setattr(model, "loss", poisoned)
    module = LatentODELightning(model)
    with pytest.raises(RuntimeError, match=rf"non-finite {term} at epoch 0, batch_idx 1"):
        tiny_trainer().fit(module, datamodule=tiny_datamodule())


def test_diverged_weights_are_named_as_such_with_the_batch():
    """NaN weights make q(z0) NaN: the solver's bare 'y0 contains NaN' (a diverged Optuna trial
    showed only that) now says where and what to do; odeint alone still raises a ValueError."""
    from latentode.solvers import NonFiniteInitialStateError, odeint

    model = tiny_model()
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.fill_(float("nan"))
    module = LatentODELightning(model)
    with pytest.raises(RuntimeError, match=r"the ODE solver failed at epoch 0, batch_idx 0 "
                                           r"\(train\): y0 contains NaN or inf.* the weights "
                                           r"have diverged \(lower the learning rate"):
        tiny_trainer().fit(module, datamodule=tiny_datamodule())
    with pytest.raises(ValueError, match=r"y0 contains NaN") as info:
        odeint(lambda t, y: -y, torch.tensor([float("nan")]), torch.linspace(0, 1, 3))
    assert isinstance(info.value, NonFiniteInitialStateError)


def test_kl_annealing_schedule():
    assert [kl_weight_schedule(e) for e in range(11)] == [0.0] * 11
    assert kl_weight_schedule(11) == pytest.approx(0.01)
    assert kl_weight_schedule(20) == pytest.approx(1 - 0.99**10)
    assert kl_weight_schedule(3, wait_epochs=2, rate=0.5) == pytest.approx(0.5)
    assert kl_weight_schedule(10_000) == pytest.approx(1.0)
    module = LatentODELightning(tiny_model(), kl_weight=0.3)
    assert module.kl_weight == 0.3


def test_kl_weight_follows_the_epoch():
    module = LatentODELightning(tiny_model(), kl_wait_epochs=1, kl_rate=0.5)
    trainer = tiny_trainer(max_epochs=3, limit_train_batches=1, limit_val_batches=0)
    seen = []

    class Spy(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            seen.append(pl_module.kl_weight)

    trainer.callbacks.append(Spy())
    trainer.fit(module, datamodule=tiny_datamodule())
    assert seen == [0.0, 0.0, 0.5]


def test_exponential_decay_has_a_floor():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = exponential_decay(opt, gamma=0.5, min_factor=0.1)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1.0, 0.5, 0.25, 0.125, 0.1, 0.1])


def test_exponential_decay_warms_up_linearly_then_decays_from_step_zero():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = exponential_decay(opt, gamma=0.5, min_factor=0.1, warmup_steps=4)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # (step + 1) / 4 for the first 4 steps, times the decay counted from step 0
    assert lrs == pytest.approx([0.25, 0.5 * 0.5, 0.75 * 0.25, 0.125, 0.1, 0.1])


def test_exponential_decay_refuses_a_negative_warm_up():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="warmup_steps must be >= 0"):
        exponential_decay(opt, warmup_steps=-1)


def test_default_optimizer_is_adamax_with_step_schedule():
    module = LatentODELightning(tiny_model())
    config = module.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.Adamax)
    assert config["optimizer"].param_groups[0]["lr"] == 1e-2
    assert config["lr_scheduler"]["interval"] == "step"


def test_epoch_sums_take_tensors_and_host_numbers_alike():
    """Counts given as Python numbers stay on the host until the epoch's reduction (a GPU
    tensor made from one per step would be a blocking copy); means are the same either way."""
    from latentode.lit.module import _Sums

    sums = _Sums()
    sums.add("mse", torch.tensor(3.0), 2)
    sums.add("mse", torch.tensor(5.0), torch.tensor(2.0))
    sums.add("nfe", 20, 1.0)
    sums.add("nfe", 26, 1.0)
    assert isinstance(sums.counts["nfe"], float) and isinstance(sums.sums["nfe"], float)
    seen = []
    means = sums.means(lambda x: seen.append(x) or x)
    assert means == {"mse": 2.0, "nfe": 23.0}
    assert seen[0].dtype == torch.float64 and seen[0].shape == (2, 2)  # one reduction


def test_test_plot_shows_the_test_loaders_masks(tmp_path, monkeypatch):
    """The test plot collated its series with a generator of its own, so the points drawn as
    "seen by the encoder" were not the ones the test metrics used."""
    import pandas as pd

    import latentode.lit.plots as plots
    from latentode.data import from_dataframe

    frame = pd.DataFrame([(s, float(k), math.sin(k + s)) for s in range(20) for k in range(30)],
                         columns=["series_id", "time", "v"])
    dm = LatentODEDataModule(from_dataframe(frame), task=Interpolation(fraction=0.5),
                             batch_size=4)
    dm.setup()
    drawn = {}
    real = plots.plot_batch

    def spy(batch, *args, **kwargs):
        drawn["batch"] = batch
        return real(batch, *args, **kwargs)

    monkeypatch.setattr(plots, "plot_batch", spy)
    plots.plot_test_series(LatentODE(1, 4), dm, tmp_path / "p.png", n_series=4, n_samples=2)
    tested = next(iter(dm.test_dataloader()))
    assert torch.equal(drawn["batch"].encoder_mask, tested.encoder_mask)
    assert (tmp_path / "p.png").exists()


def test_param_groups_give_parts_of_the_model_their_own_optimiser_options(tmp_path):
    """module.param_groups: e.g. a smaller learning rate for the encoder; the longest prefix
    wins, the rest keep the optimiser's own; a name that holds no parameter is refused."""
    import functools

    from latentode.lit import LatentODELightning, exponential_decay
    from latentode.models import LatentODE

    model = LatentODE(input_dim=2, latents=3)
    module = LatentODELightning(
        model, optimizer=functools.partial(torch.optim.Adamax, lr=1e-2),
        scheduler=functools.partial(exponential_decay, gamma=0.5, min_factor=0.01),
        param_groups={"encoder": {"lr": 1e-3}, "encoder.to_z0": {"lr": 5e-4},
                      "decoder": {"weight_decay": 0.1}})
    conf = module.configure_optimizers()
    groups = conf["optimizer"].param_groups
    ids = [{id(p) for p in g["params"]} for g in groups]
    assert [g["lr"] for g in groups] == [5e-4, 1e-3, 1e-2, 1e-2]  # to_z0, encoder, decoder, rest
    assert groups[2]["weight_decay"] == 0.1
    assert ids[0] == {id(p) for p in model.encoder.to_z0.parameters()}
    assert ids[2] == {id(p) for p in model.decoder.parameters()}
    assert set().union(*ids) == {id(p) for p in model.parameters()}
    assert sum(len(i) for i in ids) == len(list(model.parameters()))  # each once
    conf["lr_scheduler"]["scheduler"].step()
    assert [g["lr"] for g in groups] == [2.5e-4, 5e-4, 5e-3, 5e-3]
    with pytest.raises(ValueError, match=r"module\.param_groups names \['encodr'\], which hold "
                                         r"no parameter of LatentODE; its parts: .*'encoder'"):
        LatentODELightning(model, param_groups={"encodr": {"lr": 1e-3}})
    from test_cli import TINY, compose_train

    from latentode.cli import train as train_cli

    cfg = compose_train([*TINY, "trainer.max_epochs=1",
                         "module.param_groups={encoder: {lr: 1e-3}}"], tmp_path)
    assert "test/mse" in train_cli.train(cfg)


def _fitted_checkpoint(tmp_path, scale=True) -> tuple[str, LatentODEDataModule, dict]:
    dm = tiny_datamodule()
    dm.setup()
    module = LatentODELightning(tiny_model(), scale=dm.scaler.scale if scale else None,
                                channels=list(dm.dataset.channels))
    trainer = tiny_trainer(limit_train_batches=1, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    path = str(tmp_path / "fit.ckpt")
    trainer.save_checkpoint(path)
    test = tiny_trainer().test(module, dataloaders=dm.test_dataloader(), verbose=False)[0]
    return path, dm, test


def test_a_module_loaded_from_its_checkpoint_reports_data_units_as_trained(tmp_path):
    """scale and channels were kept neither in the hyperparameters nor the state: a module
    loaded with load_from_checkpoint and tested on the loaders logged mse_data equal to the
    normalised mse, and no mse_data/<channel>, silently."""
    path, dm, trained = _fitted_checkpoint(tmp_path)
    assert trained["test/mse_data"] != pytest.approx(trained["test/mse"])
    loaded = LatentODELightning.load_from_checkpoint(path, model=tiny_model(seed=1))
    again = tiny_trainer().test(loaded, dataloaders=dm.test_dataloader(), verbose=False)[0]
    assert again == pytest.approx(trained)  # mse_data and mse_data/<channel> included
    assert torch.load(path, weights_only=True)["latentode_data_units"]["channels"] == ["value"]


def test_without_a_known_scale_mse_data_is_said_to_be_in_model_units(tmp_path):
    dm = tiny_datamodule()
    dm.setup()
    module = LatentODELightning(tiny_model())
    with pytest.warns(UserWarning, match=r"no data scale is known .* mse_data is logged in the "
                                         r"model's units.* pass scale=scaler\.scale"):
        tiny_trainer().test(module, dataloaders=dm.test_dataloader(), verbose=False)


def test_loading_a_checkpoint_keeps_the_callers_random_state(tmp_path):
    """on_load_checkpoint restored the run's saved random state on every load: a notebook's
    own seed was replaced by load_from_checkpoint or test(ckpt_path=...). Only a resumed fit
    goes on with the run's stream (tests/test_cli.py: a resumed run draws what it would have)."""
    path, dm, _ = _fitted_checkpoint(tmp_path)
    models = [tiny_model(), tiny_model()]  # (tiny_model seeds the global stream itself)
    torch.manual_seed(123)
    module = LatentODELightning.load_from_checkpoint(path, model=models[0])
    tiny_trainer().test(module, dataloaders=dm.test_dataloader(), ckpt_path=path, verbose=False)
    after_loading = torch.rand(3)
    torch.manual_seed(123)  # the same work with the weights put in by hand
    plain = LatentODELightning(models[1])
    plain.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
    tiny_trainer().test(plain, dataloaders=dm.test_dataloader(), verbose=False)
    assert torch.equal(after_loading, torch.rand(3))


def test_predictions_are_the_seeded_samples_of_test(tmp_path):
    """predict drew from the global stream: two calls gave different samples. It now uses the
    seeded stream of validation and test (eval_seed, the batch index)."""
    dm = tiny_datamodule()
    module = LatentODELightning(tiny_model())
    trainer = tiny_trainer()
    first = trainer.predict(module, datamodule=dm)  # the data module's test split
    second = trainer.predict(module, dataloaders=dm.test_dataloader())
    assert sum(len(b["index"]) for b in first) == len(dm.splits["test"])
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a["pred"], b["pred"])


def test_optimiser_and_scheduler_misuse_is_named_before_training():
    model = tiny_model()
    optimizer = torch.optim.Adam(model.parameters())
    with pytest.raises(TypeError, match=r"factory of the optimiser, not a built Adam.*partial"):
        LatentODELightning(model, optimizer=optimizer)
    with pytest.raises(TypeError, match=r"not a built StepLR"):
        LatentODELightning(model, scheduler=torch.optim.lr_scheduler.StepLR(optimizer, 1))
    with pytest.raises(TypeError, match=r"load_from_checkpoint\(path, model=\.\.\.\)"):
        LatentODELightning.load_from_checkpoint("any.ckpt")
    plateau = LatentODELightning(
        model, scheduler=lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt))
    with pytest.raises(ValueError, match=r"monitors 'val/loss'.*scheduler_interval='epoch'"):
        plateau.configure_optimizers()
    per_epoch = LatentODELightning(
        model, scheduler=lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt),
        scheduler_interval="epoch")
    assert per_epoch.configure_optimizers()["lr_scheduler"]["interval"] == "epoch"


def test_times_merged_by_a_true_half_precision_are_named_as_such():
    from latentode.models.inputs import checked_batch

    times = torch.tensor([0.0, 100.0, 100.25, 101.0]).to(torch.bfloat16)  # 100.25 -> 100
    values = torch.zeros(1, 4, 1, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"torch\.bfloat16.*'bf16-mixed'"):
        checked_batch(1, times, values)


def test_several_evaluation_dataloaders_are_scored_apart():
    """trainer.test / validate with a list of dataloaders (Lightning passes dataloader_idx):
    each is scored on its own, as alone, the first under the usual names, the others with
    Lightning's /dataloader_idx_<k> suffix, in Lightning's results entry of its own loader
    (logged at the epoch's end, every entry held both and the printed table the last's)."""
    dm = tiny_datamodule()
    dm.setup()
    module = LatentODELightning(tiny_model(), scale=dm.scaler.scale)
    first, second = dm.val_dataloader(), dm.test_dataloader()
    alone = [tiny_trainer().test(module, dataloaders=loader, verbose=False)[0]
             for loader in (first, second)]
    assert alone[0]["test/mse"] != alone[1]["test/mse"]
    trainer = tiny_trainer()
    results = trainer.test(module, dataloaders=[first, second], verbose=False)
    # Lightning's per-loader results (and printed table) hold each loader's own numbers
    assert results == [alone[0], {f"{k}/dataloader_idx_1": v for k, v in alone[1].items()}]
    both = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert set(both) == set(alone[0]) | {f"{k}/dataloader_idx_1" for k in alone[1]}
    for key, value in alone[0].items():
        assert both[key] == pytest.approx(value, rel=1e-6), key
    for key, value in alone[1].items():
        assert both[f"{key}/dataloader_idx_1"] == pytest.approx(value, rel=1e-6), key
    trainer = tiny_trainer()
    trainer.validate(module, dataloaders=[first, second], verbose=False)
    assert float(trainer.callback_metrics["val/mse"]) == pytest.approx(alone[0]["test/mse"])
    assert float(trainer.callback_metrics["val/mse/dataloader_idx_1"]) == pytest.approx(
        alone[1]["test/mse"])
    predicted = tiny_trainer().predict(module, dataloaders=[first, second])
    assert [len(part) for part in predicted] == [len(first), len(second)]


def test_kl_schedule_and_optimiser_settings_that_cannot_work_are_refused_when_built():
    """kl_rate=1.5 made the KL weight -0.5 (the KL term rewarded), kl_weight=-1 was used as
    given, lr=-1 failed inside fit with Lightning's traceback."""
    import functools

    model = LatentODE(input_dim=2, latents=3)
    for kwargs, message in (
            (dict(kl_rate=1.5), r"module\.kl_rate must be in \[0, 1\] .* got 1\.5"),
            (dict(kl_weight=-1.0), r"module\.kl_weight .* must be a number >= 0, or null"),
            (dict(kl_wait_epochs=-5), r"module\.kl_wait_epochs must be a whole number >= 0"),
            (dict(optimizer=functools.partial(torch.optim.Adamax, lr=-1.0)),
             r"module\.optimizer: Invalid learning rate: -1")):
        with pytest.raises(ValueError, match=message):
            LatentODELightning(model, **kwargs)
    LatentODELightning(model, kl_rate=0.0, kl_weight=0.0, kl_wait_epochs=0)  # edges: fine


def test_optimisers_not_built_up_front_keep_working():
    """The options check builds torch.optim's optimisers once at construction, with params=
    as configure_optimizers passes them; a factory of one's own taking params by keyword was
    called positionally ("got multiple values for argument 'lr'"), and one needing DDP's
    process group (ZeroRedundancyOptimizer) failed before the group existed."""
    import functools

    def make(lr, *, params):
        return torch.optim.SGD(params, lr=lr)

    module = LatentODELightning(LatentODE(input_dim=2, latents=3),
                                optimizer=functools.partial(make, lr=1e-3))
    assert module.configure_optimizers() is not None
    from torch.distributed.optim import ZeroRedundancyOptimizer

    LatentODELightning(LatentODE(input_dim=2, latents=3), optimizer=functools.partial(
        ZeroRedundancyOptimizer, optimizer_class=torch.optim.Adam, lr=1e-3))
    LatentODELightning(LatentODE(input_dim=2, latents=3), kl_rate=np.float32(0.99),
                       kl_wait_epochs=np.int64(3))  # numpy numbers are numbers


def test_resuming_with_another_scheduler_or_a_model_of_other_sizes_is_named(tmp_path):
    """load_from_checkpoint does not restore the optimiser and scheduler: resuming a loaded
    module of a run with another scheduler died in torch ("KeyError: 'lr_lambdas'"), and a
    model of other sizes gave a state_dict size-mismatch dump."""
    import functools

    path, dm, _ = _fitted_checkpoint(tmp_path)  # the default Adamax and exponential decay
    plateau = functools.partial(torch.optim.lr_scheduler.ReduceLROnPlateau, patience=1)
    other = LatentODELightning(tiny_model(), scheduler=plateau, scheduler_interval="epoch",
                               scheduler_monitor="train/loss")
    with pytest.raises(ValueError, match=r"the checkpoint was trained with Adamax and scheduler "
                                         r"LambdaLR; this module builds Adamax and "
                                         r"ReduceLROnPlateau\. Resume with the same"):
        tiny_trainer(max_epochs=2, limit_train_batches=1, limit_val_batches=0).fit(
            other, datamodule=dm, ckpt_path=path)
    same = LatentODELightning.load_from_checkpoint(path, model=tiny_model(seed=1))
    tiny_trainer(max_epochs=2, limit_train_batches=1, limit_val_batches=0).fit(
        same, datamodule=dm, ckpt_path=path)  # the same optimiser and scheduler: resumes
    torch.manual_seed(0)
    wider = LatentODE(1, latents=5, encoder=ODERNNEncoder(1, 5, hidden=8, ode_units=16,
                                                          z0_units=16), gen_units=16)
    with pytest.raises(ValueError, match=r"the model passed does not have the checkpoint's "
                                         r"architecture \(\d+ tensor\(s\) of other shapes.*"
                                         r"latentode\.cli\.runs\.load_run\(ckpt, use=\.\.\.\)"):
        LatentODELightning.load_from_checkpoint(path, model=wider)


def test_run_checkpoint_record_follows_a_moved_run_and_not_another_runs(tmp_path):
    from latentode.lit import RunModelCheckpoint

    old, here = tmp_path / "old", tmp_path / "here"
    here.mkdir()
    (here / "best_epoch001.ckpt").write_bytes(b"x")
    (here / "best_epoch000.ckpt").write_bytes(b"x")
    state = {"monitor": "val/mse", "best_model_score": torch.tensor(0.5),
             "best_model_path": str(old / "best_epoch001.ckpt"), "current_score": None,
             "dirpath": str(old), "kth_best_model_path": str(old / "best_epoch001.ckpt"),
             "kth_value": torch.tensor(0.5), "last_model_path": "",
             "best_k_models": {str(old / "best_epoch001.ckpt"): torch.tensor(0.5)}}
    from types import SimpleNamespace

    def resumed(callback, path):  # the trainer knows the checkpoint when the state is loaded
        callback._trainer_ref = SimpleNamespace(ckpt_path=str(path))
        return callback

    moved = resumed(RunModelCheckpoint(dirpath=here, monitor="val/mse"), here / "last.ckpt")
    moved.load_state_dict(state)  # the run moved here: its record, its paths here
    assert moved.best_model_path == str(here / "best_epoch001.ckpt")
    assert moved.best_model_score == 0.5
    assert list(moved.best_k_models) == [str(here / "best_epoch001.ckpt")]
    other = resumed(RunModelCheckpoint(dirpath=tmp_path / "fresh", monitor="val/mse"),
                    old / "last.ckpt")
    other.load_state_dict(state)  # another run's checkpoint: this directory's own record
    assert other.best_model_path == "" and other.best_model_score is None
    assert other.best_k_models == {}
    # ... also where this directory holds files of the same names (a review: sweep jobs all
    # write best_epochNNN.ckpt): another run's score was put on this run's file
    alike = resumed(RunModelCheckpoint(dirpath=here, monitor="val/mse"), old / "last.ckpt")
    alike.load_state_dict(state)
    assert alike.best_model_path == "" and alike.best_k_models == {}
    # saved under ModelCheckpoint's key: runs written before this class keep their record
    plain = ModelCheckpoint(dirpath=here, monitor="val/mse")
    assert RunModelCheckpoint(dirpath=here, monitor="val/mse").state_key == plain.state_key
    same = RunModelCheckpoint(dirpath=old, monitor="val/mse")
    same.load_state_dict(state)  # in place: Lightning's own behaviour
    assert same.best_model_path == str(old / "best_epoch001.ckpt")


def test_evaluation_scores_a_series_alike_in_any_batch():
    """Posterior samples were drawn per batch in evaluation: the same checkpoint tested with
    batches of 20 and of 7 gave test/mse 0.995278 and 0.997765 (a review). Now each series'
    from its own seed; with a walk and a solver that do not follow the batch (the series walk,
    fixed steps) the metrics agree to rounding."""
    from latentode.models.posterior import posterior_noise, series_noise

    torch.manual_seed(0)
    encoder = ODERNNEncoder(1, 3, hidden=8, ode_units=16, z0_units=16, schedule="series")
    model = LatentODE(1, latents=3, encoder=encoder, gen_units=16, obs_std=0.1, n_samples=2,
                      solver={"method": "rk4", "step_size": 0.05})
    module = LatentODELightning(model, eval_samples=3)
    results = []
    for batch_size in (20, 7):
        dm = LatentODEDataModule(lambda: load_dataset("periodic", n_series=40, n_points=25),
                                 task=Interpolation(count=10), batch_size=batch_size,
                                 test_fraction=0.5)
        dm.setup()
        assert len(dm.splits["test"]) == 20
        results.append(tiny_trainer().test(module, dataloaders=dm.test_dataloader(),
                                           verbose=False)[0])
    for name in ("test/mse", "test/loss", "test/mse_sample"):
        assert results[0][name] == pytest.approx(results[1][name], rel=1e-5), name
    # the draws themselves: a series' own, whatever its batch mates
    mean = torch.zeros(3, 4)
    with series_noise([5, 9, 2], (0, 3)):
        a = posterior_noise(2, mean)
    with series_noise([9], (0, 3)):
        b = posterior_noise(2, mean[:1])
    assert torch.equal(a[:, 1], b[:, 0]) and not torch.equal(a[:, 0], a[:, 1])
    with series_noise([5], (0, 3)):  # float64 models draw float64 (a review)
        wide = posterior_noise(2, mean[:1].double())
    assert wide.dtype == torch.float64 and not torch.equal(wide, wide.float().double())


def test_grad_clip_scales_with_the_likelihoods_std_and_clips_the_whole_gradient():
    """A first-step gradient spike (1.2-1.9e6 on the default recipe, normal steps under 3e4)
    became Adamax's scale for the whole run: grad_clip / obs_std^2 caps it."""
    module = LatentODELightning(tiny_model(), grad_clip=10)  # obs_std 0.1
    assert module.grad_clip_norm() == pytest.approx(10 / 0.1**2)
    two = LatentODE(2, latents=3, gen_units=8, obs_std=[0.05, 0.2],
                    encoder=ODERNNEncoder(2, 3, hidden=4, ode_units=8, z0_units=8))
    assert LatentODELightning(two, grad_clip=10).grad_clip_norm() == pytest.approx(10 / 0.05**2)
    assert LatentODELightning(tiny_model()).grad_clip_norm() is None
    optimizer = module.configure_optimizers()["optimizer"]
    params = [p for p in module.parameters() if p.requires_grad]
    for scale, expected in ((1e5, 1000.0), (1e-3, None)):  # a spike is clipped, a step is not
        for p in params:
            p.grad = torch.full_like(p, scale)
        before = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        module.configure_gradient_clipping(optimizer)
        after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        assert float(after) == pytest.approx(expected if expected else float(before), rel=1e-4)


@pytest.mark.parametrize("value", [0, -1.0, True, "10"])
def test_grad_clip_refuses_what_is_not_a_positive_number(value):
    with pytest.raises(ValueError, match="grad_clip must be a positive number"):
        LatentODELightning(tiny_model(), grad_clip=value)
