"""Calibrated predictive noise (``latentode.forecast.calibration``) on synthetic data whose truth
is known: a fake model with the ``LatentODE`` forward interface predicts a fixed function plus a
small sample spread, and the values are that function plus Gaussian noise of known std."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from latentode.data import Batch, Interpolation, LatentODEDataModule, Mixed, load_dataset
from latentode.data.windows import split_windows
from latentode.forecast.calibration import (
    NoiseCalibration,
    Scored,
    calibrate_noise,
    calibration_batches,
    density_warning,
    few_points_warning,
    few_series_warning,
    interpolation_task,
    predictive_coverage,
)

NOISE = (0.3, 0.1)  # true observation noise per channel
SPREAD = 0.05  # std of the fake model's sample paths around its prediction


def truth(times: torch.Tensor, dims: int = 2) -> torch.Tensor:
    """The fake model's prediction ``(T, D)``: a different curve per channel."""
    return torch.stack([torch.sin(times * (c + 1)) * (c + 1) for c in range(dims)], -1)


class FakeModel(nn.Module):
    """``model(times, values, encoder_mask, n_samples=S).pred``: ``truth`` plus ``SPREAD``
    Gaussian noise per sample and point, ``(S, B, T, D)``."""

    def __init__(self, obs_std: float = 0.01, dims: int = 2, spread: float = SPREAD):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))  # a device and dtype to read
        self.obs_std, self.input_dim, self.spread = obs_std, dims, spread

    def forward(self, times, values, encoder_mask, n_samples=None, pred_times=None):
        n = n_samples or 1
        base = truth(times, self.input_dim).expand(values.shape[0], -1, -1)
        return SimpleNamespace(pred=base + self.spread * torch.randn((n, *base.shape)))


def make_batches(seed: int, n_batches: int = 2, series: int = 20, length: int = 100,
                 noise=NOISE, encoder_share: float = 0.5) -> list[Batch]:
    """Batches whose values are ``truth`` plus N(0, noise^2) per channel; the encoder sees a
    random ``encoder_share`` of the points, every point is a target."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        times = torch.from_numpy(np.sort(rng.uniform(0, 5, length))).float()
        eps = rng.normal(size=(series, length, len(noise))) * np.asarray(noise)
        values = truth(times, len(noise)) + torch.from_numpy(eps).float()
        mask = torch.ones(values.shape, dtype=torch.bool)
        encoder = torch.from_numpy(rng.random(values.shape) < encoder_share)
        out.append(Batch(times=times, values=values, mask=mask, encoder_mask=encoder,
                         target_mask=mask, index=torch.arange(series)))
    return out


def _inside_span(batch: Batch) -> torch.Tensor:
    """Points within the span of each series' and channel's encoder points (lead 0)."""
    enc = batch.encoder_mask
    index = torch.arange(enc.shape[1]).view(1, -1, 1)
    first = torch.where(enc, index, enc.shape[1]).amin(1, keepdim=True)
    last = torch.where(enc, index, -1).amax(1, keepdim=True)
    return (index >= first) & (index <= last)


def test_calibrated_std_recovers_the_true_noise():
    batches = make_batches(0)
    cal = calibrate_noise(FakeModel(), batches, n_samples=50, seed=0, split="val")
    assert cal.std[0] == pytest.approx(NOISE[0], rel=0.1)
    # the paths' spread covers part of the variance: noise^2 + spread^2 = the true noise^2
    np.testing.assert_allclose(cal.std, np.sqrt(np.square(NOISE) - SPREAD**2), rtol=0.1)
    np.testing.assert_allclose(np.hypot(cal.std, cal.path_std), NOISE, rtol=0.1)
    assert cal.points == "heldout" and cal.split == "val" and cal.obs_std == 0.01
    # only points the encoder did not see, within the span of each channel's encoder points
    heldout = sum(int((b.target_mask & ~b.encoder_mask & _inside_span(b)).sum())
                  for b in batches)
    assert sum(cal.count) == heldout
    np.testing.assert_allclose(cal.path_std, SPREAD, rtol=0.1)
    # the same seed gives the same numbers; torch's global RNG is left alone
    state = torch.get_rng_state()
    again = calibrate_noise(FakeModel(), batches, n_samples=50, seed=0, split="val")
    assert again == cal and torch.equal(torch.get_rng_state(), state)


def test_coverage_with_calibrated_noise_is_about_the_level():
    model = FakeModel()
    cal = calibrate_noise(model, make_batches(0), n_samples=50, seed=0)
    test = make_batches(1, n_batches=2)  # other series: ~4000 held-out points
    cov = predictive_coverage(model, test, {"calibrated": cal.std, "model": model.obs_std,
                                            "paths": None}, level=0.9, n_samples=100, seed=0)
    assert cov["calibrated"] == pytest.approx(0.9, abs=0.05)
    assert cov["model"] < 0.5 and cov["paths"] < 0.5  # obs_std 0.01: far too narrow
    half = predictive_coverage(model, test, {"calibrated": cal.std}, level=0.5, n_samples=100)
    assert half["calibrated"] == pytest.approx(0.5, abs=0.05)


def test_calibration_never_goes_below_obs_std():
    wide = FakeModel(obs_std=1.0)
    cal = calibrate_noise(wide, make_batches(0), n_samples=20)
    assert cal.std == [1.0, 1.0] and cal.residual_rms[0] < 1.0
    # values exactly on the prediction: nothing left for noise, the floor remains
    exact = make_batches(0, noise=(0.0, 0.0))
    cal = calibrate_noise(FakeModel(obs_std=0.02), exact, n_samples=20)
    assert cal.std == [0.02, 0.02]


def test_fallback_to_all_targets_and_pooled_channels():
    seen = make_batches(0, encoder_share=1.0)  # the encoder saw every point
    cal = calibrate_noise(FakeModel(), seen, n_samples=20)
    assert cal.points == "targets" and sum(cal.count) == 2 * 20 * 100 * 2
    np.testing.assert_allclose(np.hypot(cal.std, cal.path_std), NOISE, rtol=0.1)
    # a channel without held-out points takes the estimate pooled over the channels
    batches = make_batches(0, noise=(0.2, 0.2))
    for b in batches:
        b.encoder_mask[..., 1] = True
    cal = calibrate_noise(FakeModel(), batches, n_samples=20)
    assert cal.count[1] == 0 and cal.std[1] == pytest.approx(cal.std[0])


def test_few_calibration_series_are_named_with_the_way_out():
    """Below 10 series the calibrated noise varies widely (docs/results.md, Calibration on few
    series: 90% intervals from 1-5 random validation series covered 0.45-0.98)."""
    ds = load_dataset("periodic", n_series=12, n_points=20)
    text = few_series_warning(ds.subset(range(9)), "val_df", "Pass more series in val_df.")
    assert text == ("The predictive noise is calibrated on 9 series (val_df): with fewer than "
                    "10 the intervals' coverage varies widely (90% intervals calibrated on 1-5 "
                    "series covered 0.45-0.98 in a measurement). Pass more series in val_df.")
    assert few_series_warning(ds.subset(range(10)), "val_df", "") is None


def test_windows_of_one_series_count_once():
    """Windows cut from 3 series are 3 series' worth of evidence, however many windows."""
    ds = load_dataset("periodic", n_series=3, n_points=40)
    windows = split_windows(ds, 1.0, min_points=2)
    assert len(windows) >= 10  # as many windows as the warning would otherwise need series
    text = few_series_warning(windows, "the run's validation split", "")
    assert text is not None and text.startswith(
        f"The predictive noise is calibrated on 3 series (the run's validation split, cut into "
        f"{len(windows)} windows)")


