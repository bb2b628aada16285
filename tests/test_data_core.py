"""The data core: ``from_dataframe`` round trips and errors, collation, tasks, splits, data module.

* Round trips: ``from_dataframe(df).to_dataframe()`` gives back ``df`` sorted by (id, time),
  dtypes included, for every kind of id, time, label and covariate the loader accepts.
* Every refused input raises with a message that names the column, series, time or value.
* ``collate`` equals a slow per-series Python reference on random ragged data.
* Tasks pick exactly the encoder / target points their docstrings promise.
* Splits and ``LatentODEDataModule`` split by series, fit the scaler on training data only and
  give fixed validation masks but fresh training masks.
"""

from __future__ import annotations

import re
import tracemalloc
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from latentode.data import (
    Batch,
    ChannelScaler,
    Collator,
    Extrapolation,
    Folds,
    Interpolation,
    IrregularDataset,
    LatentODEDataModule,
    Mixed,
    TimeTransform,
    collate,
    from_dataframe,
    split_indices,
)
from latentode.data.batch import distinct_in
from latentode.data.frame import uncertainty_pairs

# --------------------------------------------------------------------------------------------
# helpers


def assert_exact(left: pd.DataFrame, right: pd.DataFrame) -> None:
    """Frames equal value for value (``assert_frame_equal`` alone allows rtol 1e-5 on floats)."""
    pd.testing.assert_frame_equal(left, right, check_exact=True)


def sorted_frame(df: pd.DataFrame, id_col: str = "series_id", time_col: str = "time"):
    return df.sort_values([id_col, time_col], kind="stable").reset_index(drop=True)


def small_frame() -> pd.DataFrame:
    """Two integer-id series, out of order, one time point with no observation at all."""
    return pd.DataFrame(
        {
            "series_id": [2, 1, 1, 2, 2, 1],
            "time": [0.5, 1.0, 0.0, 0.1, 3.0, 2.5],
            "a": [1.0, 2.0, np.nan, 4.0, 0.5, -1.0],
            "b": [np.nan, 1.0, np.nan, 2.0, np.nan, 7.0],
        }
    )


def random_frame(
    seed: int,
    n_series: int = 12,
    max_len: int = 15,
    n_channels: int = 3,
    p_missing: float = 0.5,
) -> pd.DataFrame:
    """Ragged series on partly shared time stamps, random missingness, some all-NaN rows.

    Rows come out shuffled; every series has at least one observed value.
    """
    rng = np.random.default_rng(seed)
    grid = np.round(np.arange(0, 10, 0.5), 6)  # stamps many series share
    rows = []
    for s in range(n_series):
        n = int(rng.integers(1, max_len + 1))
        n_shared = int(rng.integers(0, n + 1))
        shared = rng.choice(grid, size=min(n_shared, len(grid)), replace=False)
        own = rng.uniform(0, 10, size=n - len(shared))
        times = np.unique(np.concatenate([shared, own]))
        values = rng.normal(size=(len(times), n_channels)) * 3 + np.arange(n_channels)
        values[rng.random(values.shape) < p_missing] = np.nan
        if np.isnan(values).all():
            values[rng.integers(len(times)), rng.integers(n_channels)] = rng.normal()
        for t, v in zip(times, values, strict=True):
            rows.append({"series_id": s * 7 + 3, "time": t, **{f"c{d}": v[d] for d in
                                                                range(n_channels)}})
    df = pd.DataFrame(rows)
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def reference_collate(ds: IrregularDataset, indices) -> dict[str, np.ndarray]:
    """The obvious slow implementation: loop over series, points and channels."""
    series = [ds.series(int(i)) for i in indices]
    union = sorted({float(t) for s in series for t in s["times"]})
    column = {t: k for k, t in enumerate(union)}
    shape = (len(series), len(union), ds.n_channels)
    values, mask = np.zeros(shape), np.zeros(shape, dtype=bool)
    labels = np.full(shape[:2], np.nan) if ds.label_kind == "time" else None
    for b, s in enumerate(series):
        for p, t in enumerate(s["times"]):
            k = column[float(t)]
            for d in range(ds.n_channels):
                v = s["values"][p, d]
                if not np.isnan(v):
                    values[b, k, d] = v
                    mask[b, k, d] = True
            if labels is not None:
                labels[b, k] = s["label"][p]
    return {"times": np.asarray(union), "values": values, "mask": mask, "labels": labels}


def point_mask(mask: torch.Tensor) -> np.ndarray:
    """(B, T) True where a series has at least one observed channel at that grid time."""
    return mask.numpy().any(-1)


def assert_whole_points(batch: Batch) -> None:
    """Encoder and target masks hold whole time points: all of its observed channels or none."""
    for m in (batch.encoder_mask, batch.target_mask):
        assert (m & ~batch.mask).sum() == 0  # subset of the observations
        chosen = point_mask(m)
        assert torch.equal(m[torch.from_numpy(chosen)], batch.mask[torch.from_numpy(chosen)])


# --------------------------------------------------------------------------------------------
# 1. round trips


def test_round_trip_numeric_times_integer_ids_and_all_nan_rows():
    df = small_frame()
    ds = from_dataframe(df)
    out = ds.to_dataframe()
    assert_exact(out, sorted_frame(df))
    # the point (series 1, time 0.0) has no observation in any channel and is kept
    assert len(ds.times) == len(df) and list(ds.lengths) == [3, 3]
    assert ds.ids == [1, 2] and ds.channels == ["a", "b"]
    assert np.isnan(ds.values[0]).all()
    assert ds.times.dtype == np.float64 and ds.values.dtype == np.float64


def test_round_trip_string_ids_and_column_names():
    df = small_frame().assign(series_id=["b", "a", "a", "b", "b", "a"])
    df = df.rename(columns={"series_id": "patient", "time": "hours"})
    ds = from_dataframe(df, id_col="patient", time_col="hours")
    assert_exact(ds.to_dataframe(), sorted_frame(df, "patient", "hours"))
    assert ds.ids == ["a", "b"]


def test_round_trip_integer_times_and_categorical_ids():
    df = small_frame().assign(time=[5, 10, 0, 1, 30, 25])
    out = from_dataframe(df).to_dataframe()
    assert_exact(out, sorted_frame(df))
    assert out["time"].dtype == np.int64
    cat = df.assign(series_id=pd.Categorical(["u", "v", "v", "u", "u", "v"]))
    assert_exact(from_dataframe(cat).to_dataframe(), sorted_frame(cat))


def test_round_trip_object_dtype_string_ids():
    df = small_frame().assign(
        series_id=pd.Series(["x1", "x0", "x0", "x1", "x1", "x0"], dtype=object)
    )
    out = from_dataframe(df).to_dataframe()
    assert out["series_id"].dtype == object
    assert_exact(out, sorted_frame(df))


@pytest.mark.parametrize("unit", ["ns", "us", "s"])
def test_round_trip_datetime_times_keeps_dtype_exactly(unit):
    stamps = pd.to_datetime(
        ["2020-01-01 00:00:00", "2020-01-02 03:00:00", "2019-12-31 23:59:59",
         "2021-05-01 00:00:00", "2020-01-01 00:00:01", "1995-03-04 05:06:07"]
    ).as_unit(unit)
    if unit == "ns":  # a nanosecond that a float64 "hours since epoch" could not hold
        stamps = stamps + pd.to_timedelta([1, 0, 3, 0, 0, 7], unit="ns")
    df = small_frame().assign(time=stamps)
    ds = from_dataframe(df)
    out = ds.to_dataframe()
    assert out["time"].dtype == f"datetime64[{unit}]"
    assert_exact(out, sorted_frame(df))
    assert ds.times.dtype == np.float64 and ds.time_transform.kind == "datetime"
    # decades of hours are rescaled: the longest series spans exactly one model unit
    starts = ds.offsets[:-1]
    spans = np.maximum.reduceat(ds.times, starts) - np.minimum.reduceat(ds.times, starts)
    assert ds.times.min() == 0.0 and max(spans) == pytest.approx(1.0, abs=1e-12)


def test_round_trip_timezone_aware_datetimes():
    stamps = pd.date_range("2021-03-27 22:00", periods=6, freq="37min", tz="Europe/Berlin")
    df = small_frame().assign(time=stamps)
    out = from_dataframe(df).to_dataframe()
    assert_exact(out, sorted_frame(df))


def test_zone_aware_times_are_kept_as_datetimes_not_objects():
    """Zone-aware stamps were held as an object array of Timestamps (128 bytes each) and read
    back through it, one by one: from_dataframe took 16-20 s at 1e6 rows against 1.1-1.4 s for
    numbers. They stay a DatetimeArray now; the model times and round trips are the same."""
    stamps = pd.date_range("2021-03-27 22:00", periods=6, freq="37min", tz="Europe/Berlin")
    df = small_frame().assign(time=stamps)
    ds = from_dataframe(df)
    assert isinstance(ds.raw_times.dtype, pd.DatetimeTZDtype)
    as_objects = ds.time_transform.to_model(np.asarray(ds.raw_times, dtype=object))
    np.testing.assert_array_equal(ds.times, as_objects)
    np.testing.assert_array_equal(ds.subset([1]).raw_times, ds.series(1)["raw_times"])
    assert_exact(ds.subset([0, 1]).to_dataframe(), sorted_frame(df))


def test_naive_times_given_to_zoned_data_are_wall_clock_times_there():
    # a forecaster fitted on aware times and asked with a naive frame read the naive stamps
    # as UTC: across the daylight-saving change the model times moved by an hour, silently
    aware = pd.Series(pd.date_range("2024-03-09 20:00", periods=12, freq="2h",
                                    tz="America/New_York"))
    transform = TimeTransform.fit(aware)
    naive = aware.dt.tz_localize(None)
    np.testing.assert_array_equal(transform.to_model(naive), transform.to_model(aware))
    assert transform.to_model(naive[[0]])[0] == transform.to_model(
        [transform.local(naive[0])])[0]  # as a naive times= stamp is read


def test_zoned_times_given_to_naive_data_are_refused():
    # a model fitted on naive times, asked with aware ones: they were converted to UTC and
    # compared with the naive wall clock, moving the history by the zone's offset, silently
    naive = pd.Series(pd.date_range("2024-03-09 20:00", periods=12, freq="2h"))
    transform = TimeTransform.fit(naive)
    aware = naive.dt.tz_localize("America/New_York", nonexistent="shift_forward")
    with pytest.raises(ValueError, match=r"times in zone America/New_York given to data whose "
                       r"times carry no zone .*tz_localize\(None\)"):
        transform.to_model(aware)
    with pytest.raises(ValueError, match="carry no zone"):
        transform.to_model([transform.local(pd.Timestamp("2024-03-10 12:00", tz="UTC"))])
    # aware data keep converting any zone
    zoned = TimeTransform.fit(aware)
    np.testing.assert_allclose(zoned.to_model(aware.dt.tz_convert("UTC")), zoned.to_model(aware))


def test_round_trip_static_covariates_and_series_labels():
    df = small_frame().assign(
        age=lambda d: d["series_id"].map({1: 40.0, 2: 71.5}),
        sex=lambda d: d["series_id"].map({1: 0.0, 2: 1.0}),
        died=lambda d: d["series_id"].map({1: 1.0, 2: 0.0}),
    )
    ds = from_dataframe(df, value_cols=["a", "b"], static_cols=["age", "sex"], label_col="died")
    assert ds.label_kind == "series"
    np.testing.assert_array_equal(ds.labels, [1.0, 0.0])
    np.testing.assert_array_equal(ds.static, [[40.0, 0.0], [71.5, 1.0]])
    assert ds.static_names == ["age", "sex"]
    assert_exact(ds.to_dataframe(), sorted_frame(df))
    # explicit label_per="series" gives the same
    ds2 = from_dataframe(df, value_cols=["a", "b"], static_cols=["age", "sex"],
                         label_col="died", label_per="series")
    assert_exact(ds2.to_dataframe(), sorted_frame(df))
    # covariates of other dtypes come back in them (an int age came back as float64: a review)
    typed = df.assign(age=df["age"].round().astype("int64"), sex=df["sex"].astype(bool),
                      weight=df["series_id"].map({1: 70, 2: None}).astype("Int64"))
    out = from_dataframe(typed, value_cols=["a", "b"], static_cols=["age", "sex", "weight"],
                         label_col="died").to_dataframe()
    assert_exact(out[list(typed.columns)], sorted_frame(typed))


