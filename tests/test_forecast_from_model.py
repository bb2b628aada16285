"""``LatentODEForecaster.from_model``: the DataFrame API (predict, calibrated intervals, user
units) for a model trained in a plain PyTorch loop (README, Models).

The strongest check rebuilds a ``fit`` forecaster from its parts (model, training series in the
data's units, scaler, calibration series, task) and asks for the same frame. Sizes are tiny:
the tests check bookkeeping and units, not forecast quality.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from test_forecast import TINY, make_frame
from torch.utils.data import DataLoader

from latentode import LatentODEForecaster
from latentode.data import (
    ChannelScaler,
    Collator,
    Interpolation,
    from_dataframe,
    load_dataset,
    split_indices,
)
from latentode.forecast.forecaster import _series_seed
from latentode.forecast.spec import longest_span
from latentode.models import GRUDT, LatentODE
from latentode.nn import ODERNNEncoder

ENCODER = {"_target_": "latentode.nn.ODERNNEncoder", "input_dim": 1, "latent_dim": 4,
           "hidden": 8, "z0_units": 16, "ode_units": 16}
CONFIG = {"_target_": "latentode.models.LatentODE", "input_dim": 1, "latents": 4,
          "gen_units": 16, "encoder": ENCODER}  # the periodic fixture's model


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fitted():
    torch.set_num_threads(1)
    data = make_frame()
    fc = LatentODEForecaster({**TINY, "trainer.max_epochs": 1}).fit(data)
    return fc, data


@pytest.fixture(scope="module")
def periodic():
    """The README's plain loop, a handful of steps: model, series, split, scaler."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ds = load_dataset("periodic", n_series=40, n_points=30)
    train_idx, val_idx, _ = split_indices(len(ds), seed=0)
    scaler = ChannelScaler().fit(ds.subset(train_idx))
    train = scaler.apply(ds.subset(train_idx))
    loader = DataLoader(range(len(train)), batch_size=16, shuffle=True,
                        collate_fn=Collator(train, task=Interpolation(fraction=0.5)))
    model = LatentODE(input_dim=1, latents=4, gen_units=16, encoder=ODERNNEncoder(
        1, 4, hidden=8, z0_units=16, ode_units=16))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for b in loader:
        loss = model.loss(b.times, b.values, b.encoder_mask, b.target_mask,
                          kl_weight=1.0)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, ds, train_idx, val_idx, scaler


def wrap(periodic, **kwargs):
    model, ds, train_idx, val_idx, scaler = periodic
    kwargs.setdefault("calibration_data", ds.subset(val_idx))
    return LatentODEForecaster.from_model(model, ds.subset(train_idx), scaler, **kwargs)


# ------------------------------------------------------------------------- same as fit
def test_rebuilt_fit_forecaster_predicts_exactly_as_fit(fitted):
    fc, data = fitted
    dm = fc.trainer.datamodule  # the split fit made: its training and held-out series
    assert len(dm.splits["val"]) > 0
    train = dm.dataset.subset(dm.split_index["train"])  # data units, as from_dataframe gave
    held = dm.dataset.subset(dm.split_index["val"])
    assert np.nanmean(train.values) > 50  # not scaled: the frame sits near 100
    rebuilt = LatentODEForecaster.from_model(
        fc.model, train, dm.scaler, calibration_data=held,
        batch_size=dm.batch_size, time_origin=fc.cfg.data.time_origin)
    assert rebuilt.spec.mean == fc.spec.mean and rebuilt.spec.scale == fc.spec.scale
    assert rebuilt.spec.time == fc.spec.time and rebuilt.spec.channels == fc.spec.channels
    assert fc.spec.value_range is not None  # the training range the far-value check reads
    assert rebuilt.spec.value_range == fc.spec.value_range
    assert rebuilt.calibration == fc.calibration  # the same numbers, to the last bit
    for times in ({"horizon": 1.0, "n": 3}, {}):  # forecasts, and at the observed times
        want = fc.predict(data, num_samples=20, **times)
        got = rebuilt.predict(data, num_samples=20, **times)
        pd.testing.assert_frame_equal(got, want)
    pd.testing.assert_frame_equal(rebuilt.impute(data), fc.impute(data))


