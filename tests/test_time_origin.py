"""``time_origin``: where each latent path starts. ``"batch"`` keeps the data's clock (the
paper's protocol), ``"series"`` moves each series to start at 0 so that series recorded on one
absolute clock (ICU stays admitted on different days) are not started days before they began.

The shift is only sound because every model is autonomous (nothing reads the clock's zero):
that is tested here for every encoder and baseline, beside the batch bookkeeping, the warning
that points users to the option, plots on each series' own clock and the forecaster.
"""

from __future__ import annotations

import functools
import warnings

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from test_models import ENCODERS as LATENT_ENCODERS  # every encoder variant

from latentode.data import Extrapolation, Interpolation, LatentODEDataModule, from_dataframe
from latentode.data.batch import Collator, collate
from latentode.forecast.calibration import calibration_batches
from latentode.lit.plots import plot_batch
from latentode.models import GRUDT, ODERNN, RNNVAE, LatentODE

matplotlib.use("Agg")


def stays(n: int = 12, seed: int = 0, days_apart: float = 3.0) -> pd.DataFrame:
    """ICU-like stays of up to 48 h on one absolute clock, admissions ``days_apart`` apart."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n):
        hours = np.sort(rng.uniform(0, 48, int(rng.integers(4, 12))))
        hours[0] = 0.0
        admitted = pd.Timestamp("2024-03-01") + pd.Timedelta(days=days_apart * p)
        for h in hours:
            rows.append({"patient": f"p{p}", "time": admitted + pd.Timedelta(hours=float(h)),
                         "hr": 70 + 5 * np.sin(h / 6) + rng.normal(),
                         "sbp": 120 + rng.normal() if rng.random() < 0.7 else np.nan})
    return pd.DataFrame(rows)


def test_series_origin_puts_every_series_at_zero_on_its_own_clock():
    ds = from_dataframe(stays(), id_col="patient", time_col="time")
    assert ds.time_transform.scale < 48.0 + 1e-9  # the longest stay sets the unit, not 33 days
    idx = np.array([5, 0, 9])
    plain = collate(ds, idx)
    moved = collate(ds, idx, origin="series")
    assert plain.origin is None and float(plain.times[0]) == pytest.approx(0.0)
    firsts = ds.times[ds.offsets[idx]]
    np.testing.assert_allclose(moved.origin.numpy(), firsts, rtol=1e-6)
    assert float(moved.times[0]) == 0.0
    for row, i in enumerate(idx):
        lo, hi = ds.offsets[i], ds.offsets[i + 1]
        here = moved.mask[row].any(-1).numpy()
        # the row's points sit at its own times minus its first, values unchanged
        np.testing.assert_allclose(moved.times.numpy()[here], ds.times[lo:hi] - firsts[row],
                                   atol=1e-6)
        np.testing.assert_array_equal(moved.values[row][here].numpy(),
                                      np.nan_to_num(ds.values[lo:hi]).astype(np.float32))
        assert float(moved.times.numpy()[here][0]) == 0.0
    # the union is over the moved times: far shorter than the calendar the plain batch spans
    assert float(moved.times[-1]) <= 1.0 + 1e-6 < float(plain.times[-1])


def test_tasks_still_cut_on_the_data_clock():
    """``Extrapolation(cut_time=...)`` is in the user's units on the data's clock: the masks are
    the same with either origin, only the grid moves."""
    df = stays(n=6, days_apart=0.5)  # every stay begins before the cut
    ds = from_dataframe(df, id_col="patient", time_col="time")
    cut = pd.Timestamp("2024-03-03 18:00")
    task = Extrapolation(cut_time=cut)
    idx = np.arange(len(ds))
    counts = []
    for origin in ("batch", "series"):
        batch = collate(ds, idx, task, np.random.default_rng(0), origin=origin)
        times = batch.times.numpy()[None, :] + (0.0 if batch.origin is None
                                                 else batch.origin.numpy()[:, None])
        user = ds.time_transform.to_user(times.astype(np.float64).ravel()).reshape(times.shape)
        seen = batch.encoder_mask.any(-1).numpy()
        later = batch.target_mask.any(-1).numpy()
        user = np.broadcast_to(user, seen.shape)
        counts.append((int(batch.encoder_mask.sum()), int(batch.target_mask.sum())))
        margin = np.timedelta64(1, "s")  # float32 times: well under a second at this scale
        assert (user[seen] <= np.datetime64(cut) + margin).all()
        assert (user[later] > np.datetime64(cut) - margin).all()
        assert seen.any() and later.any()
    assert counts[0] == counts[1]


def test_unknown_origin_is_refused():
    ds = from_dataframe(stays(n=3), id_col="patient", time_col="time")
    for make in (lambda: collate(ds, [0], origin="first"),
                 lambda: Collator(ds, origin="first"),
                 lambda: LatentODEDataModule(ds, time_origin="first")):
        with pytest.raises(ValueError, match=r"time_origin must be one of.*'series' starts"):
            make()


def test_datamodule_warns_about_an_absolute_clock_and_series_origin_fixes_it():
    ds = from_dataframe(stays(), id_col="patient", time_col="time")
    with pytest.warns(UserWarning, match="data.time_origin=series"):
        LatentODEDataModule(ds, Interpolation(fraction=0.5), batch_size=4).setup()
    dm = LatentODEDataModule(ds, Interpolation(fraction=0.5), batch_size=4,
                             time_origin="series")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dm.setup()
    calibration, _ = calibration_batches(dm)
    for batch in (next(iter(dm.train_dataloader())), next(iter(dm.val_dataloader())),
                  next(iter(dm.test_dataloader())), next(calibration)):
        assert batch.origin is not None and float(batch.times[0]) == 0.0
    # stays that share a zero (hours since admission) get no warning with "batch"
    since = stays().assign(time=lambda d: (d.time - d.groupby("patient").time.transform("min"))
                           / pd.Timedelta(hours=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LatentODEDataModule(from_dataframe(since, id_col="patient", time_col="time"),
                            batch_size=4).setup()


BASELINES = {
    "odernn": lambda: ODERNN(3, latents=8, ode_units=16, dec_units=16, obs_std=0.1),
    "gru_dt": lambda: GRUDT(3, latents=8, dec_units=16, obs_std=0.1),
    "rnn_vae": lambda: RNNVAE(3, latents=4, enc_hidden=8, z0_units=16, hidden=8,
                              dec_units=16, obs_std=0.1),
}
MODELS = {f"latent_ode-{k}": functools.partial(
    lambda make: LatentODE(3, latents=4, encoder=make(3, 4, hidden=8, z0_units=16),
                           gen_units=16, obs_std=0.1, poisson=True,
                           solver={"rtol": 1e-8, "atol": 1e-9}), make)
    for k, make in LATENT_ENCODERS.items()} | BASELINES


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_models_are_autonomous_so_moving_the_clock_changes_nothing(kind):
    """What ``time_origin="series"`` relies on: the same data on a clock moved by 3.7 gives the
    same predictions, posterior and rates (float64)."""
    torch.manual_seed(0)
    model = MODELS[kind]().double().eval()
    gen = torch.Generator().manual_seed(1)
    times = torch.sort(torch.rand(7, generator=gen, dtype=torch.float64)).values * 2
    values = torch.randn(4, 7, 3, generator=gen, dtype=torch.float64)
    mask = torch.rand(4, 7, 3, generator=gen) < 0.6
    mask[:, 0] = True
    pred_times = torch.cat([times, times[-1:] + 0.5])
    outs = []
    for shift in (0.0, 3.7):
        torch.manual_seed(7)
        with torch.no_grad():
            outs.append(model(times + shift, values, mask, pred_times=pred_times + shift))
    a, b = outs
    for name in ("pred", "z0_mean", "z0_std", "log_rate", "cum_rate"):
        x, y = getattr(a, name, None), getattr(b, name, None)
        if x is not None:
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7, msg=f"{kind}: {name}")


def test_plots_put_each_series_on_its_own_dates():
    ds = from_dataframe(stays(n=4), id_col="patient", time_col="time")
    batch = collate(ds, np.arange(3), origin="series")
    grid = torch.linspace(0, float(batch.times[-1]), 20)
    paths = torch.zeros(2, 3, 20, ds.n_channels)
    fig = plot_batch(batch, grid, paths, time_transform=ds.time_transform,
                     channels=ds.channels)
    second = np.timedelta64(1, "s")
    for row in range(3):
        first = np.datetime64(ds.raw_times[ds.offsets[row]], "ns")
        last = np.datetime64(ds.raw_times[ds.offsets[row + 1] - 1], "ns")
        lines = fig.axes[row * ds.n_channels].get_lines()
        x = np.asarray(lines[0].get_xdata()).astype("datetime64[ns]")
        assert abs(x[0] - first) < second, row
        assert x[-1] <= last + second, row  # the curve stops at the series' own end
    matplotlib.pyplot.close(fig)