def test_tidy_series_on_their_own_clocks_need_memory_linear_in_the_rows():
    """The tidy pivot built every series x every distinct time (1M rows of smart meters: out of
    memory at 22.7 GB); now one row per (series, time) that occurs."""
    rng = np.random.default_rng(0)
    n, k = 1000, 30
    df = pd.DataFrame({"series_id": np.repeat(np.arange(n), 2 * k),
                       "time": np.repeat(rng.uniform(0, 1e3, n * k), 2),
                       "var": np.tile(["a", "b"], n * k), "val": rng.normal(size=2 * n * k)})
    tracemalloc.start()
    try:
        ds = from_dataframe(df, channel_col="var", value_col="val")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(ds.times) == n * k and ds.mask.all()
    assert peak < 100 * 2**20, f"{peak / 2**20:.0f} MiB"  # the cartesian table: ~1.8 GiB


def test_duplicates_from_float32_times_say_why():
    """MJDs stored as float32 collapse points 0.0001 days apart (a light-curve user's file)."""
    t = np.array([59000.1, 59000.1001, 59000.2], dtype=np.float32)
    df = pd.DataFrame({"series_id": ["a"] * 3, "mjd": t, "x": [1.0, 2.0, 3.0]})
    with pytest.warns(UserWarning, match=r"2 rows share .* into 1 row .* Column 'mjd' is "
                                         r"float32, which cannot "
                                         r"tell apart times closer than 0\.0039"):
        from_dataframe(df, time_col="mjd")
    tidy = df.assign(var="x").rename(columns={"x": "val"})
    with pytest.warns(UserWarning, match=r"repeated .* Column 'mjd' is float32"):
        from_dataframe(tidy, time_col="mjd", channel_col="var", value_col="val")


def test_labels_given_as_names_are_classes_in_sorted_order_and_round_trip():
    df = small_frame().assign(kind=lambda d: d["series_id"].map({1: "RRLyr", 2: "EB"}))
    ds = from_dataframe(df, value_cols=["a", "b"], label_col="kind")
    assert ds.label_names == ["EB", "RRLyr"] and ds.label_kind == "series"
    np.testing.assert_array_equal(ds.labels, [1.0, 0.0])  # series 1 is RRLyr
    out = ds.to_dataframe()
    assert out["kind"].tolist() == sorted_frame(df)["kind"].tolist()
    # unknown labels stay unknown; a categorical keeps its own order
    unknown = df.assign(kind=df["kind"].where(df["series_id"] == 1))
    ds = from_dataframe(unknown, value_cols=["a", "b"], label_col="kind")
    assert ds.label_names == ["RRLyr"] and np.isnan(ds.labels[1])
    assert ds.to_dataframe()["kind"].isna().sum() == 3
    ordered = df.assign(kind=pd.Categorical(df["kind"], categories=["RRLyr", "EB", "Cep"]))
    assert from_dataframe(ordered, value_cols=["a", "b"], label_col="kind").label_names == \
        ["RRLyr", "EB"]  # categories never seen are not classes
    mixed = df.assign(kind=df["series_id"].map({1: "RRLyr", 2: "1"}))
    with pytest.raises(ValueError, match=r"label column 'kind' mixes class numbers and names "
                                         r"\(e\.g\. 'RRLyr' in series 1"):
        from_dataframe(mixed, value_cols=["a", "b"], label_col="kind")


def test_round_trip_per_time_labels():
    df = small_frame().assign(y=[0.0, 1.0, 0.0, np.nan, 1.0, 1.0])
    ds = from_dataframe(df, label_col="y")  # auto: not constant within series -> per time
    assert ds.label_kind == "time" and ds.labels.shape == (len(df),)
    assert "y" not in ds.channels
    assert_exact(ds.to_dataframe(), sorted_frame(df))
    # a constant label can still be forced per time point
    const = small_frame().assign(y=1.0)
    ds = from_dataframe(const, label_col="y", label_per="time")
    assert ds.label_kind == "time"
    assert_exact(ds.to_dataframe(), sorted_frame(const))


def test_round_trip_random_frames():
    for seed in range(3):
        df = random_frame(seed)
        assert_exact(from_dataframe(df).to_dataframe(), sorted_frame(df))


def test_tidy_input_round_trips_to_the_equivalent_wide_frame():
    tidy = pd.DataFrame(
        {
            "sid": ["b", "a", "a", "a", "b", "b", "a"],
            "t": [1.0, 0.0, 0.0, 2.0, 1.0, 3.0, 4.0],
            "ch": ["hr", "bp", "hr", "bp", "bp", "hr", "hr"],
            "v": [5.0, 1.0, 2.0, 3.0, np.nan, 6.0, np.nan],  # (a, 4.0): nothing observed
            "age": [60.0, 30.0, 30.0, 30.0, 60.0, 60.0, 30.0],
        }
    )
    ds = from_dataframe(tidy, id_col="sid", time_col="t", channel_col="ch", value_col="v",
                        static_cols=["age"])
    assert ds.channels == ["hr", "bp"]  # order of first appearance
    wide = pd.DataFrame(
        {
            "sid": ["a", "a", "a", "b", "b"],
            "t": [0.0, 2.0, 4.0, 1.0, 3.0],
            "hr": [2.0, np.nan, np.nan, 5.0, 6.0],
            "bp": [1.0, 3.0, np.nan, np.nan, np.nan],
            "age": [30.0, 30.0, 30.0, 60.0, 60.0],
        }
    )
    assert_exact(ds.to_dataframe(), wide)
    # and the wide frame itself gives the same dataset
    again = from_dataframe(wide, id_col="sid", time_col="t", static_cols=["age"])
    assert_exact(again.to_dataframe(), wide)
    np.testing.assert_array_equal(again.values, ds.values)


def test_value_cols_none_picks_numeric_columns_but_the_reserved_ones():
    df = small_frame().assign(
        note=["x", "y", "z", "w", "v", "u"],  # text: not a channel
        flag=[True, False, True, True, False, False],  # booleans: not a channel
        age=lambda d: d["series_id"] * 10.0,  # static
        lab=lambda d: d["series_id"] - 1.0,  # label
        c=np.arange(6, dtype=np.int64),  # integers: a channel
    )
    with pytest.warns(UserWarning, match=r"2 non-numeric column\(s\) were not used"):
        ds = from_dataframe(df, static_cols=["age"], label_col="lab")
    assert ds.channels == ["a", "b", "c"]
    assert ds.static_names == ["age"] and ds.label_kind == "series"
    expected = sorted_frame(df)[["series_id", "time", "a", "b", "c", "age", "lab"]]
    assert_exact(ds.to_dataframe(), expected.astype({"c": np.float64}))


def test_a_tidy_frame_read_as_wide_is_refused_not_averaged_into_one_channel():
    """A lab's long layout (id, time, channel, value) without channel_col: the rows sharing a
    (series, time) are different channels; averaging them trained on mixed-up data."""
    rng = np.random.default_rng(0)
    rows = [(s, t, ch, rng.normal()) for s in range(3) for t in range(4)
            for ch in ("theta", "omega")]
    tidy = pd.DataFrame(rows, columns=["trajectory", "t_s", "channel", "value"])
    with pytest.raises(ValueError, match=r"looks tidy .* column 'channel' tells them apart "
                                         r"\(2 values.*channel_col='channel' value_col='value'"):
        from_dataframe(tidy, "trajectory", "t_s")
    ds = from_dataframe(tidy, "trajectory", "t_s", channel_col="channel", value_col="value")
    assert sorted(ds.channels) == ["omega", "theta"]
    # a text column that does not tell duplicate rows apart is only left out, as before
    dup = pd.concat([tidy[tidy.channel == "theta"]] * 2).assign(channel="theta")
    with pytest.warns(UserWarning, match=r"non-numeric column\(s\) were not used"):
        assert from_dataframe(dup, "trajectory", "t_s").channels == ["value"]