def test_the_users_model_is_left_where_it_was(fitted):
    fc, data = fitted
    dm = fc.trainer.datamodule
    model = fc.model.train()  # say a training loop is still using it
    try:
        rebuilt = LatentODEForecaster.from_model(
            model, dm.dataset.subset(dm.split_index["train"]), dm.scaler,
            calibration_data=data.iloc[:50], time_origin="series")
        assert model.training and not rebuilt.model.training
        assert rebuilt.model is not model
        with torch.no_grad():  # a later step on the user's model does not reach it
            next(model.parameters()).add_(1.0)
        assert not torch.equal(next(model.parameters()), next(rebuilt.model.parameters()))
    finally:
        with torch.no_grad():
            next(model.parameters()).sub_(1.0)
        model.eval()


# ---------------------------------------------------------------------- README's loop
def test_readme_loop_forecasts_in_data_units(periodic):
    model, ds, train_idx, val_idx, scaler = periodic
    fc = wrap(periodic)
    frame = ds.subset(val_idx).to_dataframe()
    pred = fc.predict(frame, horizon=1.0, n=4, num_samples=20)
    assert list(pred.columns) == ["series_id", "time", "channel", "mean", "q0.05", "q0.5",
                                  "q0.95"]
    assert len(pred) == len(val_idx) * 4 and set(pred["channel"]) == {"value"}
    assert (pred["q0.05"] < pred["q0.95"]).all()
    assert fc.spec.train_span == longest_span(ds.subset(train_idx))
    assert fc.spec.walk_grid is not None  # the union walk of a shared grid: from_run's way
    assert model.training  # the loop's model: untouched

    # one answer by hand: the model's forward on the series' scaled history with the
    # forecaster's z0 draws, back through scaler.inverse_transform
    sid = frame["series_id"].iloc[0]
    rows = frame[frame["series_id"] == sid]
    t, x = rows["time"].to_numpy(), rows[["value"]].to_numpy()
    ask = float(t[-1]) + 0.7
    got = fc.predict(rows, times=[ask], num_samples=8, quantiles=None, batch_size=1)
    eps = torch.randn((8, 4), generator=torch.Generator().manual_seed(_series_seed(0, sid)))
    scaled = torch.tensor(scaler.transform(x), dtype=torch.float32)[None]
    with torch.no_grad():
        out = fc.model(torch.tensor(t - t[0], dtype=torch.float32), scaled,
                       torch.ones_like(scaled, dtype=torch.bool), n_samples=8,
                       pred_times=torch.tensor([0.0, ask - t[0]], dtype=torch.float32),
                       z0_noise=eps[:, None])
    by_hand = scaler.inverse_transform(out.pred[:, 0, -1].double().numpy()).mean(0)
    np.testing.assert_allclose(got["mean"].to_numpy(), by_hand, rtol=1e-5)
    assert abs(by_hand[0] - scaler.mean[0]) < 5 * scaler.scale[0]  # the data's scale


def test_default_calibration_is_on_the_training_series_with_a_warning(periodic):
    with pytest.warns(UserWarning, match="calibrates the predictive noise on the training"):
        fc = wrap(periodic, calibration_data=None)
    assert fc.calibration is not None and fc.calibration.split == "train"
    assert fc.calibration.points == "heldout" and min(fc.calibration.count) > 0
    assert wrap(periodic).calibration.split == "val"  # held-out series given


