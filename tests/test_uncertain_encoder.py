"""An encoder that reads measurement uncertainties: each observed value enters the posterior
with confidence ``1 / (1 + (err / scale)^2)`` (a soft mask), in training, evaluation and every
forecaster answer."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from test_uncertainty import ERRS, fitted, light_curves

from latentode.data.batch import collate
from latentode.forecast.draw import WalkGrid, make_jobs, solve
from latentode.forecast.subsets import subset_forward
from latentode.lit import LatentODELightning
from latentode.models import LatentODE
from latentode.models import latent_ode as latent_ode_module
from latentode.models.inputs import check_error_scale, encoder_confidence
from latentode.nn import ODERNNEncoder, RNNEncoder

pytestmark = pytest.mark.filterwarnings("ignore:.*treespec, LeafSpec")


# ------------------------------------------------------------------------------ the soft mask
def test_confidence_is_one_without_uncertainty_half_at_the_scale_zero_where_unobserved():
    mask = torch.tensor([[[True, True, True, False]]])
    errors = torch.tensor([[[0.0, 2.0, 1e30, 5.0]]])
    got = encoder_confidence(mask, errors, 2.0, torch.float32)
    torch.testing.assert_close(got, torch.tensor([[[1.0, 0.5, 0.0, 0.0]]]))
    assert got.dtype == torch.float32
    assert encoder_confidence(mask, None, 2.0, torch.float32) is mask
    assert encoder_confidence(mask, errors, None, torch.float32) is mask
    half = encoder_confidence(mask, torch.full((1, 1, 4), 300.0), 1.0, torch.float16)
    assert half.dtype == torch.float16 and bool((half[..., :3] > 0).all())  # no overflow to 0


def test_relative_confidence_is_each_series_channel_s_own_and_equal_ones_change_nothing():
    mask = torch.tensor([[[True, True], [True, False], [True, True]],
                         [[True, True], [False, True], [True, True]]])
    errors = torch.tensor([[[1.0, 3.0], [2.0, 9.0], [3.0, 3.0]],
                           [[0.5, 1e20], [7.0, 1e20], [0.5, 1e20]]])
    absolute = encoder_confidence(mask, errors, 1.0, torch.float64)
    relative = encoder_confidence(mask, errors, 1.0, torch.float64, relative=True)
    torch.testing.assert_close(relative[0, :, 0], torch.tensor([1.0, 0.4, 0.2],
                                                               dtype=torch.float64))
    # series 1, channel 1: equal (huge) uncertainties, each as confident as the best
    torch.testing.assert_close(relative[1, :, 1], torch.tensor([1.0, 1.0, 1.0],
                                                               dtype=torch.float64))
    assert float(absolute[1, 0, 1]) < 1e-30
    # per series: the same whatever the batch
    alone = encoder_confidence(mask[1:], errors[1:], 1.0, torch.float64, relative=True)
    torch.testing.assert_close(alone, relative[1:])
    assert float(relative[1, 1, 0]) == 0.0  # not observed
    # in float32 (MPS has no float64) the same reading, no overflow to 0/0
    single = encoder_confidence(mask, errors, 1.0, torch.float32, relative=True,
                                compute_dtype=torch.float32)
    torch.testing.assert_close(single, relative.float())


@pytest.mark.parametrize("errors, match", [
    (torch.zeros(1, 2, 4), r"shape of the encoder mask \(1, 1, 4\).*got \(1, 2, 4\)"),
    (torch.tensor([[[0.0, -1.0, 0.0, 0.0]]]), "finite and >= 0"),
    (torch.tensor([[[0.0, float("nan"), 0.0, 0.0]]]), "finite and >= 0"),
])
def test_bad_encoder_errors_are_refused_by_name(errors, match):
    with pytest.raises(ValueError, match=match):
        encoder_confidence(torch.ones(1, 1, 4, dtype=torch.bool), errors, 1.0, torch.float32)


@pytest.mark.parametrize("scale", [0, -1.0, float("nan"), float("inf"), "1", True])
def test_the_scale_must_be_a_positive_number(scale):
    with pytest.raises(ValueError, match="encoder_error_scale must be a positive number"):
        check_error_scale(scale)
    with pytest.raises(ValueError, match="encoder_error_scale"):
        LatentODE(2, latents=4, encoder_error_scale=scale)


def batch(n: int = 3, length: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    times = torch.linspace(0, 1, length, dtype=torch.float64)
    values = torch.randn(n, length, 2, generator=g, dtype=torch.float64)
    mask = torch.rand(n, length, 2, generator=g) < 0.7
    mask[:, 0] = True
    errors = torch.rand(n, length, 2, generator=g, dtype=torch.float64)
    return times, values, mask, errors


ENCODERS = {
    "odernn": lambda: ODERNNEncoder(2, 4, hidden=8, z0_units=8),
    "odernn series walk": lambda: ODERNNEncoder(2, 4, hidden=8, z0_units=8,
                                                schedule="series"),
    "rnn": lambda: RNNEncoder(2, 4, hidden=8, z0_units=8),
}


@pytest.mark.parametrize("encoder", list(ENCODERS))
def test_the_posterior_reads_no_uncertainty_as_none_and_an_infinite_one_as_unobserved(encoder):
    torch.manual_seed(0)
    model = LatentODE(2, latents=4, gen_units=8, encoder=ENCODERS[encoder](),
                      encoder_error_scale=1.0).double()
    times, values, mask, errors = batch()

    def posterior(m, e=None):
        return torch.cat(model.encode(times, values, m, errors=e), -1)

    plain = posterior(mask)
    torch.testing.assert_close(posterior(mask, torch.zeros_like(errors)), plain, rtol=0, atol=0)
    hidden = errors.clone()
    hidden[1, 5] = 1e200  # squared: inf, confidence 0, as if not observed
    masked = mask.clone()
    masked[1, 5] = False
    torch.testing.assert_close(posterior(mask, hidden), posterior(masked, errors), rtol=0,
                               atol=0)
    softened = posterior(mask, errors)
    assert not torch.allclose(softened, plain)
    assert not torch.allclose(softened, posterior(masked, errors))
    # relative to each series-channel's best (error_weighting="relative", the default):
    # equal uncertainties within each series-channel change nothing
    equal = torch.rand(3, 1, 2, dtype=torch.float64).expand_as(errors) * 5
    torch.testing.assert_close(posterior(mask, equal), plain, rtol=0, atol=0)
    model.error_weighting = "absolute"  # the confidences themselves: they do
    assert not torch.allclose(posterior(mask, equal), plain)
    model.encoder_error_scale = None  # read alike: the uncertainties are not the encoder's
    torch.testing.assert_close(posterior(mask, errors), plain, rtol=0, atol=0)


def test_the_loss_hands_the_uncertainties_to_the_encoder_on_the_packed_path_too(monkeypatch):
    """Unaligned series decode at their own targets (``_packed_targets``): the same terms as
    on the union, uncertainties read by the encoder on both."""
    torch.manual_seed(0)
    model = LatentODE(2, latents=4, gen_units=8, obs_std=0.1, n_samples=2,
                      encoder_error_scale=1.0).double()
    n, length = 6, 24
    times = torch.linspace(0, 1, length, dtype=torch.float64)
    values = torch.randn(n, length, 2, dtype=torch.float64)
    mask = torch.zeros(n, length, 2, dtype=torch.bool)
    for i in range(n):  # each series on its own 4 times: the union is 6x longer
        mask[i, 4 * i: 4 * i + 4] = True
    errors = torch.rand(n, length, 2, dtype=torch.float64) * mask

    def loss(packed: bool, errs=errors, scale=1.0):
        monkeypatch.setattr(latent_ode_module, "PACK_MIN_CELLS", 0 if packed else 10**9)
        model.encoder_error_scale = scale
        torch.manual_seed(2)
        return model.loss(times, values, mask, mask, errors=errs)

    assert model._packed_targets(times, mask) is None  # (PACK_MIN_CELLS as shipped)
    union, packed = loss(False), loss(True)
    for term in ("loss", "kl", "loglik"):
        torch.testing.assert_close(packed[term], union[term])
    assert not torch.allclose(loss(True, scale=None)["kl"], packed["kl"])


# ------------------------------------------------------------------------------ the forecaster
@pytest.mark.parametrize("from_target, backwards", [(False, True), (True, False),
                                                    (False, False)])
@pytest.mark.parametrize("grid", [None, [0.0, 1.5, 3.0, 3.5], [1.0, 1.5, 3.0, 3.5]])
def test_jobs_keep_the_uncertainties_beside_their_values_through_added_rows(
        from_target, backwards, grid):
    """Rows added before the history (z0 at an earlier asked time or at the walk grid's
    start), grid points the walk steps through, the part asked before the history answered
    backwards: each value keeps its own uncertainty."""
    hist_t = np.array([1.0, 2.0, 4.0])
    hist_v = np.array([[0.1, np.nan], [0.2, 0.3], [np.nan, 0.4]])
    hist_e = np.array([[0.5, np.nan], [0.6, 0.7], [np.nan, 0.8]])
    walk = None if grid is None else WalkGrid(np.array(grid))  # points the walk steps through
    jobs = make_jobs(hist_t, hist_v, np.array([0.5, 5.0]), np.float64, from_target,
                     backwards=backwards, walk=walk, hist_e=hist_e)
    assert len(jobs) == (2 if backwards and grid != [0.0, 1.5, 3.0, 3.5] else 1)
    for _, job in jobs:
        assert job.hist_e is not None and job.hist_e.shape == job.hist_v.shape
        observed = ~np.isnan(job.hist_v)
        np.testing.assert_array_equal(~np.isnan(job.hist_e), observed)
        # the rows are the history's, in order: each value still has its own uncertainty
        np.testing.assert_array_equal(job.hist_e[observed], hist_e[~np.isnan(hist_v)])
        np.testing.assert_array_equal(job.hist_v[observed], hist_v[~np.isnan(hist_v)])


def test_batched_answers_equal_lone_answers_with_uncertainties():
    torch.manual_seed(0)
    model = LatentODE(2, latents=4, gen_units=8, encoder=ODERNNEncoder(
        2, 4, hidden=8, z0_units=8), solver={"rtol": 1e-10, "atol": 1e-12},
        encoder_error_scale=1.0).double().eval()
    rng = np.random.default_rng(0)
    jobs = []
    for k in range(3):
        t = np.sort(rng.uniform(0, 3, 6 + k))
        v, e = rng.normal(size=(len(t), 2)), rng.uniform(0, 2, (len(t), 2))
        ((_, job),) = make_jobs(t, v, np.array([t[-1] + 0.5]), np.float64, False,
                                backwards=True, hist_e=e)
        job.eps = torch.randn(5, 4, dtype=torch.float64)
        jobs.append(job)
    with torch.no_grad():
        together = solve(model, jobs, 5)
        alone = [solve(model, [job], 5)[0] for job in jobs]
        model.encoder_error_scale = None
        unread = [solve(model, [job], 5)[0] for job in jobs]
    for (a, _), (b, _), (c, _) in zip(together, alone, unread, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
        assert not torch.allclose(b, c)


def test_subsets_give_each_row_its_uncertainties():
    torch.manual_seed(0)
    model = LatentODE(2, latents=4, gen_units=8, encoder_error_scale=1.0).double().eval()
    times, values, mask, errors = batch()
    noise = torch.randn(4, 3, 4, dtype=torch.float64)
    everything = np.ones((4, 3, len(times)), dtype=bool)  # 4 subsets, each the whole history
    with torch.no_grad():
        got, _ = subset_forward(model, everything, times, values, mask, noise,
                                encoder_errors=errors)
        want = model(times, values, mask, z0_noise=noise, encoder_errors=errors).pred
    torch.testing.assert_close(got, want)


def test_every_forward_of_fit_calibration_and_predict_reads_the_uncertainties(monkeypatch):
    """The plain paths (no windows, no subsets; those: the alignment test below)."""
    from latentode.forecast import LatentODEForecaster

    df = light_curves(n=12, points=15)
    for channel, column in ERRS.items():
        df[column] = _err(df[channel].to_numpy(), channel)
    spy = _Spy(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # few series to calibrate on
        forecaster = LatentODEForecaster([
            "trainer.max_epochs=1", "model.gen_units=8", "model.encoder.hidden=8",
            "model.encoder.z0_units=8", "callbacks.progress_bar.refresh_rate=0"]).fit(
            df[df["star"] != "s11"], "star", "t", uncertainty_cols=ERRS,
            val_df=df[df["star"] == "s11"])
    assert forecaster.calibration is not None
    spy.check(forecaster.spec, "fit and calibration")
    forecaster.predict(df[df["star"].isin(["s0", "s1"])], [11.0, 12.0], quantiles=None)
    spy.check(forecaster.spec, "predict")


def test_the_lightning_predict_step_hands_the_encoder_the_uncertainties():
    from test_uncertainty import read

    ds = read(light_curves(n=3))
    b = collate(ds, [0, 1, 2])
    model = LatentODE(2, latents=4, gen_units=8, obs_std=0.1, n_samples=2,
                      encoder_error_scale=1.0)
    module = LatentODELightning(model)
    got = module.predict_step(b, 0)["pred"]
    model.encoder_error_scale = None
    plain = module.predict_step(b, 0)["pred"]
    assert not torch.allclose(got, plain)
    model.encoder_error_scale = 1.0
    torch.testing.assert_close(module.predict_step(b, 0)["pred"], got)  # same draws: seeded


def test_a_forecaster_without_encoder_reading_answers_as_if_the_uncertainties_were_absent():
    df = light_curves(n=12, points=15)
    forecaster = fitted(df, "model.encoder_error_scale=null", uncertainty_cols=ERRS)
    history = df[df["star"] == "s0"]
    pd.testing.assert_frame_equal(
        forecaster.predict(history, [11.0], quantiles=None),
        forecaster.predict(history.drop(columns=list(ERRS.values())), [11.0], quantiles=None))


@pytest.mark.parametrize("make", [
    lambda **kw: ODERNNEncoder(2, 4, hidden=8, z0_units=8, **kw),  # fused Euler-GRU
    lambda **kw: ODERNNEncoder(2, 4, hidden=8, z0_units=8, gru_units=7, std_state=True, **kw),
    lambda **kw: RNNEncoder(2, 4, hidden=8, z0_units=8, **kw),
])
def test_every_walk_reads_a_soft_mask_alike(make, monkeypatch):
    """The union walk (fused or not), the mean/std walk and the series walk each multiply a
    value by its confidence once (the series walk once read it squared)."""
    times, values, mask, errors = batch(n=4, length=10)
    soft = encoder_confidence(mask, errors, 1.0, torch.float64)
    torch.manual_seed(0)
    union = make().double()
    series = make(schedule="series").double()
    series.load_state_dict(union.state_dict())
    want = torch.cat(union(times, values, soft), -1)
    for name in ("_fused_euler_gru", "_mean_std_walk"):
        monkeypatch.setattr(type(union), name, False)  # the generic loop
    torch.testing.assert_close(torch.cat(union(times, values, soft), -1), want)
    # (the series walk takes one Euler step per own gap, the union walk one per union time:
    # they differ by ~1e-6 here, with hard masks as well; the confidence squared moved 3e-3)
    torch.testing.assert_close(torch.cat(series(times, values, soft), -1), want, rtol=1e-3,
                               atol=2e-5)


def test_a_tidy_history_s_uncertainties_reach_the_encoder():
    df = light_curves(n=12, points=15)
    long = pd.concat([df[["star", "t", ch, err]].rename(columns={ch: "v", err: "e"}).assign(ch=ch)
                      for ch, err in ERRS.items()], ignore_index=True)
    forecaster = fitted(long, channel_col="ch", value_col="v", uncertainty_col="e")
    history = long[long["star"] == "s0"]
    read = forecaster.predict(history, [11.0], quantiles=None)
    exact = forecaster.predict(history.assign(e=0.0), [11.0], quantiles=None)
    assert not np.allclose(read["mean"], exact["mean"])
    with pytest.warns(UserWarning, match=r"no column\(s\) \['e'\]"):
        without = forecaster.predict(history.drop(columns="e"), [11.0], quantiles=None)
    pd.testing.assert_frame_equal(without, exact)


# ------------------------------------------------------------------------------ alignment
def _err(values: np.ndarray, channel: str) -> np.ndarray:
    """Each value's uncertainty as a function of the value: any misplaced one shows."""
    return 0.1 * np.abs(values) + 0.01 if channel == "flux" else 0.3 * np.abs(values) + 0.05