def test_durations_as_times_say_how_to_make_numbers():
    df = pd.DataFrame({"series_id": [1, 1, 2], "time": pd.to_timedelta([0, 5, 3], unit="s"),
                       "x": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match=r"durations \(timedelta64\).*\.dt\.total_seconds\(\)"
                                         r".*Not pd\.to_numeric"):
        from_dataframe(df)
    df["time"] = df["time"].dt.total_seconds()
    assert len(from_dataframe(df)) == 2


def test_values_the_float32_model_cannot_hold_are_refused_by_channel_and_series():
    df = random_frame(3, n_series=12, max_len=6, p_missing=0.2)
    df.loc[df.index[3], "c0"] = 1e300  # squares overflow: cannot be standardised
    with pytest.raises(ValueError, match=r"channel 'c0' has values too large to standardise "
                                         r"\(largest \|value\| 1e\+300\)"):
        LatentODEDataModule(from_dataframe(df), batch_size=4).setup()
    df.loc[df.index[3], "c0"] = 1e39  # fine once standardised, not in float32 as it is
    dm = LatentODEDataModule(from_dataframe(df), batch_size=4, scale=False)
    series = int(df.loc[df.index[3], "series_id"])
    with pytest.raises(ValueError, match=rf"channel 'c0' of series {series} \((train|val|test) "
                                         r"split\) holds 1e\+39, beyond float32's range"):
        dm.setup()
    LatentODEDataModule(from_dataframe(df), batch_size=4).setup()  # standardised: fine


def test_unscaled_channels_far_from_unit_spread_are_warned_about():
    """Fed unscaled (``scale=False``) in units x1000 or x0.01, the default run stayed at the
    channel means whatever the clip or obs_std (docs/results.md): said before training."""
    df = random_frame(5, n_series=20, max_len=10, p_missing=0.2)

    def setup(frame: pd.DataFrame, scale: bool = False) -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            LatentODEDataModule(from_dataframe(frame), batch_size=4, scale=scale).setup()
        return [str(w.message) for w in caught if "far from unit spread" in str(w.message)]

    assert setup(df) == []
    wide = df.assign(c1=df["c1"] * 1000)
    said = setup(wide)
    assert len(said) == 1 and re.search(r"data\.scale=false, and the training series' "
                                        r"channel\(s\) 'c1' \(std [\d.]+e\+03, mean ", said[0])
    assert "'c0'" not in said[0] and "Keep data.scale=true" in said[0]
    tiny = df.assign(**{c: df[c] * 0.001 for c in ("c0", "c1", "c2")})
    assert all(f"'{c}'" in " ".join(setup(tiny)) for c in ("c0", "c1", "c2"))
    assert setup(df.assign(c2=df["c2"] * 0.001)) == []  # narrow beside unit channels: fine
    said = setup(df.assign(c0=df["c0"] + 1000))  # unit spread far from zero (a review)
    assert len(said) == 1 and re.search(r"'c0' \(std [\d.]+, mean (999|1\.0\de\+03)\)", said[0])
    assert setup(wide, scale=True) == []


def test_an_interpolation_count_that_holds_nothing_out_warns():
    ds = from_dataframe(random_frame(4, n_series=20, max_len=8, p_missing=0.0))
    with pytest.warns(UserWarning, match=r"Interpolation\(count=50\) shows the encoder every "
                                         r"point of 100% of the training series"):
        LatentODEDataModule(ds, task=Interpolation(count=50), batch_size=4).setup()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LatentODEDataModule(ds, task=Interpolation(fraction=0.5), batch_size=4).setup()
        LatentODEDataModule(ds, task=Interpolation(count=2), batch_size=4).setup()


def test_columns_constant_within_every_series_are_flagged_as_likely_covariates():
    df = random_frame(6, n_series=10, max_len=8, p_missing=0.0)
    df["age"] = df["series_id"] * 3.0  # per patient
    gappy = df.copy()
    gappy.loc[gappy.index[:5], "age"] = np.nan  # missing now and then, still constant
    with pytest.warns(UserWarning, match=r"column\(s\) \['age'\] never change within a "
                                         r"series: static covariates or labels\?"):
        ds = from_dataframe(gappy)
    assert "age" in ds.channels  # a warning only: the user decides
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "age" not in from_dataframe(df, static_cols=["age"]).channels


def test_a_column_named_as_another_ones_uncertainty_is_flagged():
    # a light curve's flux_err was modelled as a channel without a word (a review)
    df = random_frame(6, n_series=10, max_len=8, p_missing=0.0)
    df = df.rename(columns={"c0": "flux", "c1": "flux_err", "c2": "magerr"})
    df["mag"] = df["flux"] * 2
    with pytest.warns(UserWarning, match=r"named like measurement uncertainties \('flux_err' of "
                                         r"'flux', 'magerr' of 'mag'\) .*value_cols=\[\.\.\.\]"):
        ds = from_dataframe(df)
    assert "flux_err" in ds.channels  # a warning only
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_dataframe(df, value_cols=["flux", "mag"])
        from_dataframe(df.rename(columns={"flux_err": "flux_rate"}).drop(columns="magerr"))
    assert uncertainty_pairs(["y", "sigma_y", "e_temp", "temp", "time", "ages", "age"]) == [
        ("sigma_y", "y"), ("e_temp", "temp")]
    # deltas and spreads are features as often as not (a review's false positives)
    assert uncertainty_pairs(["hr", "d_hr", "hr_std", "x", "x_sd", "temp_e", "f", "f_ivar"]) == [
        ("f_ivar", "f")]
    # tidy data: the channels' names (they were not checked)
    tidy = df.melt(id_vars=["series_id", "time"], var_name="var", value_name="val").dropna()
    with pytest.warns(UserWarning, match=r"channel\(s\) of 'var' named like measurement "
                                         r"uncertainties .*leave their rows out: "
                                         r"df\[~df\['var'\]\.isin\(\['flux_err', 'magerr'\]\)\]"):
        from_dataframe(tidy, channel_col="var", value_col="val")
    # a tidy repeat is named with an example, as the wide one is
    twice = pd.concat([tidy.iloc[:1], tidy], ignore_index=True)
    with pytest.warns(UserWarning, match=r"\d+ repeated \(series, time, channel\) observations "
                                         r"were averaged, e\.g\. series \d+, channel 'flux' at "
                                         r"time \S+ \(duplicates='mean'; duplicates='error'"):
        from_dataframe(twice, channel_col="var", value_col="val")


def test_very_long_training_series_point_to_windows():
    # 6 sensors of 27k-48k points trained one optimiser step per epoch without a word
    t = np.arange(6000.0)
    df = pd.DataFrame({"series_id": np.repeat([1, 2], 6000), "time": np.tile(t, 2),
                       "v": np.sin(np.tile(t, 2) / 50)})
    ds = from_dataframe(df, time_scale=1.0)
    with pytest.warns(UserWarning, match=r"the training series are long \(up to 6000 "
                                         r"observation times, median 6000, 2 series\).*1 "
                                         r"optimiser step\(s\) per epoch.*data\.window="):
        LatentODEDataModule(ds, val_fraction=0.0, test_fraction=0.0).setup()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LatentODEDataModule(ds, val_fraction=0.0, test_fraction=0.0, window=500.0,
                            time_origin="series").setup()
        short = from_dataframe(df[df.time < 4999], time_scale=1.0)
        LatentODEDataModule(short, val_fraction=0.0, test_fraction=0.0).setup()
        # a grid kept whole, 50 of its 6000 rows observed: rows without a value do not count
        sparse = df.assign(v=df["v"].where(df["time"] % 120 == 0))
        kept = from_dataframe(sparse, time_scale=1.0)
        assert len(kept.times) == 12000
        LatentODEDataModule(kept, val_fraction=0.0, test_fraction=0.0).setup()


def test_dataset_repr_is_a_summary():
    ds = from_dataframe(random_frame(5, n_series=30, max_len=40))
    text = repr(ds)
    assert text.startswith(f"IrregularDataset(30 series, {len(ds.times)} time points, "
                           "channels=['c0', 'c1', 'c2'], ")
    assert "of values observed, times 0" in text and len(text) < 300


def test_time_transform_rescales_large_ranges_only():
    moderate = np.array([3.0, 5.0, 8.0])
    tt = TimeTransform.fit(moderate)
    assert tt.kind == "numeric" and tt.scale == 1.0 and tt.offset == 3.0
    np.testing.assert_array_equal(tt.to_model(moderate), [0.0, 2.0, 5.0])  # shifted only
    for raw in (
        np.array([0.0, 1e-3, 4e-4]),  # span below 0.01: stretched
        np.array([0.0, 12.5, 48.0]),  # hours since admission: each stay on [0, 1]
        np.array([1.6e9, 1.6e9 + 3 * 365 * 86400.0, 1.65e9]),  # seconds over three years
        np.array([0.0, 1e8]),
    ):
        tt = TimeTransform.fit(raw)
        model = tt.to_model(raw)
        assert model.dtype == np.float64
        assert model.min() == 0.0 and model.max() == 1.0
        np.testing.assert_allclose(tt.to_user(model), raw, rtol=1e-14, atol=0)
    constant = TimeTransform.fit(np.array([7.0, 7.0]))
    assert constant.scale == 1.0 and constant.to_model(np.array([7.0]))[0] == 0.0
    # integer seconds over years, through from_dataframe
    df = small_frame().assign(time=[0, 86400 * 365 * 5, 17, 3600, 86400 * 400, 99])
    ds = from_dataframe(df)
    starts = ds.offsets[:-1]
    spans = np.maximum.reduceat(ds.times, starts) - np.minimum.reduceat(ds.times, starts)
    assert ds.times.dtype == np.float64 and ds.times.min() == 0.0
    assert max(spans) == pytest.approx(1.0, abs=1e-12)


def test_automatic_time_scale_is_the_longest_series_span():
    """Series on one absolute clock (48-hour stays admitted ten days apart): each stay, not the
    whole calendar, sets the model's unit, so a stay is not squeezed into a sliver of [0, 1]."""
    hours = np.array([0.0, 20.0, 48.0, 240.0, 250.0, 270.0])
    df = small_frame().assign(series_id=list("aaabbb"), time=hours)  # 0-48 h and 240-270 h
    ds = from_dataframe(df)
    assert ds.time_transform.scale == 48.0 and ds.time_transform.offset == 0.0
    np.testing.assert_allclose(ds.times, hours / 48.0)
    stamps = pd.Timestamp("2024-03-01") + pd.to_timedelta(hours, unit="h")
    assert from_dataframe(df.assign(time=stamps)).time_transform.scale == 48.0
    # without series the whole span counts, as before
    assert TimeTransform.fit(hours).scale == 270.0
    assert TimeTransform.fit(hours, starts=np.array([0, 3])).scale == 48.0


def test_time_scale_sets_the_model_unit_and_round_trips():
    """``time_scale`` replaces the automatic choice: 48-hour records on [0, 1] (the paper code's
    PhysioNet time axis), user times back exactly, also for datetimes in hours."""
    df = small_frame().assign(time=[0.5, 48.0, 3.0, 12.0, 24.0, 36.0])
    ds = from_dataframe(df, time_scale=48)
    assert ds.time_transform.scale == 48.0 and ds.time_transform.offset == 0.5
    np.testing.assert_allclose(ds.times, (np.array(sorted_frame(df)["time"]) - 0.5) / 48)
    assert_exact(ds.to_dataframe()[["series_id", "time"]],
                 sorted_frame(df)[["series_id", "time"]])
    assert from_dataframe(df).time_transform.scale == 45.0  # by default: the longest series
    start = pd.Timestamp("2024-01-01")
    stamps = df.assign(time=start + pd.to_timedelta(df["time"], unit="h"))
    days = from_dataframe(stamps, time_scale=24)  # hours, then one model unit per day
    np.testing.assert_allclose(days.times, ds.times * 2, rtol=1e-12)
    assert_exact(days.to_dataframe()[["time"]], sorted_frame(stamps)[["time"]])
    for bad in (0, -1.0, float("nan"), "48"):
        with pytest.raises(ValueError, match="time_scale must be a positive number"):
            from_dataframe(df, time_scale=bad)


def test_time_transform_datetimes_round_trip_within_one_microsecond():
    """``to_user(to_model(t))`` is within 1 us, not exact to the ns: float64 "hours since the
    epoch" resolve ~0.1 us. (``to_dataframe`` is exact: it keeps the raw stamps.)"""
    rng = np.random.default_rng(0)
    lo, hi = pd.Timestamp("1970-01-01").value, pd.Timestamp("2040-01-01").value
    nanos = np.sort(rng.integers(lo, hi, 2000))
    stamps = pd.Series(pd.to_datetime(nanos))
    for unit in (None, "s", "D"):
        tt = TimeTransform.fit(stamps, unit=unit)
        assert tt.unit == (unit or "h")
        model = tt.to_model(stamps)
        assert model.dtype == np.float64 and model.min() == 0.0 and model.max() == 1.0
        back = tt.to_user(model)
        assert back.dtype == np.dtype("datetime64[ns]")
        assert np.abs(back.astype(np.int64) - nanos).max() < 1000
    # a moderate datetime span (six hours) keeps hours as they are, shifted to 0
    day = pd.Series(pd.date_range("2020-01-01", periods=5, freq="90min"))
    tt = TimeTransform.fit(day)
    np.testing.assert_array_equal(tt.to_model(day), [0.0, 1.5, 3.0, 4.5, 6.0])
    np.testing.assert_array_equal(tt.to_user(tt.to_model(day)), day.to_numpy())


# --------------------------------------------------------------------------------------------
# 2. duplicates


def test_duplicates_mean_is_nan_aware_and_warns_with_count():
    df = pd.DataFrame(
        {
            "series_id": [1, 1, 1, 2, 2, 1],
            "time": [0.0, 1.0, 1.0, 0.0, 0.0, 1.0],
            "a": [1.0, 2.0, 4.0, 5.0, np.nan, 9.0],
            "b": [np.nan, np.nan, 3.0, np.nan, 8.0, np.nan],
        }
    )
    # the warning and the error count alike: the rows involved (5), then what they became
    # (and an example to look at: the warning named none, the error did)
    with pytest.warns(UserWarning, match=r"^5 rows share their \(series, time\) with another "
                                         r"row, e\.g\. series 1 at time 1\.0: averaged per "
                                         r"channel into 2 rows \(duplicates='mean'; "
                                         r"duplicates='error' refuses them\)"):
        ds = from_dataframe(df)
    expected = pd.DataFrame(
        {"series_id": [1, 1, 2], "time": [0.0, 1.0, 0.0], "a": [1.0, 5.0, 5.0],
         "b": [np.nan, 3.0, 8.0]}
    )
    assert_exact(ds.to_dataframe(), expected)


def test_duplicates_mean_with_datetimes_and_labels():
    t = pd.to_datetime(["2020-01-01", "2020-01-01", "2020-01-02"])
    df = pd.DataFrame({"series_id": ["s", "s", "s"], "time": t, "a": [1.0, 3.0, 5.0],
                       "y": [1.0, 1.0, 0.0]})
    with pytest.warns(UserWarning, match="2 rows share"):
        ds = from_dataframe(df, label_col="y")
    assert ds.label_kind == "time"
    expected = pd.DataFrame({"series_id": ["s", "s"], "time": t[1:], "a": [2.0, 5.0],
                             "y": [1.0, 0.0]})
    assert_exact(ds.to_dataframe(), expected)


def test_no_warning_without_duplicates():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_dataframe(small_frame())


def test_duplicates_error_names_series_and_time():
    df = pd.concat([small_frame(), small_frame().iloc[[3]]])
    with pytest.raises(ValueError, match=r"series .*2\)? has several rows at time .*0\.1.* \(2 "
                                         r"rows share their \(series, time\) with another row"):
        from_dataframe(df, duplicates="error")


def test_tidy_duplicates_mean_and_error():
    tidy = pd.DataFrame({"series_id": [1, 1, 1, 1], "time": [0.0, 0.0, 0.0, 1.0],
                         "ch": ["x", "x", "y", "x"], "v": [1.0, 3.0, 7.0, 2.0]})
    with pytest.warns(UserWarning, match=r"2 repeated \(series, time, channel\) observations"):
        ds = from_dataframe(tidy, channel_col="ch", value_col="v")
    np.testing.assert_array_equal(ds.values, [[2.0, 7.0], [2.0, np.nan]])
    with pytest.raises(ValueError, match=r"several values of channel 'x' at time"):
        from_dataframe(tidy, channel_col="ch", value_col="v", duplicates="error")


# --------------------------------------------------------------------------------------------
# 3. bad input


def _set(df: pd.DataFrame, row: int, col: str, value, dtype=None) -> pd.DataFrame:
    df = df.copy() if dtype is None else df.astype({col: dtype})
    df.loc[row, col] = value
    return df


@pytest.mark.parametrize(
    ("make", "kwargs", "error", "pattern"),
    [
        (small_frame, {"time_col": "tme"},
         ValueError, r"column 'tme' is not in the DataFrame\. Did you mean 'time'\?"),
        (lambda: small_frame().rename(columns={"time": "tme"}), {},
         ValueError, r"column 'time' is not in the DataFrame\. Did you mean 'tme'\?"),
        (small_frame, {"value_cols": ["a", "bb"]},
         ValueError, r"column 'bb' is not in the DataFrame\. Did you mean 'b'\?"),
        (small_frame, {"static_cols": ["zzz"]},
         ValueError, r"column 'zzz' is not in the DataFrame\. Columns:"),
        (lambda: _set(small_frame(), 4, "a", "oops", object), {"value_cols": ["a", "b"]},
         ValueError, r"column 'a' has a non-numeric value 'oops' \(series .*2.*, row 4\)"),
        # found by the automatic channel choice: a numeric column with one stray string is a
        # channel to clean, not text to drop
        (lambda: _set(small_frame(), 4, "a", "?", object), {},
         ValueError, r"column 'a' has a non-numeric value '\?' \(series .*2.*, row 4\)"),
        (lambda: small_frame().assign(b=np.nan), {},
         ValueError, r"1 channel\(s\) have no observed value in any series: \['b'\]"),
        (lambda: _set(small_frame(), 5, "b", np.inf), {},
         ValueError, r"column 'b' has an infinite value inf \(series .*1.*, time .*2\.5"),
        (lambda: _set(small_frame(), 0, "a", -np.inf), {},
         ValueError, r"column 'a' has an infinite value -inf \(series .*2.*, time .*0\.5"),
        (lambda: _set(small_frame(), 4, "time", np.nan), {},
         ValueError, r"column 'time' has 1 missing times \(first: series .*2.*, row 4\)"),
        (lambda: _set(small_frame().assign(time=pd.Timestamp("2020")), 1, "time", pd.NaT), {},
         ValueError, r"column 'time' has 1 missing times \(first: series .*1.*, row 1\)"),
        (lambda: _set(small_frame(), 2, "series_id", np.nan, float), {},
         ValueError, r"1 rows have no series id in column 'series_id' \(first: row 2\)"),
        # 2 and "2": two series both written as 2 in every output (were accepted unsaid)
        (lambda: _set(small_frame(), 3, "series_id", "2", object), {},
         ValueError, r"column 'series_id' holds series ids 2 \(int\) and '2' \(str\): "
                     r"different values, so different series, that read the same as text"),
        (lambda: _set(small_frame(), 3, "series_id", "2", object).astype({"series_id": "category"}),
         {}, ValueError, r"holds series ids 2 \(int\) and '2' \(str\)"),
        (lambda: small_frame().assign(a=[np.nan, 1.0, 1.0, np.nan, np.nan, 1.0],
                                      b=[np.nan, 1.0, 1.0, np.nan, np.nan, 1.0]), {},
         ValueError, r"1 series have no observed value in any channel \(e\.g\. series_id = .*2"),
        (lambda: _set(small_frame(), 3, "time", pd.Timestamp("2020-01-01"), object), {},
         ValueError, r"column 'time' mixes time types: 0\.5 \(number\) and "
                     r"Timestamp\('2020-01-01 00:00:00'\) \(datetime, series .*2"),
        (lambda: small_frame().assign(time=pd.Series(list("012345"), dtype=object)), {},
         ValueError, r"column 'time' has dtype object \(text values\); convert it"),
        (lambda: small_frame().assign(time=list("012345")), {},
         ValueError, r"column 'time' has dtype (object|str) \(text values\); convert it"),
        (lambda: small_frame().assign(time=pd.Series([0.0, 1, 2, 3, 4, [5]], dtype=object)),
         {}, ValueError, r"value \[5\] that is neither a number nor a datetime"),
        (lambda: small_frame().assign(time=[True, False] * 3), {},
         ValueError, r"column 'time' holds booleans"),
        (lambda: _set(small_frame(), 2, "time", np.inf), {},
         ValueError, r"column 'time' has a non-finite time .*inf.* \(series .*1.*, row 2\)"),
        (lambda: small_frame().assign(s=[1.0, 2.0, 2.0, 1.0, 1.0, 3.0]), {"static_cols": ["s"]},
         ValueError, r"static covariate column 's' changes within series .*1.*; a static "
                     r"covariate must be constant per series"),
        (lambda: small_frame().assign(y=[0.0, 0.0, 1.0, 0.0, 0.0, 0.0]),
         {"label_col": "y", "label_per": "series"},
         ValueError, r"label column 'y' changes within series .*1.*; use label_per='time'"),
        (lambda: small_frame().iloc[:0], {}, ValueError, r"the DataFrame has no rows"),
        (pd.DataFrame, {}, ValueError, r"column 'series_id' is not in the DataFrame"),
        (lambda: small_frame().to_dict(), {},
         TypeError, r"from_dataframe needs a pandas DataFrame, got dict"),
        (lambda: small_frame().to_numpy(), {},
         TypeError, r"from_dataframe needs a pandas DataFrame, got ndarray"),
        (small_frame, {"channel_col": "a"},
         ValueError, r"tidy format needs both channel_col= and value_col="),
        (small_frame, {"value_col": "a"},
         ValueError, r"tidy format needs both channel_col= and value_col="),
        (small_frame, {"channel_col": "a", "value_col": "a"},
         ValueError, r"channel_col and value_col are both 'a'"),
        (lambda: small_frame().assign(ch=["x", None, "x", "y", "x", "y"]),
         {"channel_col": "ch", "value_col": "a"},
         ValueError, r"column 'ch' has a missing channel name \(series .*1.*, row 1\)"),
        (lambda: small_frame().assign(ch="x", a=["1", "2", "3", "four", "5", "6"]),
         {"channel_col": "ch", "value_col": "a"},
         ValueError, r"column 'a' has a non-numeric value 'four' \(series .*2.*, row 3\)"),
        (lambda: small_frame()[["series_id", "time"]].assign(n=list("abcdef")), {},
         ValueError, r"no numeric value columns found besides \['series_id', 'time'\]"),
        (small_frame, {"duplicates": "drop"}, ValueError, r"duplicates must be 'mean' or 'error'"),
        (small_frame, {"label_col": "a", "label_per": "row"},
         ValueError, r"label_per must be 'auto', 'series' or 'time'"),
    ],
    ids=[
        "misspelt-time-kwarg", "misspelt-time-column", "misspelt-value-col", "unknown-static",
        "non-numeric-value", "stray-string-auto", "empty-channel", "inf-value", "neg-inf-value",
        "nan-time", "nat-time", "missing-id", "ids-alike-as-text", "categorical-ids-alike",
        "empty-series", "mixed-time-types", "object-string-times", "str-dtype-times",
        "list-in-time", "bool-times", "inf-time", "static-changes", "label-changes",
        "empty-frame", "no-columns", "dict-input", "ndarray-input", "tidy-channel-only",
        "tidy-value-only", "tidy-same-column", "tidy-missing-channel", "tidy-non-numeric",
        "no-numeric-columns", "bad-duplicates", "bad-label-per",
    ],
)
@pytest.mark.filterwarnings("ignore:.*non-numeric column")
@pytest.mark.filterwarnings("ignore:.*never change within a series")
def test_bad_input_raises_with_message(make, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        from_dataframe(make(), **kwargs)


def test_iso_date_strings_are_read_as_datetimes():
    """What ``pd.read_csv`` leaves of a datetime column (ISO 8601 text) is read as datetimes, as
    ``latentode-train data=csv`` reads a file; ambiguous text stays refused."""
    stamps = pd.Timestamp("2024-03-01") + pd.to_timedelta([0, 5, 1, 2, 9, 30], unit="h")
    as_dates = from_dataframe(small_frame().assign(time=stamps))
    text = small_frame().assign(time=stamps.strftime("%Y-%m-%dT%H:%M:%S"))
    as_text = from_dataframe(text)
    assert as_text.time_transform == as_dates.time_transform
    np.testing.assert_array_equal(as_text.times, as_dates.times)
    assert pd.api.types.is_datetime64_any_dtype(as_text.to_dataframe()["time"].dtype)
    assert not pd.api.types.is_datetime64_any_dtype(text["time"].dtype)  # user frame kept
    day_first = small_frame().assign(time=stamps.strftime("%d/%m/%Y %H:%M"))
    with pytest.raises(ValueError, match=r"column 'time' holds text times that are not ISO "
                                         r"8601, e\.g\. '\d\d/\d\d/\d{4} \d\d:\d\d' "
                                         r"\(series .*, row 0\).*format=\.\.\."):
        from_dataframe(day_first)
    with pytest.raises(ValueError, match=r"column 'time' has a non-numeric time '\?' \(series "
                                         r".*, row 3; 1 such rows\)"):
        from_dataframe(small_frame().assign(time=["0", "1", "2", "?", "4", "5"]))
    # ISO text whose offset changes with the clock (winter +01:00, summer +02:00): UTC
    dst = small_frame().assign(time=["2024-03-30T11:00+01:00", "2024-03-31T11:00+02:00",
                                     "2024-04-01T11:00+02:00"] * 2)
    with pytest.warns(UserWarning, match=r"column 'time' holds times with different UTC "
                                         r"offsets \(e\.g\. '2024-03-30T11:00\+01:00' and "
                                         r"'2024-03-31T11:00\+02:00'.*tz_convert"):
        assert str(from_dataframe(dst).to_dataframe()["time"].dt.tz) == "UTC"
    # some times with an offset, some without: the latter were read as UTC, silently
    mixed = small_frame().assign(time=["2024-03-30T11:00", "2024-03-30T12:00+01:00",
                                       "2024-03-30T13:00Z", "2024-03-30 14:00:00.5+0100",
                                       "2024-03-30T15:00", "2024-03-30T16:00"])
    with pytest.raises(ValueError, match=r"column 'time' mixes times with a UTC offset "
                                         r"\('2024-03-30T12:00\+01:00', row 1\) and without one "
                                         r"\('2024-03-30T11:00', row 0\)"):
        from_dataframe(mixed)
    # ISO's basic format and hour-only times carry offsets too (they were taken for times
    # without one: "mixes ... ('20240330T110000+0100', row 0) and without one (the same)");
    # an empty or NaT entry is a missing time, not a time without an offset
    for times in (["20240330T110000+0100", "20240331T110000+0200"] * 3,
                  ["2024-03-30T11+01:00", "2024-03-31T11+02:00"] * 3):
        with pytest.warns(UserWarning, match=rf"different UTC offsets \(e\.g\. "
                                             rf"'{re.escape(times[0])}' and "
                                             rf"'{re.escape(times[1])}'"):
            from_dataframe(small_frame().assign(time=times))
    for gap in ("", "NaT"):
        with pytest.raises(ValueError, match=r"column 'time' has 1 missing times"):
            from_dataframe(small_frame().assign(time=[*dst["time"][:3], gap, *dst["time"][4:]]))
    # frames concatenated without ignore_index repeat index labels: an IndexError from the
    # offsets' mask (labels looked up twice each) instead of the warning
    twice = pd.concat([dst, dst.assign(series_id=dst["series_id"] + 10)])
    assert twice.index.has_duplicates
    with pytest.warns(UserWarning, match=r"different UTC offsets"):
        from_dataframe(twice)


def test_error_messages_show_plain_numbers():
    with pytest.raises(ValueError, match=r"\(series 1, time 2\.5\)"):
        from_dataframe(_set(small_frame(), 5, "b", np.inf))


def test_labels_that_differ_slightly_are_not_collapsed():
    df = small_frame().assign(y=[3.0, 100000.0, 100001.0, 3.0, 3.0, 100000.0])
    ds = from_dataframe(df, label_col="y")
    assert_exact(ds.to_dataframe(), sorted_frame(df))


def test_static_that_changes_slightly_is_refused():
    df = small_frame().assign(s=[5.0, 1e6, 1e6 + 1, 5.0, 5.0, 1e6])
    with pytest.raises(ValueError, match="changes within series"):
        from_dataframe(df, static_cols=["s"])


# --------------------------------------------------------------------------------------------
# 4. collation


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_collate_matches_slow_reference(seed, dtype):
    df = random_frame(seed, n_series=10 + seed, p_missing=0.3 + 0.1 * seed)
    ds = from_dataframe(df)
    rng = np.random.default_rng(100 + seed)
    subsets = [
        np.arange(len(ds)),
        rng.permutation(len(ds))[: len(ds) // 2],
        [int(rng.integers(len(ds)))],
        [2, 0, 2],  # the same series twice
    ]
    for indices in subsets:
        batch = collate(ds, indices, dtype=dtype)
        ref = reference_collate(ds, indices)
        assert batch.values.dtype == dtype and batch.times.dtype == dtype
        assert batch.mask.dtype == torch.bool
        torch.testing.assert_close(batch.times, torch.as_tensor(ref["times"], dtype=dtype),
                                   rtol=0, atol=0)
        torch.testing.assert_close(batch.values, torch.as_tensor(ref["values"], dtype=dtype),
                                   rtol=0, atol=0)
        assert torch.equal(batch.mask, torch.from_numpy(ref["mask"]))
        assert torch.equal(batch.encoder_mask, batch.mask)
        assert torch.equal(batch.target_mask, batch.mask)
        assert batch.index.tolist() == list(map(int, indices))
        assert batch.batch_size == len(indices)
        assert batch.static is None and batch.labels is None
    # shared stamps really are shared: the union is shorter than the number of points
    full = collate(ds, np.arange(len(ds)))
    assert full.times.shape[0] < len(ds.times)


def test_collate_per_time_labels_and_static():
    df = random_frame(7, n_series=8)
    df["age"] = df["series_id"] * 1.5
    df["y"] = np.random.default_rng(7).integers(0, 2, len(df)).astype(float)
    df.loc[df.index[:3], "y"] = np.nan
    ds = from_dataframe(df, static_cols=["age"], label_col="y", label_per="time")
    indices = [5, 1, 6]
    batch = collate(ds, indices, dtype=torch.float64)
    ref = reference_collate(ds, indices)
    assert torch.equal(batch.values, torch.from_numpy(ref["values"]))
    assert batch.labels.shape == ref["labels"].shape
    torch.testing.assert_close(batch.labels, torch.from_numpy(ref["labels"]), equal_nan=True,
                               rtol=0, atol=0)
    expected_static = [[ds.ids[i] * 1.5] for i in indices]
    assert torch.equal(batch.static, torch.tensor(expected_static, dtype=torch.float64))


def test_collate_series_labels():
    df = random_frame(3, n_series=6)
    df["y"] = (df["series_id"] % 2).astype(float)
    ds = from_dataframe(df, label_col="y")
    batch = collate(ds, [4, 0, 3])
    assert batch.labels.dtype == torch.float32
    assert batch.labels.tolist() == [float(ds.ids[i] % 2) for i in (4, 0, 3)]


def test_subset_and_with_values():
    df = random_frame(5, n_series=6).assign(age=lambda d: d["series_id"] * 2.0)
    df["y"] = np.arange(len(df), dtype=float)
    ds = from_dataframe(df, static_cols=["age"], label_col="y")
    assert ds.label_kind == "time"
    part = ds.subset([4, 1])
    assert part.ids == [ds.ids[4], ds.ids[1]]
    full = ds.to_dataframe()
    expected = pd.concat([full[full["series_id"] == i] for i in part.ids], ignore_index=True)
    assert_exact(part.to_dataframe(), expected)
    part.values[:] = 0.0  # shares nothing mutable
    assert not (ds.values == 0.0).all()
    doubled = ds.with_values(ds.values * 2)
    np.testing.assert_array_equal(doubled.values, ds.values * 2)
    with pytest.raises(ValueError, match=r"values must have shape"):
        ds.with_values(ds.values[:, :1])


def test_batch_to_cpu_moves_every_tensor():
    df = small_frame().assign(age=lambda d: d["series_id"] * 1.0)
    ds = from_dataframe(df, static_cols=["age"])
    batch = collate(ds, [0, 1], task=Interpolation(fraction=0.5), rng=np.random.default_rng(0))
    moved = batch.to("cpu")
    assert isinstance(moved, Batch) and moved.labels is None
    for name in ("times", "values", "mask", "encoder_mask", "target_mask", "index", "static"):
        assert getattr(moved, name).device.type == "cpu"
        assert torch.equal(getattr(moved, name), getattr(batch, name))
    moved64 = collate(ds, [0, 1], dtype=torch.float64).to(torch.device("cpu"))
    assert moved64.values.dtype == torch.float64


# --------------------------------------------------------------------------------------------
# 5. tasks


def _series_points(batch: Batch) -> list[np.ndarray]:
    """Per batch row, the grid columns of its observed time points (ascending time)."""
    observed = point_mask(batch.mask)
    return [np.nonzero(row)[0] for row in observed]


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5, 0.77, 1.0])
def test_interpolation_fraction(fraction):
    ds = from_dataframe(random_frame(11, n_series=25, max_len=20, p_missing=0.6))
    batch = collate(ds, np.arange(len(ds)), Interpolation(fraction=fraction),
                    np.random.default_rng(0))
    assert torch.equal(batch.target_mask, batch.mask)
    assert_whole_points(batch)
    enc = point_mask(batch.encoder_mask)
    for b, cols in enumerate(_series_points(batch)):
        n = len(cols)
        assert n >= 1 and enc[b].sum() == max(1, round(fraction * n))
        assert enc[b][cols].sum() == enc[b].sum()  # only observed points


@pytest.mark.parametrize("count", [1, 3, 50])
def test_interpolation_count(count):
    ds = from_dataframe(random_frame(12, n_series=25, max_len=20, p_missing=0.6))
    batch = collate(ds, np.arange(len(ds)), Interpolation(count=count),
                    np.random.default_rng(1))
    assert torch.equal(batch.target_mask, batch.mask)
    assert_whole_points(batch)
    enc = point_mask(batch.encoder_mask)
    for b, cols in enumerate(_series_points(batch)):
        assert enc[b].sum() == min(count, len(cols))


def test_interpolation_randomness_is_seeded():
    ds = from_dataframe(random_frame(13, n_series=20, max_len=20, p_missing=0.2))
    task, idx = Interpolation(fraction=0.5), np.arange(len(ds))
    a = collate(ds, idx, task, np.random.default_rng(5)).encoder_mask
    b = collate(ds, idx, task, np.random.default_rng(5)).encoder_mask
    c = collate(ds, idx, task, np.random.default_rng(6)).encoder_mask
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # every observed point of a long series gets picked under some seed (not a fixed subset)
    seen = np.zeros(point_mask(a).shape, dtype=bool)
    for seed in range(60):
        seen |= point_mask(collate(ds, idx, task, np.random.default_rng(seed)).encoder_mask)
    assert (seen == point_mask(collate(ds, idx).mask)).all()


@pytest.mark.parametrize("k", [1, 2, 5])
def test_extrapolation_count(k):
    ds = from_dataframe(random_frame(14, n_series=20, max_len=12, p_missing=0.5))
    batch = collate(ds, np.arange(len(ds)), Extrapolation(count=k))
    assert_whole_points(batch)
    enc, tgt = point_mask(batch.encoder_mask), point_mask(batch.target_mask)
    assert not (batch.encoder_mask & batch.target_mask).any()
    assert torch.equal(batch.encoder_mask | batch.target_mask, batch.mask)
    for b, cols in enumerate(_series_points(batch)):
        assert np.nonzero(enc[b])[0].tolist() == cols[:k].tolist()
        assert np.nonzero(tgt[b])[0].tolist() == cols[k:].tolist()


@pytest.mark.parametrize("fraction", [0.01, 0.25, 0.5, 0.9])
def test_extrapolation_fraction(fraction):
    ds = from_dataframe(random_frame(15, n_series=20, max_len=12, p_missing=0.5))
    indices = np.arange(len(ds))
    batch = collate(ds, indices, Extrapolation(fraction=fraction), dtype=torch.float64)
    assert_whole_points(batch)
    assert not (batch.encoder_mask & batch.target_mask).any()
    assert torch.equal(batch.encoder_mask | batch.target_mask, batch.mask)
    enc = point_mask(batch.encoder_mask)
    grid = batch.times.numpy()
    for b, i in enumerate(indices):
        s = ds.series(i)
        t = s["times"][s["mask"].any(1)]  # observed time points of this series
        cut = t[0] + fraction * (t[-1] - t[0])
        expected = np.searchsorted(grid, t[t <= cut])
        assert np.nonzero(enc[b])[0].tolist() == expected.tolist()
        assert enc[b].sum() >= 1


def test_extrapolation_fraction_spread_draws_a_cut_per_series_within_the_spread():
    ds = from_dataframe(random_frame(15, n_series=20, max_len=12, p_missing=0.0))
    indices = np.arange(len(ds))
    task = Extrapolation(fraction=0.5, fraction_spread=0.3)
    shares = []
    for seed in range(5):
        batch = collate(ds, indices, task, rng=np.random.default_rng(seed), dtype=torch.float64)
        assert not (batch.encoder_mask & batch.target_mask).any()
        assert torch.equal(batch.encoder_mask | batch.target_mask, batch.mask)
        enc = point_mask(batch.encoder_mask)
        grid = batch.times.numpy()
        for b, i in enumerate(indices):
            t = ds.series(i)["times"]
            seen = grid[np.nonzero(enc[b])[0]]
            share = (seen.max() - t[0]) / (t[-1] - t[0])
            assert share <= 0.8 + 1e-9  # the last seen point lies before the latest cut
            after = t[t > seen.max()]
            assert len(after) == 0 or (after[0] - t[0]) / (t[-1] - t[0]) >= 0.2 - 1e-9
            shares.append(share)
    assert np.std(shares) > 0.05  # cuts differ between series and batches
    with pytest.raises(ValueError, match=r"fraction_spread must be in \[0, 0\.2\]"):
        Extrapolation(fraction=0.8, fraction_spread=0.3)
    with pytest.raises(ValueError, match="set fraction"):
        Extrapolation(count=3, fraction_spread=0.1)


def test_interpolation_fraction_spread_draws_a_fraction_per_series_within_the_spread():
    ds = from_dataframe(random_frame(16, n_series=40, max_len=40, p_missing=0.0))
    indices = np.arange(len(ds))
    counts = np.array([np.any(ds.series(i)["mask"], 1).sum() for i in indices])
    task = Interpolation(fraction=0.6, fraction_spread=0.3)
    shares = []
    for seed in range(5):
        batch = collate(ds, indices, task, rng=np.random.default_rng(seed), dtype=torch.float64)
        assert torch.equal(batch.target_mask, batch.mask)  # every observed point a target
        seen = point_mask(batch.encoder_mask).sum(1)
        low = np.maximum(1, np.round(0.3 * counts))
        assert (seen >= low).all() and (seen <= np.round(0.9 * counts)).all()
        shares.extend((seen / counts).tolist())
    assert np.std(shares) > 0.05  # fractions differ between series and batches
    assert abs(np.mean(shares) - 0.6) < 0.05
    # no spread: the same subsets as without the option (the same draws)
    plain = collate(ds, indices, Interpolation(fraction=0.6), rng=np.random.default_rng(0))
    zero = collate(ds, indices, Interpolation(fraction=0.6, fraction_spread=0.0),
                   rng=np.random.default_rng(0))
    assert torch.equal(plain.encoder_mask, zero.encoder_mask)
    with pytest.raises(ValueError, match=r"fraction_spread must be in \[0, 0\.25\]"):
        Interpolation(fraction=0.75, fraction_spread=0.3)
    with pytest.raises(ValueError, match="set fraction"):
        Interpolation(count=3, fraction_spread=0.1)
    Interpolation(fraction=0.75, fraction_spread=0.25)  # up to every point


def test_mixed_task_cuts_a_share_of_the_series_and_subsamples_the_others():
    ds = from_dataframe(random_frame(17, n_series=60, max_len=30, p_missing=0.0))
    indices = np.arange(len(ds))
    task = Mixed(fraction=0.75, fraction_spread=0.25, cut_fraction=0.5, cut_spread=0.3,
                 extrapolation_share=0.5)
    cuts = scattered = 0
    for seed in range(3):
        batch = collate(ds, indices, task, rng=np.random.default_rng(seed), dtype=torch.float64)
        assert torch.equal(batch.target_mask, batch.mask)  # every observed point a target
        enc = point_mask(batch.encoder_mask)
        grid = batch.times.numpy()
        for b, i in enumerate(indices):
            t = ds.series(i)["times"]
            seen = np.isin(t, grid[np.nonzero(enc[b])[0]])
            assert seen.any()
            if len(t) < 4:
                continue
            prefix = seen[: seen.sum()].all()  # the seen points are the first ones
            share = (t[seen].max() - t[0]) / (t[-1] - t[0])
            if prefix and share <= 0.8 + 1e-9 and not seen.all():
                cuts += 1
            else:  # a subsample of 50-100% of the points
                scattered += 1
                assert 0.5 * len(t) - 1 <= seen.sum() <= len(t)
    assert 0.3 < cuts / (cuts + scattered) < 0.7  # about half the series are cut
    # the parts' own checks, and the share
    only_subsets = collate(ds, indices, Mixed(extrapolation_share=0.0),
                           rng=np.random.default_rng(0))
    plain = collate(ds, indices, Interpolation(fraction=0.75, fraction_spread=0.25),
                    rng=np.random.default_rng(0))
    assert torch.equal(only_subsets.encoder_mask, plain.encoder_mask)
    with pytest.raises(ValueError, match=r"extrapolation_share must be in \[0, 1\]"):
        Mixed(extrapolation_share=1.5)
    with pytest.raises(ValueError, match=r"Mixed's subsample .*fraction_spread must be in "
                                         r"\[0, 0\.1\]"):
        Mixed(fraction=0.9)
    with pytest.raises(ValueError, match=r"cut_spread must be in \[0, 0\.2\] .*cut_fraction=0\.2"):
        Mixed(cut_fraction=0.2, cut_spread=0.3)
    with pytest.raises(ValueError, match=r"cut_fraction must be in \(0, 1\)"):
        Mixed(cut_fraction=1.0)
    with pytest.raises(ValueError, match="extrapolation_share must be in"):
        Mixed(extrapolation_share=None)  # data.task.extrapolation_share=null: no TypeError
    with pytest.raises(ValueError, match=r"data\.task\.fraction=null "
                                         r"data\.task\.fraction_spread=null data\.task\.count=N"):
        Mixed(count=5)  # the count beside the preset's fraction: how to switch is said
    Mixed(fraction=None, count=5, fraction_spread=None)  # a count of points instead
    # spreads up to their bound, which 1 - fraction misses by rounding (1 - 0.9 < 0.1)
    Mixed(fraction=0.9, fraction_spread=0.1, cut_fraction=0.8, cut_spread=0.2)
    Interpolation(fraction=0.9, fraction_spread=0.1)
    Extrapolation(fraction=0.8, fraction_spread=0.2)


def test_folds_hold_out_every_point_once_over_the_passes_whatever_the_batch():
    ds = from_dataframe(random_frame(18, n_series=30, max_len=25, p_missing=0.3))
    indices = list(range(len(ds)))
    k = 4
    held = []
    for fold in range(k):
        collator = Collator(ds, Folds(folds=k, fold=fold), fixed=True, seed=5,
                            dtype=torch.float64)
        batch = collator(indices)
        assert torch.equal(batch.target_mask, batch.mask)  # every observed point a target
        assert_whole_points(batch)
        out = point_mask(batch.mask) & ~point_mask(batch.encoder_mask)
        held.append(out)
        # the same series hold out the same times in another batch, in another order
        subset = indices[::-1][:7]
        again = collator(subset)
        back = point_mask(again.mask) & ~point_mask(again.encoder_mask)
        for row, i in enumerate(subset):
            assert np.array_equal(again.times.numpy()[back[row]], batch.times.numpy()[out[i]])
    held = np.stack(held)  # (folds, B, T)
    counts = point_mask(batch.mask).sum(1)
    times_out = held.sum(0)
    assert times_out.max() == 1  # no point held out twice
    many = counts >= 2
    # every point of a series with two or more is held out once; sizes differ by at most one
    assert np.array_equal(times_out[many].sum(1), counts[many])
    sizes = held.sum(2)[:, many]
    assert (sizes.max(0) - sizes.min(0) <= 1).all()
    assert times_out[~many].sum() == 0  # a one-point series keeps its point
    with pytest.raises(ValueError, match="folds must be an integer >= 2"):
        Folds(folds=1)
    with pytest.raises(ValueError, match=r"fold must be an integer in \[0, 2\]"):
        Folds(folds=3, fold=3)


@pytest.mark.parametrize("task, warns", [
    (Interpolation(count=10), True),
    (Mixed(fraction=None, count=10, fraction_spread=None), True),  # by its interpolation part
    (Mixed(), False),
])
def test_a_count_covering_short_series_warns_that_nothing_is_held_out(task, warns):
    ds = from_dataframe(random_frame(3, n_series=20, max_len=6, p_missing=0.0))
    dm = LatentODEDataModule(ds, task=task, batch_size=4, val_fraction=0.0, test_fraction=0.0)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        dm.setup()
    said = [str(w.message) for w in seen if "nothing is held out" in str(w.message)]
    assert bool(said) == warns
    if said:  # names the task given, and a share of the same task as the remedy
        name = type(task).__name__
        assert said[0].startswith(f"{name}(count=10)") and f"(Python: {name}(" in said[0]


def test_training_series_observed_at_one_time_each_are_warned_about_with_the_id_column():
    """A row id given as the series id (an easy slip with ICU exports) splits every series into
    one-row pieces: training ran on them without a word. Series with some times stay quiet."""
    df = random_frame(3, n_series=12, max_len=6, p_missing=0.0)
    by_row = df.assign(series_id=np.arange(len(df)))
    for frame, warns in ((by_row, True), (df, False)):
        dm = LatentODEDataModule(from_dataframe(frame), task=Interpolation(count=3),
                                 batch_size=4, val_fraction=0.0, test_fraction=0.0)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            dm.setup()
        said = [str(w.message) for w in seen if "observed at a single time" in str(w.message)]
        assert bool(said) == warns
        if said:  # counts them, names the column to check; no second warning on the same data
            assert said[0].startswith(f"{len(frame)} of the {len(frame)} training series")
            assert "data.dataset.id_col" in said[0]
            assert not [w for w in seen if "nothing is held out" in str(w.message)]


def test_extrapolation_cut_time_numeric_user_units_and_at_least_one_point():
    # seconds over years: model times are rescaled, the cut is given in user units
    df = pd.DataFrame(
        {
            "series_id": [1, 1, 1, 1, 2, 2, 3, 3],
            "time": [0.0, 1e7, 3e7, 9e7, 2e7, 5e7, 6e7, 7e7],
            "a": [1.0, np.nan, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
            "b": [np.nan, np.nan, 1.0, np.nan, 1.0, np.nan, np.nan, 1.0],
        }
    )
    ds = from_dataframe(df)
    assert ds.time_transform.scale == 9e7
    batch = collate(ds, [0, 1, 2], Extrapolation(cut_time=3e7), dtype=torch.float64)
    user = ds.time_transform.to_user(batch.times.numpy())
    enc = point_mask(batch.encoder_mask)
    tgt = point_mask(batch.target_mask)
    # series 1: 0 and 3e7 (1e7 has no observation); series 2: 2e7; series 3: none before the
    # cut, so its first observed point
    assert np.round(user[enc[0]]).tolist() == [0.0, 3e7]
    assert np.round(user[tgt[0]]).tolist() == [9e7]
    assert np.round(user[enc[1]]).tolist() == [2e7]
    assert np.round(user[enc[2]]).tolist() == [6e7]
    assert np.round(user[tgt[2]]).tolist() == [7e7]
    assert torch.equal(batch.encoder_mask | batch.target_mask, batch.mask)


@pytest.mark.parametrize("cut", ["2020-03-01", pd.Timestamp("2020-03-01"),
                                 np.datetime64("2020-03-01")])
def test_extrapolation_cut_time_datetime(cut):
    rng = np.random.default_rng(3)
    rows = []
    for s in range(6):
        start = pd.Timestamp("2020-01-01") + pd.Timedelta(days=int(rng.integers(0, 80)))
        stamps = start + pd.to_timedelta(np.sort(rng.choice(200, 6, replace=False)), unit="D")
        rows.append(pd.DataFrame({"series_id": f"p{s}", "time": stamps,
                                  "a": rng.normal(size=6)}))
    df = pd.concat(rows, ignore_index=True)
    ds = from_dataframe(df)
    assert ds.time_transform.kind == "datetime" and ds.time_transform.scale > 1
    batch = collate(ds, np.arange(len(ds)), Extrapolation(cut_time=cut), dtype=torch.float64)
    enc = point_mask(batch.encoder_mask)
    limit = pd.Timestamp("2020-03-01")
    for b in range(len(ds)):
        raw = pd.to_datetime(ds.series(b)["raw_times"])
        expected = raw[raw <= limit] if (raw <= limit).any() else raw[:1]
        got = np.searchsorted(batch.times.numpy(), ds.series(b)["times"][raw.isin(expected)])
        assert np.nonzero(enc[b])[0].tolist() == got.tolist()
    assert enc.sum(1).min() >= 1
    assert (~enc & point_mask(batch.mask)).sum() > 0  # something left to predict


def test_extrapolation_cut_time_timezone_aware():
    stamps = pd.date_range("2021-03-27 22:00", periods=6, freq="37min", tz="Europe/Berlin")
    df = small_frame().assign(time=stamps)  # series 2: 22:00 23:51 00:28, 1: 22:37 23:14 01:05
    ds = from_dataframe(df)
    cut = pd.Timestamp("2021-03-27 23:30", tz="Europe/Berlin")
    batch = collate(ds, [0, 1], Extrapolation(cut_time=cut), dtype=torch.float64)
    user = pd.DatetimeIndex(ds.time_transform.to_user(batch.times.numpy())).tz_localize("UTC")
    enc = point_mask(batch.encoder_mask)
    # series 1's 23:14 has no observation at all; series 2 has only 22:00 before the cut
    assert list(user[enc[0]]) == [pd.Timestamp("2021-03-27 22:37", tz="Europe/Berlin")]
    assert list(user[enc[1]]) == [pd.Timestamp("2021-03-27 22:00", tz="Europe/Berlin")]
    # a naive cut_time is in the data's terms, its zone (it was read as UTC: an hour later)
    naive = collate(ds, [0, 1], Extrapolation(cut_time="2021-03-27 23:30"), dtype=torch.float64)
    assert torch.equal(naive.encoder_mask, batch.encoder_mask)


def test_dates_outside_the_nanosecond_range_are_refused_not_wrapped():
    """Monthly records from 1677 (pandas keeps them in microseconds): counted in nanoseconds
    they wrapped around to 2262, out of order, silently."""
    stamps = pd.Series(np.array(["1677-06-01", "1677-08-01", "1677-10-01", "1677-12-01"],
                                dtype="datetime64[us]"))
    frame = pd.DataFrame({"series_id": ["a"] * 4, "time": stamps, "x": [1.0, 2.0, 3.0, 4.0]})
    with pytest.raises(ValueError, match=r"reach outside the datetimes latentode counts in "
                                         r"nanoseconds \(1677-09-21 to 2262-04-11\)"):
        from_dataframe(frame)


def test_times_too_close_for_float64_are_refused_not_merged():
    """Nanosecond stamps 100 ns apart (since 1970) are one float64 model time: half the points
    were lost at collate, silently."""
    base = 1_700_000_000_000_000_000
    frame = pd.DataFrame({"series_id": ["a"] * 4, "x": [1.0, 2.0, 3.0, 4.0],
                          "time": np.array([0, 100, 200, 300], dtype=np.int64) + base})
    with pytest.raises(ValueError, match=r"times 1700000000000000000 and 1700000000000000100 "
                                         r"of series 'a' are distinct but equal as model times"):
        from_dataframe(frame)
    ok = from_dataframe(frame.assign(time=frame["time"] - base))  # with the origin taken off
    assert len(np.unique(ok.times)) == 4


def test_a_numeric_cut_time_on_datetimes_is_refused():
    df = random_frame(2, n_series=8, max_len=6, p_missing=0.0)
    df["time"] = pd.Timestamp("2024-03-01") + pd.to_timedelta(df["time"], unit="h")
    dm = LatentODEDataModule(from_dataframe(df), task=Extrapolation(cut_time=24), batch_size=4)
    dm.setup()
    with pytest.raises(ValueError, match=r"cut_time=24 is a number, but this dataset's times are "
                                         r"datetimes: give a date"):
        next(iter(dm.train_dataloader()))
    dm = LatentODEDataModule(from_dataframe(df), batch_size=4,
                             task=Extrapolation(cut_time="2024-03-01 05:00"))
    dm.setup()
    assert next(iter(dm.train_dataloader())).target_mask.any()


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda: Interpolation(), "exactly one of fraction= or count="),
        (lambda: Interpolation(fraction=0.5, count=2), "exactly one of fraction= or count="),
        (lambda: Interpolation(fraction=1.5, count=50),  # a preset's count and the user's share
         r"got fraction=1\.5, count=50\. A config preset may set one already: set the others "
         r"to null"),
        (lambda: Interpolation(fraction=0.0), r"fraction must be in \(0, 1\]"),
        (lambda: Interpolation(fraction=1.5), r"fraction must be in \(0, 1\]"),
        (lambda: Interpolation(count=0), "count must be at least 1"),
        (lambda: Extrapolation(), "exactly one of fraction=, count= or cut_time="),
        (lambda: Extrapolation(fraction=0.5, cut_time=3.0), "exactly one of"),
        (lambda: Extrapolation(fraction=1.0), r"fraction must be in \(0, 1\)"),
        (lambda: Extrapolation(fraction=0.0), r"fraction must be in \(0, 1\)"),
        (lambda: Extrapolation(count=0), "count must be at least 1"),
        (lambda: Extrapolation(count=-2), "count must be at least 1"),
    ],
)
def test_invalid_task_arguments(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


# --------------------------------------------------------------------------------------------
# 6. splits and the data module


def test_split_indices_seeded_disjoint_covering_and_sized():
    train, val, test = split_indices(100, 0.1, 0.2, seed=0)
    assert (len(train), len(val), len(test)) == (70, 10, 20)
    all_ = np.concatenate([train, val, test])
    assert sorted(all_.tolist()) == list(range(100))
    for part in (train, val, test):
        assert part.tolist() == sorted(part.tolist())
    again = split_indices(100, 0.1, 0.2, seed=0)
    other = split_indices(100, 0.1, 0.2, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip((train, val, test), again, strict=True))
    assert not np.array_equal(test, other[2])
    # unshuffled: stored order, train first
    tr, va, te = split_indices(10, 0.1, 0.2, shuffle=False)
    assert (tr.tolist(), va.tolist(), te.tolist()) == (list(range(7)), [7], [8, 9])
    # small n: every non-empty fraction still gets a series
    assert [len(p) for p in split_indices(3, 0.1, 0.1)] == [1, 1, 1]
    assert [len(p) for p in split_indices(10, 0.0, 0.25)] == [8, 0, 2]
    assert [len(p) for p in split_indices(2, 0.1, 0.2)] == [2, 0, 0]


@pytest.mark.parametrize(
    ("args", "pattern"),
    [((10, 0.5, 0.5), "sum below 1"), ((10, -0.1, 0.2), r"in \[0, 1\)"),
     ((10, 0.1, 1.0), r"in \[0, 1\)"), ((2, 0.5, 0.4), "too few")],
)
def test_split_indices_refuses_bad_fractions(args, pattern):
    with pytest.raises(ValueError, match=pattern):
        split_indices(*args)


def _module_dataset(seed: int = 21, n_series: int = 30) -> IrregularDataset:
    return from_dataframe(random_frame(seed, n_series=n_series, max_len=10, p_missing=0.3))


def test_datamodule_splits_by_series_and_scales_on_train_only():
    ds = _module_dataset()
    dm = LatentODEDataModule(ds, batch_size=8, val_fraction=0.2, test_fraction=0.2,
                             split_seed=3)
    dm.setup()
    index = dm.split_index
    expected = split_indices(len(ds), 0.2, 0.2, seed=3)
    for name, idx in zip(("train", "val", "test"), expected, strict=True):
        assert np.array_equal(index[name], idx)
        assert dm.splits[name].ids == [ds.ids[i] for i in idx]
    train_raw = ds.subset(index["train"]).values
    np.testing.assert_allclose(dm.scaler.mean, np.nanmean(train_raw, axis=0), rtol=1e-12)
    np.testing.assert_allclose(dm.scaler.scale, np.nanstd(train_raw, axis=0), rtol=1e-12)
    scaled = dm.splits["train"].values
    np.testing.assert_allclose(np.nanmean(scaled, 0), 0.0, atol=1e-12)
    np.testing.assert_allclose(np.nanstd(scaled, 0), 1.0, rtol=1e-12)
    assert np.array_equal(np.isnan(scaled), np.isnan(train_raw))
    for name in ("val", "test"):
        raw = ds.subset(index[name]).values
        np.testing.assert_allclose(dm.inverse_values(dm.splits[name].values), raw, rtol=1e-12)
    # huge validation / test values do not move the scaler
    poisoned = ds.values.copy()
    held_out = np.concatenate([index["val"], index["test"]])
    points, _ = ds.point_index(held_out)
    poisoned[points] = poisoned[points] * 1e9 + 1e12
    dm2 = LatentODEDataModule(ds.with_values(poisoned), val_fraction=0.2, test_fraction=0.2,
                              split_seed=3)
    dm2.setup()
    np.testing.assert_array_equal(dm2.scaler.mean, dm.scaler.mean)
    np.testing.assert_array_equal(dm2.scaler.scale, dm.scaler.scale)


def test_datamodule_without_scaling_passes_values_through():
    ds = _module_dataset()
    dm = LatentODEDataModule(ds, scale=False)
    dm.setup()
    assert dm.scaler is None
    raw = ds.subset(dm.split_index["train"]).values
    np.testing.assert_array_equal(dm.splits["train"].values, raw)
    np.testing.assert_array_equal(dm.inverse_values(raw), raw)


def test_channel_scaler_never_observed_and_constant_channels():
    df = pd.DataFrame({"series_id": [1, 1, 2], "time": [0.0, 1.0, 0.0],
                       "a": [1.0, 3.0, 5.0], "b": [np.nan] * 3, "c": [2.0, 2.0, np.nan]})
    with pytest.raises(ValueError, match=r"(?s)have no observed value in any series: \['b'\]"
                                         r".*empty_channels='warn' keeps them"):
        from_dataframe(df, value_cols=["a", "b", "c"])
    with pytest.warns(UserWarning, match=r"no observed value in any series: \['b'\]"):
        ds = from_dataframe(df, value_cols=["a", "b", "c"], empty_channels="warn")
    with pytest.warns(UserWarning, match=r"\['b'\] have no observed value in the training"):
        scaler = ChannelScaler().fit(ds)
    assert np.isfinite(scaler.mean).all() and (scaler.scale > 0).all()
    assert scaler.scale[1] == 1.0 and scaler.scale[2] == 1.0
    out = scaler.apply(ds)
    assert np.array_equal(np.isnan(out.values), np.isnan(ds.values))
    np.testing.assert_allclose(scaler.inverse_transform(out.values), ds.values)


def test_positive_channels_over_many_orders_of_magnitude_suggest_log_channels():
    # 1e-3..1e6 standardised linearly gave intervals like [-314391, 379470] for 0.0053
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"series_id": np.repeat([1, 2, 3], 4), "time": np.tile(np.arange(4.0), 3),
                       "big": 10.0 ** rng.uniform(-3, 6, 12), "temp": rng.normal(size=12) + 37,
                       "signed": np.linspace(-1e3, 1e3, 12), "small": np.linspace(1, 5e3, 12)})
    ds = from_dataframe(df)
    with pytest.warns(UserWarning, match=r"channel\(s\) 'big' \(\S+ to \S+\) hold positive "
                                         r"values over more than 10000x.*log_channels=\['big'\] "
                                         r"\(latentode-train: data\.log_channels"):
        ChannelScaler().fit(ds)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # on a log scale, or signed, or 5000x: nothing to say
        ChannelScaler(["big"]).fit(ds)


