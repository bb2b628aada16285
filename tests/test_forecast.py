"""LatentODEForecaster: fit on a DataFrame, predict / impute / sample / plot, save and load,
the errors users meet, the calibrated predictive noise and the coverage of posterior predictive
intervals.

Two tiny models are trained once per module (numeric times, wide; datetimes, tidy): the tests
check shapes, units, types and bookkeeping, not forecast quality.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import tracemalloc
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from latentode import LatentODEForecaster
from latentode.forecast import interval_coverage, interval_hits
from latentode.forecast.config import override_list
from latentode.forecast.draw import batch_mode

TINY = {
    "model.latents": 4,
    "model.gen_units": 16,
    "model.encoder.hidden": 8,
    "model.encoder.z0_units": 16,
    "model.encoder.ode_units": 16,
    "data.batch_size": 10,
    "data.task.count": None,
    "data.task.fraction": 0.5,
    "callbacks.progress_bar.refresh_rate": 0,
    "+trainer.enable_model_summary": False,
    "trainer.log_every_n_steps": 1,
}
OFFSET = 100.0


def make_frame(n_series: int = 30, n_points: int = 25, seed: int = 0,
               offset: float = OFFSET) -> pd.DataFrame:
    """Noisy sines and cosines at irregular times with ~20% of the values missing (wide)."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_series):
        t = np.sort(rng.uniform(0, 5, n_points))
        f, phase = rng.uniform(0.4, 0.8), rng.uniform(0, 1)
        x = np.sin(2 * np.pi * f * t + phase) + 0.05 * rng.normal(size=n_points) + offset
        y = np.cos(2 * np.pi * f * t + phase) + 0.05 * rng.normal(size=n_points) + offset
        x[rng.random(n_points) < 0.2] = np.nan
        y[rng.random(n_points) < 0.2] = np.nan
        x[0] = offset  # every series observed at its first time
        rows += [(f"s{s}", ti, xi, yi) for ti, xi, yi in zip(t, x, y, strict=True)]
    return pd.DataFrame(rows, columns=["series_id", "time", "x", "y"])


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return make_frame()


@pytest.fixture(scope="module")
def fitted(data) -> LatentODEForecaster:
    torch.set_num_threads(1)
    return LatentODEForecaster({**TINY, "trainer.max_epochs": 2}).fit(data)


@pytest.fixture(scope="module")
def dated(tmp_path_factory):
    """A model on tidy data with time-zone-aware datetimes, validation series and a run dir."""
    torch.set_num_threads(1)
    wide = make_frame(n_series=10, n_points=15, seed=1, offset=0.0)
    wide["time"] = pd.Timestamp("2024-01-01", tz="Europe/Berlin") + pd.to_timedelta(
        wide["time"], unit="D")
    tidy = wide.melt(id_vars=["series_id", "time"], var_name="var", value_name="val").dropna()
    out = tmp_path_factory.mktemp("dated_run")
    overrides = [f"{k}={'null' if v is None else str(v).lower() if isinstance(v, bool) else v}"
                 for k, v in {**TINY, "trainer.max_epochs": 1}.items()]
    fc = LatentODEForecaster(overrides).fit(
        tidy[~tidy.series_id.isin(["s8", "s9"])], channel_col="var", value_col="val",
        val_df=tidy[tidy.series_id.isin(["s8", "s9"])], output_dir=out,
        time_unit="D", time_scale=7)  # one model time unit per week
    return fc, tidy, out


# ------------------------------------------------------------------------------------ predict
def test_a_history_far_outside_the_training_values_is_warned_about(fitted, data):
    """A history in other units (x 1e6: a unit mix-up) gave ordinary-looking forecasts without
    a word; predict, sample and impute now name the channel, series, value and the training
    range (in data units)."""
    history = data[data.series_id.isin(["s0", "s1"])]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the training data's own values: no warning
        fitted.predict(data, horizon=1.0, n=2, num_samples=5)
    mixed_up = history.assign(y=history["y"] * 1e6)
    first = re.escape(f"{mixed_up['y'].dropna().iloc[0]:.4g}")
    spec = fitted.spec
    low, high = np.asarray(spec.value_range[1]) * spec.scale[1] + spec.mean[1]
    assert data["y"].min() <= low + 1e-9 and high <= data["y"].max() + 1e-9  # training values
    said = (rf"channel 'y' of series 's0' holds {first}, far outside the training values "
            rf"\({re.escape(f'{low:.4g}')} to {re.escape(f'{high:.4g}')}\); \d+ such "
            r"value\(s\) in channel\(s\) \['y'\].*in the training data's units\?")
    for call in (lambda: fitted.predict(mixed_up, horizon=1.0, n=2, num_samples=5),
                 lambda: fitted.sample(mixed_up, horizon=1.0, n=2, num_samples=2),
                 lambda: fitted.impute(mixed_up, num_samples=2)):
        with pytest.warns(UserWarning, match=said) as seen:
            call()
        assert [w.filename for w in seen if "far outside" in str(w.message)] == [
            __file__]  # pointed at the caller's line


def test_the_far_from_training_check_on_spikes_log_channels_and_old_forecasters():
    """Judged against the training range, not training SDs: a rare spike the model was trained
    on (an event channel: 0, once 1, at 110 SDs) warned as never seen; glucose given in mg/dL
    to a model of mmol/L on a log channel (x18, and even x1e6) did not warn at all, nor mmol/L
    to a linear model of mg/dL."""
    from latentode.data import TimeTransform, from_dataframe
    from latentode.forecast.forecaster import _warn_far_from_training
    from latentode.forecast.spec import DataSpec

    def warned(values, **spec):
        ds = from_dataframe(pd.DataFrame({"series_id": 1, "time": np.arange(len(values)),
                                          "x": np.asarray(values, dtype=float)}))
        made = DataSpec("series_id", "time", ["x"], TimeTransform("numeric", 0.0, 1.0), **spec)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            _warn_far_from_training(ds, made, made.to_model_values(ds.values))
        return [str(w.message) for w in seen]

    n = 12_000  # event channel: 0 everywhere, 1 once
    mean, sd = 1 / n, np.sqrt((1 / n) * (1 - 1 / n))
    event = {"mean": [mean], "scale": [sd], "value_range": [[-mean / sd, (1 - mean) / sd]]}
    assert not warned([0.0, 1.0, 0.0], **event)
    assert warned([0.0, 5.0], **event)  # 5: beyond the range by more than half of it
    # glucose, mmol/L on a log scale (log-mean log 6.8, log-sd 0.33, trained on 3.2 to 14)
    log_glucose = {"mean": [np.log(6.8)], "scale": [0.33], "log": [True],
                   "value_range": [[(np.log(3.2) - np.log(6.8)) / 0.33,
                                    (np.log(14.0) - np.log(6.8)) / 0.33]]}
    mmol = np.array([4.0, 6.5, 9.0, 12.0])
    assert not warned(mmol, **log_glucose)
    assert warned(mmol * 18, **log_glucose) and warned(mmol * 1e6, **log_glucose)
    assert warned(mmol / 18, **log_glucose)  # the other way round too, on a log scale
    said = warned(mmol * 18, **log_glucose)[0]
    assert "holds 72, far outside the training values (3.2 to 14)" in said
    # glucose in mg/dL on a linear channel (trained on 40 to 400, mean 120, SD 40): mmol/L
    # (18x smaller) stayed inside the margin (5.5 is -2.9 SDs); now below a quarter of the
    # smallest training value of a positive channel warns. A channel trained on 0 does not.
    mg = {"mean": [120.0], "scale": [40.0], "value_range": [[-2.0, 7.0]]}
    assert not warned([45.0, 90.0, 380.0], **mg)
    said = warned(mmol, **mg)
    assert said and "holds 4, far outside the training values (40 to 400)" in said[0]
    assert not warned([0.0, 0.5], mean=[1.0], scale=[1.0], value_range=[[-1.0, 9.0]])
    # not: one low reading among ordinary ones, zeros and negatives (degC trained on 1 to 30),
    # a 0 the model was trained on that comes back from the scaler as ~1e-14
    celsius = {"mean": [15.0], "scale": [7.0], "value_range": [[-2.0, 15.0 / 7.0]]}
    assert not warned([12.0, 0.2, 14.0], **celsius) and not warned([-1.0, 0.0], **celsius)
    rounded = {"mean": [3.0], "scale": [7.0], "value_range": [[(2.842e-14 - 3.0) / 7.0, 10.0]]}
    assert not warned([0.0, 0.0], **rounded)
    # unscaled models are checked on their own units; old forecasters (no range) are not
    assert warned([1e6], value_range=[[0.0, 10.0]]) and not warned([1e6])


def test_predict_columns_units_and_quantile_order(fitted, data):
    pred = fitted.predict(data, horizon=1.0, n=5, num_samples=50)
    assert list(pred.columns) == ["series_id", "time", "channel", "mean", "q0.05", "q0.5",
                                  "q0.95"]
    assert len(pred) == 30 * 5 * 2
    assert set(pred["channel"]) == {"x", "y"}
    assert pred["series_id"].dtype == data["series_id"].dtype
    # original units: the data sit near 100, so do the predictions
    assert np.all(np.abs(pred["mean"] - OFFSET) < 3.0)
    assert np.all(pred["q0.05"] <= pred["q0.5"]) and np.all(pred["q0.5"] <= pred["q0.95"])
    assert np.all(pred["q0.05"] < pred["q0.95"])


def test_forecast_grid_starts_after_each_last_observation(fitted, data):
    pred = fitted.predict(data, horizon=1.0, n=4, num_samples=5)
    last = data.dropna(subset=["x", "y"], how="all").groupby("series_id")["time"].max()
    for key, rows in pred.groupby("series_id"):
        times = np.unique(rows["time"])
        np.testing.assert_allclose(times, last[key] + np.array([0.25, 0.5, 0.75, 1.0]))
    by_freq = fitted.predict(data, horizon=1.0, freq=0.3, num_samples=5)
    assert by_freq.groupby("series_id")["time"].nunique().eq(3).all()
    by_n = fitted.predict(data, freq=0.5, n=2, num_samples=5)
    assert by_n.groupby("series_id")["time"].nunique().eq(2).all()


def test_forecast_grid_times_are_written_without_float_noise():
    from latentode.forecast.requests import forecast_grid

    assert 0.7 + 0.1 * 1 != 0.8  # the plain float sum carries noise into a CSV
    assert forecast_grid(0.7, "numeric", None, 0.1, 3).tolist() == [0.8, 0.9, 1.0]
    assert forecast_grid(1.1, "numeric", 0.3, 0.1, None).tolist() == [1.2, 1.3, 1.4]
    assert forecast_grid(2.905, "numeric", 1.0, None, 4).tolist() == [3.155, 3.405, 3.655, 3.905]