def test_log_channels_carry_through():
    frame = make_frame(n_series=6, n_points=10)  # positive values near 100
    ds = from_dataframe(frame)
    scaler = ChannelScaler(log_channels=["x"]).fit(ds)
    torch.manual_seed(0)
    model = LatentODE(input_dim=2, latents=3, gen_units=8, encoder=ODERNNEncoder(
        2, 3, hidden=6, z0_units=8, ode_units=8, schedule="series"))
    fc = LatentODEForecaster.from_model(model, ds, scaler, calibration_data=frame)
    assert fc.spec.log == [True, False]
    pred = fc.predict(frame, horizon=0.5, n=2, num_samples=10)
    assert (pred["q0.05"] > 0).all()
    x = pred[pred["channel"] == "x"]
    assert (x["mean"] > x["q0.5"]).all()  # a log-normal's mean lies above its median
    with pytest.raises(ValueError, match=r"before scaler\.apply"):  # scaled twice: log of <= 0
        LatentODEForecaster.from_model(model, scaler.apply(ds), scaler, calibration_data=frame)


def test_calibration_series_are_read_on_the_training_clock():
    frame = make_frame(n_series=8, n_points=10)
    ds = from_dataframe(frame[frame.series_id != "s7"])
    held = frame[frame.series_id == "s7"].assign(time=lambda f: f.time * 3 + 20.0)
    own = from_dataframe(held)  # its own clock: from 0, in units of its 15-unit span
    assert own.time_transform != ds.time_transform
    torch.manual_seed(0)
    model = LatentODE(input_dim=2, latents=3, gen_units=8, encoder=ODERNNEncoder(
        2, 3, hidden=6, z0_units=8, ode_units=8, schedule="series"))
    scaler = ChannelScaler().fit(ds)
    a = LatentODEForecaster.from_model(model, ds, scaler, calibration_data=own,
                                       time_origin="series")
    b = LatentODEForecaster.from_model(model, ds, scaler, calibration_data=held,
                                       time_origin="series")
    assert a.calibration == b.calibration and a.calibration.split == "val"


def test_a_union_walk_on_unaligned_series_is_warned_about():
    frame = make_frame(n_series=6, n_points=8)  # every series on its own times
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="on data without a shared time grid"):
        fc = LatentODEForecaster.from_model(LatentODE(input_dim=2, latents=3),
                                            from_dataframe(frame), calibration_data=frame)
    assert fc.spec.walk_grid is None and fc.spec.mean is None  # unscaled: no scaler


def test_baseline_models_are_wrapped_too(periodic):
    _, ds, train_idx, val_idx, scaler = periodic
    torch.manual_seed(0)
    fc = LatentODEForecaster.from_model(GRUDT(input_dim=1, latents=4), ds.subset(train_idx),
                                        scaler, calibration_data=ds.subset(val_idx[:2]))
    pred = fc.predict(ds.subset(val_idx[:2]).to_dataframe(), horizon=0.5, n=2, num_samples=3)
    assert len(pred) == 4 and np.isfinite(pred["mean"]).all()


# ------------------------------------------------------------------------- refusals
def test_refuses_a_model_of_other_channels(periodic):
    _, ds, train_idx, _, scaler = periodic
    with pytest.raises(ValueError, match=r"model.input_dim=2 but dataset has 1 channel"):
        LatentODEForecaster.from_model(LatentODE(input_dim=2, latents=2), ds.subset(train_idx),
                                       scaler)


def test_refuses_an_unfitted_scaler(periodic):
    model, ds, train_idx, _, _ = periodic
    with pytest.raises(ValueError, match="scaler is not fitted"):
        LatentODEForecaster.from_model(model, ds.subset(train_idx), ChannelScaler())


def test_warns_of_data_scaled_already(periodic):
    model, ds, train_idx, val_idx, scaler = periodic
    train = scaler.apply(ds.subset(train_idx))  # the README loop's name for the scaled data
    with pytest.warns(UserWarning, match=r"dataset's channel 'value', scaled by the scaler, has "
                                         r"mean -1\.\d+ and std 1\.\d+ \(0 and 1 on the data "
                                         r"it was fitted on\): is it scaled already"):
        LatentODEForecaster.from_model(model, train, scaler, calibration_data=ds.subset(val_idx))
    far = ds.subset(val_idx).with_values(ds.subset(val_idx).values + 100.0)
    with pytest.warns(UserWarning, match="calibration_data's channel 'value'.*scaled already"):
        wrap(periodic, calibration_data=far)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the data as they should be: no word on scaling
        warnings.filterwarnings("ignore", "The predictive noise is calibrated on 4 series")
        warnings.filterwarnings("ignore", "too few forecast points")  # no lead curve
        wrap(periodic)