def test_log_channels_are_standardised_as_logarithms():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"series_id": np.repeat([1, 2, 3], 4), "time": np.tile(np.arange(4.0), 3),
                       "conc": np.exp(rng.normal(size=12)), "temp": rng.normal(size=12)})
    ds = from_dataframe(df)
    scaler = ChannelScaler(["conc"]).fit(ds)
    assert scaler.log.tolist() == [True, False]
    logged = np.log(ds.values[:, 0])
    assert scaler.mean[0] == pytest.approx(logged.mean())
    assert scaler.scale[0] == pytest.approx(logged.std())
    out = scaler.apply(ds).values
    np.testing.assert_allclose(out[:, 0], (logged - logged.mean()) / logged.std())
    np.testing.assert_allclose(scaler.inverse_transform(out), ds.values)
    bad = df.assign(conc=df["conc"].where(df.index != 6, 0.0))
    with pytest.raises(ValueError, match=r"channel 'conc' is in log_channels but has 1 value\(s\)"
                                         r" <= 0 \(e\.g\. 0, series 2\).*counts \+ 1"):
        ChannelScaler(["conc"]).fit(from_dataframe(bad))
    with pytest.raises(ValueError, match=r"log_channels \['cnc'\] are not channels.*Did you "
                                         r"mean 'conc'\?"):
        ChannelScaler(["cnc"]).fit(ds)
    assert ChannelScaler("conc").fit(ds).log.tolist() == [True, False]  # one name, not letters
    with pytest.raises(ValueError, match="need scale=true"):
        LatentODEDataModule(ds, scale=False, log_channels=["conc"])
    dm = LatentODEDataModule(ds, log_channels=["conc"], val_fraction=0.0, test_fraction=0.34)
    dm.setup()
    assert dm.scaler.log.tolist() == [True, False]
    np.testing.assert_allclose(dm.inverse_values(dm.splits["test"].values),
                               ds.subset(dm.split_index["test"]).values)