class _Spy:
    """Every LatentODE forward's (values, encoder mask, encoder_errors)."""

    def __init__(self, monkeypatch):
        self.calls: list = []
        original = LatentODE.forward

        def forward(model, times, values, mask, *args, encoder_errors=None, **kwargs):
            self.calls.append((values.detach().double().numpy(), mask.numpy(), None if
                               encoder_errors is None else encoder_errors.double().numpy()))
            return original(model, times, values, mask, *args, encoder_errors=encoder_errors,
                            **kwargs)

        monkeypatch.setattr(LatentODE, "forward", forward)

    def check(self, spec, what: str) -> None:
        """Each observed entry's uncertainty is its own value's, in model units."""
        assert self.calls, what
        mean, scale = np.asarray(spec.mean), np.asarray(spec.scale)
        log = np.asarray(spec.log if spec.log is not None else [False] * len(mean))
        for values, mask, errors in self.calls:
            assert errors is not None, what
            for c, name in enumerate(spec.channels):
                at = mask[..., c].astype(bool)
                data = values[..., c][at] * scale[c] + mean[c]
                data = np.exp(data) if log[c] else data
                want = _err(data, name) / (np.abs(data) if log[c] else 1.0) / scale[c]
                np.testing.assert_allclose(errors[..., c][at], want, rtol=1e-4, err_msg=what)
        self.calls.clear()