def test_channels_calibrated_on_few_points_are_named():
    cal = NoiseCalibration(std=[0.1, 0.2, 0.3], obs_std=0.01, count=[0, 2, 500], split="val")
    text = few_points_warning(cal, ["hr", "temp", "spo2"])
    assert text is not None and text.startswith(
        "The predictive noise of channel(s) 'hr' (0 points: the other channels pooled stand "
        "in), 'temp' (2 points) is calibrated on fewer than 20 held-out points (val split)")
    assert "spo2" not in text
    enough = NoiseCalibration(std=[0.1], obs_std=0.01, count=[20], split="val")
    assert few_points_warning(enough, ["hr"]) is None


def test_a_model_worse_from_more_of_a_series_is_named_with_the_remedy():
    task = Interpolation(count=50)
    folds = NoiseCalibration(std=[0.29, 0.10], obs_std=0.01, count=[9738, 400], split="val")
    at_task = NoiseCalibration(std=[0.125, 0.09], obs_std=0.01, count=[4810, 200], split="val")
    text = density_warning(folds, at_task, task, ["value", "other"])
    assert text is not None and text.startswith(
        "The model predicts points inside a series worse when its encoder sees 4/5 of the "
        "series than at its training task's density (Interpolation(fraction=None, count=50, "
        "fraction_spread=None)): in-series noise 0.29 against 0.125 for channel 'value' "
        "(model units, val split).")
    assert "data.task.count=null data.task.fraction=0.75 ++data.task.fraction_spread=0.25" in text
    assert "or the Mixed task" in text
    # 1.5x or less, fewer than 20 points either way, or better on folds: nothing to say
    assert density_warning(at_task, at_task, task, ["value", "other"]) is None
    near = NoiseCalibration(std=[0.1875, 0.1], obs_std=0.01, count=[100, 100], split="val")
    assert density_warning(near, at_task, task, ["value", "other"]) is None
    few = NoiseCalibration(std=[0.125, 0.09], obs_std=0.01, count=[19, 200], split="val")
    assert density_warning(folds, few, task, ["value", "other"]) is None
    assert density_warning(at_task, folds, task, ["value", "other"]) is None
    # a task holding nothing out calibrates on reconstructions (points="targets"): no comparison
    seen = NoiseCalibration(std=[0.05, 0.05], obs_std=0.01, count=[9000, 900], split="val",
                            points="targets")
    assert density_warning(folds, seen, Interpolation(fraction=1.0), ["value", "other"]) is None
    # a Mixed task: named with its subsample, the advice fits its config (no count, no Mixed)
    mixed = density_warning(folds, at_task, Mixed(fraction=0.5, fraction_spread=0.0),
                            ["value", "other"])
    assert mixed is not None and "Mixed(fraction=0.5" in mixed
    assert "its subsample Interpolation(fraction=0.5" in mixed
    assert "(data.task.fraction=0.75 ++data.task.fraction_spread=0.25)" in mixed
    assert "count=null" not in mixed and "or the Mixed task" not in mixed
    # a task that spreads densities already was told to do so (the forecaster's default)
    spread = density_warning(folds, at_task, Mixed(fraction=0.75, fraction_spread=0.25),
                             ["value", "other"])
    assert spread is not None and "fraction_spread=0.25" in spread
    assert "train on a spread" not in spread
    assert spread.endswith("It trained on a spread of densities already: longer training "
                           "usually closes the gap.")
    # a spread that stays far below the 4/5 predict conditions on still gets the advice
    low = density_warning(folds, at_task, Interpolation(fraction=0.3, fraction_spread=0.05),
                          ["value", "other"])
    assert low is not None and "train on a spread of densities" in low


def test_json_round_trip_is_exact(tmp_path):
    cal = calibrate_noise(FakeModel(), make_batches(0), n_samples=20, split="train")
    cal.write(tmp_path / "calibration.json")
    back = NoiseCalibration.read(tmp_path / "calibration.json")
    assert back == cal and back.array.tobytes() == cal.array.tobytes()
    with pytest.raises(ValueError, match="version"):
        NoiseCalibration.from_json({**cal.to_json(), "version": 99})


