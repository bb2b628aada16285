"""Per-point measurement uncertainties: read from frames, carried with the values through every
data step, scaled with them, and weighing each point's likelihood by ``obs_std^2 + err^2``."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from test_cli import compose_train, read_metrics, run_main

from latentode.cli import train as train_cli
from latentode.data import ChannelScaler, from_dataframe
from latentode.data.batch import collate
from latentode.data.windows import split_windows
from latentode.forecast.spec import concat_datasets
from latentode.lit.module import check_reads_errors
from latentode.models import LatentODE
from latentode.models import latent_ode as latent_ode_module
from latentode.models.baselines import GRUDT, ODERNN, RNNVAE
from latentode.models.inputs import point_noise
from latentode.models.latent_ode import masked_gaussian_loglik

pytestmark = pytest.mark.filterwarnings("ignore:.*treespec, LeafSpec")


def light_curves(n: int = 6, points: int = 12, seed: int = 0) -> pd.DataFrame:
    """Wide frame with flux (+ flux_err) and mag (+ mag_err), rows shuffled."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        t = np.sort(rng.uniform(0, 10, points))
        err = rng.uniform(0.05, 0.5, points)
        rows.append(pd.DataFrame({"star": f"s{i}", "t": t, "flux": np.sin(t) + 2,
                                  "flux_err": err, "mag": np.cos(t), "mag_err": 2 * err}))
    df = pd.concat(rows, ignore_index=True)
    return df.sample(frac=1.0, random_state=1).reset_index(drop=True)


ERRS = {"flux": "flux_err", "mag": "mag_err"}


def read(df: pd.DataFrame, **kwargs):
    return from_dataframe(df, "star", "t", uncertainty_cols=ERRS, **kwargs)


