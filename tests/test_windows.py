"""Windows: long series cut into windows, each a series of its own (``split_windows``), in the
data module (after the split) and in the forecaster (conditioned on the last window)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from latentode import LatentODEForecaster
from latentode.data import LatentODEDataModule, from_dataframe, split_windows


def frame() -> pd.DataFrame:
    return pd.DataFrame({
        "series_id": ["a"] * 6 + ["b"] * 3,
        "time": [0.0, 0.5, 1.0, 1.5, 2.0, 3.1, 10.0, 10.2, 12.0],
        "x": np.arange(9.0),
        "age": [50.0] * 6 + [70.0] * 3,
    })


def test_windows_hold_exactly_the_points_in_their_span():
    ds = from_dataframe(frame(), static_cols=["age"])
    back_to_back = split_windows(ds, 1.0, min_points=1)
    assert back_to_back.ids == ["a#0", "a#1", "a#2", "a#3", "b#0", "b#2"]
    assert back_to_back.offsets.tolist() == [0, 2, 4, 5, 6, 8, 9]
    np.testing.assert_array_equal(back_to_back.raw_times, ds.raw_times)  # nothing lost
    np.testing.assert_array_equal(back_to_back.values, ds.values)
    assert back_to_back.static[:, 0].tolist() == [50, 50, 50, 50, 70, 70]
    overlapping = split_windows(ds, 2.0, stride=1.0, min_points=1)
    spans = {i: overlapping.raw_times[lo:hi].tolist() for i, lo, hi in zip(
        overlapping.ids, overlapping.offsets[:-1], overlapping.offsets[1:], strict=True)}
    assert spans == {"a#0": [0, 0.5, 1, 1.5], "a#1": [1, 1.5, 2], "a#2": [2, 3.1],
                     "a#3": [3.1], "b#0": [10, 10.2], "b#1": [12], "b#2": [12]}
    # model times stay on the data's clock; to_dataframe names each window
    np.testing.assert_array_equal(overlapping.times[:4], ds.times[:4])
    assert set(overlapping.to_dataframe()["series_id"]) == set(spans)


def test_short_windows_are_dropped_with_a_count():
    ds = from_dataframe(frame())
    with pytest.warns(UserWarning, match=r"3 window\(s\) of 1\.0 with fewer than 2 time points "
                                         r"were dropped \(3 of 9 points are in no kept window"):
        kept = split_windows(ds, 1.0)
    assert kept.ids == ["a#0", "a#1", "b#0"]
    # overlapping windows: a dropped window's points may all sit in kept ones (it said 3 of 7)
    seven = pd.DataFrame({"series_id": "a", "time": [0.0, 1, 2, 3, 9, 10, 11],
                          "x": np.arange(7.0)})
    with pytest.warns(UserWarning, match=r"were dropped \(0 of 7 points are in no kept window"):
        split_windows(from_dataframe(seven, time_scale=1), 2, stride=1)
    with pytest.raises(ValueError, match=r"no window of 0\.1 holds 2 time points"):
        split_windows(ds, 0.1)


def test_datetime_windows_take_durations():
    df = frame().assign(time=pd.Timestamp("2025-03-01") + pd.to_timedelta(frame().time, "h"))
    ds = from_dataframe(df)
    assert split_windows(ds, "1h", min_points=1).ids == ["a#0", "a#1", "a#2", "a#3", "b#0",
                                                         "b#2"]
    assert split_windows(ds, pd.Timedelta(minutes=60), min_points=1).offsets.tolist() == [
        0, 2, 4, 5, 6, 8, 9]
    with pytest.raises(ValueError, match=r"window=24 is a bare number, but the times are "
                                         r"datetimes: give a duration with its unit"):
        split_windows(ds, 24)
    with pytest.raises(ValueError, match="must be a number in the data's time units"):
        split_windows(from_dataframe(frame()), pd.Timedelta("1h"))
    with pytest.warns(UserWarning, match="longer than window=1.0: the points between windows"):
        split_windows(from_dataframe(frame()), 1.0, stride=2.0, min_points=1)
    with pytest.raises(ValueError, match="window must be a positive time span"):
        split_windows(from_dataframe(frame()), -1.0)


def test_datamodule_splits_series_before_windowing():
    rng = np.random.default_rng(0)
    rows = [(f"s{s}", t, np.sin(t) + rng.normal(0, 0.1)) for s in range(20)
            for t in np.sort(rng.uniform(0, 10, 40))]
    ds = from_dataframe(pd.DataFrame(rows, columns=["series_id", "time", "x"]))
    dm = LatentODEDataModule(ds, batch_size=4, window=2.5, time_origin="series")
    dm.setup()
    owners = {name: {i.split("#")[0] for i in part.ids} for name, part in dm.splits.items()}
    assert owners["train"].isdisjoint(owners["val"] | owners["test"])
    assert owners["val"].isdisjoint(owners["test"])
    assert len(dm.splits["train"]) > len(dm.split_index["train"])  # several windows each
    spans = [np.ptp(dm.splits["train"].times[lo:hi]) for lo, hi in zip(
        dm.splits["train"].offsets[:-1], dm.splits["train"].offsets[1:], strict=True)]
    assert max(spans) < 2.5
    assert float(next(iter(dm.train_dataloader())).times[-1]) < 2.5
    # the test plot draws windows of different series (it drew four windows of one series)
    from latentode.lit.plots import _windows_of_distinct_series

    test = dm.splits["test"]
    chosen = _windows_of_distinct_series(test, 4)
    parents = [test.ids[i].split("#")[0] for i in chosen]
    assert len(chosen) == 4 and len(set(parents)) == min(4, len(set(owners["test"])))
    with pytest.warns(UserWarning, match="data.time_origin=series"):  # windows: own starts
        LatentODEDataModule(ds, batch_size=4, window=2.5).setup()
    with pytest.raises(ValueError, match="window_stride needs a window"):
        LatentODEDataModule(ds, window_stride=1.0)


def test_forecaster_trained_on_windows_conditions_on_the_last_window():
    rng = np.random.default_rng(1)
    rows = [(f"s{s}", t, np.sin(t + s) + rng.normal(0, 0.05)) for s in range(12)
            for t in np.sort(rng.uniform(0, 12, 60))]
    df = pd.DataFrame(rows, columns=["series_id", "time", "x"])
    torch.set_num_threads(1)
    fc = LatentODEForecaster({"data.window": 3.0, "model.latents": 4, "model.gen_units": 16,
                              "model.encoder.hidden": 8, "model.encoder.z0_units": 16,
                              "data.batch_size": 8, "trainer.max_epochs": 1,
                              "callbacks.progress_bar.refresh_rate": 0}).fit(df)
    assert fc.spec.train_span <= 3.0
    assert fc.spec.time.scale == 1.0  # a window of 3 units needs no rescaling
    # no per-series factor on windows: it pooled every asked window's residuals into one
    # factor, solved every window of a history and drew other z0 samples (a review)
    assert fc.calibration.series_kappa is None
    part = df[df.series_id.isin(["s0", "s1"])]
    last = part.groupby("series_id").time.transform("max")
    recent = part[part.time >= last - 3.0]
    whole = fc.predict(part, horizon=1.0, n=2, num_samples=5)
    pd.testing.assert_frame_equal(whole, fc.predict(recent, horizon=1.0, n=2, num_samples=5))
    # times inside the history: conditioned on the training-style window they fall in
    s0 = part[part.series_id == "s0"]
    t0 = s0.time.min()
    asked = {"s0": [t0 + 4.0, t0 + 5.0]}
    inside = (s0.time >= t0 + 3.0) & (s0.time < t0 + 6.0)
    base = fc.predict(s0, times=asked, num_samples=5)
    moved_out = s0.assign(x=np.where(inside | (s0.time == t0), s0.x, s0.x + 10.0))
    pd.testing.assert_frame_equal(base, fc.predict(moved_out, times=asked, num_samples=5))
    moved_in = s0.assign(x=np.where(inside, s0.x + 10.0, s0.x))
    assert not np.allclose(base["mean"], fc.predict(moved_in, times=asked, num_samples=5)["mean"])
    risk_input = fc.impute(s0.assign(x=np.where(inside, np.nan, s0.x)), num_samples=5)
    assert risk_input["x"].notna().all()  # a window with no observation borrows its neighbours
    with pytest.warns(UserWarning, match=r"up to \d+\.\dx the training windows' span past the "
                                         r"last observation \(series 's0'\)"):
        fc.predict(s0, times=[s0.time.max() + 7.0], num_samples=2)  # > 2 windows ahead
    # the plot shades the last window: the observations the forecast is conditioned on
    fig = fc.plot(part, whole, series=["s0"])
    (span,) = fig.axes[0].patches  # axvspan's patch (the band is a collection)
    # its x range in data units (a Rectangle from matplotlib 3.9, a Polygon before)
    x = span.get_patch_transform().transform(span.get_path().vertices)[:, 0]
    assert x.min() == pytest.approx(s0.time[s0.time >= s0.time.max() - 3.0].min())
    assert x.max() == pytest.approx(s0.time.max())
    assert "conditioning window" in [t.get_text() for t in fig.legends[0].get_texts()]


def test_the_automatic_time_unit_is_chosen_for_the_window():
    """5-day series in 24 h windows: a day is the model's unit (not 5 days, which left each
    window 0.2 units long); a time_scale the user gave is kept."""
    rng = np.random.default_rng(2)
    rows = [(f"s{s}", pd.Timestamp("2025-01-01") + pd.Timedelta(hours=float(h)), np.sin(h))
            for s in range(10) for h in np.sort(rng.uniform(0, 120, 50))]
    df = pd.DataFrame(rows, columns=["series_id", "time", "x"])
    auto = from_dataframe(df)
    assert auto.time_transform.auto and auto.time_transform.scale > 100
    dm = LatentODEDataModule(auto, batch_size=4, window="24h", time_origin="series")
    dm.setup()
    assert dm.dataset.time_transform.scale == 24.0 and not dm.dataset.time_transform.auto
    spans = np.maximum.reduceat(dm.splits["train"].times, dm.splits["train"].offsets[:-1]) - \
        np.minimum.reduceat(dm.splits["train"].times, dm.splits["train"].offsets[:-1])
    assert 0.5 < spans.max() < 1.0
    np.testing.assert_allclose(dm.dataset.time_transform.to_user(dm.dataset.times).astype(
        "datetime64[ns]").astype(np.int64), auto.raw_times.astype("datetime64[ns]").astype(
        np.int64), atol=1e3)  # the same instants, to the microsecond
    given = from_dataframe(df, time_scale=48)
    dm = LatentODEDataModule(given, batch_size=4, window="24h", time_origin="series")
    dm.setup()
    assert dm.dataset.time_transform.scale == 48.0


def test_windows_that_would_not_fit_in_memory_are_refused_before_they_are_built(monkeypatch):
    """Overlapping windows copy each point into every window holding it: window 24 every 1 on
    a 1e6-row table made 21x the points and took 6.4 GB in this call; a 1e7-row one would have
    needed ~60 GB and been killed. The copies' size is estimated before anything is built."""
    from latentode.data import windows

    ds = from_dataframe(frame())
    points = 24  # window 2 every 0.5 on these 9 points (min_points=1: all kept)
    monkeypatch.setattr(windows, "WINDOW_WARN_BYTES", 100)
    monkeypatch.setattr(windows, "_physical_memory", lambda: 1024**3 * 64)
    with pytest.warns(UserWarning, match=r"copy each time point into 2\.7 windows on average "
                                         r"\(24 points from 9\).*window_stride"):
        assert len(split_windows(ds, 2.0, stride=0.5, min_points=1).times) == points
    monkeypatch.setattr(windows, "_physical_memory", lambda: 1000)
    with pytest.raises(MemoryError, match=r"on a machine with 0 GiB\. A longer window_stride"):
        split_windows(ds, 2.0, stride=0.5, min_points=1)
    monkeypatch.setattr(windows, "_physical_memory", lambda: None)  # unknown: warn only
    with pytest.warns(UserWarning, match="GiB to build them"):
        split_windows(ds, 2.0, stride=0.5, min_points=1)