def test_save_needs_a_model_config(periodic, tmp_path):
    fc = wrap(periodic)
    with pytest.raises(ValueError, match=r"Pass model_config= to LatentODEForecaster\.from_model"):
        fc.save(tmp_path / "fc")
    assert not (tmp_path / "fc").exists()


@pytest.mark.parametrize(("config", "message"), [
    ({**CONFIG, "gen_units": 12}, r"weight 'field.net.0.weight' of shape \(12, 4\) "
                                  r"\(torch.float32\), the model's is \(16, 4\)"),
    ({**CONFIG, "encoder": {**ENCODER, "schedule": "series"}},
     r"model.encoder.schedule = 'series', the model has 'union'"),
    ({**CONFIG, "z0_at": "first_target"}, "model.z0_at = 'first_target', the model has 'start'"),
    ({**CONFIG, "encoder": {"_target_": "latentode.nn.RNNEncoder", "input_dim": 1,
                            "latent_dim": 4}}, "builds LatentODE weights that differ"),
    ({"_target_": "latentode.models.ODERNN", "input_dim": 1},
     r"builds ODERNN weights that differ from the model's \(LatentODE\)"),
    ({**CONFIG, "objective": "nonsense"},
     "(?s)model_config does not build a model: .*objective must be"),
])
def test_refuses_a_model_config_that_does_not_rebuild_the_model(periodic, config, message):
    with pytest.raises(ValueError, match=message):
        wrap(periodic, model_config=config)


def test_refuses_a_model_config_without_target(periodic):
    config = {k: v for k, v in CONFIG.items() if k != "_target_"}
    with pytest.raises(ValueError, match="model_config needs a _target_"):
        wrap(periodic, model_config=config)


