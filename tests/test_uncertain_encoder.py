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
    model = LatentODE(2, latents=4, gen_units=8, encoder=ENCODERS[encoder]()).double()
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
    model.encoder_error_scale = None  # read alike: the uncertainties are not the encoder's
    torch.testing.assert_close(posterior(mask, errors), plain, rtol=0, atol=0)


def test_the_loss_hands_the_uncertainties_to_the_encoder_on_the_packed_path_too(monkeypatch):
    """Unaligned series decode at their own targets (``_packed_targets``): the same terms as
    on the union, uncertainties read by the encoder on both."""
    torch.manual_seed(0)
    model = LatentODE(2, latents=4, gen_units=8, obs_std=0.1, n_samples=2).double()
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
def test_jobs_keep_the_uncertainties_beside_their_values_through_added_rows():
    hist_t = np.array([1.0, 2.0, 4.0])
    hist_v = np.array([[0.1, np.nan], [0.2, 0.3], [np.nan, 0.4]])
    hist_e = np.array([[0.5, np.nan], [0.6, 0.7], [np.nan, 0.8]])
    walk = WalkGrid(np.array([0.0, 1.5, 3.0, 3.5]))  # grid points the walk steps through
    for _, job in make_jobs(hist_t, hist_v, np.array([0.5, 5.0]), np.float64, False,
                            backwards=True, walk=walk, hist_e=hist_e):
        assert job.hist_e is not None and job.hist_e.shape == job.hist_v.shape
        observed = ~np.isnan(job.hist_v)
        np.testing.assert_array_equal(~np.isnan(job.hist_e), observed)
        # the rows are the history's, in order: each value still has its own uncertainty
        np.testing.assert_array_equal(job.hist_e[observed], hist_e[~np.isnan(hist_v)])
        np.testing.assert_array_equal(job.hist_v[observed], hist_v[~np.isnan(hist_v)])


def test_batched_answers_equal_lone_answers_with_uncertainties():
    torch.manual_seed(0)
    model = LatentODE(2, latents=4, gen_units=8, encoder=ODERNNEncoder(
        2, 4, hidden=8, z0_units=8), solver={"rtol": 1e-10, "atol": 1e-12}).double().eval()
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
    model = LatentODE(2, latents=4, gen_units=8).double().eval()
    times, values, mask, errors = batch()
    noise = torch.randn(4, 3, 4, dtype=torch.float64)
    everything = np.ones((4, 3, len(times)), dtype=bool)  # 4 subsets, each the whole history
    with torch.no_grad():
        got, _ = subset_forward(model, everything, times, values, mask, noise,
                                encoder_errors=errors)
        want = model(times, values, mask, z0_noise=noise, encoder_errors=errors).pred
    torch.testing.assert_close(got, want)


def test_every_forward_of_fit_calibration_and_predict_reads_the_uncertainties(monkeypatch):
    calls = []
    original = LatentODE.forward

    def spy(self, *args, encoder_errors=None, **kwargs):
        calls.append(encoder_errors)
        return original(self, *args, encoder_errors=encoder_errors, **kwargs)

    monkeypatch.setattr(LatentODE, "forward", spy)
    df = light_curves(n=12, points=15)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # few series to calibrate on
        from latentode.forecast import LatentODEForecaster

        forecaster = LatentODEForecaster([
            "trainer.max_epochs=1", "model.gen_units=8", "model.encoder.hidden=8",
            "model.encoder.z0_units=8", "callbacks.progress_bar.refresh_rate=0"]).fit(
            df[df["star"] != "s11"], "star", "t", uncertainty_cols=ERRS,
            val_df=df[df["star"] == "s11"])
    assert forecaster.calibration is not None and calls
    assert all(e is not None and bool((e > 0).any()) for e in calls)
    calls.clear()
    forecaster.predict(df[df["star"].isin(["s0", "s1"])], [11.0, 12.0], quantiles=None)
    assert calls and all(e is not None and bool((e > 0).any()) for e in calls)


def test_the_lightning_predict_step_hands_the_encoder_the_uncertainties():
    from test_uncertainty import read

    ds = read(light_curves(n=3))
    b = collate(ds, [0, 1, 2])
    model = LatentODE(2, latents=4, gen_units=8, obs_std=0.1, n_samples=2)
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