# ------------------------------------------------------------------------------ reading
def test_wide_uncertainties_follow_their_values_and_round_trip():
    df = light_curves()
    ds = read(df)
    assert ds.channels == ["flux", "mag"]  # the uncertainty columns are not channels
    back = ds.to_dataframe()
    original = df.sort_values(["star", "t"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(back[list(df.columns)], original[list(df.columns)],
                                  check_dtype=False)
    assert ds.error_names == ["flux_err", "mag_err"]


def test_no_warning_that_given_uncertainty_columns_look_like_channels():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read(light_curves())
    with pytest.warns(UserWarning, match="named like measurement uncertainties .*'mag_err'"):
        from_dataframe(light_curves(), "star", "t", uncertainty_cols={"flux": "flux_err"})


def test_an_uncertainty_without_its_value_is_dropped_and_a_value_without_one_is_counted():
    df = light_curves()
    df.loc[0, "flux"] = np.nan  # no value: its uncertainty says nothing
    df.loc[1, "flux_err"] = np.nan  # a value without an uncertainty: only obs_std
    with pytest.warns(UserWarning, match=r"1 observed value\(s\) have no uncertainty .*"
                                         r"column 'flux_err' of series"):
        ds = read(df)
    order = df.sort_values(["star", "t"]).index.to_numpy()
    row0, row1 = int(np.argmax(order == 0)), int(np.argmax(order == 1))
    assert np.isnan(ds.errors[row0, 0]) and np.isnan(ds.errors[row1, 0])
    assert ds.errors[row1, 1] == df.loc[1, "mag_err"]


def test_averaged_duplicates_get_the_uncertainty_of_their_mean():
    df = pd.DataFrame({"star": ["a"] * 4, "t": [0.0, 1.0, 1.0, 1.0],
                       "flux": [1.0, 2.0, 4.0, np.nan], "flux_err": [0.1, 0.3, 0.4, 9.0]})
    with pytest.warns(UserWarning, match="averaged"):
        ds = from_dataframe(df, "star", "t", uncertainty_cols={"flux": "flux_err"})
    np.testing.assert_allclose(ds.values[:, 0], [1.0, 3.0])
    np.testing.assert_allclose(ds.errors[:, 0], [0.1, math.hypot(0.3, 0.4) / 2])
    # one of the averaged values has none: counted as exact, as it is read alone (the mean was
    # given NaN, read as exact: the noisy partner's share was lost)
    df.loc[2, "flux_err"] = np.nan
    with pytest.warns(UserWarning):
        ds = from_dataframe(df, "star", "t", uncertainty_cols={"flux": "flux_err"})
    assert ds.errors[1, 0] == pytest.approx(0.3 / 2)
    df.loc[1, "flux_err"] = np.nan  # none has one: none
    with pytest.warns(UserWarning):
        ds = from_dataframe(df, "star", "t", uncertainty_cols={"flux": "flux_err"})
    assert np.isnan(ds.errors[1, 0])


def test_tidy_uncertainties_per_channel_and_averaged():
    df = pd.DataFrame({"id": [1, 1, 1, 1, 2], "t": [0, 0, 1, 1, 0],
                       "ch": ["x", "y", "x", "x", "y"], "v": [1.0, 2.0, 3.0, 5.0, 7.0],
                       "e": [0.1, 0.2, 0.6, 0.8, 0.3]})
    with pytest.warns(UserWarning, match="averaged"):
        ds = from_dataframe(df, "id", "t", channel_col="ch", value_col="v", uncertainty_col="e")
    assert ds.channels == ["x", "y"]
    np.testing.assert_allclose(ds.errors, [[0.1, 0.2], [0.5, np.nan], [np.nan, 0.3]])
    df.loc[3, "e"] = np.nan  # x at t = 1: 3 +- 0.6 and 5 exact, mean 4 +- 0.3
    with pytest.warns(UserWarning, match="averaged"):
        ds = from_dataframe(df, "id", "t", channel_col="ch", value_col="v", uncertainty_col="e")
    assert ds.errors[1, 0] == pytest.approx(0.3)
    df.loc[2, "e"] = np.nan
    with pytest.warns(UserWarning, match="averaged"):
        ds = from_dataframe(df, "id", "t", channel_col="ch", value_col="v", uncertainty_col="e")
    assert np.isnan(ds.errors[1, 0])
    assert list(ds.to_dataframe().columns[-2:]) == ["x_err", "y_err"]


@pytest.mark.parametrize("kwargs, message", [
    ({"uncertainty_cols": {"flx": "flux_err"}}, r"names channel\(s\) \['flx'\] .*did you mean "
                                                r"'flux'\?"),
    ({"uncertainty_cols": ["flux_err"]}, r"must map each channel to the column .*"
                                         r"\{'flux': 'flux_err'\}"),
    ({"uncertainty_cols": {"flux": "mag"}, "value_cols": ["flux", "mag"]},
     r"column 'mag' is given as a channel and as the uncertainty of 'flux'"),
    ({"uncertainty_cols": {"flux": "nope"}}, "nope"),
    ({"uncertainty_col": "flux_err"}, r"uncertainty_col= is for tidy frames.*latentode-train: "
                                      r"data\.dataset\.uncertainty_cols="),
])
def test_misnamed_uncertainties_are_refused_with_the_way_out(kwargs, message):
    with pytest.raises(ValueError, match=message):
        from_dataframe(light_curves(), "star", "t", **kwargs)


@pytest.mark.parametrize("bad", [-0.1, np.inf])
def test_negative_or_infinite_uncertainties_are_refused_by_series_and_time(bad):
    df = light_curves()
    df.loc[3, "mag_err"] = bad
    with pytest.raises(ValueError, match=rf"uncertainty column 'mag_err' holds {bad} \(series "
                                         rf"'{df.loc[3, 'star']}', time .*finite and >= 0"):
        read(df)
    long = df.melt(["star", "t"], ["flux"], "ch", "v").assign(e=-1.0)  # tidy: before averaging
    with pytest.raises(ValueError, match=r"uncertainty column 'e' holds -1\.0"):
        from_dataframe(long, "star", "t", channel_col="ch", value_col="v", uncertainty_col="e")


def test_variances_given_as_uncertainties_are_warned_about():
    df = light_curves().rename(columns={"flux_err": "flux_ivar"})
    with pytest.warns(UserWarning, match=r"'flux_ivar' of 'flux' is named like a variance .*"
                                         r"1 / np.sqrt"):
        from_dataframe(df, "star", "t", value_cols=["flux"], uncertainty_cols={"flux": "flux_ivar"})


# ------------------------------------------------------------------------------ data steps
def test_subsets_windows_and_concatenation_keep_each_points_uncertainty():
    ds = read(light_curves())
    sub = ds.subset([3, 1])
    np.testing.assert_array_equal(sub.errors, np.concatenate([ds.series(3)["errors"],
                                                              ds.series(1)["errors"]]))
    windows = split_windows(ds, 5.0, min_points=1)
    keys = zip(np.repeat(ds.ids, ds.lengths), ds.times, strict=True)
    by_time = dict(zip(keys, ds.errors[:, 0], strict=True))
    owners = [i.rsplit("#", 1)[0] if isinstance(i, str) else i for i in windows.ids]
    for k, owner in enumerate(owners):
        lo, hi = windows.offsets[k], windows.offsets[k + 1]
        for t, e in zip(windows.times[lo:hi], windows.errors[lo:hi, 0], strict=True):
            assert by_time[(owner, t)] == e
    both = concat_datasets(ds, from_dataframe(light_curves(seed=1), "star", "t",
                                              value_cols=["flux", "mag"]))
    assert both.errors.shape == both.values.shape
    assert np.isnan(both.errors[len(ds.times):]).all()


def test_scaling_divides_the_uncertainties_by_the_scale_and_logs_make_them_relative():
    ds = read(light_curves())
    scaler = ChannelScaler(log_channels=["flux"]).fit(ds)
    scaled = scaler.apply(ds)
    np.testing.assert_allclose(scaled.errors[:, 1], ds.errors[:, 1] / scaler.scale[1])
    np.testing.assert_allclose(scaled.errors[:, 0],
                               ds.errors[:, 0] / ds.values[:, 0] / scaler.scale[0])


def test_collate_puts_uncertainties_on_the_batch_grid_and_zero_elsewhere():
    df = light_curves(n=3)
    df.loc[df.index[::3], "mag"] = np.nan
    ds = read(df)
    batch = collate(ds, [2, 0])
    assert batch.errors.shape == batch.values.shape
    for row, i in enumerate([2, 0]):
        s = ds.series(i)
        cols = np.searchsorted(batch.times.numpy(), s["times"].astype(np.float32))
        want = np.nan_to_num(s["errors"]).astype(np.float32)
        np.testing.assert_array_equal(batch.errors[row, cols].numpy(), want)
    assert (batch.errors[~batch.mask] == 0).all()
    assert collate(from_dataframe(df, "star", "t", value_cols=["flux"]), [0]).errors is None


# ------------------------------------------------------------------------------ likelihood
def test_point_noise_adds_uncertainties_in_quadrature_and_checks_them():
    values = torch.zeros(2, 3, 2)
    errors = torch.tensor([0.0, 0.3, 4.0]).view(1, 3, 1).expand(2, 3, 2)
    std = point_noise(torch.tensor([0.4, 0.01]), errors, values, weighting="absolute")
    assert point_noise(0.1, None, values) == 0.1
    torch.testing.assert_close(std[0, :, 0], torch.tensor([0.4, 0.5, math.hypot(0.4, 4.0)]))
    with pytest.raises(ValueError, match=r"errors must have the shape of values \(2, 3, 2\)"):
        point_noise(0.1, errors[:, :2], values)
    with pytest.raises(ValueError, match="finite and >= 0"):
        point_noise(0.1, -errors, values)
    with pytest.raises(ValueError, match=r"error_weighting must be one of \('relative', "
                                         r"'absolute'\), got 'variance'"):
        point_noise(0.1, errors, values, weighting="variance")
    with pytest.raises(ValueError, match="error_weighting must be one of"):
        LatentODE(2, error_weighting="relativ")


def test_relative_weighting_shares_each_series_weight_without_changing_its_mean():
    """Each series and channel's mean weight 1 / std^2 over its targets stays 1 / obs_std^2
    (per channel obs_std); the points' weights keep the ratios of 1 / (obs_std^2 + err^2);
    equal uncertainties change nothing, whatever their size; points that are not targets, and
    series-channels without any, do not count; a series' stds do not depend on the others in
    its batch."""
    torch.manual_seed(0)
    values = torch.zeros(3, 5, 2, dtype=torch.float64)
    errors = torch.rand(3, 5, 2, dtype=torch.float64)
    mask = torch.rand(3, 5, 2) < 0.6
    mask[:, 0] = True
    mask[2, :, 1] = False  # series 2 has no target in channel 1
    obs = torch.tensor([0.1, 0.2], dtype=torch.float64)
    std = point_noise(obs, errors, values, mask)
    weight = std.square().reciprocal()
    for b in range(3):
        for d in range(2):
            if mask[b, :, d].any():
                torch.testing.assert_close(weight[b, :, d][mask[b, :, d]].mean(), 1 / obs[d] ** 2)
    absolute = point_noise(obs, errors, values, mask, weighting="absolute")
    ratio = weight * absolute.square()  # one factor per series and channel
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))
    torch.testing.assert_close(std[2, :, 1], absolute[2, :, 1])  # no targets: as given
    far = errors.clone()
    far[~mask] = 1e6  # a non-target's uncertainty changes no target's weight
    torch.testing.assert_close(point_noise(obs, far, values, mask)[mask], std[mask])
    alone = point_noise(obs, errors[1:2], values[1:2], mask[1:2])
    torch.testing.assert_close(alone[0], std[1])
    for size in (0.0, 0.7, 1e20, 1e37):
        same = point_noise(obs, torch.full_like(errors, size), values, mask)
        torch.testing.assert_close(same[mask], obs.expand_as(same)[mask], rtol=1e-5, atol=0)
    err = torch.tensor([[[0.0], [0.0], [3e38], [3e38]]])  # non-targets' std underflowed to 0
    target = torch.tensor([[[False], [False], [True], [True]]])
    tiny = point_noise(1e-4, err, torch.zeros(1, 4, 1), target)
    assert (tiny > 0).all()
    assert torch.isfinite(masked_gaussian_loglik(torch.zeros(1, 4, 1), torch.zeros(1, 1, 4, 1),
                                                 target, tiny)).all()
    half = point_noise(0.01, torch.full((256, 300, 1), 0.05).half(), torch.zeros(
        256, 300, 1, dtype=torch.half))  # half precision's sums overflowed
    assert torch.isfinite(half).all() and float(half[0, 0, 0]) == pytest.approx(0.01)