def test_a_numpy_timedelta_horizon_is_a_duration():
    """np.timedelta64 is an np.integer too: it was refused as a bare number."""
    from latentode.forecast.requests import forecast_grid

    last = pd.Timestamp("2024-01-01")
    assert len(forecast_grid(last, "datetime", np.timedelta64(2, "D"), "D", None)) == 2


def test_daily_grid_keeps_its_days_across_a_clock_change():
    """horizon="7D", freq="D" on a zoned clock gives 7 days also in the week the clocks go
    back (the 7th day, 169 h ahead, fell past 168 h and was dropped) or forward."""
    from latentode.forecast.requests import forecast_grid

    for last in ("2024-10-20 06:00", "2024-03-25 06:00", "2024-06-10 06:00"):
        grid = forecast_grid(pd.Timestamp(last, tz="Europe/Berlin"), "datetime", "7D", "D", None)
        assert len(grid) == 7 and (grid.hour == 6).all(), grid
    # hours are elapsed time: "12h" of "6h" steps across the spring change is 2 steps (was 1)
    night = pd.Timestamp("2024-03-30 22:00", tz="Europe/Berlin")
    grid = forecast_grid(night, "datetime", "12h", "6h", None)
    assert list(grid - night) == [pd.Timedelta("6h"), pd.Timedelta("12h")], grid
    # and so are hourly steps over whole days: "24h" or "1D" of "6h" steps are 4 steps, as
    # with n=4 (they were 3 across the spring change: a review)
    for horizon, freq in (("24h", "6h"), ("1D", "6h"), ("2D", "12h")):
        grid = forecast_grid(night, "datetime", horizon, freq, None)
        assert grid[-1] - night == pd.Timedelta(horizon) and len(grid) == 4, grid
    assert (forecast_grid(night, "datetime", "1D", None, 4) - night)[-1] == pd.Timedelta("24h")
    # a daily step on a time the clocks skip or show twice raised pandas' "nonexistent time
    # ... Try using the 'nonexistent' argument" (midnight data in Santiago; 02:30 in New York):
    # read as just after the gap, and as the later (standard-time) one (a review)
    grid = forecast_grid(pd.Timestamp("2025-09-05", tz="America/Santiago"), "datetime", "7D",
                         "D", None)
    assert len(grid) == 7 and str(grid[1]) == "2025-09-07 01:00:00-03:00", grid
    grid = forecast_grid(pd.Timestamp("2025-03-08 02:30", tz="America/New_York"), "datetime",
                         None, "D", 2)
    assert [str(t) for t in grid] == ["2025-03-09 03:00:00-04:00", "2025-03-10 02:30:00-04:00"]
    # hourly steps given as a DateOffset count elapsed time too: n=5 gives 5 (were 4: two wall
    # times in the skipped hour merged; a review)
    grid = forecast_grid(pd.Timestamp("2025-03-29 23:00", tz="Europe/Berlin"), "datetime", None,
                         pd.DateOffset(hours=1), 5)
    assert len(grid) == 5 and (grid.to_series().diff().dropna() == pd.Timedelta("1h")).all()
    fall = pd.Timestamp("2025-11-01 01:30", tz="America/New_York")
    grid = forecast_grid(fall, "datetime", "2D", "D", None)
    assert [str(t) for t in grid] == ["2025-11-02 01:30:00-05:00", "2025-11-03 01:30:00-05:00"]


