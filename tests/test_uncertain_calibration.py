"""The calibrated predictive noise with measurement uncertainties: a value is the quantity plus
its own known N(0, e^2), which the noise leaves out (``sigma_c^2 = mean(r^2 - s^2 - e^2)``, the
floor, the lead curve, the history and series factors alike) and coverage of observed values
adds back point by point (``predictive_coverage``, ``score``)."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from test_calibration import FakeModel, Persistence, make_batches, walk_batches
from test_uncertainty import ERRS, fitted, light_curves

from latentode.data import Batch
from latentode.forecast.calibration import (
    NoiseCalibration,
    Scored,
    calibrate_lead,
    calibrate_noise,
    coverage_std,
    predictive_coverage,
    seen_residual,
)

INTRINSIC = 0.1  # noise the uncertainties do not state (both channels)
PRECISE, POOR = 0.05, 1.0  # the two instruments' stds (a fifth of the points are poor)


def noisy(batches: list[Batch], seed: int, poor_share: float = 0.2,
          only_heldout: bool = False) -> list[Batch]:
    """``batches`` with each value's own measurement noise added, its std as ``errors``:
    ``POOR`` for ``poor_share`` of the points, else ``PRECISE`` (``only_heldout``: the noise
    on points the encoder does not see only, so a model reading the encoder's values is not
    disturbed)."""
    rng = np.random.default_rng(seed)
    out = []
    for batch in batches:
        shape = batch.values.shape
        err = np.where(rng.random(shape) < poor_share, POOR, PRECISE)
        if only_heldout:
            err = np.where(batch.encoder_mask.numpy(), 0.0, err)
        eps = torch.from_numpy(err * rng.normal(size=shape)).float()
        out.append(dataclasses.replace(batch, values=batch.values + eps,
                                       errors=torch.from_numpy(err).float()))
    return out


def without_errors(batches: list[Batch]) -> list[Batch]:
    return [dataclasses.replace(b, errors=None) for b in batches]


def each_instrument(seed: int) -> dict[str, list[Batch]]:
    base = make_batches(seed, noise=(INTRINSIC, INTRINSIC))
    return {"precise": noisy(base, seed, poor_share=0.0), "poor": noisy(base, seed, 1.0)}


def test_the_noise_leaves_the_known_measurement_noise_out_and_covers_each_instrument():
    """Calibrated on points a fifth of which come from a poor instrument: given the
    uncertainties, the noise is what they do not state (the 0.1 beyond the paths' spread) and
    a measurement's interval adds its own, so both instruments' values are covered ~0.9; not
    given, one noise (their mean) covers the precise ones ~100% and the poor ones far less."""
    model = FakeModel()
    calibration = noisy(make_batches(0, noise=(INTRINSIC, INTRINSIC)), 0)
    given = calibrate_noise(model, calibration, n_samples=50, seed=0)
    blind = calibrate_noise(model, without_errors(calibration), n_samples=50, seed=0)
    np.testing.assert_allclose(given.std, np.sqrt(INTRINSIC**2 - 0.05**2), rtol=0.15)
    share = 0.8 * PRECISE**2 + 0.2 * POOR**2
    np.testing.assert_allclose(given.error_rms, np.sqrt(share), rtol=0.1)
    np.testing.assert_allclose(blind.std, np.sqrt(INTRINSIC**2 + share - 0.05**2), rtol=0.1)
    assert blind.error_rms == [] and given.residual_rms == blind.residual_rms
    for name, test in each_instrument(1).items():
        with_them = predictive_coverage(model, test, {"c": given}, n_samples=50, seed=0)["c"]
        one = predictive_coverage(model, without_errors(test), {"c": blind}, n_samples=50,
                                  seed=0)["c"]
        assert with_them == pytest.approx(0.9, abs=0.04), name
        if name == "precise":
            assert one > 0.99
        else:
            assert one < 0.6
    # the paths alone (no noise named) are still widened by a value's own uncertainty
    poor = each_instrument(2)["poor"]
    paths = predictive_coverage(model, poor, {"paths": None}, n_samples=50, seed=0)["paths"]
    assert paths > 0.85


def test_uncertainties_of_0_calibrate_as_none_given():
    """A channel whose values carry no uncertainty (0, as the loaders fill it) is calibrated
    exactly as without any (the likeliest noise weighs by the paths' spread otherwise)."""
    model = FakeModel()
    plain = make_batches(0)
    zero = [dataclasses.replace(b, errors=torch.zeros_like(b.values)) for b in plain]
    nan = [dataclasses.replace(b, errors=torch.full_like(b.values, float("nan")))
           for b in plain]
    for per_series in (False, True):
        a = calibrate_noise(model, plain, n_samples=20, seed=0, per_series=per_series)
        b = calibrate_noise(model, zero, n_samples=20, seed=0, per_series=per_series)
        assert b.error_rms == [0.0, 0.0] and dataclasses.replace(b, error_rms=[]) == a
        # a hand-made batch's NaN uncertainty is none known, not a NaN noise
        c = calibrate_noise(model, nan, n_samples=20, seed=0, per_series=per_series)
        assert c == b


def test_a_factor_per_series_with_uncertainties_covers_quiet_and_loud_series():
    """Series fitted 0.1 or 0.5 off, every value also with its own known noise (a fifth at
    std 1): as without uncertainties (test_calibration), one noise for all over-covers the
    quiet series and under-covers the loud; the factor, read beyond the known noise, brings
    both nearer 0.9 (the shrinkage toward the median keeps some of the gap)."""
    model = FakeModel(spread=0.0)

    def batches(seed: int, misfit: float, n: int = 2) -> list[Batch]:
        return noisy(make_batches(seed, n_batches=n, noise=(misfit, misfit)), seed)

    calibration = batches(0, 0.1) + batches(1, 0.5)
    cover = {}
    for per_series in (False, True):
        cal = calibrate_noise(model, calibration, n_samples=20, seed=0, per_series=per_series)
        assert (cal.series_kappa is not None) == per_series and cal.error_rms
        cover[per_series] = [predictive_coverage(model, batches(seed, misfit), {"c": cal},
                                                 n_samples=50, seed=0)["c"]
                             for seed, misfit in ((2, 0.1), (3, 0.5))]
    assert cover[False][0] > 0.96 and cover[False][1] < 0.8
    assert cover[True][0] == pytest.approx(0.9, abs=0.03)
    assert 0.8 < cover[True][1] < 0.9 and cover[True][1] > cover[False][1] + 0.04


def test_the_floor_counts_each_points_own_uncertainty():
    """``coverage_std``: values spread as N(0, 0.5^2 + e^2) with known e need 0.5 to cover
    0.9 of them; without the e's the noise must cover the poor points alone."""
    rng = np.random.default_rng(0)
    e = np.where(rng.random(4000) < 0.3, 2.0, 0.05)
    dev = (np.sqrt(0.25 + e**2) * rng.normal(size=4000))[None].repeat(3, 0)
    assert coverage_std(dev, 0.01, errors=e) == pytest.approx(0.5, rel=0.08)
    assert coverage_std(dev, 0.01) > 1.0
    assert coverage_std(dev, 0.6, errors=e) == 0.0  # 0.6 covers them already


def test_mixed_batches_with_and_without_uncertainties_are_refused():
    batches = noisy(make_batches(0), 0)
    with pytest.raises(ValueError, match="some batches carry measurement uncertainties"):
        calibrate_noise(FakeModel(), [batches[0], *without_errors(batches[1:])], n_samples=5)


def test_the_lead_curve_leaves_the_forecast_points_own_noise_out():
    """Forecast points carrying their own known noise: the curve is the one of the clean
    walks (their error beyond the noise), not the one that counts the noise in."""
    model = Persistence()
    # (calibrated on points with their uncertainties: error_rms recorded)
    base = NoiseCalibration(std=[0.1], obs_std=0.01, error_rms=[0.7])
    clean = walk_batches(0)
    loud = noisy(clean, 0, poor_share=0.5, only_heldout=True)
    want = calibrate_lead(model, clean, base, n_samples=20, seed=0)
    given = calibrate_lead(model, loud, base, n_samples=20, seed=0)
    blind = calibrate_lead(model, without_errors(loud), base, n_samples=20, seed=0)
    np.testing.assert_allclose(given.lead_std, want.lead_std, rtol=0.1)
    extra = 0.5 * POOR**2  # the noise's mean variance, counted in without the errors
    assert np.all(np.square(blind.lead_std) > np.square(want.lead_std) + 0.5 * extra)
    # so is the factor by history length (counting the noise in gave 1.41 against 1.05)
    np.testing.assert_allclose(given.history_factor, want.history_factor, atol=0.06)
    # forecasts of new walks, noisy alike, covered ~0.9 with their own noise added
    test = noisy(walk_batches(1), 1, poor_share=0.5, only_heldout=True)
    cover = predictive_coverage(model, test, {"curve": given}, n_samples=50, seed=0)
    assert cover["curve"] == pytest.approx(0.9, abs=0.04)
    # the breakdown scores the same points the same way (its documented promise)
    from latentode.forecast.calibration import forecast_coverage_breakdown

    parts = forecast_coverage_breakdown(model, test, given, ["x"], n_samples=50, seed=0)
    assert parts["all"] == cover["curve"]
    # a calibration of an older latentode (no error_rms) counted them in: none added again
    old = dataclasses.replace(blind, error_rms=[])
    assert predictive_coverage(model, test, {"old": old}, n_samples=50, seed=0)["old"] == (
        forecast_coverage_breakdown(model, test, old, ["x"], n_samples=50, seed=0)["all"])


def test_a_series_factor_reads_its_residual_beyond_the_known_noise():
    scored = Scored(
        pred=torch.zeros(3, 1, 3, 1), values=torch.tensor([[[1.0], [3.0], [2.0]]]),
        target=torch.ones(1, 3, 1, dtype=torch.bool),
        encoder=torch.tensor([[[True], [True], [False]]]), leads=torch.zeros(1, 3, 1),
        history=torch.tensor([2]), errors=torch.tensor([[[0.5], [2.0], [9.0]]]))
    m, n = seen_residual(scored)
    # the likeliest v for r ~ N(0, v + e^2) at the seen points (r^2 1 and 9, e^2 0.25 and 4):
    # the likelihood's slope sum (r^2 - e^2 - v) / (v + e^2)^2 is 0 at v = 1; the plain
    # mean of r^2 - e^2 would be 2.875, led by the noisier point
    assert n.tolist() == [[2.0]] and m[0, 0] == pytest.approx(1.0, rel=1e-9)
    loud = dataclasses.replace(scored, errors=torch.full((1, 3, 1), 10.0))
    assert seen_residual(loud)[0].tolist() == [[0.0]]  # never below 0
    exact = dataclasses.replace(scored, errors=torch.zeros(1, 3, 1))  # the plain mean
    assert seen_residual(exact)[0].tolist() == [[5.0]]


def test_calibration_files_of_version_3_load_without_uncertainties():
    old = {**NoiseCalibration(std=[1.0], obs_std=0.0).to_json(), "version": 3}
    old.pop("error_rms")
    cal = NoiseCalibration.from_json(old)
    assert cal.error_rms == [] and NoiseCalibration.from_json(cal.to_json()) == cal


# ------------------------------------------------------------------------------ forecaster
@pytest.fixture(scope="module")
def forecaster():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fitted(light_curves(n=12, points=15), "model.encoder_error_scale=null",
                      uncertainty_cols=ERRS)


def test_score_holds_each_measurement_to_its_own_interval(forecaster):
    """A hidden value's interval adds its own uncertainty: the same hidden points with
    uncertainties 100x larger get intervals ~100x wider and all inside; uncertainties of 0
    give predict's intervals (the frame without the columns alike)."""
    df = light_curves(n=12, points=15, seed=3)
    assert forecaster.calibration.error_rms  # calibrated with them
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the frame without the columns is warned about
        scores = {name: forecaster.score(frame, "points") for name, frame in (
            ("given", df), ("loud", df.assign(flux_err=df["flux_err"] * 100,
                                              mag_err=df["mag_err"] * 100)),
            ("zero", df.assign(flux_err=0.0, mag_err=0.0)),
            ("none", df.drop(columns=["flux_err", "mag_err"])))}
    # (the encoder does not read them: the paths, mse and the noise factor aside, the same)
    pd.testing.assert_frame_equal(scores["zero"][["n", "mse"]], scores["given"][["n", "mse"]])
    # no uncertainty, or 0: predict's own intervals, the same either way
    pd.testing.assert_frame_equal(scores["zero"], scores["none"])
    assert (scores["loud"]["width"] > 30 * scores["given"]["width"]).all()
    assert (scores["loud"]["coverage"] == 1.0).all()
    assert (scores["given"]["width"] > scores["zero"]["width"]).all()


def test_score_s_own_intervals_are_the_mixture_with_the_value_s_uncertainty(forecaster):
    """Against a direct computation: one hidden value, its interval from the paths ``sample``
    gives and the noise ``predict`` adds, with the value's own e."""
    from latentode.forecast import scoring
    from latentode.forecast.quantiles import mixture_quantiles

    df = light_curves(n=2, points=15, seed=4)
    history = df[df["t"] < 8]
    late = df[df["t"] >= 8].sort_values("t").iloc[:1]
    truth = pd.DataFrame({"star": late["star"].to_numpy(), "t": late["t"].to_numpy(),
                          "channel": ["mag"], "value": late["mag"].to_numpy(),
                          "error": late["mag_err"].to_numpy()})
    own = scoring._OwnIntervals(forecaster, truth, "channel", (0.05, 0.95))
    times = {late["star"].iloc[0]: late["t"].to_numpy()}
    seen = []
    forecaster._predict(history, times, None, None, None, 40, (0.05, 0.95), 0, True, 64,
                        lambda *args: (seen.append(args), own.series(*args)))
    (_, _, paths, std), = seen
    spec = forecaster.spec
    e = late["mag_err"].iloc[0] / spec.scale[1]
    want = mixture_quantiles(paths[:, :, 1:], np.hypot(std[:, 1:], e), (0.05, 0.95))
    back = spec.to_user_values(np.concatenate([np.zeros_like(want), want], -1))[..., 1]
    np.testing.assert_allclose([own.lo[0], own.hi[0]], back[:, 0], rtol=1e-9)


def test_score_reads_tidy_frames_and_datetimes_with_a_time_zone():
    df = light_curves(n=12, points=15)
    df["t"] = pd.Timestamp("2026-01-01", tz="Europe/Berlin") + pd.to_timedelta(df["t"], "D")
    tidy = pd.concat([
        df[["star", "t", name, err]].rename(columns={name: "value", err: "err"}).assign(
            band=name) for name, err in ERRS.items()], ignore_index=True)
    from latentode.forecast import LatentODEForecaster

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fc = LatentODEForecaster(["trainer.max_epochs=1", "model.gen_units=8",
                                  "model.encoder.hidden=8", "model.encoder.z0_units=8",
                                  "callbacks.progress_bar.refresh_rate=0"]).fit(
            tidy, "star", "t", channel_col="band", value_col="value", uncertainty_col="err",
            val_fraction=0)
        given = fc.score(tidy, "end")
        loud = fc.score(tidy.assign(err=tidy["err"] * 100), "end")
    assert fc.calibration.error_rms
    assert (loud["width"] > 10 * given["width"]).all() and (loud["coverage"] == 1.0).all()


def test_an_older_calibration_keeps_score_s_intervals_as_predict_gives_them(forecaster):
    """A calibration without ``error_rms`` (before this version) counted the uncertainties
    in its noise on average: adding each value's own again would count them twice."""
    df = light_curves(n=12, points=15, seed=3)
    saved = forecaster.calibration
    try:
        forecaster.calibration = dataclasses.replace(saved, error_rms=[])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plain = forecaster.score(df, "points")
            loud = forecaster.score(df.assign(flux_err=df["flux_err"] * 100,
                                              mag_err=df["mag_err"] * 100), "points")
        pd.testing.assert_series_equal(plain["width"], loud["width"])
    finally:
        forecaster.calibration = saved


def test_a_history_without_the_columns_is_warned_about_when_the_factor_reads_them(forecaster):
    df = light_curves(n=2, points=15, seed=5)
    assert forecaster.calibration.series_kappa is not None
    with pytest.warns(UserWarning, match=r"no column\(s\) \['flux_err', 'mag_err'\].*noise "
                                         r"factor"):
        forecaster.predict(df.drop(columns=["flux_err", "mag_err"]), [11.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        forecaster.predict(df, [11.0])


def test_the_factor_reads_a_history_s_residual_beyond_its_uncertainties(forecaster):
    """The encoder does not read them here, so the paths are the same whatever the history's
    uncertainties; the in-series noise (from its factor) narrows as they explain more of the
    residual, down to the factor's floor."""
    df = light_curves(n=1, points=15, seed=6)
    times = np.linspace(1, 9, 5)  # inside the series

    def width(frame: pd.DataFrame) -> np.ndarray:
        pred = forecaster.predict(frame, times, quantiles=(0.05, 0.95))
        return (pred["q0.95"] - pred["q0.05"]).to_numpy()

    exact, given, loud = (width(df.assign(flux_err=df["flux_err"] * k,
                                          mag_err=df["mag_err"] * k)) for k in (0.0, 1.0, 50.0))
    assert np.all(loud <= given + 1e-12) and np.all(given <= exact + 1e-12)
    assert np.any(loud < exact)


def test_the_plot_shows_each_measurement_s_uncertainty(forecaster):
    from matplotlib.container import ErrorbarContainer

    df = light_curves(n=1, points=15, seed=7)
    df.loc[df.index[:3], "flux_err"] = np.nan  # no bar where none is given
    pred = forecaster.predict(df, np.linspace(0, 12, 20))
    fig = forecaster.plot(df, pred)
    bars = [[c for c in ax.containers if isinstance(c, ErrorbarContainer)] for ax in fig.axes
            if ax.get_title()]
    flux, mag = bars
    assert len(flux) == len(mag) == 1
    assert len(flux[0].lines[2][0].get_segments()) == 12
    assert len(mag[0].lines[2][0].get_segments()) == 15
    # the bar of one point: its value +- its own uncertainty, in the data's units
    first = df.sort_values("t").iloc[-1]
    segment = mag[0].lines[2][0].get_segments()[-1]
    np.testing.assert_allclose(segment[:, 1], [first["mag"] - first["mag_err"],
                                               first["mag"] + first["mag_err"]])
    fig = forecaster.plot(df.drop(columns=["flux_err", "mag_err"]), pred)
    assert not any(isinstance(c, ErrorbarContainer) for ax in fig.axes for c in ax.containers)


def test_score_s_own_intervals_on_a_log_channel():
    """On a log channel the uncertainty enters as relative, ``err / value``, and the interval
    maps back through ``exp``: against a direct computation."""
    from latentode.forecast import scoring
    from latentode.forecast.quantiles import mixture_quantiles

    df = light_curves(n=12, points=15)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fc = fitted(df, "model.encoder_error_scale=null", uncertainty_cols=ERRS,
                    log_channels=["flux"])
    one = light_curves(n=1, points=15, seed=8)
    history, late = one[one["t"] < 8], one[one["t"] >= 8].sort_values("t").iloc[:1]
    truth = pd.DataFrame({"star": late["star"].to_numpy(), "t": late["t"].to_numpy(),
                          "channel": ["flux"], "value": late["flux"].to_numpy(),
                          "error": late["flux_err"].to_numpy()})
    own = scoring._OwnIntervals(fc, truth, "channel", (0.05, 0.95))
    seen = []
    fc._predict(history, {late["star"].iloc[0]: late["t"].to_numpy()}, None, None, None, 40,
                (0.05, 0.95), 0, True, 64, lambda *a: (seen.append(a), own.series(*a)))
    (_, _, paths, std), = seen
    spec = fc.spec
    e = late["flux_err"].iloc[0] / late["flux"].iloc[0] / spec.scale[0]
    q = mixture_quantiles(paths[:, :, :1], np.hypot(std[:, :1], e), (0.05, 0.95))[:, 0, 0]
    want = np.exp(q * spec.scale[0] + spec.mean[0])
    np.testing.assert_allclose([own.lo[0], own.hi[0]], want, rtol=1e-9)


def test_an_old_forecaster_s_factor_reads_no_uncertainties(monkeypatch):
    """A forecaster whose calibration is older (no ``error_rms``: its series' residuals were
    read with their measurement noise in) keeps reading them so, though its encoder reads the
    uncertainties: its intervals do not narrow after an upgrade."""
    from latentode.forecast import forecaster as module

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fc = fitted(light_curves(n=12, points=15), uncertainty_cols=ERRS)
    assert fc.model.encoder_error_scale is not None and fc.calibration.series_kappa is not None
    calls = []
    original = module.beyond_known
    monkeypatch.setattr(module, "beyond_known",
                        lambda *a, **k: (calls.append(1), original(*a, **k))[1])
    df = light_curves(n=1, points=15, seed=9)
    fc.predict(df, [5.0])
    assert calls
    calls.clear()
    fc.calibration = dataclasses.replace(fc.calibration, error_rms=[])
    fc.predict(df, [5.0])
    assert not calls


def brute_force(r2: np.ndarray, known: np.ndarray, scale: np.ndarray) -> float:
    """The best ``v`` of the log-likelihood on a fine grid, refined by golden sections."""
    def loglik(v: float) -> float:
        var = known + v * scale
        return float(-(np.log(var) + r2 / var).sum())

    top = max(float(((r2 - known) / scale).max()), 1e-12)
    grid = np.concatenate([[0.0], np.geomspace(top * 1e-10, top, 4000)])
    k = int(np.argmax([loglik(v) for v in grid]))
    lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    for _ in range(200):
        a, b = lo + 0.382 * (hi - lo), lo + 0.618 * (hi - lo)
        lo, hi = (lo, b) if loglik(a) > loglik(b) else (a, hi)
    return 0.5 * (lo + hi)


def test_likely_extra_finds_the_best_variance_also_where_the_likelihood_has_two_maxima():
    from latentode.forecast.calibration import likely_extra

    rng = np.random.default_rng(0)
    for case in range(40):
        n = int(rng.integers(5, 300))
        known = np.exp(rng.uniform(-6, 3, n)) if case % 2 else np.full(n, 0.3)
        scale = np.exp(rng.uniform(-1, 1, n)) if case % 3 == 0 else np.ones(n)
        v = float(np.exp(rng.uniform(-5, 2)))
        r2 = (known + v * scale) * rng.standard_t(3 if case % 4 == 0 else 50, n) ** 2
        got = float(likely_extra(r2, known, scale))
        want = brute_force(r2, known, scale)
        assert got == pytest.approx(want, rel=1e-4, abs=1e-10), case
    # two maxima: precise points asking for 0.01 more, noisy ones (known 50) for 350; which
    # one is best depends on their counts, and a fixed point started from the plain mean
    # (the first case) or from 0 (the second) stops at the other
    for precise, loud, want in ((20, 10, 0.010006), (10, 30, 234.842)):
        r2 = np.concatenate([np.full(precise, 0.01), np.full(loud, 400.0)])
        known = np.concatenate([np.full(precise, 1e-6), np.full(loud, 50.0)])
        got = float(likely_extra(r2, known))
        assert got == pytest.approx(brute_force(r2, known, np.ones(len(r2))), rel=1e-4)
        assert got == pytest.approx(want, rel=1e-4)
    # sets along the last axis, the unseen left out; an empty set and a quiet one give 0
    sets = likely_extra(np.array([[4.0, 100.0], [0.5, 0.5], [9.0, 9.0]]), np.ones((3, 2)),
                        seen=np.array([[True, False], [True, True], [False, False]]))
    np.testing.assert_allclose(sets, [3.0, 0.0, 0.0])
    with warnings.catch_warnings():  # exactly known points at v = 0: no division warnings
        warnings.simplefilter("error")
        likely_extra(np.array([[0.0, 0.0, 1.0]]), np.array([[0.0, 0.0, 4.0]]))


def test_calibrate_lead_refuses_batches_with_and_without_uncertainties():
    loud = noisy(walk_batches(0), 0, only_heldout=True)
    base = NoiseCalibration(std=[0.1], obs_std=0.01, error_rms=[0.5])
    for batches in ([loud[0], *without_errors(loud[1:])], [*without_errors(loud[:1]), loud[1]]):
        with pytest.raises(ValueError, match="calibrate_lead: some batches carry measurement"):
            calibrate_lead(Persistence(), batches, base, n_samples=5, seed=0)


def test_an_older_calibration_s_factor_reads_no_uncertainties_in_coverage():
    """``point_noise`` (coverage, the forecast breakdown) as its forecaster's predict: a
    calibration without ``error_rms`` reads the residuals with the noise in."""
    from latentode.forecast.calibration import point_noise

    scored = Scored(
        pred=torch.zeros(3, 1, 3, 1), values=torch.tensor([[[1.0], [3.0], [2.0]]]),
        target=torch.ones(1, 3, 1, dtype=torch.bool),
        encoder=torch.tensor([[[True], [True], [False]]]), leads=torch.zeros(1, 3, 1),
        history=torch.tensor([2]), errors=torch.tensor([[[0.5], [2.0], [9.0]]]))
    old = NoiseCalibration(std=[0.3], obs_std=0.0, series_kappa=4.0, series_mbar=[1.0])
    new = dataclasses.replace(old, error_rms=[1.0])
    plain = dataclasses.replace(scored, errors=None)
    assert torch.equal(point_noise(old, scored), point_noise(old, plain))
    assert not torch.equal(point_noise(new, scored), point_noise(new, plain))


def test_the_encoder_gets_the_uncertainties_only_where_it_reads_them():
    from latentode.models import LatentODE
    from latentode.models.baselines import ODERNN
    from latentode.models.inputs import encoder_error_kwargs

    errors = torch.ones(2, 3, 1)
    assert encoder_error_kwargs(ODERNN(input_dim=1), errors) == {}  # its predict takes none
    assert encoder_error_kwargs(LatentODE(input_dim=1), errors) == {}  # scale None
    reads = LatentODE(input_dim=1, encoder_error_scale=1.0)
    assert encoder_error_kwargs(reads, errors)["encoder_errors"] is errors
    assert encoder_error_kwargs(reads, None) == {}


def test_score_warns_about_hidden_values_without_an_uncertainty(forecaster):
    df = light_curves(n=3, points=15, seed=10)
    last = df.groupby("star")["t"].transform("max") == df["t"]
    df.loc[last, "mag_err"] = np.nan  # only the hidden end lacks them
    with pytest.warns(UserWarning, match=r"3 observed value\(s\) have no uncertainty"):
        forecaster.score(df, "end", fraction=0.1)