def test_errors():
    with pytest.raises(ValueError, match="n_samples must be an integer >= 2"):
        calibrate_noise(FakeModel(), make_batches(0), n_samples=1)
    cal = calibrate_noise(FakeModel(), [], n_samples=5)  # nothing to calibrate on
    assert cal.points == "none" and cal.std == [0.01, 0.01]


@pytest.mark.parametrize("val_fraction", [0.2, 0.0])
def test_calibration_batches_validation_split_else_training(val_fraction):
    dm = LatentODEDataModule(load_dataset("periodic", n_series=20, n_points=20),
                             task=Interpolation(count=10), batch_size=4,
                             val_fraction=val_fraction, test_fraction=0.2)
    dm.setup()
    batches, split = calibration_batches(dm)
    batches = list(batches)
    if val_fraction:
        assert split == "val"
        loader = list(dm.val_dataloader())  # the very batches validation scores
        assert len(batches) == len(loader)
        for a, b in zip(batches, loader, strict=True):
            assert torch.equal(a.values, b.values) and torch.equal(a.encoder_mask, b.encoder_mask)
    else:
        assert split == "train"
        assert sum(b.batch_size for b in batches) == len(dm.splits["train"])
        again, _ = calibration_batches(dm)  # fixed, seeded masks
        assert all(torch.equal(a.encoder_mask, b.encoder_mask)
                   for a, b in zip(batches, again, strict=True))
        assert any(bool((b.target_mask & ~b.encoder_mask).any()) for b in batches)
    capped, _ = calibration_batches(dm, max_series=3)
    assert sum(b.batch_size for b in capped) == 3


def test_calibration_batches_of_a_mixed_task_subsample_every_series():
    """The in-series noise is calibrated on a Mixed task's interpolation part: the series it
    would cut hold only forecasts (lead > 0), and on 3 validation series of a 30-series fit
    none was left inside a span. Every series is then subsampled, none cut."""
    dm = LatentODEDataModule(load_dataset("periodic", n_series=40, n_points=30),
                             task=Mixed(), batch_size=8, val_fraction=0.5, test_fraction=0.1)
    dm.setup()
    assert interpolation_task(dm.task) == Interpolation(fraction=0.75, fraction_spread=0.25)
    assert interpolation_task(dm.task.interpolation()) == dm.task.interpolation()

    def cut(batch: Batch) -> torch.Tensor:
        """Per series: the encoder saw its first k observed times, k < all of them."""
        seen, observed = batch.encoder_mask.any(-1), batch.mask.any(-1)
        k = seen.sum(1)
        first = observed & (observed.cumsum(1) <= k.unsqueeze(1))
        return (seen == first).all(1) & (k < observed.sum(1))

    ours = sum(int(cut(b).sum()) for b in calibration_batches(dm)[0])
    theirs = sum(int(cut(b).sum()) for b in dm.val_dataloader())
    assert ours == 0 and theirs >= 5  # of 20 validation series, about half cut in validation