def _by_index(batch: Batch, name: str) -> torch.Tensor:
    return getattr(batch, name)[torch.argsort(batch.index)]


def test_datamodule_loaders_masks_shapes():
    ds = _module_dataset(n_series=40)
    dm = LatentODEDataModule(ds, task=Interpolation(fraction=0.5), batch_size=64,
                             val_fraction=0.25, test_fraction=0.25, seed=7)
    dm.setup()
    n_train = len(dm.split_index["train"])
    torch.manual_seed(0)
    epochs = [next(iter(dm.train_dataloader())) for _ in range(2)]  # one batch = all series
    assert all(b.batch_size == n_train for b in epochs)
    masks = [_by_index(b, "encoder_mask") for b in epochs]
    assert torch.equal(_by_index(epochs[0], "mask"), _by_index(epochs[1], "mask"))
    assert not torch.equal(masks[0], masks[1])  # fresh training masks every epoch
    for name in ("val", "test"):
        loader = getattr(dm, f"{name}_dataloader")
        first, second = list(loader()), list(loader())
        assert len(first) == len(second) == 1
        for a, b in zip(first, second, strict=True):
            assert torch.equal(a.index, b.index)
            assert torch.equal(a.encoder_mask, b.encoder_mask)
            assert not torch.equal(a.encoder_mask, a.mask)
    # shapes with several batches
    small = LatentODEDataModule(ds, task=Extrapolation(count=2), batch_size=4)
    small.setup()
    seen = []
    for batch in small.train_dataloader():
        b, t, d = batch.values.shape
        assert b <= 4 and d == ds.n_channels
        assert batch.times.shape == (t,) and batch.mask.shape == (b, t, d)
        assert batch.encoder_mask.shape == batch.target_mask.shape == (b, t, d)
        assert bool((batch.times[1:] > batch.times[:-1]).all())
        assert batch.values.dtype == torch.float32
        seen += batch.index.tolist()
    assert sorted(seen) == list(range(len(small.split_index["train"])))
    orders = []
    for _ in range(2):
        orders.append(torch.cat([b.index for b in small.train_dataloader()]).tolist())
    assert orders[0] != orders[1]  # training batches are reshuffled every epoch
    val_order = torch.cat([b.index for b in small.val_dataloader()]).tolist()
    assert val_order == list(range(len(small.split_index["val"])))


