"""from_dataframe: labels and static covariates of rows that share a (series, time), and
time_unit on numeric times."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from latentode.data import from_dataframe

TIDY = {"id_col": "id", "time_col": "t", "channel_col": "var", "value_col": "val"}


def tidy_frame(act: list) -> pd.DataFrame:
    """Two series, two times, channels x and y: one row per observation."""
    return pd.DataFrame({"id": list("aaaabbbb"), "t": [0, 0, 1, 1, 0, 0, 1, 1],
                         "var": list("xyxyxyxy"), "val": np.arange(1.0, 9.0), "act": act})


def test_tidy_labels_per_time_take_the_row_that_knows_the_label():
    """The reviewer's case: (a, 0) labels 'run' on its second row only; it was dropped (the
    first row's NaN kept) and with it the class."""
    df = tidy_frame([np.nan, "run", "walk", np.nan, np.nan, "sit", np.nan, np.nan])
    ds = from_dataframe(df, **TIDY, label_col="act", label_per="time")
    assert ds.label_names == ["run", "sit", "walk"]
    np.testing.assert_array_equal(ds.labels, [0.0, 2.0, 1.0, np.nan])
    assert ds.to_dataframe()["act"].tolist()[:3] == ["run", "walk", "sit"]


def test_tidy_conflicting_labels_at_one_time_are_refused():
    df = tidy_frame(["walk", "run", "walk", "walk", "sit", "sit", "sit", "sit"])
    with pytest.raises(ValueError, match=r"label column 'act' has different labels "
                                         r"\['walk', 'run'\] for series 'a' at time 0 .*Give each "
                                         r"\(series, time\) one label .*or drop the rows"):
        from_dataframe(df, **TIDY, label_col="act", label_per="time")


def test_wide_duplicate_rows_merge_labels_without_losing_or_choosing_one():
    df = pd.DataFrame({"series_id": ["s"] * 3, "time": [0.0, 0.0, 1.0], "a": [1.0, 3.0, 5.0],
                       "y": [np.nan, 1.0, 0.0]})
    with pytest.warns(UserWarning, match="2 rows share"):
        ds = from_dataframe(df, label_col="y", label_per="time")
    np.testing.assert_array_equal(ds.labels, [1.0, 0.0])  # the known label of time 0
    with pytest.raises(ValueError, match=r"label column 'y' has different labels \[0\.0, 1\.0\] "
                                         r"for series 's' at time 0\.0 \(2 rows merged as "
                                         r"duplicates\)"):
        from_dataframe(df.assign(y=[0.0, 1.0, 0.0]), label_col="y", label_per="time")


def test_series_labels_take_each_series_known_label():
    """An outcome written on one row of each series (the others empty) is that series' label;
    two different known labels in one series are refused by name."""
    df = pd.DataFrame({"series_id": [1, 1, 2, 2], "time": [0.0, 1.0, 0.0, 1.0],
                       "a": [1.0, 2.0, 3.0, 4.0], "y": ["died", np.nan, np.nan, "lived"]})
    ds = from_dataframe(df, label_col="y", label_per="series")
    assert ds.label_kind == "series" and ds.label_names == ["died", "lived"]
    np.testing.assert_array_equal(ds.labels, [0.0, 1.0])
    with pytest.raises(ValueError, match=r"label column 'y' changes within series 1 "
                                         r"\(\['died', 'lived'\]; 1 such series\); use "
                                         r"label_per='time'"):
        from_dataframe(df.assign(y=["died", "lived", np.nan, "lived"]), label_col="y",
                       label_per="series")


def test_tidy_static_covariates_take_the_known_value_and_refuse_conflicts():
    df = tidy_frame([np.nan] * 8).drop(columns="act")
    df["age"] = [np.nan, 40.0, 40.0, 40.0, 71.0, 71.0, 71.0, 71.0]
    ds = from_dataframe(df, **TIDY, static_cols=["age"])
    np.testing.assert_array_equal(ds.static, [[40.0], [71.0]])
    df.loc[0, "age"] = 39.0
    with pytest.raises(ValueError, match=r"static covariate column 'age' changes within series "
                                         r"'a': \[39\.0, 40\.0\] at time 0"):
        from_dataframe(df, **TIDY, static_cols=["age"])


def test_time_unit_on_numeric_times_warns_that_the_numbers_are_used_as_they_are():
    df = pd.DataFrame({"series_id": [1, 1, 1], "time": [0.0, 3600.0, 7200.0],
                       "a": [1.0, 2.0, 3.0]})
    with pytest.warns(UserWarning, match=r"column 'time' holds numbers, and time_unit='h' "
                                         r"applies to datetimes only: the numbers are used as "
                                         r"they are.* df\['time'\] / 3600"):
        ds = from_dataframe(df, time_unit="h")
    np.testing.assert_array_equal(ds.raw_times, [0.0, 3600.0, 7200.0])
    stamps = df.assign(time=pd.Timestamp("2024-01-01") + pd.to_timedelta(df["time"], unit="s"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = from_dataframe(stamps, time_unit="h")  # datetimes: hours, as documented
        from_dataframe(df)
    np.testing.assert_array_equal(ds.times, [0.0, 1.0, 2.0])


def test_a_label_column_named_by_an_empty_string_is_read_as_labels():
    """label_col="" (a falsy name) was taken for "no labels": the column became a channel and
    the labels were lost, silently (found by type checking)."""
    frame = pd.DataFrame({"id": [0, 0, 1, 1], "t": [0.0, 1.0, 0.0, 1.0],
                          "x": [1.0, 2.0, 3.0, 4.0], "": [0, 0, 1, 1]})
    ds = from_dataframe(frame, "id", "t", label_col="")
    assert ds.channels == ["x"]
    np.testing.assert_array_equal(ds.labels, [0.0, 1.0])