def test_each_value_reaches_the_encoder_with_its_own_uncertainty_on_every_path(monkeypatch):
    """Training, calibration, batched and lone answers, times before a history (backwards
    jobs), training windows, subsets, a log channel, impute and score."""
    from latentode.forecast import LatentODEForecaster

    df = light_curves(n=12, points=15)
    for channel, column in ERRS.items():
        df[column] = _err(df[channel].to_numpy(), channel)
    df = df[["star", "t", "mag_err", "mag", "flux_err", "flux"]]  # columns reordered
    spy = _Spy(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # few series, few epochs
        forecaster = LatentODEForecaster([
            "trainer.max_epochs=1", "model.gen_units=8", "model.encoder.hidden=8",
            "model.encoder.z0_units=8", "callbacks.progress_bar.refresh_rate=0",
            "data.window=4.0"]).fit(df, "star", "t", uncertainty_cols=ERRS, val_fraction=0.25,
                                    log_channels=["flux"], subsets=True)
        spec = forecaster.spec
        assert spec.log == [True, False] or spec.log == [False, True]
        assert spec.subsets is not None
        spy.check(spec, "fit and calibration")
        history = df[df["star"].isin(["s0", "s1", "s2"])].sample(frac=1.0, random_state=0)
        history.loc[history.index[:4], "mag"] = np.nan  # rows with one channel only
        history.loc[history.index[:4], "mag_err"] = np.nan
        forecaster.predict(history, [-1.0, 3.0, 7.0, 11.0], quantiles=None)
        spy.check(spec, "predict, batched")
        forecaster.predict(history, [-1.0, 11.0], quantiles=None, batch_size=1)
        spy.check(spec, "predict, alone")
        gaps = history.copy()
        gaps.loc[gaps.index[5:9], "flux"] = np.nan
        gaps.loc[gaps.index[5:9], "flux_err"] = np.nan
        forecaster.impute(gaps)
        spy.check(spec, "impute")
        forecaster.score(history)
        spy.check(spec, "score")


@pytest.mark.parametrize("tidy", [False, True])
def test_a_history_s_uncertainties_follow_their_values_into_model_units(tidy):
    """The spec reads a history's uncertainties beside their values, in the model's channel
    order whatever the frame's, and puts them in model units as the scaler did (a log
    channel: relative first)."""
    from latentode.data import TimeTransform
    from latentode.forecast.spec import DataSpec

    df = light_curves(n=3)
    for channel, column in ERRS.items():
        df[column] = _err(df[channel].to_numpy(), channel)
    common = dict(id_col="star", time_col="t", channels=["flux", "mag"],
                  time=TimeTransform("numeric", 0.0, 1.0), mean=[2.0, 0.1], scale=[0.5, 0.7],
                  log=[True, False])
    if tidy:
        frame = pd.concat([df[["star", "t", ch, err]].rename(columns={ch: "v", err: "e"})
                           .assign(ch=ch) for ch, err in (("mag", "mag_err"),
                                                          ("flux", "flux_err"))])
        frame = frame[~((frame["star"] == "s0") & (frame["ch"] == "mag"))]  # one channel
        spec = DataSpec(**common, channel_col="ch", value_col="v", uncertainty_col="e")
    else:
        frame = df[["star", "t", "mag_err", "mag", "flux_err", "flux"]]
        spec = DataSpec(**common, value_cols=["flux", "mag"], uncertainty_cols=ERRS)
    ds = spec.dataset(frame, errors=True)
    assert ds.errors is not None and ds.channels == ["flux", "mag"]
    for c, name in enumerate(ds.channels):
        seen = ~np.isnan(ds.values[:, c])
        np.testing.assert_allclose(ds.errors[seen, c], _err(ds.values[seen, c], name))
    model = spec.to_model_errors(ds.errors, ds.values)
    np.testing.assert_allclose(model[:, 0], ds.errors[:, 0] / ds.values[:, 0] / 0.5)
    np.testing.assert_allclose(model[:, 1], ds.errors[:, 1] / 0.7)


def test_first_target_predictions_and_plots_read_the_uncertainties():
    from test_uncertainty import read

    from latentode.lit.plots import predict_paths

    b = collate(read(light_curves(n=3)), [0, 1, 2])
    torch.manual_seed(0)
    model = LatentODE(2, latents=4, gen_units=8, z0_at="first_target", encoder_error_scale=1.0)
    target = b.target_mask.clone()
    target[:, :3] = False  # z0 at a later time: predict_at_targets' other path

    def both(scale):
        model.encoder_error_scale = scale
        torch.manual_seed(1)
        pred = model.predict(b.times, b.values, b.encoder_mask, target, 2,
                             encoder_errors=b.errors).pred
        return pred, predict_paths(model, b, n_samples=2, n_grid=5)[1]

    for read_, alike in zip(both(1.0), both(None), strict=True):
        assert not torch.allclose(read_, alike)


def test_an_encoder_that_does_not_say_it_reads_a_soft_mask_is_refused_by_name():
    class Mine(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = RNNEncoder(2, 4, hidden=8, z0_units=8)

        def forward(self, times, values, mask):
            return self.inner(times, values, torch.where(mask, 1.0, 0.0))  # a bool mask

    times, values, mask, errors = batch()
    model = LatentODE(2, latents=4, encoder=Mine(), encoder_error_scale=1.0).double()
    with pytest.raises(ValueError, match=r"encoder Mine does not say it reads one: .*"
                                         r"reads_soft_mask = True .*encoder_error_scale=None"):
        model.encode(times, values, mask, errors=errors)
    model.encode(times, values, mask)  # without uncertainties: as before
    model.encoder_error_scale = None
    model.encode(times, values, mask, errors=errors)
    assert check_error_scale(np.float32(0.5)) == 0.5


def test_huge_history_uncertainties_read_as_unobserved_not_refused():
    from latentode.forecast.draw import _model_errors

    got = _model_errors(np.array([[1e39, np.nan], [np.inf, 0.3]]), np.float32)
    assert np.isfinite(got).all() and got[0, 1] == 0 and got[1, 1] == np.float32(0.3)
    mask = torch.ones(1, 2, 2, dtype=torch.bool)
    soft = encoder_confidence(mask, torch.from_numpy(got)[None], 1.0, torch.float32)
    torch.testing.assert_close(soft[0, :, 0], torch.zeros(2))  # confidence 0: unobserved


def test_from_model_reads_tidy_uncertainties_for_calibration_and_histories(monkeypatch):
    from latentode.data import ChannelScaler, from_dataframe
    from latentode.forecast import LatentODEForecaster

    df = light_curves(n=10)
    for channel, column in ERRS.items():
        df[column] = _err(df[channel].to_numpy(), channel)
    long = pd.concat([df[["star", "t", ch, err]].rename(columns={ch: "v", err: "e"})
                      .assign(ch=ch) for ch, err in ERRS.items()], ignore_index=True)
    tidy = dict(channel_col="ch", value_col="v")
    train, held = long[long["star"] < "s7"], long[long["star"] >= "s7"]
    ds = from_dataframe(train, "star", "t", uncertainty_col="e", **tidy)
    scaler = ChannelScaler().fit(ds)
    torch.manual_seed(0)
    model = LatentODE(2, latents=4, gen_units=8, encoder_error_scale=1.0)
    with pytest.warns(UserWarning, match="no column to read them from in a history"):
        LatentODEForecaster.from_model(model, ds, scaler, calibration_data=held, **tidy)
    spy = _Spy(monkeypatch)
    forecaster = LatentODEForecaster.from_model(model, ds, scaler, calibration_data=held,
                                                uncertainty_col="e", **tidy)
    assert forecaster.spec.uncertainty_col == "e"
    spy.check(forecaster.spec, "from_model's calibration on calibration_data")
    with pytest.warns(UserWarning, match=r"calibration_data has no column\(s\) \['e'\]"):
        LatentODEForecaster.from_model(model, ds, scaler, calibration_data=held.drop(
            columns="e"), uncertainty_col="e", **tidy)
    spy.calls.clear()
    forecaster.predict(held, [11.0], quantiles=None)
    spy.check(forecaster.spec, "predict from a tidy history")
    with pytest.raises(ValueError, match="uncertainty_col= names the uncertainty column of "
                                         "tidy frames"):
        LatentODEForecaster.from_model(model, from_dataframe(df, "star", "t",
                                                             uncertainty_cols=ERRS),
                                       scaler, uncertainty_col="e")


def test_frames_without_the_uncertainty_columns_are_warned_about_where_values_need_them():
    df = light_curves(n=12, points=15)
    forecaster = fitted(df, uncertainty_cols=ERRS)
    history = df[df["star"] == "s0"].drop(columns=["mag_err"])
    with pytest.warns(UserWarning, match=r"no column\(s\) \['mag_err'\]"):
        forecaster.predict(history, [11.0], quantiles=None)
    unmeasured = history.assign(mag=np.nan)  # a channel given as all-NaN needs none
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        forecaster.predict(unmeasured, [11.0], quantiles=None)
    with pytest.warns(UserWarning, match=r"val_df has no column\(s\) \['flux_err'\] of the "
                                         r"measurement uncertainties training read"):
        fitted(df[df["star"] != "s11"], uncertainty_cols=ERRS,
               val_df=df[df["star"] == "s11"].drop(columns=["flux_err"]))


def test_from_model_refuses_uncertainty_col_for_data_trained_without_them():
    from latentode.data import ChannelScaler, from_dataframe
    from latentode.forecast import LatentODEForecaster

    df = light_curves(n=6)
    long = pd.concat([df[["star", "t", ch]].rename(columns={ch: "v"}).assign(ch=ch)
                      for ch in ERRS], ignore_index=True)
    ds = from_dataframe(long, "star", "t", channel_col="ch", value_col="v")
    model = LatentODE(2, latents=4, gen_units=8, encoder_error_scale=1.0)
    with pytest.raises(ValueError, match=r"uncertainty_col='e' reads uncertainties from frames, "
                                         r"but the dataset .* carries none"):
        LatentODEForecaster.from_model(model, ds, ChannelScaler().fit(ds), channel_col="ch",
                                       value_col="v", uncertainty_col="e")


@pytest.mark.parametrize("scale", [1.0, None])
def test_the_loss_refuses_bad_uncertainties_whoever_checks_them(scale):
    """Checked once per step: by the encoder when it reads them, else by the likelihood."""
    times, values, mask, errors = batch()
    model = LatentODE(2, latents=4, gen_units=8, encoder_error_scale=scale).double()
    errors[0, 1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"measurement uncertainties \(errors= / "
                                         r"encoder_errors=\) must be finite and >= 0"):
        model.loss(times, values, mask, mask, errors=errors)