def test_collator_fixed_and_fresh():
    ds = _module_dataset()
    task = Interpolation(fraction=0.4)
    fixed = Collator(ds, task, fixed=True, seed=1)
    assert torch.equal(fixed([0, 1, 2]).encoder_mask, fixed([0, 1, 2]).encoder_mask)
    other_seed = Collator(ds, task, fixed=True, seed=2)
    assert not torch.equal(fixed(list(range(10))).encoder_mask,
                           other_seed(list(range(10))).encoder_mask)
    fresh = Collator(ds, task)
    torch.manual_seed(0)
    a = fresh(list(range(10))).encoder_mask
    b = fresh(list(range(10))).encoder_mask
    torch.manual_seed(0)
    c = fresh(list(range(10))).encoder_mask
    assert not torch.equal(a, b) and torch.equal(a, c)  # fresh, but seeded by torch


@pytest.mark.parametrize("task", [Extrapolation(fraction=0.5, fraction_spread=0.3),
                                  Interpolation(fraction=0.4),
                                  Interpolation(fraction=0.5, fraction_spread=0.4),
                                  Mixed()],
                         ids=["spread cut", "interp", "interp spread", "mixed"])
def test_fixed_masks_do_not_depend_on_the_batch(task):
    """A series' validation/test mask is the same in any batch. Extrapolation's
    ``fraction_spread`` cut came from the batch's generator, so a series was cut at 17, 21 or
    27 of 50 points depending on the series it was batched with (metrics moved with the batch
    size and the number of processes); it is now drawn from the series' own stream."""
    ds = _module_dataset(n_series=12)
    collate_fixed = Collator(ds, task, fixed=True, seed=0)

    def seen(items: list[int], series: int) -> list[float]:
        batch = collate_fixed(items)
        row = items.index(series)
        return batch.times[batch.encoder_mask[row].any(-1)].tolist()

    for series in (0, 5):
        alone = seen([series], series)
        assert seen(list(range(12)), series) == alone
        assert seen([5, 3, 0, 9], series) == alone