def test_calibration_batches_with_folds_hold_every_validation_point_out_once():
    """The forecaster's in-series calibration: K passes of Folds over each chunk of series,
    each point held out once while the encoder sees the other (K - 1) / K of its series."""
    dm = LatentODEDataModule(load_dataset("periodic", n_series=30, n_points=20),
                             task=Mixed(), batch_size=4, val_fraction=0.4, test_fraction=0.1)
    dm.setup()
    batches, split = calibration_batches(dm, folds=5, origin="series")
    batches = list(batches)
    n = len(dm.splits["val"])
    assert split == "val" and len(batches) == 5 * -(-n // 4)  # five passes per chunk
    held = observed = 0
    for k in range(0, len(batches), 5):
        chunk = batches[k:k + 5]
        outs = [b.target_mask.any(-1) & ~b.encoder_mask.any(-1) for b in chunk]
        assert all(torch.equal(b.values, chunk[0].values) for b in chunk)  # the same series
        assert int(sum(o.int() for o in outs).max()) == 1  # no point held out twice
        held += sum(int(o.sum()) for o in outs)
        observed += int(chunk[0].mask.any(-1).sum())
        seen = chunk[0].encoder_mask.any(-1).sum(1) / chunk[0].mask.any(-1).sum(1)
        assert ((seen >= 0.75) & (seen <= 0.85)).all()  # four fifths of 20 points
    assert held == observed  # every point of every validation series, once
    for bad in (0, 1, 2.5, -1):  # no silent empty or truncated loop
        with pytest.raises(ValueError, match="folds must be an integer >= 2"):
            list(calibration_batches(dm, folds=bad)[0])
    # a task given keeps its own masks, folds or not (from_model's task=)
    plain = list(calibration_batches(dm)[0])
    given = list(calibration_batches(dm, task=interpolation_task(dm.task), folds=5)[0])
    assert len(given) == len(plain)
    assert all(torch.equal(a.encoder_mask, b.encoder_mask)
               for a, b in zip(plain, given, strict=True))


def unaligned_batch(series: int = 12, points: int = 15, dims: int = 2, seed: int = 0) -> Batch:
    """Series each observed at its own times (the union is ``series`` times longer), half of
    each series' points shown to the encoder, every observed point a target."""
    gen = torch.Generator().manual_seed(seed)
    times = torch.sort(torch.rand(series * points, generator=gen)).values * 3
    times[0] = 0.0
    owner = torch.randperm(series * points, generator=gen) % series
    owner[0] = 0
    target = torch.zeros(series, len(times), dims, dtype=torch.bool)
    target[owner, torch.arange(len(times))] = torch.rand(len(times), dims, generator=gen) < 0.8
    target[owner, torch.arange(len(times)), 0] = True
    values = torch.randn(series, len(times), dims, generator=gen) * target
    encoder = target & (torch.rand(series, len(times), 1, generator=gen) < 0.5)
    return Batch(times=times, values=values, mask=target, target_mask=target,
                 encoder_mask=encoder, index=torch.arange(series))


@pytest.mark.parametrize("z0_at", ["start", "first_target"])
def test_latent_ode_is_scored_at_each_series_own_times(z0_at):
    """A latent ODE is asked at each series' own target times, not the batch's union: the same
    calibration and coverage as decoding the whole union (within the solver's tolerance), with
    decoded paths ``series`` times shorter."""
    from latentode.forecast.calibration import _predicted
    from latentode.models import LatentODE

    torch.manual_seed(0)
    model = LatentODE(2, latents=3, gen_units=8, z0_at=z0_at).eval()
    batch = unaligned_batch()
    if z0_at == "first_target":  # nothing to score before a later first target
        batch.target_mask[:, :5] = False
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(3)
        scored = _predicted(model, batch, 20)
        torch.manual_seed(3)
        union = model.predict(batch.times, batch.values, batch.encoder_mask,
                              batch.target_mask, n_samples=20).pred
    assert scored.pred.shape[2] <= 16 < union.shape[2] / 10  # own targets only, not the union
    # every target point scored once, against the union's prediction at it
    assert int(scored.target.sum()) == int(batch.target_mask.sum())
    assert int((scored.target & ~scored.encoder).sum()) == int(
        (batch.target_mask & ~batch.encoder_mask).sum())
    picked = scored.pred.permute(1, 2, 3, 0)[scored.target]  # (N, S)
    expected = union.permute(1, 2, 3, 0)[batch.target_mask]
    torch.testing.assert_close(picked, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(scored.values[scored.target], batch.values[batch.target_mask])
    calibrated = calibrate_noise(model, [batch], n_samples=20)
    inside = batch.target_mask & ~batch.encoder_mask & _inside_span(batch)
    assert calibrated.count == inside.sum((0, 1)).tolist()


# --------------------------------------------------------------------- forecasts: lead time
WALK = 0.5  # random-walk std per unit time: a persistence forecast's error grows like it


class Persistence(nn.Module):
    """Predicts, at every time, the last value the encoder saw at or before it (the first one
    before it): inside a series the error is that of a short gap, ahead of it a random walk's
    over the lead time. The paths spread by ``SPREAD``, the same at every lead."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.obs_std, self.input_dim = 0.01, 1

    def forward(self, times, values, encoder_mask, n_samples=None, pred_times=None):
        seen = encoder_mask[..., 0]  # (B, T)
        steps = torch.arange(seen.shape[1]).expand_as(seen)
        last = torch.where(seen, steps, -1).cummax(1).values
        first = seen.to(torch.int8).argmax(1, keepdim=True)
        index = torch.where(last < 0, first, last)
        base = values[..., 0].gather(1, index).unsqueeze(-1)
        n = n_samples or 1
        return SimpleNamespace(pred=base + SPREAD * torch.randn((n, *base.shape)))


def walk_batches(seed: int, n_batches: int = 3, series: int = 40, length: int = 60):
    """Random walks (std ``WALK`` per unit time) on [0, 10] plus N(0, 0.05^2), cut at 20-80%
    of each series (``lead_task``), in batches as the calibration reads them."""
    from latentode.data import Collator, from_dataframe
    from latentode.forecast.calibration import lead_task

    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_batches * series):
        t = np.sort(rng.uniform(0, 10, length))
        x = np.cumsum(rng.normal(size=length) * WALK * np.sqrt(np.diff(t, prepend=0.0)))
        rows += [(s, ti, xi + 0.05 * rng.normal()) for ti, xi in zip(t, x, strict=True)]
    import pandas as pd

    ds = from_dataframe(pd.DataFrame(rows, columns=["series_id", "time", "x"]),
                        time_scale=1.0)
    collate = Collator(ds, lead_task(), fixed=True, seed=seed, origin="series")
    return [collate(list(range(b * series, (b + 1) * series))) for b in range(n_batches)]


def test_forecast_noise_grows_with_lead_time_and_covers_there():
    """The lead curve recovers a random walk's growing error, and with it the forecasts' 90%
    intervals cover about 90% at every lead; the noise of points inside the series does not."""
    from latentode.forecast.calibration import calibrate_lead

    model = Persistence()
    base = NoiseCalibration(std=[0.1], obs_std=0.01)
    cal = calibrate_lead(model, walk_batches(0), base, n_samples=20, seed=0)
    assert len(cal.lead_times) == 8 and sum(cal.lead_count) > 1000
    lead_std = np.asarray(cal.lead_std)[:, 0]
    assert np.all(np.diff(lead_std) >= 0) and lead_std[0] >= 0.1
    # excess variance ~ WALK^2 x lead (the paths' SPREAD is taken out)
    want = np.sqrt(WALK**2 * np.asarray(cal.lead_times))
    np.testing.assert_allclose(lead_std[2:], want[2:], rtol=0.25)
    # std_at: the base inside the series, the curve ahead, its last value beyond it
    at = cal.std_at(np.array([0.0, -1.0, cal.lead_times[3], 100.0]))[:, 0]
    assert at[0] == at[1] == 0.1 and at[2] == pytest.approx(lead_std[3])
    assert at[3] == pytest.approx(lead_std[-1])
    test = walk_batches(1)
    cov = predictive_coverage(model, test, {"curve": cal, "constant": cal.std}, level=0.9,
                              n_samples=50, seed=0)
    assert cov["curve"] == pytest.approx(0.9, abs=0.04)
    assert cov["constant"] < 0.6


def test_too_few_forecast_points_for_a_lead_curve_warn_with_the_remedy():
    # sparse series: the curve was dropped with a log line, forecasts under-covered (a review)
    from latentode.forecast.calibration import calibrate_lead

    base = NoiseCalibration(std=[0.1], obs_std=0.01)
    with pytest.warns(UserWarning, match=r"too few forecast points to calibrate on \(\d+; a "
                                         r"lead-time curve needs 30\).*likely too narrow.*"
                                         r"val_fraction="):
        cal = calibrate_lead(Persistence(), walk_batches(0, n_batches=1, series=3, length=8),
                             base, n_samples=5, seed=0)
    assert cal is base
    # between two bins' worth and eight: a curve of fewer bins, not none (sparse series'
    # forecasts kept the in-series noise and covered 0.75 for 0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        few = calibrate_lead(Persistence(), walk_batches(0, n_batches=1, series=8, length=30),
                             base, n_samples=5, seed=0)
    assert 60 <= sum(few.lead_count) < 240 and 2 <= len(few.lead_times) < 8
    assert few.lead_std[-1][0] > few.lead_std[0][0] >= 0.1  # it widens with the lead
    # no history factor from so few points (its bins put 0.36 on every history: a review)
    for seed in range(1000, 1012):
        sparse = calibrate_lead(Persistence(), walk_batches(seed, n_batches=1, series=8,
                                                             length=30),
                                base, n_samples=5, seed=0)
        assert sparse.history_factor == [], seed


def test_lead_curve_is_made_non_decreasing_and_floored():
    from latentode.forecast.calibration import _lead_curve

    rng = np.random.default_rng(0)
    tau = rng.uniform(0, 4, 4000)
    excess = np.where(tau < 2, 1.0, 0.25) + 0.01 * rng.normal(size=4000)  # falls at tau = 2
    chan = np.zeros(4000, dtype=int)
    zero = np.zeros_like(excess)  # r^2 = excess, no spread, no known uncertainty
    _, std, counts = _lead_curve(tau, excess, zero, zero, chan, np.array([0.3]), bins=8)
    std = np.asarray(std)[:, 0]
    assert sum(counts) == 4000 and np.all(np.diff(std) >= -1e-12)
    assert std.max() <= 1.0 + 1e-2 and std.min() >= 0.3
    # the pooled violators: every bin the weighted mean of 1 and 0.25 in equal parts
    np.testing.assert_allclose(std, np.sqrt(0.625), rtol=0.02)


def test_calibration_files_of_version_1_load_without_a_curve():
    old = {"std": [0.2], "obs_std": 0.01, "residual_rms": [0.3], "path_std": [0.1],
           "count": [5], "points": "heldout", "split": "val", "n_samples": 100, "seed": 0,
           "version": 1}
    cal = NoiseCalibration.from_json(old)
    assert cal.lead_times == [] and cal.std_at(np.array([0.0, 5.0])).tolist() == [[0.2], [0.2]]
    curved = NoiseCalibration(std=[0.2], obs_std=0.01, lead_times=[1.0, 2.0],
                              lead_std=[[0.3], [0.5]], lead_count=[10, 10])
    # per-channel leads: a channel never observed (inf) gets the last bin's noise
    assert curved.std_at(np.array([[0.0], [np.inf], [1.0]]))[:, 0].tolist() == [0.2, 0.5, 0.3]
    assert NoiseCalibration.from_json(curved.to_json()) == curved
    # inside the span the in-series noise; before the first knot the first bin's; linear in
    # variance between the knots (1, 0.3^2), (2, 0.5^2); the last beyond
    np.testing.assert_allclose(curved.std_at(np.array([0.0, 0.5, 1.5, 9.0]))[:, 0],
                               [0.2, 0.3, np.sqrt((0.09 + 0.25) / 2), 0.5])


def test_mixture_quantiles_are_exact():
    from latentode.forecast.quantiles import mixture_quantiles

    stats = pytest.importorskip("scipy.stats")
    optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(0)
    paths = rng.normal(size=(50, 6, 2)) * np.array([0.2, 2.0])
    paths[:25, :, 1] += 6.0  # two modes
    std = rng.uniform(0.1, 1.0, size=(6, 2))
    levels = [0.05, 0.5, 0.95]
    got = mixture_quantiles(paths, std, levels)
    for k, q in enumerate(levels):
        for i in range(6):
            for d in range(2):
                cdf = lambda x, i=i, d=d, q=q: stats.norm.cdf(  # noqa: E731
                    (x - paths[:, i, d]) / std[i, d]).mean() - q
                want = optimize.brentq(cdf, -50, 50, xtol=1e-13)
                assert got[k, i, d] == pytest.approx(want, abs=1e-8)
    # no noise: the paths' own quantiles
    np.testing.assert_array_equal(mixture_quantiles(paths, 0.0, levels),
                                  np.quantile(paths, levels, axis=0))


class MeanOfSeen(nn.Module):
    """Predicts each series' mean of what the encoder saw: its error variance falls with how
    much it saw (``1 + 1/n`` times the noise's for ``n`` values), whatever the lead."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.obs_std, self.input_dim = 0.01, 1

    def forward(self, times, values, encoder_mask, n_samples=None, pred_times=None):
        seen = encoder_mask.to(values.dtype)
        mean = (values * seen).sum(1, keepdim=True) / seen.sum(1, keepdim=True).clamp_min(1)
        base = mean.expand_as(values)
        return SimpleNamespace(pred=base + 0.01 * torch.randn((n_samples or 1, *base.shape)))


def level_batches(seed: int, n_batches: int = 4, series: int = 60):
    """Constant levels plus N(0, 1), 2 to 40 points per series, cut at 20-80% (lead_task)."""
    import pandas as pd

    from latentode.data import Collator, from_dataframe
    from latentode.forecast.calibration import lead_task

    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_batches * series):
        n = int(rng.integers(3, 40))
        level = rng.normal() * 3
        rows += [(s, t, level + rng.normal()) for t in np.sort(rng.uniform(0, 10, n))]
    ds = from_dataframe(pd.DataFrame(rows, columns=["series_id", "time", "x"]), time_scale=1.0)
    collate = Collator(ds, lead_task(), fixed=True, seed=seed, origin="series")
    return [collate(list(range(b * series, (b + 1) * series))) for b in range(n_batches)]


def test_forecast_noise_grows_for_short_histories():
    """A series forecast from a few points gets more noise than one from many: the variance's
    factor by history length falls, and short histories are covered as well as long ones."""
    from latentode.forecast.calibration import calibrate_lead, point_noise

    model = MeanOfSeen()
    base = NoiseCalibration(std=[1.0], obs_std=0.01)
    cal = calibrate_lead(model, level_batches(0), base, n_samples=10, seed=0)
    factors = np.asarray(cal.history_factor)
    assert len(factors) >= 2 and np.all(np.diff(factors) <= 1e-12)
    assert factors[0] > 1.15 * factors[-1]  # (1 + 1/n): ~1.3 at n = 3 against ~1.05 at 20
    test = level_batches(1)
    with_factor: tuple[dict, dict] = ({}, {})
    for flat_noise in (False, True):
        hits, counts = dict.fromkeys(("short", "long"), 0), dict.fromkeys(("short", "long"), 0)
        for batch in test:
            from latentode.forecast.calibration import _predicted

            torch.manual_seed(0)
            scored = _predicted(model, batch, 10)
            mask = scored.target & ~scored.encoder
            short = (scored.history <= 6).view(-1, 1, 1).expand_as(mask)
            if flat_noise:
                scored.history = torch.full_like(scored.history, 10_000)  # factor of the longest
            std = point_noise(cal, scored)
            lo, hi = scored.pred.mean(0) - 1.645 * std, scored.pred.mean(0) + 1.645 * std
            inside = (scored.values >= lo) & (scored.values <= hi)
            for name, part in (("short", short), ("long", ~short)):
                hits[name] += int((inside & mask & part).sum())
                counts[name] += int((mask & part).sum())
        with_factor[int(flat_noise)].update({k: hits[k] / counts[k] for k in hits})
    assert with_factor[0]["short"] == pytest.approx(0.9, abs=0.05)
    assert with_factor[1]["short"] < with_factor[0]["short"] - 0.03  # without: under-covered


def test_lead_curve_skips_bins_that_leads_on_a_grid_leave_empty():
    """Daily data: leads are whole days, and an equal-count bin edge can fall between two of
    them (3.75 and 4.0 here), leaving a bin without points. Its NaN made the curve, the history
    factors and every forecast's noise NaN, which quantiles then read as no noise (intervals
    20x too narrow, eval's forecast coverage 0.0)."""
    from latentode.forecast.calibration import LEAD_BINS, _lead_curve

    tau = np.repeat(np.arange(1.0, 6.0), [126, 18, 6, 363, 87])
    excess = 0.09 * tau
    zero = np.zeros_like(excess)
    times, std, counts = _lead_curve(tau, excess, zero, zero, np.zeros(len(tau), int),
                                     np.array([0.1]), LEAD_BINS)
    assert np.isfinite(times).all() and np.isfinite(std).all() and min(counts) > 0
    assert sum(counts) == len(tau)
    cal = NoiseCalibration(std=[0.1], obs_std=0.01, lead_times=times, lead_std=std,
                           lead_count=counts)
    assert np.isfinite(cal.std_at(np.array([1.0, 2.0, 3.0, np.inf]))).all()


def test_in_series_noise_ignores_points_past_a_channels_encoder_span():
    """Points after a channel's last encoder point are answered with the lead curve, not the
    in-series noise: counted in it, they inflated it (a sparse channel's 0.58 against 0.09,
    intervals inside the history covering 100%). Here the values past the span are 10x off;
    the in-series noise must stay the true one."""
    batches = make_batches(0)
    for b in batches:
        past = ~_inside_span(b) & ~b.encoder_mask
        b.values[past] += 3.0 * torch.randn(int(past.sum()))
    cal = calibrate_noise(FakeModel(), batches, n_samples=50, seed=0)
    np.testing.assert_allclose(cal.std, np.sqrt(np.square(NOISE) - SPREAD**2), rtol=0.1)
    assert cal.points == "heldout"


def test_forecast_coverage_breakdown_shows_history_lengths_a_pooled_number_hides():
    """Coverage per third of the series by history length: series cut in half after 1-3
    points are forecast (by the mean of what was seen) with error variance 1.3-2, those
    after 10-20 points ~1.07; one noise of 1 covers them ~0.78 and ~0.89. The short series
    hold a twentieth of the points: the pooled number (~0.88) hides them."""
    import pandas as pd

    from latentode.data import Collator, Extrapolation, from_dataframe
    from latentode.forecast.calibration import forecast_coverage_breakdown

    rng = np.random.default_rng(0)
    rows = []
    for s in range(300):
        n = int(rng.choice([2, 3, 4])) if s % 3 == 0 else int(rng.integers(20, 41))
        level = rng.normal() * 3
        rows += [(s, t, level + rng.normal()) for t in np.sort(rng.uniform(0, 10, n))]
    ds = from_dataframe(pd.DataFrame(rows, columns=["series_id", "time", "x"]), time_scale=1.0)
    collate = Collator(ds, Extrapolation(fraction=0.5), fixed=True, seed=0, origin="series")
    batches = [collate(list(range(b, b + 50))) for b in range(0, 300, 50)]
    result = forecast_coverage_breakdown(MeanOfSeen(), batches,
                                         NoiseCalibration(std=[1.0], obs_std=0.01), ["x"],
                                         n_samples=200)
    groups = result["history"]
    labels = list(groups)
    assert len(labels) == 3 and labels[0].startswith("<=") and labels[-1].startswith(">")
    assert int(labels[0][2:]) <= 3  # the short series make the first group
    assert groups[labels[0]] < 0.83 and groups[labels[-1]] == pytest.approx(0.89, abs=0.04)
    assert groups[labels[0]] < result["all"] < groups[labels[-1]]
    assert result["channel"]["x"] == result["all"]


def test_history_groups_are_thirds_of_the_series_named_by_their_last_length():
    from latentode.forecast.calibration import _by_history

    lengths = np.array([2, 2, 5, 5, 9, 9])  # six series, two per length
    history = np.repeat(lengths, [1, 1, 10, 10, 30, 30])  # far more points of long ones
    hit = history > 2
    assert _by_history(hit, history, lengths) == {"<=2": 0.0, "<=5": 1.0, ">5": 1.0}
    assert _by_history(hit[:2], history[:2], lengths[:2]) == {"<=2": 0.0}  # one length
    assert _by_history(hit[:0], history[:0], lengths[:0]) == {}
    # a short minority keeps a group of its own (quantiles alone put every cut at 30)
    for short in ([1], [5, 5]):
        lengths = np.array([*short, *[30] * 7])
        history = np.repeat(lengths, 2)
        got = _by_history(history > short[0], history, lengths)
        assert got == {f"<={short[0]}": 0.0, f">{short[0]}": 1.0}


def test_study_forecast_cut_scores_and_runs(capsys):
    """scripts/study_forecast_cut.py: its scores on a hand-made frame, and a tiny run whose
    table has every cut and lead third."""
    import pandas as pd
    from scripts_loader import load_script

    study = load_script("study_forecast_cut")
    points = pd.DataFrame({"value": [0.0, 1.0, 5.0], "mean": [0.0, 0.0, 0.0],
                           "q0.05": [-2.0] * 3, "q0.25": [-0.5] * 3, "q0.75": [0.5] * 3,
                           "q0.95": [2.0] * 3, "last": [1.0] * 3, "hmean": [5.0] * 3})
    got = study.scores(points)
    assert got["last mse"] == pytest.approx(17 / 3) and got["hmean mse"] == pytest.approx(41 / 3)
    assert got["mse"] == pytest.approx(26 / 3) and got["cover90"] == pytest.approx(2 / 3)
    assert got["cover50"] == pytest.approx(1 / 3) and got["width90"] == 4.0
    assert got["gauss90"] == pytest.approx(2 * 1.6449 * np.sqrt(26 / 3))
    study.main(["--series", "40", "--epochs", "1", "--cuts", "0.3", "0.7",
                "--no-history-factor"])
    table = capsys.readouterr().out
    for cut in ("0.300", "0.700"):
        rows = [line.split()[-10:] for line in table.splitlines() if f" {cut} " in line]
        assert [r[1] for r in rows] == ["all", "lead1/3", "lead2/3", "lead3/3"] * 2
        assert all(0.0 <= float(r[-4]) <= 1.0 and 0.0 <= float(r[-3]) <= 1.0 for r in rows)


def test_the_noise_covers_its_level_where_the_paths_spread_misleads():
    """Moment matching under-covers when the paths' spread is a large part of the variance but
    not where the errors are (subset conditioning: 0.84 for 0.9 on the quick start's model):
    the noise is at least the least one whose 90% mixture intervals cover 90% of the points."""
    from scipy.special import ndtr

    from latentode.forecast.calibration import coverage_std

    rng = np.random.default_rng(0)
    n, samples = 4000, 50
    error = rng.normal(size=n) * np.where(np.arange(n) % 2 == 0, 1.0, 0.2)
    spread = np.where(np.arange(n) % 2 == 1, 1.5, 0.05)  # wide paths where errors are small
    dev = error[None] - spread[None] * rng.normal(size=(samples, n))  # value minus each path
    moment = np.sqrt(max((dev.mean(0) ** 2).mean() - dev.var(0).mean(), 0.0))

    def covered(sigma: float) -> float:
        cdf = ndtr(dev / sigma).mean(0)
        return float(np.mean((cdf >= 0.05) & (cdf <= 0.95)))

    assert covered(max(moment, 0.01)) < 0.85  # what moment matching alone gave
    floor = coverage_std(dev, 0.01)
    assert covered(floor) >= 0.9 > covered(floor / 1.01)  # the least such noise, to 0.1%
    assert coverage_std(dev, 2 * floor) == 0.0  # covered already: no floor


class PatchySpread(FakeModel):
    """Paths spread 3x the noise at every other time and not at all between."""

    def forward(self, times, values, encoder_mask, n_samples=None, pred_times=None):
        n = n_samples or 1
        base = truth(times, self.input_dim).expand(values.shape[0], -1, -1)
        spread = torch.where(torch.arange(len(times)) % 2 == 0, 3 * max(NOISE), 0.0)
        return SimpleNamespace(pred=base + spread[:, None] * torch.randn((n, *base.shape)))


def test_calibrate_noise_records_the_coverage_floor():
    """Gaussian residuals: moment matching covers, the noise stays within sampling error of it
    (either estimate may be the larger). Paths that spread
    where the model is right and not where it is wrong: moment matching gives obs_std (the
    paths' variance exceeds the residuals'), 90% intervals cover about half the points; the
    floor brings them to 0.9 on new batches."""
    gauss = calibrate_noise(FakeModel(), make_batches(0), n_samples=50, seed=0)
    moment = np.sqrt(np.square(gauss.residual_rms) - np.square(gauss.path_std))
    assert (moment <= np.asarray(gauss.std) * (1 + 1e-9)).all()
    assert (np.asarray(gauss.std) <= 1.03 * moment).all()
    patchy = calibrate_noise(PatchySpread(), make_batches(0), n_samples=50, seed=0)
    moment = np.sqrt(np.maximum(np.square(patchy.residual_rms) - np.square(patchy.path_std), 0))
    assert (moment < 0.02).all() and patchy.std == patchy.coverage_std
    plain = predictive_coverage(PatchySpread(), make_batches(1), {"moment": 0.01,
                                                                   "floor": patchy.std},
                                level=0.9, n_samples=50, seed=0)
    assert plain["moment"] < 0.6 and 0.87 <= plain["floor"] <= 0.93
    loaded = NoiseCalibration.from_json({k: v for k, v in gauss.to_json().items()
                                         if k != "coverage_std"})
    assert loaded.coverage_std == []  # an older file reads


def test_the_floors_sample_is_uniform_and_keeps_in_span_points_apart():
    """At most ``size`` points per channel, a uniform sample whatever the batch they came in;
    the points inside their channel's span kept apart (a few dozen of them among thousands
    past it were crowded out of one shared sample), the others dropped once any turns up."""
    from latentode.forecast.calibration import _Reservoir

    sample = _Reservoir(channels=2, samples=3, seed=0, size=500)
    for batch in range(4):  # channel 0: 1000 points per batch, each tagged with its batch
        dev = torch.full((3, 1000), float(batch))
        sample.add(dev, np.zeros(1000, dtype=np.int64), np.zeros(1000, dtype=bool))
    outside = sample.devs(0, inside_only=False)
    assert outside.shape == (3, 500)
    shares = np.bincount(outside[0].astype(int), minlength=4) / 500
    assert np.abs(shares - 0.25).max() < 0.07  # each batch about a quarter
    assert sample.devs(1, inside_only=False).shape == (3, 0)
    inside = np.zeros(1000, dtype=bool)
    inside[:30] = True  # 30 points inside the span among 970 past it
    sample.add(torch.ones(3, 1000), np.zeros(1000, dtype=np.int64), inside)
    assert sample.devs(0, inside_only=True).shape == (3, 30)  # every one of them
    assert sample.devs(0, inside_only=False).shape == (3, 0)  # no longer needed
    wide = _Reservoir(channels=1000, samples=100, seed=0)
    assert wide.size == 200  # wide data: a budget for all channels


def test_a_factor_per_series_covers_series_of_unequal_noise_where_one_noise_cannot():
    """Series differ in how well the model fits them (here: their noise, 0.1 or 0.5 per
    point): one noise for all covers the quiet ones ~100% and the loud ones far below 0.9.
    Scaled per series by its residual at the points the encoder saw, both cover ~0.9, and the
    noise recorded is that of the median series (docs/results.md, a factor per series)."""
    from latentode.forecast.calibration import seen_residual

    def batches(seed: int, noise: float, n: int = 2) -> list[Batch]:
        return make_batches(seed, n_batches=n, series=20, noise=(noise, noise))

    model = FakeModel(spread=0.0)
    calibration = batches(0, 0.1) + batches(1, 0.5)
    one = calibrate_noise(model, calibration, n_samples=20, seed=0)
    each = calibrate_noise(model, calibration, n_samples=20, seed=0, per_series=True)
    assert one.series_kappa is None and not one.series_mbar
    assert each.series_kappa == 4.0 and len(each.series_mbar) == 2
    quiet, loud = batches(2, 0.1), batches(3, 0.5)
    cover = {name: [predictive_coverage(model, part, {"c": cal}, n_samples=50, seed=0)["c"]
                    for part in (quiet, loud)] for name, cal in (("one", one), ("each", each))}
    assert cover["one"][0] > 0.99 and cover["one"][1] < 0.75  # one noise: wrong for both
    # nearer 0.9 for both (the shrinkage toward the median keeps some of the gap: two
    # noises 5x apart, 20 series each, are the hardest case for it)
    assert cover["each"][0] == pytest.approx(0.9, abs=0.03)
    assert 0.78 < cover["each"][1] < 0.9 and cover["each"][1] > cover["one"][1] + 0.04
    # the factor itself: shrunk toward 1 by kappa points, 1 without seen points or a median
    m, n = np.array([[4 * each.series_mbar[0], 0.0]]), np.array([[4.0, 0.0]])
    np.testing.assert_allclose(each.series_factor(m, n), [[(4 * 4 + 4) / 8, 1.0]])
    assert np.all(one.series_factor(m, n) == 1.0)
    # the in-series std only: past the span (a forecast) the lead curve is left as it was
    lead = NoiseCalibration(std=[1.0], obs_std=0.0, lead_times=[1.0, 2.0],
                            lead_std=[[2.0], [3.0]], lead_count=[50, 50])
    got = lead.std_at(np.array([0.0, 1.5]), factor=np.array([4.0]))
    np.testing.assert_allclose(got[:, 0], [2.0, np.sqrt(6.5)])
    # the seen-point residual a forecaster reads: the paths' mean against the seen values
    scored = Scored(
        pred=torch.zeros(3, 1, 2, 1), values=torch.tensor([[[1.0], [3.0]]]),
        target=torch.ones(1, 2, 1, dtype=torch.bool),
        encoder=torch.tensor([[[True], [False]]]), leads=torch.zeros(1, 2, 1),
        history=torch.tensor([1]))
    assert [a.tolist() for a in seen_residual(scored)] == [[[1.0]], [[1.0]]]


def test_the_series_factor_is_bounded_and_version_2_files_load():
    """An unbounded factor scaled a std by 1e150 where the calibration series' median residual
    was near 0; a NaN residual shrank the noise; calibration files of version 2 (before the
    factor) load without one."""
    cal = NoiseCalibration(std=[1.0], obs_std=0.0, series_kappa=4.0, series_mbar=[1e-300])
    assert cal.series_factor(np.array([1.0]), np.array([5.0]))[0] == 16.0
    cal = NoiseCalibration(std=[1.0], obs_std=0.0, series_kappa=4.0, series_mbar=[1.0])
    assert cal.series_factor(np.array([0.0]), np.array([500.0]))[0] == 1 / 16
    assert cal.series_factor(np.array([np.nan]), np.array([3.0]))[0] == 1.0
    old = {**NoiseCalibration(std=[1.0], obs_std=0.0).to_json(), "version": 2}
    for key in ("series_kappa", "series_mbar"):
        old.pop(key)
    assert NoiseCalibration.from_json(old).series_kappa is None