def test_the_loglik_with_per_point_stds_is_the_gaussian_density_averaged_as_the_paper():
    torch.manual_seed(0)
    values, pred = torch.randn(2, 4, 2, dtype=torch.float64), torch.randn(3, 2, 4, 2,
                                                                       dtype=torch.float64)
    mask = torch.rand(2, 4, 2) < 0.7
    mask[:, 0] = True
    std = torch.rand(2, 4, 2, dtype=torch.float64) + 0.1
    got = masked_gaussian_loglik(values, pred, mask, std)
    dens = torch.distributions.Normal(pred, std).log_prob(values)
    per_channel = (dens * mask).sum(-2) / mask.sum(-2)
    torch.testing.assert_close(got, per_channel.mean(-1))


def small_latent_ode(**kwargs) -> LatentODE:
    torch.manual_seed(0)
    return LatentODE(2, latents=4, gen_units=8, obs_std=0.1, n_samples=2, **kwargs).double()


def batch_for_loss(n: int = 3, length: int = 6):
    torch.manual_seed(1)
    times = torch.linspace(0, 1, length, dtype=torch.float64)
    values = torch.randn(n, length, 2, dtype=torch.float64)
    mask = torch.ones(n, length, 2, dtype=torch.bool)
    return times, values, mask


@pytest.mark.parametrize("make", [  # latent ODEs whose encoder reads every value alike
    lambda: small_latent_ode(encoder_error_scale=None),
    lambda: small_latent_ode(error_weighting="absolute", encoder_error_scale=None),
    lambda: ODERNN(2, latents=4, ode_units=8, dec_units=8, obs_std=0.1).double(),
    lambda: GRUDT(2, latents=4, dec_units=8, obs_std=0.1, error_weighting="absolute").double(),
    lambda: RNNVAE(2, latents=4, enc_hidden=8, z0_units=8, hidden=8, obs_std=0.1).double(),
])
def test_each_models_likelihood_has_variance_obs_std_squared_plus_the_uncertainty(make):
    """The same forward pass (same seed: the uncertainties change no prediction), its
    likelihood with per-point stds ``sqrt(obs_std^2 + err^2)``; zero uncertainties give the
    loss without them."""
    model = make()
    times, values, mask = batch_for_loss()
    target = mask.clone()
    target[:, 1::2] = False  # every other time only: the rest is for the encoder
    errors = torch.rand_like(values)  # every point, targets or not
    errors[1, 3, 0], errors[0, 2, 1] = 0.2, 3.0

    def loss(errs):
        torch.manual_seed(2)
        return model.loss(times, values, mask, target, errors=errs)

    plain = loss(None)
    torch.testing.assert_close(loss(torch.zeros_like(values))["loss"], plain["loss"])
    weighted = loss(errors)
    obs = torch.as_tensor(model.noise(values), dtype=values.dtype)
    std = torch.hypot(obs, errors)
    if model.error_weighting == "relative":  # by hand: each series' targets' mean weight
        w = torch.where(target, std.square().reciprocal(), 0.0)
        mean = w.sum(1, keepdim=True) / target.sum(1, keepdim=True)
        std = std * (mean * obs.square()).sqrt()
    want = masked_gaussian_loglik(values, plain["pred"], target, std).mean()
    torch.testing.assert_close(weighted["loglik"], want)
    assert float(weighted["loglik"].detach()) != pytest.approx(float(plain["loglik"].detach()))
    torch.testing.assert_close(weighted["pred"], plain["pred"])