def test_datamodule_explicit_split_and_callable_source():
    ds = _module_dataset(n_series=10)
    labels = np.array(["train", "val", "test", "train", "train", "test", "train", "val",
                       "train", "train"])
    calls = []

    def build() -> IrregularDataset:
        calls.append(1)
        return ds

    dm = LatentODEDataModule(build, split=labels, batch_size=3)
    assert calls == [] and dm.dataset is None
    dm.setup("fit")
    dm.setup("test")  # only built once
    assert len(calls) == 1 and dm.dataset is ds
    assert dm.split_index["train"].tolist() == [0, 3, 4, 6, 8, 9]
    assert dm.split_index["val"].tolist() == [1, 7]
    assert dm.split_index["test"].tolist() == [2, 5]
    assert dm.splits["val"].ids == [ds.ids[1], ds.ids[7]]
    # loaders call setup themselves
    lazy = LatentODEDataModule(build, batch_size=3)
    batch = next(iter(lazy.val_dataloader()))
    assert len(calls) == 2 and isinstance(batch, Batch)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"split": ["train"] * 3}, ValueError, r"split has 3 entries for 10 series"),
        ({"split": ["train"] * 9 + ["holdout"]}, ValueError,
         re.escape("split entries must be train/val/test, got ['holdout']")),
        ({"batch_size": 0}, ValueError, "batch_size must be at least 1"),
    ],
)
def test_datamodule_refuses_bad_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        LatentODEDataModule(_module_dataset(n_series=10), **kwargs).setup()