# ---------------------------------------------------------------------- save and load
def test_save_and_load_predict_exactly_as_before(periodic, tmp_path):
    config = {k: v for k, v in CONFIG.items() if k != "input_dim"}  # taken from the model
    fc = wrap(periodic, model_config=config)
    model, ds, _, val_idx, _ = periodic
    frame = ds.subset(val_idx).to_dataframe()
    loaded = LatentODEForecaster.load(fc.save(tmp_path / "fc"))
    assert loaded.spec == fc.spec and loaded.calibration == fc.calibration
    assert type(loaded.model) is type(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about either
        want = fc.predict(frame, horizon=1.0, n=3, num_samples=10)
        got = loaded.predict(frame, horizon=1.0, n=3, num_samples=10)
    pd.testing.assert_frame_equal(got, want)


def test_from_model_calibrates_on_folds_unless_given_a_task(fitted):
    """Default: every held-out point once over five Folds passes (fit's calibration, the test
    above); task= keeps the given task's masks (here fit's Mixed task: its subsample shows the
    encoder 50-100% of a series, so far fewer points are scored)."""
    fc, _ = fitted
    dm = fc.trainer.datamodule
    train = dm.dataset.subset(dm.split_index["train"])
    common = {"calibration_data": dm.dataset.subset(dm.split_index["val"]),
              "batch_size": dm.batch_size, "time_origin": fc.cfg.data.time_origin}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folds = LatentODEForecaster.from_model(fc.model, train, dm.scaler, **common)
        given = LatentODEForecaster.from_model(fc.model, train, dm.scaler, task=dm.task,
                                               **common)
    assert np.allclose(folds.calibration.std, fc.calibration.std, rtol=1e-6)  # fit's own
    assert 2 * sum(given.calibration.count) < sum(folds.calibration.count)
    assert given.calibration.std != folds.calibration.std


def test_a_fit_forecasters_config_rebuilds_its_model(fitted, tmp_path):
    fc, data = fitted
    dm = fc.trainer.datamodule
    rebuilt = LatentODEForecaster.from_model(
        fc.model, dm.dataset.subset(dm.split_index["train"]), dm.scaler,
        calibration_data=dm.dataset.subset(dm.split_index["val"]),
        batch_size=dm.batch_size, model_config=fc.cfg.model, time_origin="series")
    loaded = LatentODEForecaster.load(rebuilt.save(tmp_path / "fc"))
    pd.testing.assert_frame_equal(loaded.predict(data, horizon=1.0, n=2, num_samples=5),
                                  fc.predict(data, horizon=1.0, n=2, num_samples=5))


# --------------------------------------------------------- a user pass's findings (review)
def test_channels_in_another_order_than_the_scaler_are_refused():
    """The same data with its channels swapped was taken, and each channel scaled with the
    other's statistics: forecasts came back under swapped names (temp 20.7 for a channel near
    23), silently. The scaler keeps its channels' order now, and apply refuses another."""
    frame = make_frame(n_series=6, n_points=10)
    ds = from_dataframe(frame, value_cols=["x", "y"])
    swapped = from_dataframe(frame, value_cols=["y", "x"])
    scaler = ChannelScaler().fit(ds)
    model = LatentODE(input_dim=2, latents=3, gen_units=8)
    with pytest.raises(ValueError, match=r"dataset has channels \['y', 'x'\], the scaler was "
                                         r"fitted on \['x', 'y'\] \(the same channels in "
                                         r"another order\)"):
        LatentODEForecaster.from_model(model, swapped, scaler, calibration_data=frame)
    with pytest.raises(ValueError, match=r"the data has channels \['y', 'x'\]"):
        scaler.apply(swapped)


def test_a_model_config_with_another_obs_std_is_refused(periodic):
    """obs_std lives in a private attribute, which the options check skipped: a config without
    the model's obs_std saved, and the reloaded forecaster's noise="model" intervals differed."""
    model, ds, train_idx, val_idx, scaler = periodic
    noisy = LatentODE(input_dim=1, latents=4, gen_units=16, obs_std=0.05, encoder=ODERNNEncoder(
        1, 4, hidden=8, z0_units=16, ode_units=16))
    noisy.load_state_dict(model.state_dict())
    with pytest.raises(ValueError, match=r"model.noise as ObservationNoise\(obs_std=0.01\), "
                                         r"the model has ObservationNoise\(obs_std=0.05\)"):
        LatentODEForecaster.from_model(noisy, ds.subset(train_idx), scaler,
                                       calibration_data=ds.subset(val_idx), model_config=CONFIG)


def test_a_float64_model_calibrates_saves_and_loads(periodic, tmp_path):
    """A float64 model failed in calibration (float32 batches) and could not be saved (the
    config check compared a float32 rebuild with it)."""
    model, ds, train_idx, val_idx, scaler = periodic
    double = LatentODE(input_dim=1, latents=4, gen_units=16, encoder=ODERNNEncoder(
        1, 4, hidden=8, z0_units=16, ode_units=16)).double()
    double.load_state_dict(model.state_dict())
    fc = LatentODEForecaster.from_model(double, ds.subset(train_idx), scaler,
                                        calibration_data=ds.subset(val_idx), model_config=CONFIG)
    frame = ds.subset(val_idx[:2]).to_dataframe()
    pred = fc.predict(frame, horizon=0.5, n=2, num_samples=5)
    again = LatentODEForecaster.load(fc.save(tmp_path / "fc"))
    assert next(again.model.parameters()).dtype == torch.float64
    assert again.calibration == fc.calibration
    pd.testing.assert_frame_equal(again.predict(frame, horizon=0.5, n=2, num_samples=5), pred)


def test_windows_and_weightless_models_are_refused(periodic):
    from latentode.data import split_windows

    model, ds, train_idx, _, scaler = periodic
    with pytest.raises(ValueError, match=r"dataset was cut into windows of 2\.0 \(split_windows"
                                         r"\): from_model conditions forecasts on whole series"):
        LatentODEForecaster.from_model(model, split_windows(ds.subset(train_idx), 2.0), scaler)
    with torch.device("meta"):
        empty = LatentODE(input_dim=1, latents=4)
    with pytest.raises(ValueError, match="model's weights are on the meta device"):
        LatentODEForecaster.from_model(empty, ds.subset(train_idx), scaler)


def test_a_model_given_other_units_than_it_trained_on_is_warned_about(periodic):
    """scaler=None for a model trained on scaled values answered in the wrong units (means near
    0 for data near 105), silently."""
    model, ds, train_idx, val_idx, _ = periodic
    shifted = ds.with_values(ds.values * 10.0 + 100.0)  # far from what the model saw
    with pytest.warns(UserWarning, match=r"channel 'value': the calibrated noise is [\d.]+x the "
                                         r"channel's own spread on the val series.*scaler=None"):
        LatentODEForecaster.from_model(model, shifted.subset(train_idx),
                                       calibration_data=shifted.subset(val_idx))


def test_no_warning_for_an_rnn_encoders_union_walk():
    """An RNN encoder steps at a series' own observations only, so its union walk is the
    series walk: the union warning (which advised an ODE-RNN setting) was wrong for it."""
    from latentode.nn import RNNEncoder

    frame = make_frame(n_series=6, n_points=8)  # every series on its own times
    torch.manual_seed(0)
    model = LatentODE(input_dim=2, latents=3, encoder=RNNEncoder(2, 3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        LatentODEForecaster.from_model(model, from_dataframe(frame), calibration_data=frame)
    assert not [w for w in caught if "union" in str(w.message)]
    odernn = LatentODE(input_dim=2, latents=3)  # the ODE-RNN's union walk: still warned
    with pytest.warns(UserWarning, match="union of time points"):
        LatentODEForecaster.from_model(odernn, from_dataframe(frame), calibration_data=frame)


def test_an_empty_calibration_frame_is_named(periodic):
    model, ds, train_idx, _, scaler = periodic
    with pytest.raises(ValueError, match=r"calibration_data \(a DataFrame\) has no rows"):
        LatentODEForecaster.from_model(model, ds.subset(train_idx), scaler,
                                       calibration_data=ds.to_dataframe().iloc[:0])


def test_sampling_a_deterministic_model_says_it_has_one_path(periodic):
    """sample(num_samples=5) on a GRU-dt returned one path (sample 0), silently."""
    _, ds, train_idx, val_idx, scaler = periodic
    torch.manual_seed(0)
    fc = LatentODEForecaster.from_model(GRUDT(input_dim=1, latents=4), ds.subset(train_idx),
                                        scaler, calibration_data=ds.subset(val_idx[:2]))
    frame = ds.subset(val_idx[:1]).to_dataframe()
    with pytest.warns(UserWarning, match=r"num_samples=5, but this model \(GRUDT\) is "
                                         r"deterministic: one path per series"):
        draws = fc.sample(frame, horizon=0.5, n=2, num_samples=5)
    assert set(draws["sample"]) == {0}
    with pytest.warns(UserWarning, match="noise=True draws num_samples values"):
        noisy = fc.sample(frame, horizon=0.5, n=2, num_samples=5, noise=True)
    assert set(noisy["sample"]) == set(range(5))  # the noise gives draws of their own
    assert noisy.groupby("time")["value"].nunique().eq(5).all()


def test_the_calibration_is_on_each_series_clock_as_predict_answers():
    """Calibrated on the batch clock (z0 at the batch's first time), a batch-trained model on
    unaligned series got intervals covering 0.76-0.83 for 0.9 (four seeds): predict answers
    each series on its own clock, so the calibration does too, whatever time_origin says."""
    frame = make_frame(n_series=8, n_points=10)  # every series on its own times
    ds = from_dataframe(frame[frame.series_id != "s7"])
    torch.manual_seed(0)
    model = LatentODE(input_dim=2, latents=3, gen_units=8, encoder=ODERNNEncoder(
        2, 3, hidden=6, z0_units=8, ode_units=8, schedule="series"))
    scaler = ChannelScaler().fit(ds)
    held = frame[frame.series_id == "s7"]
    batch = LatentODEForecaster.from_model(model, ds, scaler, calibration_data=held)
    series = LatentODEForecaster.from_model(model, ds, scaler, calibration_data=held,
                                            time_origin="series")
    assert batch.calibration == series.calibration


def test_calibration_on_few_series_warns_and_on_enough_does_not(periodic):
    """The README loop's split holds out 4 series: too few to calibrate on (their coverage
    varied 0.45-0.98 for 0.9 in a measurement, docs/results.md); 12 are enough."""
    ds, val_idx = periodic[1], periodic[3]
    with pytest.warns(UserWarning, match=r"The predictive noise is calibrated on 4 series "
                                         r"\(calibration_data\): with fewer than 10 .* Pass "
                                         r"more held-out series as calibration_data\."):
        wrap(periodic)
    _, _, test_idx = split_indices(len(ds), seed=0)
    more = np.concatenate([val_idx, test_idx])
    assert len(more) >= 10
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        wrap(periodic, calibration_data=ds.subset(more))
    assert not [w for w in seen if "calibrated on" in str(w.message)]



def test_tidy_frames_give_the_wide_answers_in_tidy_form(periodic, tmp_path):
    """A model trained on data read from a tidy (long) frame answers tidy frames: the same
    calibration and numbers as through wide frames, one row per (series, time, channel)."""
    model, ds, train_idx, val_idx, scaler = periodic
    tidy = ds.to_dataframe().melt(id_vars=["series_id", "time"], var_name="var",
                                  value_name="val").dropna()
    from_tidy = from_dataframe(tidy, "series_id", "time", channel_col="var", value_col="val")
    assert from_tidy.channels == ds.channels
    held = tidy[tidy.series_id.isin([ds.ids[i] for i in val_idx])]
    config = {k: v for k, v in CONFIG.items() if k != "input_dim"}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The predictive noise is calibrated on 4 series")
        warnings.filterwarnings("ignore", "too few forecast points")  # no lead curve
        wide = wrap(periodic)
        fc = LatentODEForecaster.from_model(
            model, from_tidy.subset(train_idx), scaler, calibration_data=held,
            channel_col="var", value_col="val", model_config=config)
    assert fc.calibration == wide.calibration
    want = wide.predict(ds.subset(val_idx).to_dataframe(), horizon=1.0, n=3, num_samples=10)
    got = fc.predict(held, horizon=1.0, n=3, num_samples=10)
    # predictions are long either way: the channel column keeps the tidy frame's name
    assert list(got.columns) == ["series_id", "time", "var", "mean", "q0.05", "q0.5", "q0.95"]
    pd.testing.assert_frame_equal(got.rename(columns={"var": "channel"}), want)
    filled = fc.impute(held)  # the frame back, tidy, its observations untouched
    assert list(filled.columns[:4]) == ["series_id", "time", "var", "val"]
    np.testing.assert_array_equal(filled["val"].to_numpy()[: len(held)], held["val"].to_numpy())
    loaded = LatentODEForecaster.load(fc.save(tmp_path / "fc"))
    pd.testing.assert_frame_equal(loaded.predict(held, horizon=1.0, n=3, num_samples=10), got)


@pytest.mark.parametrize(("options", "message"), [
    ({"channel_col": "var"}, r"channel_col='var' and value_col=None: tidy frames need both"),
    ({"channel_col": "time", "value_col": "val"},
     r"channel_col='time' is the dataset's time column"),
    ({"channel_col": "val", "value_col": "val"}, r"channel_col and value_col are both 'val'"),
])
def test_tidy_options_are_checked(periodic, options, message):
    with pytest.raises(ValueError, match=message):
        wrap(periodic, **options)


def test_a_tidy_frame_given_to_a_wide_forecaster_says_what_it_needs(periodic):
    ds, val_idx = periodic[1], periodic[3]
    tidy = ds.subset(val_idx).to_dataframe().melt(id_vars=["series_id", "time"],
                                                  var_name="var", value_name="val")
    with pytest.raises(ValueError, match=r"lacks value column\(s\) \['value'\].* A tidy frame "
                                         r"\(one row per observation\) needs a forecaster made "
                                         r"for tidy frames"):
        wrap(periodic, calibration_data=tidy)


def test_plot_takes_integer_channel_codes_as_predict_gives_them(periodic):
    """Lab item codes come back from predict as integers; plot takes them as they come."""
    model, ds, train_idx, val_idx, scaler = periodic
    tidy = ds.to_dataframe().melt(id_vars=["series_id", "time"], var_name="item",
                                  value_name="val").dropna()
    tidy["item"] = 220045
    coded = from_dataframe(tidy, "series_id", "time", channel_col="item", value_col="val")
    scaler = ChannelScaler().fit(coded.subset(train_idx))
    held = tidy[tidy.series_id.isin([ds.ids[i] for i in val_idx])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fc = LatentODEForecaster.from_model(model, coded.subset(train_idx), scaler,
                                            calibration_data=held, channel_col="item",
                                            value_col="val")
    pred = fc.predict(held, horizon=0.5, n=2, num_samples=4)
    code = pred["item"].iloc[0]
    assert code == 220045 and not isinstance(code, str)
    fig = fc.plot(held, pred, channels=[code])
    assert fig is not None



# ------------------------------------------------------------------------- subsets
def test_subsets_condition_predictions_and_their_calibration(periodic, tmp_path):
    """``subsets=``: each posterior sample conditioned on a random subset of the series drawn
    as training drew the encoder's points; calibrated so, saved and loaded with it, each series
    answered from its own stream whatever its batch."""
    from latentode.forecast.subsets import Subsets

    config = {k: v for k, v in CONFIG.items() if k != "input_dim"}
    plain = wrap(periodic, model_config=config)
    sub = wrap(periodic, model_config=config, subsets=Interpolation(fraction=0.5))
    assert plain.spec.subsets is None
    assert Subsets.from_json(sub.spec.subsets) == Subsets(Interpolation(fraction=0.5))
    assert sub.calibration.std != plain.calibration.std  # calibrated on its own answers
    _, ds, _, val_idx, _ = periodic
    frame = ds.subset(val_idx).to_dataframe()
    want = sub.predict(frame, horizon=1.0, n=3, num_samples=20)
    assert not np.allclose(want["mean"], plain.predict(frame, horizon=1.0, n=3,
                                                       num_samples=20)["mean"])
    alone = sub.predict(frame, horizon=1.0, n=3, num_samples=20, batch_size=1)
    np.testing.assert_allclose(alone["mean"], want["mean"], rtol=0, atol=2e-3)  # solver's rtol
    one = frame[frame[ds.id_col] == frame[ds.id_col].iloc[0]]
    first = sub.predict(one, horizon=1.0, n=3, num_samples=20)
    np.testing.assert_allclose(first["mean"], want["mean"][:len(first)], rtol=0, atol=2e-3)
    loaded = LatentODEForecaster.load(sub.save(tmp_path / "sub"))
    assert loaded.spec == sub.spec and loaded.calibration == sub.calibration
    pd.testing.assert_frame_equal(loaded.predict(frame, horizon=1.0, n=3, num_samples=20), want)


def test_subsets_need_a_latent_ode(periodic):
    _, ds, train_idx, val_idx, scaler = periodic
    with pytest.raises(ValueError, match=r"subsets condition a LatentODE's posterior samples; "
                                         r"GRUDT has none"):
        LatentODEForecaster.from_model(GRUDT(input_dim=1, latents=4), ds.subset(train_idx),
                                       scaler, calibration_data=ds.subset(val_idx[:2]),
                                       subsets=Interpolation(fraction=0.5))
    with pytest.raises(TypeError, match=r"subsets must be a latentode.data.Interpolation"):
        wrap(periodic, subsets=0.5)