def test_likelihood_term_of_a_point_scales_exactly_with_its_variance():
    """With the prediction held fixed (no encoder path), the loglik's gradient with respect to
    the prediction at a point is ``-(pred - value) / (obs_std^2 + err^2)`` / its count."""
    values = torch.tensor([[[1.0], [2.0]]], dtype=torch.float64)
    pred = torch.tensor([[[[0.0], [0.0]]]], dtype=torch.float64, requires_grad=True)
    mask = torch.ones(1, 2, 1, dtype=torch.bool)
    errors = torch.tensor([[[0.0], [3.0]]], dtype=torch.float64)
    loglik = masked_gaussian_loglik(values, pred, mask,
                                    point_noise(0.5, errors, values, weighting="absolute"))
    (grad,) = torch.autograd.grad(loglik.sum(), pred)
    torch.testing.assert_close(grad.flatten(), torch.tensor([1 / 0.25, 2 / 9.25],
                                                            dtype=torch.float64) / 2)


def test_packed_targets_read_each_targets_own_uncertainty(monkeypatch):
    model = small_latent_ode()
    torch.manual_seed(3)
    n, length = 6, 24
    times = torch.linspace(0, 1, length, dtype=torch.float64)
    values = torch.randn(n, length, 2, dtype=torch.float64)
    mask = torch.zeros(n, length, 2, dtype=torch.bool)
    for b in range(n):  # unaligned: each series its own four times
        mask[b, b::6] = True
    errors = torch.rand(n, length, 2, dtype=torch.float64) * mask
    torch.manual_seed(4)
    union = model.loss(times, values, mask, mask, errors=errors)
    monkeypatch.setattr(latent_ode_module, "PACK_MIN_CELLS", 0)
    assert model._packed_targets(times, mask) is not None
    torch.manual_seed(4)
    packed = model.loss(times, values, mask, mask, errors=errors)
    torch.testing.assert_close(packed["loglik"], union["loglik"], rtol=1e-4, atol=1e-6)