def test_naive_times_on_a_clock_change_are_read_alike_and_said():
    """A naive times= value the clocks skipped or repeat raised pandas' "nonexistent time ...
    Try using the 'nonexistent' argument" (an argument no caller can pass), while the same time
    in a history was moved to after the gap unsaid. Both paths read them alike now and warn."""
    from latentode.data.dataset import TimeTransform
    from latentode.forecast.requests import align_tz

    zone = "America/New_York"
    fitted = TimeTransform.fit(pd.Series(pd.date_range("2024-03-08", periods=4, freq="D",
                                                       tz=zone)))
    asked = pd.DatetimeIndex(["2024-03-10 02:30", "2024-11-03 01:30", "2024-06-01 12:00"])
    with pytest.warns(UserWarning, match=r"naive times on a daylight-saving change in "
                      r"America/New_York \(first: 2024-03-10 02:30:00\): 1 the clocks skipped, "
                      r"read as just after the gap; 1 the clocks show twice, read as the later"):
        aligned = align_tz(asked, zone)
    assert list(aligned) == [pd.Timestamp("2024-03-10 03:00", tz=zone),
                             pd.Timestamp("2024-11-03 01:30-05:00").tz_convert(zone),
                             pd.Timestamp("2024-06-01 12:00", tz=zone)]
    with pytest.warns(UserWarning, match="daylight-saving change"):
        history = fitted._to_number(pd.Series(asked))
    assert np.allclose(history, fitted._to_number(pd.Series(aligned)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ordinary naive times: nothing said
        align_tz(asked[2:], zone)
        fitted._to_number(pd.Series(asked[2:]))
        assert fitted.local("2024-06-01 12:00") == asked[2].tz_localize(zone)


def test_integer_channel_codes_stay_integers_for_channels_a_frame_lacks():
    """Tidy data with integer item codes: a frame with no row of one trained item (a patient
    without that lab) got that item back as the text '202' beside the integer 101, so
    filtering on 202 found nothing, in predict and in impute's added rows."""
    wide = make_frame(n_series=12, n_points=10, seed=1, offset=0.0)
    tidy = wide.rename(columns={"x": 101, "y": 202}).melt(
        id_vars=["series_id", "time"], var_name="item", value_name="val").dropna()
    tidy["item"] = tidy["item"].astype(int)
    fc = LatentODEForecaster({**TINY, "trainer.max_epochs": 1}).fit(
        tidy, channel_col="item", value_col="val")
    lacking = tidy[(tidy.series_id == "s1") & (tidy.item == 101)]
    pred = fc.predict(lacking, horizon=1.0, n=1, quantiles=None)
    assert pred["item"].dtype == np.int64 and sorted(pred["item"]) == [101, 202]
    filled = fc.impute(lacking)
    assert filled["item"].dtype == np.int64 and (filled["item"] == 202).sum() > 0


def test_impute_fills_nullable_integer_columns(fitted, data):
    """Integer readings with pd.NA gaps (convert_dtypes, nullable CSV readers): impute
    raised a TypeError putting the float fill into the Int64 column."""
    frame = data[data.series_id.isin(["s0", "s1"])].copy()
    frame["x"] = frame["x"].round().astype("Int64")
    filled = fitted.impute(frame.convert_dtypes())
    assert filled["x"].notna().all() and str(filled["x"].dtype) == "Float64"
    observed = frame["x"].notna().to_numpy()
    assert (filled["x"].to_numpy()[observed] == frame["x"].to_numpy()[observed]).all()


def test_predictions_at_times_not_in_the_data(fitted, data):
    times = [0.123456, 2.7182818, 6.5]  # between observations and beyond them
    assert not data["time"].isin(times).any()
    pred = fitted.predict(data, times, num_samples=20)
    assert len(pred) == 30 * 3 * 2
    assert np.isfinite(pred[["mean", "q0.05", "q0.95"]].to_numpy()).all()
    expected = [t for t in times for _ in range(2)]  # one row per channel, in the asked order
    assert all(rows["time"].tolist() == expected for _, rows in pred.groupby("series_id"))


def test_times_before_the_first_observation_are_supported(fitted, data):
    first = data.groupby("series_id")["time"].min()
    pred = fitted.predict(data, times=[-1.0, 0.5], num_samples=20)
    assert (pred["time"].min() < first.min()) and np.isfinite(pred["mean"]).all()


@pytest.mark.parametrize("batch_size", [1, 64])
def test_an_earlier_time_asked_changes_no_other_answer(fitted, data, batch_size):
    """Times before a series' first observation are integrated backwards from its z0: asking
    one does not move the answers at the other times (it moved z0 back to it before, and every
    answer with it), and the sample paths run continuously through the first observation."""
    part = data[data.series_id.isin(["s0", "s1"])]
    first = float(part[part.series_id == "s0"]["time"].min())
    later = [first + 0.3, first + 2.0, part["time"].max() + 0.5]
    kwargs = {"num_samples": 30, "seed": 2, "batch_size": batch_size}
    plain = fitted.predict(part, times=later, **kwargs)
    more = fitted.predict(part, times=[first - 2.0, first - 0.5, *later], **kwargs)
    kept = more[more.time.isin(later)].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, plain)
    assert np.isfinite(more.drop(columns=["series_id", "channel"]).to_numpy(float)).all()
    near = fitted.sample(part[part.series_id == "s0"], times=[first - 1e-6, first + 1e-6],
                         num_samples=5, seed=2)
    pivot = near.pivot_table(index=["sample", "channel"], columns="time", values="value")
    np.testing.assert_allclose(pivot.iloc[:, 0], pivot.iloc[:, 1], atol=1e-3)


def test_per_series_times_mapping_and_independence_of_other_series(fitted, data):
    pred = fitted.predict(data, times={"s3": [1.0, 2.0], "s7": [6.0]}, num_samples=20)
    assert sorted(pred["series_id"].unique()) == ["s3", "s7"]
    assert pred.groupby("series_id").size().to_dict() == {"s3": 4, "s7": 2}
    alone = fitted.predict(data[data.series_id == "s7"], times=[6.0], num_samples=20)
    pd.testing.assert_frame_equal(pred[pred.series_id == "s7"].reset_index(drop=True), alone)


def test_a_series_on_a_later_clock_gets_the_same_forecast(fitted, data):
    """Each series is answered on its own clock from its first time (the models are
    autonomous): the same series recorded 10^7 time units later is forecast the same, with no
    precision lost to float32 model times far from the training data's zero (on that clock
    the means moved by 0.016 before, values ~100 here)."""
    part = data[data.series_id.isin(["s0", "s1"])]
    later = part.assign(time=part["time"] + 1e7)
    a = fitted.predict(part, horizon=1.0, n=3, num_samples=20, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "asked far beyond the training spans" is not the point
        b = fitted.predict(later, horizon=1.0, n=3, num_samples=20, seed=3)
    np.testing.assert_allclose(b["time"] - 1e7, a["time"], atol=1e-8)
    for col in ("mean", "q0.05", "q0.95"):
        np.testing.assert_allclose(b[col], a[col], rtol=0, atol=1e-5)


def test_same_seed_same_frame_other_seed_other_frame(fitted, data):
    part = data[data.series_id.isin(["s0", "s1"])]
    a = fitted.predict(part, horizon=1.0, n=3, num_samples=20, seed=3)
    pd.testing.assert_frame_equal(a, fitted.predict(part, horizon=1.0, n=3, num_samples=20,
                                                    seed=3))
    b = fitted.predict(part, horizon=1.0, n=3, num_samples=20, seed=4)
    assert not np.allclose(a["q0.95"], b["q0.95"])


def test_sample_paths_match_predict_mean(fitted, data):
    part = data[data.series_id.isin(["s0", "s1"])]
    paths = fitted.sample(part, times=[1.0, 5.5], num_samples=7, seed=2)
    assert list(paths.columns) == ["series_id", "time", "channel", "sample", "value"]
    assert len(paths) == 2 * 7 * 2 * 2 and sorted(paths["sample"].unique()) == list(range(7))
    pred = fitted.predict(part, times=[1.0, 5.5], num_samples=7, seed=2)
    mean = paths.groupby(["series_id", "time", "channel"], sort=False)["value"].mean()
    np.testing.assert_allclose(mean.to_numpy(), pred["mean"].to_numpy(), rtol=1e-12)


def test_z0_at_first_target_places_z0_at_the_first_requested_time(fitted, data):
    """A latent ODE trained with ``z0_at="first_target"`` (the paper's hopper presets) is asked
    with ``z0`` at the first requested time, as in its training: the sampled paths there are
    the decoded ``z0`` samples, whichever that time is; by default ``z0`` sits at the start of
    the history and the ODE carries it to each time."""
    part = data[data.series_id == "s0"]

    def first_values(forecaster, t):
        paths = forecaster.sample(part, times=[t], num_samples=5, seed=3)
        return paths.sort_values(["channel", "sample"])["value"].to_numpy()

    assert not np.allclose(first_values(fitted, 5.5), first_values(fitted, 7.0))
    fitted.model.z0_at = "first_target"
    try:
        np.testing.assert_allclose(first_values(fitted, 5.5), first_values(fitted, 7.0),
                                   rtol=1e-12)
        # in a batch, each series' path starts at its own first requested time too
        asked = {"s0": [5.5, 6.0], "s1": [7.0, 7.5], "s2": [-1.0, 3.0]}
        together = fitted.predict(data, times=asked, num_samples=5, seed=3)
        alone = fitted.predict(data, times=asked, num_samples=5, seed=3, batch_size=1)
        np.testing.assert_allclose(together["mean"], alone["mean"], rtol=0, atol=2e-3)
    finally:
        fitted.model.z0_at = "start"


# ------------------------------------------------------------------------------------- impute
def test_impute_fills_every_gap_and_leaves_observations_alone(fitted, data):
    shuffled = data.sample(frac=1.0, random_state=0)  # any row order and index
    filled = fitted.impute(shuffled, quantiles=[0.1, 0.9], num_samples=20)
    assert filled.index.equals(shuffled.index)
    assert filled[["series_id", "time"]].equals(shuffled[["series_id", "time"]])
    for col in ("x", "y"):
        observed = shuffled[col].notna().to_numpy()
        assert not observed.all() and filled[col].notna().all()
        assert filled[col].dtype == shuffled[col].dtype
        np.testing.assert_array_equal(filled[col].to_numpy()[observed],
                                      shuffled[col].to_numpy()[observed])  # bit for bit
        assert np.all(np.abs(filled[col].to_numpy()[~observed] - OFFSET) < 3.0)
        lo, hi = filled[f"{col}_q0.1"].to_numpy(), filled[f"{col}_q0.9"].to_numpy()
        assert np.isnan(lo[observed]).all() and (lo[~observed] <= hi[~observed]).all()
    assert shuffled["x"].isna().any()  # the input itself is untouched


def test_impute_indicator_marks_filled_and_added_values(fitted, data, dated):
    # tidy frames completed with absent rows gave no way to tell them from observed ones
    part = data[data.series_id.isin(["s0", "s1"])]
    wide = fitted.impute(part, num_samples=5, indicator=True)
    for col in ("x", "y"):
        assert wide[f"{col}_imputed"].dtype == bool
        assert wide[f"{col}_imputed"].equals(part[col].isna())
    fc, tidy, _ = dated
    some = tidy[tidy.series_id == "s1"].reset_index(drop=True)
    some.loc[0, "val"] = np.nan
    out = fc.impute(some, num_samples=5, indicator=True)
    assert out["imputed"].dtype == bool
    assert list(out["imputed"][: len(some)]) == [True] + [False] * (len(some) - 1)
    assert out["imputed"][len(some):].all() and len(out) > len(some)  # the added rows
    assert fc.impute(some, num_samples=5).columns.tolist() == some.columns.tolist()
    with pytest.raises(ValueError, match=r"indicator=True adds column\(s\) \['imputed'\], but "
                                         r"df has \['imputed'\] already"):
        fc.impute(some.assign(imputed=1), indicator=True)


def test_impute_fills_a_repeated_row_with_what_was_measured_then(fitted, dated):
    """Two rows of one (series, time), each with one channel: each row's gap was filled with
    the posterior mean though the other row had measured it (temp 36.8 beside 38.5)."""
    h = pd.DataFrame({"series_id": ["s0"] * 4, "time": [1.0, 2.0, 2.0, 3.0],
                      "x": [100.0, 101.0, np.nan, np.nan], "y": [100.5, np.nan, 99.0, np.nan]})
    with pytest.warns(UserWarning, match="averaged"):
        filled = fitted.impute(h, quantiles=[0.1, 0.9], num_samples=10)
    assert list(filled["x"][:3]) == [100.0, 101.0, 101.0]
    assert list(filled["y"][:3]) == [100.5, 99.0, 99.0]
    assert filled.loc[:2, ["x_q0.1", "y_q0.9"]].isna().all().all()  # measured: no interval
    assert filled.loc[3, ["x", "y", "x_q0.1"]].notna().all()  # a real gap: predicted
    fc, tidy, _ = dated  # tidy: one (series, time, channel) twice, measured on one of its rows
    part = tidy[tidy.series_id == "s1"].reset_index(drop=True)
    twin = part.iloc[[0]].assign(val=np.nan)
    with pytest.warns(UserWarning, match="averaged"):
        filled = fc.impute(pd.concat([part, twin], ignore_index=True), complete=False)
    assert filled["val"].iloc[-1] == part["val"].iloc[0]


def test_asking_far_beyond_the_training_spans_warns(fitted, data):
    span = fitted.spec.train_span
    times = data.groupby("series_id")["time"]
    assert span == pytest.approx((times.max() - times.min()).max())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a horizon inside the training spans: no warning
        fitted.predict(data, horizon=0.5 * span, n=2, num_samples=2)
    far = float(data["time"].max()) + 3 * span
    with pytest.warns(UserWarning, match=r"asked for times up to \d+\.\dx the longest training "
                                         r"series' span past the last observation"):
        fitted.predict(data, times=[far], num_samples=2)
    with pytest.warns(UserWarning, match="never trained that far ahead"):
        fitted.sample(data, times=[far], num_samples=2)
    # before the history: a backward solve, warned alike (it was not)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fitted.predict(data, times=[-0.5 * span], num_samples=2)
    with pytest.warns(UserWarning, match=r"asked for times up to \d+\.\dx the longest training "
                                         r"series' span before the first observation \(series "
                                         r"'s\d+'\): the model was never trained to answer"):
        fitted.predict(data, times=[-3 * span], num_samples=2)
    # counted from the last observation: an all-NaN row at the asked time hid the warning
    empty = pd.DataFrame({"series_id": ["s0"], "time": [far], "x": [np.nan], "y": [np.nan]})
    with pytest.warns(UserWarning, match="never trained that far ahead"):
        fitted.predict(pd.concat([data[data.series_id == "s0"], empty], ignore_index=True),
                       times=[far], num_samples=2)


def test_ignore_cols_keeps_covariates_out_of_the_channels():
    df = make_frame(n_series=8, n_points=10, seed=3)
    df["age"] = df["series_id"].str[1:].astype(float) * 10  # per series: not a time series
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "never change within a series" warning either
        warnings.filterwarnings("ignore", "The predictive noise")  # tiny data: few points
        warnings.filterwarnings("ignore", "too few forecast points")  # no lead curve
        fc = LatentODEForecaster({**TINY, "trainer.max_epochs": 1}).fit(df, ignore_cols=["age"],
                                                                         val_fraction=0)
    assert fc.spec.channels == ["x", "y"]
    pred = fc.predict(df, horizon=1.0, n=2, num_samples=3)  # the column may stay in later frames
    assert set(pred["channel"]) == {"x", "y"}
    with pytest.raises(ValueError, match=r"ignore_cols \['weight'\] are not columns"):
        LatentODEForecaster(TINY).fit(df, ignore_cols=["weight"])


# ---------------------------------------------------------------------------------- save/load
def test_save_load_round_trip_predicts_identically(fitted, data, tmp_path):
    path = fitted.save(tmp_path / "model")
    assert {p.name for p in path.iterdir()} == {"weights.pt", "config.yaml", "transforms.json",
                                                "calibration.json"}
    torch.load(path / "weights.pt", weights_only=True)  # plain tensors only
    again = LatentODEForecaster.load(path)
    assert again.calibration == fitted.calibration
    assert again.spec.train_span == fitted.spec.train_span
    kwargs = {"horizon": 2.0, "n": 3, "num_samples": 30, "seed": 5}
    pd.testing.assert_frame_equal(fitted.predict(data, **kwargs), again.predict(data, **kwargs))
    pd.testing.assert_frame_equal(fitted.impute(data, num_samples=10, quantiles=[0.1]),
                                  again.impute(data, num_samples=10, quantiles=[0.1]))
    # saved without a calibration (an older latentode): the model's obs_std
    (path / "calibration.json").unlink()
    old = LatentODEForecaster.load(path)
    assert old.calibration is None
    pd.testing.assert_frame_equal(old.predict(data, **kwargs),
                                  fitted.predict(data, noise="model", **kwargs))


# ------------------------------------------------------------------------- predictive noise
def test_predictive_noise_is_calibrated(fitted, data):
    cal = fitted.calibration
    # no val_df: 10% of the 30 series were held out of training for it
    assert cal is not None and cal.split == "val" and cal.points == "heldout"
    index = fitted.trainer.datamodule.split_index
    assert (len(index["train"]), len(index["val"])) == (27, 3)
    obs_std = fitted.model.obs_std
    assert len(cal.std) == 2 and min(cal.std) >= obs_std
    np.testing.assert_array_equal(fitted.noise_std(), cal.std)
    np.testing.assert_array_equal(fitted.noise_std("model"), [obs_std, obs_std])
    assert fitted.noise_std(False) is None and fitted.noise_std("none") is None
    part = data[data.series_id.isin(["s0", "s1"])]
    kwargs = {"horizon": 1.0, "n": 3, "num_samples": 50, "seed": 1}
    calibrated = fitted.predict(part, **kwargs)
    pd.testing.assert_frame_equal(calibrated, fitted.predict(part, noise="calibrated", **kwargs))
    model = fitted.predict(part, noise="model", **kwargs)
    paths = fitted.predict(part, noise=False, **kwargs)
    for other in (model, paths):  # the noise changes the quantiles, never the mean
        np.testing.assert_array_equal(other["mean"], calibrated["mean"])

    def width(frame):
        return float((frame["q0.95"] - frame["q0.05"]).mean())

    assert width(calibrated) > width(model) >= width(paths) * 0.9
    with pytest.raises(ValueError, match="noise must be one of"):
        fitted.predict(part, noise="huge", **kwargs)


def test_forecast_intervals_widen_over_the_calibrated_lead_curve(fitted, data):
    """With a lead-time curve the noise grows with the time since the last observation;
    inside the series' span it stays the calibrated one; quantiles are exact for the sampled
    paths (the same paths and noise give the same numbers, no noise draw)."""
    import copy
    import dataclasses

    base = fitted.calibration
    curved = copy.copy(fitted)
    curved.calibration = dataclasses.replace(
        base, lead_times=[1.0, 2.0], lead_std=[[3 * v for v in base.std], [6 * v for v in
                                                                          base.std]],
        lead_count=[100, 100])
    part = data[data.series_id == "s0"]
    last = part["time"].max()
    inside = float(part["time"].iloc[3])
    times = {"s0": [inside, last + 0.5, last + 1.0, last + 2.0, last + 4.0]}
    kwargs = {"num_samples": 50, "seed": 3}
    pred = curved.predict(part, times, **kwargs)
    flat = fitted.predict(part, times, **kwargs)
    for frame in (pred, flat):
        frame["width"] = frame["q0.95"] - frame["q0.05"]
    for channel in ("x", "y"):
        widths = pred[pred.channel == channel]["width"].to_numpy()
        # wider the further ahead along the curve (leads 1, 2); before its first knot (0.5)
        # and beyond its last (4) the noise stays that bin's, and the paths' spread may
        # hardly grow
        assert widths[3] > widths[2] >= widths[1] * (1 - 1e-3), widths
        assert widths[4] >= widths[3] * (1 - 1e-3), widths
        assert widths[-1] > 3 * widths[0]
        own = flat[flat.channel == channel]["width"].to_numpy()
        assert widths[0] == pytest.approx(own[0], rel=1e-9)  # inside: the calibrated noise
    np.testing.assert_array_equal(pred["mean"], flat["mean"])
    pd.testing.assert_frame_equal(pred.drop(columns="width"),
                                  curved.predict(part, times, **kwargs))


def test_noise_curve_reports_the_lead_curve_in_data_units(fitted, dated):
    """noise_curve(): the calibrated noise at lead 0 and at each bin's mean lead, in the data's
    units (values times the scaler's scale; leads times the time scale, Timedeltas for
    datetimes), as predict applies it."""
    import copy
    import dataclasses

    def curved(fc):
        out, base = copy.copy(fc), fc.calibration
        out.calibration = dataclasses.replace(
            base, lead_times=[0.5, 2.0], lead_count=[40, 40],
            lead_std=[[2 * v for v in base.std], [5 * v for v in base.std]])
        return out

    plain = copy.copy(fitted)  # without a curve: the noise of points inside the series
    plain.calibration = dataclasses.replace(fitted.calibration, lead_times=[], lead_std=[],
                                            lead_count=[], history_counts=[],
                                            history_factor=[])
    flat = plain.noise_curve()
    assert len(flat) == fitted.spec.n_channels and (flat["lead"] == 0).all()
    fc = curved(fitted)
    curve = fc.noise_curve()
    cal, spec = fc.calibration, fc.spec
    bins = len(cal.lead_times)
    assert len(curve) == (1 + bins) * spec.n_channels
    assert list(curve.columns) == ["channel", "lead", "std", "factor", "count"]
    assert curve["factor"].isna().all()  # no log channels
    for c, name in enumerate(spec.channels):
        rows = curve[curve.channel == name]
        want = np.r_[cal.std[c], np.asarray(cal.lead_std)[:, c]] * spec.scale[c]
        np.testing.assert_allclose(rows["std"], want)
        np.testing.assert_allclose(rows["lead"], np.r_[0.0, cal.lead_times] * spec.time.scale)
        assert rows["std"].is_monotonic_increasing
        # lead 0: the channel's own calibration points (it showed all channels' sum)
        assert rows["count"].tolist() == [cal.count[c], *cal.lead_count]
        at = cal.std_at(np.asarray(cal.lead_times))[:, c] * spec.scale[c]
        np.testing.assert_allclose(rows["std"].iloc[1:], at)  # what predict uses there
    fc = curved(dated[0])
    leads = fc.noise_curve()["lead"]
    assert all(isinstance(v, pd.Timedelta) for v in leads)
    expected = pd.to_timedelta(np.r_[0.0, fc.calibration.lead_times] * 7, unit="D")
    np.testing.assert_array_equal(leads.unique(), expected.unique())


def test_a_stale_or_unmeasured_channel_gets_its_own_lead(fitted, data):
    """Leads count from each channel's own last observation: a channel last measured long
    before the others is forecast with the wider noise of that lead; one never measured in the
    series with the widest (the last bin's)."""
    import copy
    import dataclasses

    base = fitted.calibration
    curved = copy.copy(fitted)
    curved.calibration = dataclasses.replace(
        base, lead_times=[1.0, 2.0, 4.0],
        lead_std=[[3 * v for v in base.std], [6 * v for v in base.std],
                  [12 * v for v in base.std]], lead_count=[100, 100, 100])
    part = data[data.series_id == "s0"].copy()
    last = part["time"].max()
    times = {"s0": [last + 0.2]}
    kwargs = {"num_samples": 30, "seed": 3, "quantiles": (0.05, 0.95)}

    def widths(frame):
        pred = curved.predict(frame, times, **kwargs)
        return (pred["q0.95"] - pred["q0.05"]).to_numpy()  # x, y

    fresh = widths(part)
    stale = part.copy()
    stale.loc[stale["time"] > part["time"].min() + 1.0, "y"] = np.nan  # y: ~4 units stale
    old = widths(stale)
    assert old[1] > 3 * fresh[1] and old[0] == pytest.approx(fresh[0], rel=0.3)
    never = widths(part.assign(y=np.nan))
    assert never[1] > old[1]  # never measured: the last bin's noise


def test_log_channels_keep_forecasts_and_intervals_positive(tmp_path):
    """A channel positive by nature (a concentration near zero) on a log scale: means and
    quantiles stay positive; the spec carries the flag through save and load."""
    rng = np.random.default_rng(3)
    rows = []
    for s in range(24):
        t = np.sort(rng.uniform(0, 5, 20))
        level = np.exp(np.sin(2 * np.pi * rng.uniform(0.3, 0.6) * t) - 2 + 0.3 * rng.normal(
            size=20))  # 0.05 .. 0.4
        rows += [(f"s{s}", ti, li, np.cos(ti)) for ti, li in zip(t, level, strict=True)]
    frame = pd.DataFrame(rows, columns=["series_id", "time", "conc", "other"])
    fc = LatentODEForecaster({**TINY, "trainer.max_epochs": 1}).fit(frame,
                                                                     log_channels="conc")
    assert fc.spec.log == [True, False] and fc.cfg.data.log_channels == ["conc"]
    pred = fc.predict(frame, horizon=3.0, n=4, num_samples=30)
    conc = pred[pred.channel == "conc"]
    assert (conc[["mean", "q0.05", "q0.5", "q0.95"]] > 0).all().all()
    assert (conc["q0.05"] < conc["q0.5"]).all() and (conc["q0.5"] < conc["q0.95"]).all()
    # the mean of the predictive distribution: a log-normal's, above its median
    assert (conc["mean"] > conc["q0.5"]).all()
    curve = fc.noise_curve()  # the log channel's spread as a factor; the other's has none
    logged = curve[curve.channel == "conc"]
    np.testing.assert_allclose(logged["factor"], np.exp(logged["std"]))
    assert curve[curve.channel == "other"]["factor"].isna().all()
    draws = fc.sample(frame[frame.series_id == "s0"], horizon=3.0, n=4, num_samples=4000,
                      noise=True)
    by_time = draws[draws.channel == "conc"].groupby("time")["value"]
    drawn, se = by_time.mean().to_numpy(), (by_time.std() / np.sqrt(by_time.size())).to_numpy()
    # against the predictive mean from as many z0 draws, within 4 standard errors of the
    # draws' mean (a log-normal's tail: a fixed 5% failed by chance with other library versions)
    many = fc.predict(frame[frame.series_id == "s0"], horizon=3.0, n=4, num_samples=4000)
    mean_s0 = many[many.channel == "conc"]["mean"].to_numpy()
    assert (np.abs(drawn - mean_s0) < 4 * se).all(), (drawn, mean_s0, se)
    assert (se < 0.05 * mean_s0).all()  # the check is not vacuous
    # the same mean without quantiles (the noise was dropped then: the median, 27% lower)
    alone = fc.predict(frame, horizon=3.0, n=4, num_samples=30, quantiles=None)
    np.testing.assert_allclose(alone["mean"].to_numpy(), pred["mean"].to_numpy(), rtol=1e-6)
    fc.save(tmp_path / "fc")
    again = LatentODEForecaster.load(tmp_path / "fc")
    assert again.spec.log == [True, False]
    pd.testing.assert_frame_equal(again.predict(frame, horizon=3.0, n=4, num_samples=30), pred)
    with pytest.raises(ValueError, match=r"channel 'conc' was trained on a log scale"):
        fc.predict(frame.assign(conc=frame["conc"] - 1.0), horizon=1.0, n=2)


# ---------------------------------------------------------------------------------- datetimes
def test_datetimes_in_datetimes_out_tidy_and_validation(dated):
    fc, tidy, out = dated
    assert (fc.spec.time.unit, fc.spec.time.scale) == ("D", 7.0)  # time_unit, time_scale kept
    assert "val/mse" in fc.trainer.callback_metrics  # val_df was used
    assert fc.calibration.split == "val"  # and calibrated the predictive noise
    assert (out / "metrics.csv").is_file()
    pred = fc.predict(tidy, horizon="2D", freq="12h", num_samples=10)
    assert list(pred.columns[:3]) == ["series_id", "time", "var"]
    assert pred["time"].dtype == tidy["time"].dtype  # datetime64[..., Europe/Berlin]
    last = tidy.groupby("series_id")["time"].max()
    for key, rows in pred.groupby("series_id"):
        assert rows["time"].min() == last[key] + pd.Timedelta("12h")
        assert rows["time"].nunique() == 4
    at = fc.predict(tidy, times=["2023-12-31", "2024-01-03 12:00"], num_samples=10)
    assert set(at["time"]) == {pd.Timestamp("2023-12-31", tz="Europe/Berlin"),
                               pd.Timestamp("2024-01-03 12:00", tz="Europe/Berlin")}
    gaps = tidy.copy()
    gaps.loc[gaps.index[:5], "val"] = np.nan
    filled = fc.impute(gaps, complete=False)
    assert filled["val"].notna().all() and len(filled) == len(gaps)
    np.testing.assert_array_equal(filled["val"].to_numpy()[5:], gaps["val"].to_numpy()[5:])
    # complete (the default): the channels a series lacks at its times are added as rows
    whole = fc.impute(gaps)
    pd.testing.assert_frame_equal(whole.iloc[:len(gaps)], filled)
    per_time = whole.groupby(["series_id", "time"])["var"].agg(lambda v: sorted(v))
    assert per_time.map(lambda v: v == ["x", "y"]).all()  # every time has every channel once
    assert whole["val"].notna().all() and whole["time"].dtype == tidy["time"].dtype
    assert len(whole) == 2 * len(gaps.groupby(["series_id", "time"]))
    assert whole.index.is_unique and whole.index[len(gaps):].min() > gaps.index.max()
    banded = fc.impute(gaps, quantiles=[0.1, 0.9], num_samples=5).iloc[len(gaps):]
    assert banded[["q0.1", "q0.9"]].notna().all().all()  # added rows: all filled, with a band


def test_plot_writes_png(dated, tmp_path):
    fc, tidy, _ = dated
    pred = fc.predict(tidy, horizon="1D", n=6, num_samples=10)
    path = tmp_path / "forecast.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no date-locator complaints
        fig = fc.plot(tidy, pred, series=["s0", "s2"])
        fig.savefig(path)
    assert len(fig.axes) == 2 * 2
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"series \['nope'\] are not in both df and pred"):
        fc.plot(tidy, pred, series=["nope"])
    numbered = pred.assign(series_id=pred["series_id"].str[1:].astype(int))
    with pytest.raises(ValueError, match=r"pred has series \[0, 1, 2"):  # not np.int64(0)
        fc.plot(tidy, numbered, series=["s0"])
    # channels titled by name rather than by their codes
    named = fc.plot(tidy, pred, series=["s0"], channel_labels={"x": "position"})
    assert [ax.get_title() for ax in named.axes] == ["s0: position", "s0: y"]
    with pytest.raises(ValueError, match=r"channel_labels name\(s\) \['z'\] that are not"):
        fc.plot(tidy, pred, channel_labels={"z": "nothing"})


# ------------------------------------------------------------------------------------- errors
def test_forecaster_trains_with_the_series_walk_it_predicts_with():
    """Prediction answers each series alone, which is the encoder's per-series walk: training
    uses it too (faster on unaligned series), unless the overrides choose the walk or model."""
    from latentode.forecast.config import compose_train_config

    def schedule(overrides):
        cfg = compose_train_config(override_list(overrides))
        return cfg.model.get("encoder", {}).get("schedule")

    assert schedule({}) == "series"
    assert schedule({"model.encoder.hidden": 8}) == "series"  # sizes do not matter
    assert schedule({"model.encoder.schedule": "union"}) == "union"
    assert schedule(["model/encoder=rnn"]) == "union"
    assert schedule(["model=gru_dt"]) is None


def test_forecaster_trains_the_own_data_recipe_of_the_command_line():
    """fit's defaults are experiment=csv's (batch 16, 100 epochs, the series walk); the user's
    overrides win, and a data config they choose keeps its own settings."""
    from test_cli import compose_train

    from latentode.forecast.config import compose_train_config

    cli = compose_train(["experiment=csv"])
    cfg = compose_train_config([])
    for key in ("data.batch_size", "trainer.max_epochs", "model.encoder.schedule",
                "data.time_origin"):
        assert OmegaConf.select(cfg, key) == OmegaConf.select(cli, key), key
    assert cfg.data.batch_size == 16 and cfg.trainer.max_epochs == 100
    mine = compose_train_config(override_list({"data.batch_size": 4, "trainer.max_epochs": 2}))
    assert (mine.data.batch_size, mine.trainer.max_epochs) == (4, 2)
    other = compose_train_config(["data=periodic"])
    assert (other.data.batch_size, other.trainer.max_epochs) == (50, 40)


def test_errors_before_fit():
    fc = LatentODEForecaster({"trainer.max_epochs": 1})
    frame = make_frame(n_series=2, n_points=5)
    for call in (lambda: fc.predict(frame), lambda: fc.impute(frame),
                 lambda: fc.sample(frame), lambda: fc.save("unused")):
        with pytest.raises(RuntimeError, match=r"not fitted: call fit\(train_df\) first"):
            call()


def test_unknown_config_key_is_an_error():
    """A misspelt key names the one meant (Hydra's own hint, appending it with +, did not)."""
    with pytest.raises(ConfigCompositionException, match=r"(?s)latentz.*Did you mean "
                                                         r"model\.latents\?"):
        LatentODEForecaster({"model.latentz": 3})
    with pytest.raises(ConfigCompositionException, match=r"model\.nothing_like_it") as info:
        LatentODEForecaster({"model.nothing_like_it": 3})
    assert "Did you mean" not in str(info.value)
    # settings nothing reads: refused as on the command line (they trained without a word)
    with pytest.raises(ValueError, match=r"sede is not a setting of latentode-train .*Did you "
                                         r"mean seed\?"):
        LatentODEForecaster({"+sede": 3})
    with pytest.raises(ValueError, match=r"Select it first: callbacks=early_stopping"):
        LatentODEForecaster({"+callbacks.early_stopping.patience": 3})
    LatentODEForecaster({"callbacks": "early_stopping", "callbacks.early_stopping.patience": 3})


def test_error_series_in_times_not_in_df(fitted, data):
    with pytest.raises(ValueError, match=r"series \['nope'\] in times are not in df"):
        fitted.predict(data, times={"s1": [1.0], "nope": [2.0]})


def test_error_channels_differ_from_training(fitted, data):
    # impute's output, quantile columns included, predicts as its input does (a review)
    filled = fitted.impute(data, quantiles=(0.1, 0.9), num_samples=5)
    fitted.predict(filled, horizon=1.0, n=1, num_samples=5)
    extra = data.assign(z=1.0)
    with pytest.raises(ValueError, match=r"\['x', 'y', 'z'\] differ from the channels the model "
                                         r"was trained on \['x', 'y'\]"):
        fitted.predict(extra)
    with pytest.raises(ValueError, match=r"missing \['y'\].*all-NaN column: df\['y'\] = "):
        fitted.predict(data.drop(columns="y"))
    unmeasured = fitted.predict(data.assign(y=float("nan")), horizon=1.0, n=2, num_samples=10)
    assert np.isfinite(unmeasured["mean"]).all()  # the hint works: y forecast from x alone
    # a channel spelt otherwise is named (a review: SpO2 / spo2 got no suggestion)
    with pytest.raises(ValueError, match=r"missing \['y'\]; not in training \['Y'\]\).* "
                                         r"float\('nan'\)\. Did you mean 'Y' for 'y'\?$"):
        fitted.predict(data.rename(columns={"y": "Y"}))


def test_numbers_kept_as_text_predict_as_they_trained(fitted, data):
    """fit reads a channel of numbers kept as text ("80.5"); predict called that column
    missing and advised overwriting it with NaN, on the very frame the model trained on."""
    text = data.assign(x=data["x"].map(lambda v: "" if np.isnan(v) else repr(v)).replace("", None))
    ours = fitted.predict(text, horizon=1.0, n=2, num_samples=10, seed=3)
    plain = fitted.predict(data, horizon=1.0, n=2, num_samples=10, seed=3)
    pd.testing.assert_frame_equal(ours, plain)
    stray = text.copy()
    stray.loc[stray.index[4], "x"] = "?"
    with pytest.raises(ValueError, match=r"column 'x' has a non-numeric value '\?' \(series "
                                         r"'s0', row 4\)"):
        fitted.predict(stray)


def test_error_time_type_differs_from_training(fitted, data, dated):
    stamped = data.assign(time=pd.Timestamp("2024-01-01") + pd.to_timedelta(data.time, "D"))
    with pytest.raises(ValueError, match="trained on numeric times"):
        fitted.predict(stamped)
    with pytest.raises(ValueError, match="trained on numeric times; times must be numbers"):
        fitted.predict(data, times=pd.to_datetime(["2024-01-01"]))
    with pytest.raises(ValueError, match="trained on numeric times, but df's column 'time' "
                                         "holds datetime ones"):  # ISO text, read as dates
        fitted.predict(stamped.assign(time=stamped.time.dt.strftime("%Y-%m-%dT%H:%M:%S")))
    fc, tidy, _ = dated
    with pytest.raises(ValueError, match="trained on datetime times; times must be datetimes"):
        fc.predict(tidy, times=[1.0, 2.0])
    # ISO text as pd.read_csv leaves it (here with its UTC offset) is read as the datetimes
    text = tidy.assign(time=tidy.time.map(lambda t: t.isoformat()))
    got = fc.predict(text, horizon="1D", n=2, num_samples=5)
    want = fc.predict(tidy, horizon="1D", n=2, num_samples=5)
    assert (got.time.dt.tz_convert("UTC") == want.time.dt.tz_convert("UTC")).all()
    pd.testing.assert_frame_equal(got.drop(columns="time"), want.drop(columns="time"))
    # impute returns the text frame filled (its merge keys read as the predictions' datetimes)
    filled = fc.impute(text, num_samples=5)
    assert filled["time"].iloc[:len(text)].equals(text["time"]) and filled["val"].notna().all()
    assert filled["time"].map(type).eq(str).all()  # added rows' times are ISO text too
    # ... in the frame's own style ('2024-01-01 00:00:00+01:00', not 'T'), and what is
    # constant within each series (an outcome, an int flag) is copied to the added rows
    spaced = tidy.assign(time=tidy.time.map(str),
                         flag=tidy.series_id.str[1:].astype(int) % 2, note="x")
    spaced.loc[spaced.index[0], "note"] = "y"  # varies within one series: left NaN there
    filled = fc.impute(spaced, num_samples=5)
    added = filled.iloc[len(spaced):]
    assert not filled["time"].str.contains("T").any() and len(added) > 0
    assert filled["flag"].dtype == spaced["flag"].dtype
    np.testing.assert_array_equal(added["flag"], added.series_id.str[1:].astype(int) % 2)
    assert added["note"].isna().all()
    np.testing.assert_allclose(filled["val"], fc.impute(tidy, num_samples=5)["val"])
    # a bare number is no duration (pd.Timedelta(12) would be 12 nanoseconds)
    with pytest.raises(ValueError, match=r"horizon=12 is a bare number, but the times are "
                                         r"datetimes: give a duration with its unit, e\.g\. '12h'"):
        fc.predict(tidy, horizon=12, n=3)


@pytest.mark.parametrize("quantiles", [(0.0, 0.5), (0.5, 1.0), (1.5,), (-0.1,)])
def test_error_bad_quantiles(fitted, data, quantiles):
    with pytest.raises(ValueError, match="quantiles must lie strictly between 0 and 1"):
        fitted.predict(data, quantiles=quantiles)


def test_error_bad_forecast_grid(fitted, data):
    with pytest.raises(ValueError, match="needs two of horizon=, freq= and n="):
        fitted.predict(data, horizon=1.0)
    with pytest.raises(ValueError, match="either times= or a forecast grid"):
        fitted.predict(data, times=[1.0], horizon=1.0, n=2)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        fitted.predict(data, horizon=1.0, n=0)


def test_load_needs_a_saved_forecaster(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a saved forecaster"):
        LatentODEForecaster.load(tmp_path)


# ----------------------------------------------------------------------------------- coverage
def test_coverage_on_a_known_distribution():
    rng = np.random.default_rng(0)
    samples = rng.normal(size=(1000, 4000))
    values = rng.normal(size=4000)
    assert interval_coverage(samples, values) == pytest.approx(0.9, abs=0.02)
    assert interval_coverage(samples, values, level=0.5) == pytest.approx(0.5, abs=0.03)
    assert interval_coverage(samples, values + 10.0) == 0.0
    mask = np.zeros(4000, dtype=bool)
    mask[:100] = True
    shifted = values.copy()
    shifted[100:] += 10.0  # outside the mask: must not count
    assert interval_hits(samples, shifted, mask)[1] == 100
    assert interval_coverage(torch.from_numpy(samples), torch.from_numpy(shifted),
                             torch.from_numpy(mask)) > 0.8
    assert np.isnan(interval_coverage(samples, values, np.zeros(4000, dtype=bool)))
    with pytest.raises(ValueError, match=r"level must be in \(0, 1\)"):
        interval_coverage(samples, values, level=90)
    with pytest.raises(ValueError, match="samples must have shape"):
        interval_coverage(samples[:, :10], values)


def test_filling_unaligned_series_needs_memory_linear_in_the_rows(fitted):
    """1000 series on their own clocks: the wide fill built every series x every distinct time
    (impute on 1000 smart meters peaked at 22 GB); now one row per asked (series, time)."""
    rng = np.random.default_rng(0)
    n, k = 1000, 30
    df = pd.DataFrame({"series_id": np.repeat([f"m{i}" for i in range(n)], k),
                       "time": rng.uniform(0, 1e3, n * k), "x": np.nan, "y": 1.0})
    pred = df[["series_id", "time"]].merge(pd.DataFrame({"channel": ["x", "y"]}), how="cross")
    pred["mean"] = 2.0
    tracemalloc.start()
    try:
        filled = fitted._fill(df, pred, [])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (filled["x"] == 2.0).all() and (filled["y"] == 1.0).all()
    assert peak < 100 * 2**20, f"{peak / 2**20:.0f} MiB"  # the cartesian table: ~1.9 GiB


def test_import_latentode_stays_light():
    code = ("import sys, latentode; heavy = {'torch', 'lightning', 'hydra', 'pandas'} & "
            "set(sys.modules); assert not heavy, heavy; "
            "assert latentode.LatentODEForecaster.__name__ == 'LatentODEForecaster'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_label_per_series_is_learnt_and_predicted_as_probabilities():
    df = make_frame(n_series=16, n_points=10, seed=4)
    freq = df.groupby("series_id")["x"].transform(lambda v: v.diff().abs().mean())
    df["died"] = (freq > freq.median()).astype(float)  # constant within each series
    fc = LatentODEForecaster({**TINY, "trainer.max_epochs": 2}).fit(
        df, label_col="died", val_df=df[df.series_id.isin(["s0", "s1"])].drop(columns="died"))
    assert fc.spec.channels == ["x", "y"] and fc.model.n_labels == 1
    risk = fc.predict_proba(df, num_samples=5)
    assert list(risk.columns) == ["series_id", "p"] and len(risk) == 16
    assert risk["p"].between(0, 1).all()
    assert (fc.predict_proba(df, num_samples=5) == risk).all().all()  # seeded
    assert set(fc.predict(df, horizon=1.0, n=2, num_samples=3)["channel"]) == {"x", "y"}
    with pytest.raises(ValueError, match="predict_proba needs a model fitted with label_col="):
        LatentODEForecaster({**TINY, "trainer.max_epochs": 1}).fit(
            df.drop(columns="died")).predict_proba(df)
    named = df.assign(died=df["died"].map({0.0: "survived", 1.0: "died"}))
    fc = LatentODEForecaster({**TINY, "trainer.max_epochs": 1}).fit(named, label_col="died")
    assert fc.model.n_labels == 1 and fc.spec.label_names == ["died", "survived"]
    risk = fc.predict_proba(named, num_samples=3)
    assert list(risk.columns) == ["series_id", "p_died", "p_survived"]
    np.testing.assert_allclose(risk["p_died"] + risk["p_survived"], 1.0)
    with tempfile.TemporaryDirectory() as tmp:  # the names are saved with the model
        fc.save(tmp)
        pd.testing.assert_frame_equal(LatentODEForecaster.load(tmp).predict_proba(
            named, num_samples=3), risk)
    three = df.assign(died=df["series_id"].str[1:].astype(int) % 3)
    with pytest.raises(ValueError, match=r"model\.n_labels=2 but label column 'died' holds "
                                         r"classes 0\.\.2: set model\.n_labels=3"):
        LatentODEForecaster({**TINY, "model.n_labels": 2}).fit(three, label_col="died")


# ------------------------------------------------------------------------------------ batches
def test_series_in_batches_are_answered_as_alone_within_the_solver_tolerance(fitted, data):
    """Series are solved ``batch_size`` at a time: each walked by the encoder on its own, with
    ``z0`` drawn from its own seed; only the decoder's adaptive steps are shared, so every
    column moves within the solver's tolerance (rtol 1e-3 of values ~1 around 100 here: far
    below the predictive spread of ~0.5). ``batch_size=1`` answers each alone, exactly."""
    alone = fitted.predict(data, horizon=1.0, n=5, num_samples=20, batch_size=1)
    for batch_size in (7, 64):
        together = fitted.predict(data, horizon=1.0, n=5, num_samples=20,
                                  batch_size=batch_size)
        pd.testing.assert_frame_equal(together[["series_id", "time", "channel"]],
                                      alone[["series_id", "time", "channel"]])
        for col in ["mean", "q0.05", "q0.5", "q0.95"]:
            np.testing.assert_allclose(together[col], alone[col], rtol=0, atol=2e-3)
    one = fitted.predict(data[data.series_id == "s4"], horizon=1.0, n=5, num_samples=20,
                         batch_size=1)
    pd.testing.assert_frame_equal(alone[alone.series_id == "s4"].reset_index(drop=True), one,
                                  check_exact=True)
    filled = fitted.impute(data, num_samples=10, quantiles=[0.1], batch_size=5)
    filled_alone = fitted.impute(data, num_samples=10, quantiles=[0.1], batch_size=1)
    np.testing.assert_allclose(filled["x"], filled_alone["x"], rtol=0, atol=2e-3)
    np.testing.assert_allclose(filled["y_q0.1"], filled_alone["y_q0.1"], rtol=0, atol=2e-3)
    for bad in (0, 1.5, True, None, "64"):  # never quietly turned into 1 (or a TypeError)
        with pytest.raises(ValueError, match=f"batch_size must be a positive integer, got "
                                             f"{re.escape(repr(bad))}"):
            fitted.predict(data, horizon=1.0, n=5, batch_size=bad)
    with pytest.raises(ValueError, match=r"num_samples must be a positive integer, got 2\.5"):
        fitted.sample(data, horizon=1.0, n=5, num_samples=2.5)
    with pytest.raises(ValueError, match=r"seed must be a non-negative integer, got True"):
        fitted.impute(data, seed=True)
    assert len(fitted.predict(data.head(30), horizon=1.0, n=2, num_samples=3.0,
                              batch_size=np.int64(8))) > 0  # whole numbers of any type


@pytest.mark.parametrize(("model", "mode"), [("model/encoder=rnn", "batched"),
                                             ("model.encoder.solver.method=rk4", "noise"),
                                             ("model=gru_dt", "alone"),
                                             ("model=rnn_vae", "alone")])
def test_models_that_cannot_batch_answer_series_one_by_one(model, mode, data):
    """An RNN encoder batches like the ODE-RNN; an ODE-RNN encoder with another solver than
    one Euler step per gap, and the baselines, answer each series alone: the same frame
    whatever the batch size and whichever other series are asked."""
    torch.set_num_threads(1)
    overrides = {k: v for k, v in TINY.items() if not k.startswith("model.")}
    extra = [model] + (["model.encoder.schedule=union"] if "solver" in model else [])
    fc = LatentODEForecaster([*override_list(overrides), *extra, "trainer.max_epochs=1"]).fit(
        data[data.series_id.isin([f"s{i}" for i in range(10)])])
    assert batch_mode(fc.model) == mode
    part = data[data.series_id.isin(["s1", "s2", "s3"])]
    pred = fc.predict(part, horizon=1.0, n=3, num_samples=4)
    alone = fc.predict(part[part.series_id == "s2"], horizon=1.0, n=3, num_samples=4)
    one_by_one = fc.predict(part, horizon=1.0, n=3, num_samples=4, batch_size=1)
    got = pred[pred.series_id == "s2"].reset_index(drop=True)
    if model == "model/encoder=rnn":  # batched: within the solver's tolerance
        np.testing.assert_allclose(got["mean"], alone["mean"], rtol=0, atol=2e-3)
        np.testing.assert_allclose(pred["mean"], one_by_one["mean"], rtol=0, atol=2e-3)
    else:
        pd.testing.assert_frame_equal(got, alone, check_exact=True)
        pd.testing.assert_frame_equal(pred, one_by_one, check_exact=True)


def test_fit_compares_the_noise_on_folds_with_its_training_tasks(data, monkeypatch):
    """A model that predicts worse from 4/5 of a series than at its training density is named
    (the quick start's: in-series noise 0.29 against 0.125); with the threshold at 0 any fit's
    comparison speaks, so the wiring is checked on a one-epoch model (fit's Mixed task, compared
    at its subsample's masks)."""
    import latentode.forecast.calibration as calibration

    torch.set_num_threads(1)
    monkeypatch.setattr(calibration, "DENSITY_RATIO", 0.0)
    with pytest.warns(UserWarning, match=r"worse when its encoder sees 4/5 of the series than "
                                         r"at its training task's density \(Mixed\(.*, its "
                                         r"subsample Interpolation\("):
        fc = LatentODEForecaster({**TINY, "trainer.max_epochs": 1}).fit(data)
    dm = fc.trainer.datamodule
    with warnings.catch_warnings(record=True) as seen:  # from_model: its task is not training's
        warnings.simplefilter("always")
        LatentODEForecaster.from_model(fc.model, dm.dataset.subset(dm.split_index["train"]),
                                       dm.scaler,
                                       calibration_data=dm.dataset.subset(dm.split_index["val"]))
    assert not [w for w in seen if "training task's density" in str(w.message)]


def test_fit_prints_no_advertisement(data, capfd):
    """Lightning's tip to install its cloud logger was printed by every fit."""
    torch.set_num_threads(1)
    LatentODEForecaster({**TINY, "trainer.max_epochs": 1}).fit(data.head(200))
    out = capfd.readouterr()
    assert "litlogger" not in out.out + out.err


def test_a_series_the_solver_cannot_answer_is_nan_and_the_others_are_answered(fitted, data):
    """One series asked absurdly far ahead failed the whole call (MaxStepsExceededError) and,
    batched with the others, held up their solve: it is now answered alone, as NaN with a
    warning naming it, in a batch of its own span, and the others are what they are without it."""
    last = data.groupby("series_id")["time"].max()
    asked = {key: [last[key] + 0.5] for key in ["s1", "s2", "s3"]}
    plain = fitted.predict(data, times=asked, num_samples=5)
    asked["s2"] = [last["s2"] + 0.5, last["s2"] + 1e6]
    solver = dict(fitted.model.solver)
    fitted.model.solver["max_steps"] = 200  # fail fast
    try:
        with pytest.warns(UserWarning, match=r"1 series could not be answered and are NaN: "
                                             r"\['s2'\] \(the solver: MaxStepsExceededError"), \
                pytest.warns(UserWarning, match="never trained that far ahead"):
            pred = fitted.predict(data, times=asked, num_samples=5)
    finally:
        fitted.model.solver = solver
    failed = pred.series_id == "s2"
    assert pred.loc[failed, "mean"].isna().all() and pred.loc[~failed, "mean"].notna().all()
    pd.testing.assert_frame_equal(pred[~failed].reset_index(drop=True),
                                  plain[plain.series_id != "s2"].reset_index(drop=True))


def test_batches_group_series_by_decoder_span_and_history_length():
    """A batch integrates to its longest row: one series asked 1000x further ahead gets a batch
    of its own (the user pass measured 27x slower calls with it batched among the others)."""
    from latentode.forecast.draw import batches, make_job

    def job(n_hist: int, ahead: float):
        t = np.linspace(0.0, 5.0, n_hist)
        return make_job(t, np.zeros((n_hist, 2)), np.array([5.0 + ahead]), np.float32, False)

    jobs = [job(10, 0.5), job(40, 0.5), job(10, 1000.0), job(20, 0.6), job(12, 0.4)]
    groups = list(batches(jobs, batch_size=64, num_samples=10))
    assert sorted(map(sorted, groups)) == [[0, 1, 3, 4], [2]]
    assert groups[0] == [0, 4, 3, 1]  # by history length within a span
    assert [len(g) for g in batches(jobs[:2] + jobs[3:], batch_size=2, num_samples=10)] == [2, 2]


def test_a_forecast_grid_for_a_series_with_no_observation_is_refused_by_name():
    """A dataset built by hand may hold a series with nothing observed: its grid was built from
    an array indexed by None (a 2-D "last time"), not refused (found by type checking)."""
    from dataclasses import replace

    from latentode.data import from_dataframe
    from latentode.forecast.requests import requested_times

    ds = from_dataframe(pd.DataFrame({"id": [0, 0, 1, 1], "t": [0.0, 1.0, 0.0, 2.0],
                                      "x": [1.0, 2.0, 3.0, 4.0]}), "id", "t")
    values = ds.values.copy()
    values[2:] = np.nan
    with pytest.raises(ValueError, match=r"series 1 has no observation: no last one"):
        requested_times(replace(ds, values=values), "numeric", horizon=1.0, n=2)


def test_zone_aware_times_asked_of_naive_data_are_refused_like_a_zone_aware_history():
    """A model fitted on naive datetimes answered a zone-aware ``times=`` (list, per-series
    mapping, offset strings) as if its clock were UTC: US/Eastern midnight came back as 05:00,
    silently, where a zone-aware history is refused (which zone the naive clock was in cannot be
    known)."""
    from latentode.data import from_dataframe
    from latentode.forecast.requests import requested_times

    ds = from_dataframe(pd.DataFrame({
        "id": [7, 7], "t": pd.to_datetime(["2024-03-09 08:00", "2024-03-09 20:00"]),
        "x": [1.0, 2.0]}), "id", "t")
    for times in ([pd.Timestamp("2024-03-10", tz="US/Eastern")], ["2024-03-10T00:00+09:00"],
                  {7: [pd.Timestamp("2024-03-10", tz="UTC")]}):
        with pytest.raises(ValueError, match=r"times in zone .* given to data whose times carry "
                                             r"no zone .*tz_localize\(None\)"):
            requested_times(ds, "datetime", times=times)
    naive = requested_times(ds, "datetime", times=["2024-03-10"])  # naive: the data's clock
    assert naive[0][1][0] == pd.Timestamp("2024-03-10")


def test_few_calibration_series_are_warned_about_once_with_fits_own_remedy():
    """fit on 8 series calibrates on its training series and says so (one warning, not a
    second one advising a val_fraction that cannot help below 20 series); val_df of 3 series
    is named as such."""
    df = make_frame(n_series=11, n_points=10, seed=4)
    train, val = df[~df.series_id.isin(["s8", "s9", "s10"])], df[df.series_id.isin(
        ["s8", "s9", "s10"])]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        LatentODEForecaster({**TINY, "trainer.max_epochs": 1}).fit(train)
    texts = [str(w.message) for w in seen]
    assert any("fit calibrates the predictive noise on the training series" in t for t in texts)
    assert not any(re.search(r"calibrated on \d+ series", t) for t in texts)
    with pytest.warns(UserWarning, match=r"calibrated on 3 series \(val_df\): with fewer than "
                                         r"10 .* Pass more series in val_df\."):
        LatentODEForecaster({**TINY, "trainer.max_epochs": 1}).fit(train, val_df=val)


def test_study_impute_holds_out_interior_points_and_scores_both(capsys):
    """scripts/study_impute.py: one in ten interior points per (series, channel) held out,
    never the ends; linear interpolation exact on a line; a tiny run prints both MSEs."""
    from scripts_loader import load_script

    study = load_script("study_impute")
    frame = pd.DataFrame({"series_id": 0, "channel": "x", "time": np.arange(22.0),
                          "value": 2.0 * np.arange(22.0)})
    hold = study.held_out(frame)
    assert hold.sum() == 2 and not hold.iloc[0] and not hold.iloc[-1]
    np.testing.assert_allclose(study.linear(frame[~hold], frame[hold]),
                               frame[hold]["value"].to_numpy())
    study.main(["--points", "4-9", "--epochs", "1"])
    out = capsys.readouterr().out
    row = next(line.split() for line in out.splitlines() if line.split()[:1] == ["4-8"])
    assert all(np.isfinite(float(v)) for v in row[1:])


def test_a_series_fitted_worse_gets_wider_in_series_intervals(fitted, data):
    """The calibration scales the in-series noise per series by its residual at its own
    points (NoiseCalibration.series_factor): the same series with noise added to its history
    is predicted with wider intervals inside it; noise=False paths are those of predict's
    mean, and sample's noiseless paths too."""
    cal = fitted.calibration
    assert cal is not None and cal.series_kappa is not None and len(cal.series_mbar) == 2
    one = data[data["series_id"] == data["series_id"].iloc[0]].copy()
    rough = one.copy()
    rough["series_id"] = "rough"
    rng = np.random.default_rng(0)
    for channel in ("x", "y"):
        spread = 3 * np.nanstd(one[channel].to_numpy())
        rough[channel] = rough[channel] + rng.normal(0, spread, len(rough))
    both = pd.concat([one, rough], ignore_index=True)
    inside = np.sort(one["time"].to_numpy())[1:-1][:3] + 1e-3
    pred = fitted.predict(both, inside, num_samples=50)
    width = (pred["q0.95"] - pred["q0.05"]).groupby(pred["series_id"] == "rough").mean()
    assert width[True] > 1.5 * width[False]
    # the paths are those of predict's mean (asking the history's times beside moves nothing)
    plain = fitted.predict(both, inside, num_samples=50, quantiles=None)
    np.testing.assert_array_equal(plain["mean"].to_numpy(), pred["mean"].to_numpy())
    # a calibration file without the factor's fields (before it) loads without one
    saved = {k: v for k, v in cal.to_json().items() if not k.startswith("series_")}
    from latentode.forecast.calibration import NoiseCalibration

    assert NoiseCalibration.from_json(saved).series_kappa is None


# -------------------------------------------------------------------------------------- score
def test_score_hides_part_of_each_series_and_scores_it_against_predict(fitted, data):
    from latentode.forecast.scoring import hidden_times

    part = data[data.series_id.isin(["s0", "s1", "s2", "s3"])].reset_index(drop=True)
    table = fitted.score(part, fraction=0.3, num_samples=20, seed=1)
    assert list(table.index) == ["x", "y"] and table.attrs["series"] == 4
    # recomputed by hand from the same hidden points and the same predict call
    observed = part[["x", "y"]].notna().any(axis=1)
    hide = hidden_times(part["time"], part["series_id"], "points", 0.3, 1, observed)
    for _, rows in part[observed].groupby("series_id"):
        times = np.sort(rows["time"].to_numpy())
        hidden = np.sort(rows.loc[hide.loc[rows.index], "time"].to_numpy())
        assert times[0] not in hidden and len(hidden) == round(0.3 * len(times))
    requested = {s: np.unique(r["time"].to_numpy()) for s, r in
                 part[hide].groupby("series_id")}
    pred = fitted.predict(part[~hide], requested, num_samples=20, quantiles=(0.05, 0.95),
                          seed=1)
    truth = part[hide].melt(id_vars=["series_id", "time"], var_name="channel").dropna()
    both = truth.merge(pred, on=["series_id", "time", "channel"])
    x = both[both.channel == "x"]
    assert table.loc["x", "n"] == len(x)
    assert table.loc["x", "mse"] == pytest.approx(((x["value"] - x["mean"]) ** 2).mean())
    assert table.loc["x", "coverage"] == pytest.approx(
        ((x["value"] >= x["q0.05"]) & (x["value"] <= x["q0.95"])).mean())
    # the naive answer: linear interpolation of the series' own history of that channel
    s0 = part[~hide & (part.series_id == "s0")].dropna(subset=["x"]).sort_values("time")
    at = x[x.series_id == "s0"]
    naive = np.interp(at["time"], s0["time"], s0["x"])
    assert np.isfinite(table.loc["x", "naive_mse"]) and len(naive) == len(at)
    # forecasting: the last 30% of each span hidden, the first time kept
    end = hidden_times(part["time"], part["series_id"], "end", 0.3, 0)
    for _, rows in part.groupby("series_id"):
        t = rows["time"]
        cut = t.min() + 0.7 * (t.max() - t.min())
        assert (end.loc[rows.index] == (t > cut)).all()
    assert fitted.score(part, "end", num_samples=10).attrs["holdout"] == "end"


def test_score_with_repeated_index_labels_and_empty_rows(fitted):
    # a concat without ignore_index crashed score; a series whose first row held no value had
    # its only observed time hidden, then was refused as empty (a review)
    a, b = make_frame(4, 20, seed=1), make_frame(4, 20, seed=2)
    both = pd.concat([a, b.assign(series_id="t" + b["series_id"])])
    assert both.index.duplicated().any()
    table = fitted.score(both, fraction=np.float32(0.3), num_samples=5)
    assert table.attrs["series"] == 8
    lone = pd.DataFrame({"series_id": ["z", "z"], "time": [1.0, 2.0],
                         "x": [np.nan, 100.0], "y": [np.nan, 100.2]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = fitted.score(pd.concat([a, lone], ignore_index=True), num_samples=5)
    assert out.attrs["series"] == 4  # z: one observed time, kept, nothing hidden


def test_score_on_tidy_zoned_data_and_its_refusals(dated):
    fc, tidy, _ = dated
    table = fc.score(tidy, fraction=0.25, num_samples=10)
    assert set(table.index) == {"x", "y"} and (table["n"] > 0).all()
    assert ((table["coverage"] >= 0) & (table["coverage"] <= 1)).all()
    with pytest.raises(ValueError, match="holdout must be one of"):
        fc.score(tidy, "middle")
    with pytest.raises(ValueError, match=r"fraction must be a number in \(0, 1\)"):
        fc.score(tidy, fraction=1.0)
    one = tidy.groupby(["series_id", "var"]).head(1)
    one = one[one.time == one.groupby("series_id").time.transform("min")]
    with pytest.raises(ValueError, match="nothing to score: every series of df is observed at "
                                         "one time only"):
        fc.score(one)


@pytest.mark.parametrize("channels", [["value"], ["channel", "value"]])
def test_score_reads_channels_named_value_or_channel(channels):
    """pandas' melt refused value_name="value" beside a channel called "value" (the periodic
    data's), so score failed on a run trained on it."""
    from types import SimpleNamespace

    from latentode.forecast.scoring import long_values

    df = pd.DataFrame({"id": ["a", "a", "b"], "t": [0.0, 1.0, 0.0],
                       **{c: [1.0 + i, np.nan, 3.0 + i] for i, c in enumerate(channels)}})
    spec = SimpleNamespace(tidy=False, id_col="id", time_col="t", channels=channels,
                           _value_columns=lambda frame, name: channels)
    out = long_values(df, SimpleNamespace(spec=spec))
    assert list(out.columns) == ["id", "t", "channel", "value"]
    assert out["channel"].tolist() == [c for c in channels for _ in range(2)]
    assert out["value"].tolist() == [v for i in range(len(channels)) for v in (1.0 + i, 3.0 + i)]


def test_a_fit_that_learned_little_warns_with_what_to_do(data):
    """fit returned a model no better than the channel means without a word (the default
    recipe's plateau)."""
    torch.set_num_threads(1)
    with pytest.warns(UserWarning, match=r"the model has learned little beyond the channel "
                                         r"means: val/mse \S+ is \S+ of what predicting each "
                                         r"channel's mean scores on the validation split .* "
                                         r"After 1 epochs: fit longer \(config_overrides "
                                         r"trainer\.max_epochs=2\) or with another seed") as seen:
        LatentODEForecaster({**TINY, "trainer.max_epochs": 1, "module.optimizer.lr": 1e-6}).fit(
            data)
    assert [w.filename for w in seen if "learned little" in str(w.message)] == [__file__]


def test_an_early_stopped_fit_that_learned_little_is_not_told_to_fit_fewer_epochs(data):
    """A review: after early stopping at 2 of 10 epochs fit advised max_epochs=4."""
    torch.set_num_threads(1)
    with pytest.warns(UserWarning, match=r"learned little .* After 2 epochs: training stopped "
                                         r"after 2 of 10 epochs \(early stopping, max_steps or "
                                         r"max_time\): fit again with another seed"):
        LatentODEForecaster({**TINY, "trainer.max_epochs": 10, "module.optimizer.lr": 1e-6,
                             "callbacks": "early_stopping",
                             "callbacks.early_stopping.patience": 1,
                             "callbacks.early_stopping.min_delta": 100}).fit(data)


@pytest.mark.parametrize("name", ["channel", "mean", "q0.9"])
def test_an_id_column_named_like_a_forecast_column_is_refused_before_training(data, name):
    """The forecasts' frames hold ``channel`` (wide data), ``mean``, quantile, ``sample`` and
    ``value`` columns beside the id and time: an id column named ``channel`` came back holding
    the channel names (every series' id lost, without a word)."""
    with pytest.raises(ValueError, match=rf"id_col='{re.escape(name)}' is also the name of a "
                       r"column of the forecasts' frames .*rename that column"):
        LatentODEForecaster(TINY).fit(data.rename(columns={"series_id": name}), id_col=name)


def test_names_the_forecasts_do_not_use_are_free():
    from latentode.data import TimeTransform
    from latentode.forecast.spec import DataSpec

    time = TimeTransform(kind="numeric", offset=0.0, scale=1.0)

    def spec(**kw):
        return DataSpec(**{"id_col": "id", "time_col": "t", "channels": ["a"], "time": time,
                           **kw})

    # tidy data: the channel column is the user's own, so "channel" is free, "value" is not
    spec(id_col="channel", channel_col="var", value_col="val").check_output_names()
    spec(channel_col="channel", value_col="value").check_output_names()
    for name in ("quality", "q1", "q50", "q0", "qnan"):  # no quantile is named so (0 < q < 1)
        spec(time_col=name).check_output_names()
    with pytest.raises(ValueError, match=r"channel_col='sample' is also"):
        spec(channel_col="sample", value_col="val").check_output_names()
    # made from a run or loaded (saved before the check): refused only where a frame clashes
    loaded = spec(id_col="value")
    loaded.check_no_clash(["mean", "q0.05"], "predict")
    with pytest.raises(ValueError, match=r"sample: this forecaster's id_col 'value' is a name "
                       r"its frame gives to a column of its own \(channel, sample, value\)"):
        loaded.check_no_clash(["sample", "value"], "sample")
    # a channel named like another's impute column: impute wrote x's quantile over it, its
    # observed values lost (a review)
    with pytest.raises(ValueError, match=r"impute: this forecaster's channel 'x_q0\.1' is a "
                                         r"name its frame gives to a column of its own"):
        spec(channels=["x", "x_q0.1"]).check_output_names()
    spec(channels=["x", "x_q0.1"]).check_no_clash(  # loaded: impute without quantiles is fine
        spec(channels=["x", "x_q0.1"]).impute_columns([]), "impute")
    with pytest.raises(ValueError, match=r"impute: this forecaster's channel 'x_q0\.1'"):
        loaded2 = spec(channels=["x", "x_q0.1"])
        loaded2.check_no_clash(loaded2.impute_columns([0.1, 0.9]), "impute")


def test_a_numeric_column_the_training_frame_lacked_is_said_to_be_unused(data, tmp_path):
    """With the channels named at fit (value_cols, ignore_cols, label_col), a later frame's new
    column (a vital added to the table) was silently left out; the training frame's own other
    columns (age, chosen out of the channels) stay quiet."""
    torch.set_num_threads(1)
    frame = data.assign(age=50.0)
    fc = LatentODEForecaster({**TINY, "trainer.max_epochs": 1}).fit(frame, value_cols=["x", "y"])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*not channels of the model")
        fc.predict(frame, horizon=1.0, n=1, num_samples=5)
        # impute's own columns and reset_index's are not new vitals (a review)
        filled = fc.impute(frame, quantiles=(0.1, 0.9), indicator=True, num_samples=5)
        fc.predict(filled.reset_index(), horizon=1.0, n=1, num_samples=5)
    fc.save(tmp_path / "fc")
    for model in (fc, LatentODEForecaster.load(tmp_path / "fc")):
        with pytest.warns(UserWarning, match=r"df has numeric column\(s\) \['RR'\] that the frame "
                          r"the model was fitted on had not: they are not channels of the model "
                          r"and are not used \(its channels: \['x', 'y'\]\); to model them"):
            model.predict(frame.assign(RR=15.0), horizon=1.0, n=1, num_samples=5)