def test_datamodule_callable_must_build_a_dataset():
    with pytest.raises(TypeError, match="dataset must build an IrregularDataset, got dict"):
        LatentODEDataModule(lambda: {"not": "a dataset"}).setup()
    # an emptied config entry ('dataset:' in an experiment file): TypeError 'NoneType' object is
    # not callable from setup() before
    with pytest.raises(TypeError, match=r"dataset must be an IrregularDataset or a function that "
                                        r"builds one, got NoneType None .*data\.dataset needs a "
                                        r"_target_"):
        LatentODEDataModule(None)


def test_times_that_collide_in_float32_stay_distinct_and_no_point_is_merged():
    # continuous stamps of many series: distinct in float64, one value in float32
    base = 5.0
    close = np.nextafter(base, 10.0)  # 1 ULP above in float64: the same float32
    assert np.float32(base) == np.float32(close)
    df = pd.DataFrame({"series_id": [1, 1, 2, 2], "time": [0.0, base, close, 6.0],
                       "a": [1.0, 2.0, 3.0, 4.0]})
    ds = from_dataframe(df, time_scale=1.0)
    batch = collate(ds, [0, 1])
    assert torch.all(batch.times[1:] > batch.times[:-1])  # the solver's requirement
    assert int(batch.mask.sum()) == 4  # every observation kept, none merged
    assert torch.allclose(batch.times, torch.tensor([0.0, base, base, 6.0]), rtol=1e-6)
    grid = distinct_in(np.array([1.0, 1.0 + 1e-12, 1.0 + 2e-12, 2.0]), np.float32)
    assert grid.dtype == np.float32 and np.all(np.diff(grid) > 0)


def test_tidy_frames_pivot_as_pandas_does():
    """The tidy pivot counts and averages per (series, time, channel) cell from integer codes
    (bincount), not pandas' duplicated + groupby + unstack (1e6 rows: 5.0 s -> 1.5 s); the
    result is pandas' pivot_table of the same rows, duplicates and NaN values included."""
    rng = np.random.default_rng(3)
    n = 400
    stamps = pd.date_range("2024-03-09", periods=25, freq="41min", tz="America/New_York")
    df = pd.DataFrame({"series_id": rng.choice(["u", "v", "w"], n), "time": rng.choice(stamps, n),
                       "channel": rng.choice(["hr", "temp", "spo2"], n),
                       "value": rng.normal(size=n)})
    df.loc[::9, "value"] = np.nan
    with pytest.warns(UserWarning, match="repeated .series, time, channel. observations were "
                                         "averaged"):
        ds = from_dataframe(df, channel_col="channel", value_col="value")
    expected = df.pivot_table(index=["series_id", "time"], columns="channel", values="value",
                              aggfunc="mean", dropna=False)
    got = ds.to_dataframe().set_index(["series_id", "time"])[expected.columns]
    pairs = df.groupby(["series_id", "time"]).size().index  # every (series, time) with a row
    observed = expected.reindex(pairs).dropna(how="all")  # rows of NaN values only: no row
    # (means of repeats: pandas sums with compensation, bincount in order; one value: exact)
    np.testing.assert_allclose(got.to_numpy(), observed.to_numpy(), rtol=1e-14, atol=0)
    single = df.groupby(["series_id", "time", "channel"]).size().eq(1).unstack().reindex(
        observed.index)[expected.columns].fillna(False).to_numpy(dtype=bool)
    np.testing.assert_array_equal(got.to_numpy()[single], observed.to_numpy()[single])
    assert list(got.index) == list(observed.index)


@pytest.mark.parametrize("np_dtype", [np.float32, np.float64])
def test_distinct_times_move_up_as_the_step_by_step_loop_did(np_dtype):
    """distinct_in moves each clashing time one ULP past the previous by a running maximum of
    integer keys (was a Python loop from the first clash on); the loop's answer across runs of
    equal values, negatives, zeros and signed zeros (bit for bit, but for the sign of a zero
    reached by moving up from below it)."""
    rng = np.random.default_rng(7)

    def loop(times):
        cast = np.asarray(times).astype(np_dtype)
        for i in range(1, len(cast)):
            if cast[i] <= cast[i - 1]:
                cast[i] = np.nextafter(cast[i - 1], np_dtype(np.inf))
        return cast

    tiny = np.finfo(np_dtype).smallest_subnormal
    cases = [
        np.sort(rng.normal(0, 1e-3, 500)).astype(np.float64) if np_dtype == np.float32 else
        np.repeat(np.sort(rng.normal(0, 1e-3, 100)), 5),  # float64: clashes by repeats
        np.array([-1.0, -1.0, -1.0, -tiny, -0.0, 0.0, 0.0, tiny, tiny, 1.0]),
        np.repeat([5.0, 5.0 + 1e-9, 6.0], 40),
        np.array([3.0, 2.0, 2.5, 1.0]),  # unsorted input is moved up too
    ]
    for times in cases:
        got, expected = distinct_in(times, np_dtype), loop(times)
        assert got.dtype == np_dtype
        np.testing.assert_array_equal(got, expected)  # (-0.0 == 0.0)
        nonzero = expected != 0
        np.testing.assert_array_equal(got[nonzero].view(f"i{got.itemsize}"),
                                      expected[nonzero].view(f"i{got.itemsize}"))
        assert np.all(np.diff(got) > 0)


def test_channel_mean_mse_pools_the_observed_values_of_every_channel():
    frame = pd.DataFrame({"series_id": [0, 0, 1, 1], "time": [0.0, 1.0, 0.0, 2.0],
                          "a": [1.0, 3.0, np.nan, 5.0], "b": [0.0, np.nan, 2.0, np.nan]})
    ds = from_dataframe(frame, id_col="series_id", time_col="time")
    # a: mean 3, squares 4 + 0 + 4; b: mean 1, squares 1 + 1; five observed values
    assert ds.channel_mean_mse() == pytest.approx((4 + 0 + 4 + 1 + 1) / 5)
    empty = ds.with_values(np.full_like(ds.values, np.nan))
    assert np.isnan(empty.channel_mean_mse())