def test_a_model_whose_loss_takes_no_uncertainties_is_refused_by_name():
    class Plain(torch.nn.Module):
        def loss(self, times, values, encoder_mask, target_mask, kl_weight=1.0,
                 n_samples=None):
            raise AssertionError

    with pytest.raises(ValueError, match=r"Plain\.loss takes no errors="):
        check_reads_errors(Plain())
    check_reads_errors(small_latent_ode())


# ------------------------------------------------------------------------------ entry points
def write_light_curves(path, n: int = 12) -> None:
    df = light_curves(n=n, points=15)
    df.loc[df.index[::4], "mag"] = np.nan
    df.to_csv(path, index=False)


def test_train_command_reads_uncertainties(tmp_path, monkeypatch, capsys):
    path = tmp_path / "lc.csv"
    write_light_curves(path)
    run = tmp_path / "run"
    tiny = ["model.gen_units=16", "model.encoder.hidden=8", "model.encoder.z0_units=16",
            "plots.n_series=2", "plots.n_samples=5", "callbacks.progress_bar.refresh_rate=0",
            "trainer.log_every_n_steps=1", "data.batch_size=4"]
    run_main(train_cli, ["latentode-train", "experiment=csv", f"data.dataset.path={path}",
                         "data.dataset.id_col=star", "data.dataset.time_col=t",
                         "data.dataset.uncertainty_cols={flux:flux_err,mag:mag_err}",
                         "trainer.max_epochs=1", f"hydra.run.dir={run}", *tiny], monkeypatch)
    assert math.isfinite(read_metrics(run)["test/loglik"])
    from latentode.forecast import LatentODEForecaster

    forecaster = LatentODEForecaster.from_run(run)
    assert forecaster.spec.uncertainty_cols == ERRS
    history = pd.read_csv(path).query("star == 's1'")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        pred = forecaster.predict(history, [10.5], quantiles=None)
    assert sorted(pred["channel"]) == ["flux", "mag"]
    # the eval's coverage: the noise beyond the uncertainties, each value's own added back
    from latentode.cli import evaluate as eval_cli

    ckpt = next((run / "checkpoints").glob("*.ckpt"))
    evaluated = tmp_path / "eval"
    run_main(eval_cli, ["latentode-eval", f"ckpt_path={ckpt}", f"hydra.run.dir={evaluated}"],
             monkeypatch)
    out = capsys.readouterr().out
    assert "each value's own measurement uncertainty added" in out
    assert "measurement_rms/flux" in out and "measurement_rms/mag" in out
    record = json.loads((evaluated / "test_metrics.json").read_text())["coverage"]
    assert len(record["calibration"]["error_rms"]) == 2
    cfg = compose_train(["experiment=csv", f"data.dataset.path={path}",
                         "data.dataset.id_col=star", "data.dataset.time_col=t",
                         "data.dataset.uncertainty_cols={flux:flx_err}", *tiny], tmp_path / "r2")
    with pytest.raises(ValueError, match=r"column 'flx_err' is not in the DataFrame\. Did you "
                                         r"mean 'flux_err'"):
        train_cli.build_datamodule(cfg).setup("fit")


def test_forecaster_fits_on_uncertainties_and_predicts_from_histories_with_or_without():
    from latentode.forecast import LatentODEForecaster

    df = light_curves(n=12, points=15)
    forecaster = LatentODEForecaster(["trainer.max_epochs=1", "model.gen_units=8",
                                      "model.encoder.hidden=8", "model.encoder.z0_units=8",
                                      "callbacks.progress_bar.refresh_rate=0"])
    forecaster.fit(df, "star", "t", uncertainty_cols=ERRS, val_fraction=0)
    assert forecaster.spec.channels == ["flux", "mag"]
    assert forecaster.spec.uncertainty_cols == ERRS
    assert forecaster.model.encoder_error_scale == 1.0  # the encoder reads them (default)
    history = df[df["star"] == "s0"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "unused new column" for the errors
        with_errors = forecaster.predict(history, [11.0, 12.0], quantiles=None)
    with pytest.warns(UserWarning, match=r"reads measurement uncertainties .*no column\(s\) "
                                         r"\['flux_err', 'mag_err'\]: those values are read "
                                         "as exact"):
        without = forecaster.predict(history.drop(columns=["flux_err", "mag_err"]),
                                     [11.0, 12.0], quantiles=None)
    # a history's uncertainties reach the encoder: noisy values move the answer less
    assert not np.allclose(with_errors["mean"], without["mean"])
    exact = forecaster.predict(history.assign(flux_err=0.0, mag_err=0.0), [11.0, 12.0],
                               quantiles=None)
    pd.testing.assert_frame_equal(exact, without)  # 0: as precise as a value without one


# ------------------------------------------------------------------------------ review fixes
def test_huge_uncertainties_stay_finite_and_beyond_float32_are_refused_by_name():
    values = torch.zeros(1, 2, 1)
    huge = torch.tensor([[[1e20], [0.0]]])  # squared: inf in float32
    std = point_noise(0.01, huge, values, weighting="absolute")
    assert torch.isfinite(std).all() and float(std[0, 0, 0]) == pytest.approx(1e20)
    std = point_noise(0.01, huge, values)
    assert torch.isfinite(std).all() and float(std[0, 1, 0]) == pytest.approx(0.01 * 0.5**0.5)
    df = light_curves()
    df.loc[2, "flux_err"] = 1e39
    from latentode.data.scaling import check_representable

    with pytest.raises(ValueError, match=rf"channel 'flux' of series '{df.loc[2, 'star']}' "
                                         r"\(train\) has uncertainty 1e\+39, beyond float32"):
        check_representable(read(df), "train")


@pytest.mark.parametrize("kwargs, role", [
    ({"uncertainty_cols": {"flux": "t"}}, "the time column"),
    ({"uncertainty_cols": {"flux": "star"}}, "the id column"),
    ({"uncertainty_cols": {"flux": "mag_err"}, "static_cols": ["mag_err"]}, "a static covariate"),
])
def test_an_uncertainty_column_with_another_role_is_refused(kwargs, role):
    with pytest.raises(ValueError, match=rf"given as the uncertainty of 'flux' and as {role}"):
        from_dataframe(light_curves(), "star", "t", **kwargs)
    long = light_curves().melt(["star", "t"], ["flux"], "ch", "v")
    with pytest.raises(ValueError, match="as the value column"):
        from_dataframe(long, "star", "t", channel_col="ch", value_col="v", uncertainty_col="v")


def test_variance_names_are_judged_without_the_channels_and_converted_in_the_advice():
    df = light_curves().rename(columns={"flux_err": "flux_ivar", "mag": "w", "mag_err": "sigma_w"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sigma_w of w is a standard deviation
        from_dataframe(df, "star", "t", uncertainty_cols={"w": "sigma_w"}, value_cols=["w"])
    with pytest.warns(UserWarning, match=r"uncertainty_cols=\{'w': 'sigma_w'\} .*variances first "
                                         r"as standard deviations: df\['flux_err'\] = 1 / "
                                         r"np\.sqrt\(df\['flux_ivar'\]\)"):
        from_dataframe(df, "star", "t")


def test_a_limit_given_as_an_uncertainty_is_refused_saying_what_an_uncertainty_is():
    df = light_curves().astype({"flux_err": object})
    df.loc[4, "flux_err"] = "<0.1"
    with pytest.raises(ValueError, match=r"column 'flux_err' has a non-numeric value '<0\.1' .*"
                                         r"a limit such as '<0\.1' is not a standard deviation"):
        read(df)


def test_a_column_two_channels_share_comes_back_whole():
    df = light_curves()
    df["err"] = df["flux_err"]
    df.loc[df.index[::2], "mag"] = np.nan
    ds = from_dataframe(df, "star", "t", value_cols=["flux", "mag"],
                        uncertainty_cols={"flux": "err", "mag": "err"})
    back = ds.to_dataframe()
    want = df.sort_values(["star", "t"])["err"].to_numpy()
    np.testing.assert_array_equal(back["err"].to_numpy(), want)


def fitted(df: pd.DataFrame, *overrides: str, **kwargs):
    from latentode.forecast import LatentODEForecaster

    return LatentODEForecaster(["trainer.max_epochs=1", "model.gen_units=8",
                                "model.encoder.hidden=8", "model.encoder.z0_units=8",
                                "callbacks.progress_bar.refresh_rate=0", *overrides]).fit(
        df, "star", "t", val_fraction=0, **kwargs)


def test_training_sees_the_uncertainties_and_histories_pass_theirs_over(monkeypatch):
    """Without ``encoder_error_scale`` a history's uncertainties are read only for the
    series' factor on the in-series noise (calibrated on ``r^2 - e^2``); where nothing uses
    them they are not read: bad ones there are no error."""
    seen = []
    original = LatentODE.loss

    def spy(self, *args, errors=None, **kwargs):
        seen.append(errors)
        return original(self, *args, errors=errors, **kwargs)

    monkeypatch.setattr(LatentODE, "loss", spy)
    df = light_curves(n=12, points=15)
    forecaster = fitted(df, "model.encoder_error_scale=null", uncertainty_cols=ERRS,
                        ignore_cols=["flux_err", "mag_err"])
    assert seen and all(e is not None and (e > 0).any() for e in seen)
    assert forecaster.spec.channels == ["flux", "mag"]
    history = df[df["star"] == "s0"].astype({"flux_err": object})
    history.loc[history.index[0], "flux_err"] = "<0.1"  # unread: predict reads values only
    history.loc[history.index[1], "mag_err"] = -1.0
    history.loc[history.index[2], "mag_err"] = np.nan
    assert forecaster.calibration.series_kappa is not None and forecaster.calibration.error_rms
    with pytest.raises(ValueError, match="flux_err"):  # the factor reads them
        forecaster.predict(history, [11.0], quantiles=None)
    forecaster.calibration = dataclasses.replace(forecaster.calibration, error_rms=[])
    with warnings.catch_warnings():  # a calibration without them (an older one): unread
        warnings.simplefilter("error", UserWarning)
        forecaster.predict(history, [11.0], quantiles=None)
    seen.clear()
    fitted(df[["star", "t", "flux", "mag"]])
    assert seen and all(e is None for e in seen)


def test_a_history_s_bad_uncertainties_are_refused_when_the_encoder_reads_them():
    df = light_curves(n=12, points=15)
    forecaster = fitted(df, uncertainty_cols=ERRS)
    history = df[df["star"] == "s0"].astype({"flux_err": object})
    history.loc[history.index[0], "flux_err"] = "<0.1"
    with pytest.raises(ValueError, match=r"column 'flux_err' has a non-numeric value '<0.1' "
                                         r"\(series 's0'"):
        forecaster.predict(history, [11.0], quantiles=None)
    history = df[df["star"] == "s0"].copy()
    history.loc[history.index[1], "mag_err"] = -1.0
    with pytest.raises(ValueError, match="mag_err"):
        forecaster.predict(history, [11.0], quantiles=None)


def test_the_lightning_module_hands_the_batchs_uncertainties_to_the_loss():
    from latentode.lit import LatentODELightning

    ds = read(light_curves(n=3))
    batch = collate(ds, [0, 1, 2])
    model = LatentODE(2, latents=4, gen_units=8, obs_std=0.1, n_samples=2)
    module = LatentODELightning(model)
    torch.manual_seed(0)
    with_errors = module._terms("val", batch, 0, 1.0, None)
    torch.manual_seed(0)
    want = model.loss(batch.times, batch.values, batch.encoder_mask, batch.target_mask,
                      errors=batch.errors)
    torch.manual_seed(0)
    plain = model.loss(batch.times, batch.values, batch.encoder_mask, batch.target_mask)
    torch.testing.assert_close(with_errors["loglik"], want["loglik"])
    assert float(with_errors["loglik"].detach()) != pytest.approx(float(plain["loglik"].detach()))
