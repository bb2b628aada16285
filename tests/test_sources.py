"""Dataset sources: the periodic toy, Mauna Loa CO2 and the PhysioNet 2012 parser."""

from __future__ import annotations

import importlib.util
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from latentode.data import from_dataframe
from latentode.data.sources import co2, periodic, physionet

sys.path.insert(0, str(Path(__file__).parent))
from fixtures.make_physionet_fixture import write_fixture

# ------------------------------------------------------------------------------------ periodic


def _matrix(df: pd.DataFrame, n_series: int, n_points: int) -> tuple[np.ndarray, np.ndarray]:
    times = df["time"].to_numpy().reshape(n_series, n_points)
    values = df["value"].to_numpy().reshape(n_series, n_points)
    return times, values


def test_periodic_shapes_columns_and_shared_grid():
    df = periodic.load(n_series=20, n_points=30, t_max=5.0, seed=3)
    assert list(df.columns) == ["series_id", "time", *periodic.CHANNELS]
    assert len(df) == 20 * 30
    assert df["series_id"].dtype == np.int64 and df["time"].dtype == np.float64
    assert not df["value"].isna().any()
    assert (df.groupby("series_id").size() == 30).all()
    assert df.equals(df.sort_values(["series_id", "time"], kind="stable"))
    times, _ = _matrix(df, 20, 30)
    assert (times == times[0]).all(), "every series shares one grid"
    assert times[0, 0] == 0.0
    assert np.all(np.diff(times[0]) > 0)
    assert times[0, -1] <= 5.0


def test_periodic_follows_the_paper_draw_order():
    """The documented RNG use: grid, then (frequency, offset) per series, then the noise."""
    n, m, t_max, seed = 7, 12, 3.0, 11
    rng = np.random.default_rng(seed)
    grid = np.sort(np.concatenate([[0.0], rng.uniform(0.0, t_max, m - 1)]))
    params = [(0.4 + 0.4 * rng.random(), 1.0 + rng.normal(0.0, 0.1)) for _ in range(n)]
    noise = rng.random((n, m - 1))
    expected = np.array([np.sin(2 * np.pi * f * grid) + c for f, c in params])
    expected[:, 1:] += 0.01 * noise
    _, values = _matrix(periodic.load(n, m, t_max, seed), n, m)
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-12)


def test_periodic_value_ranges_and_one_sided_noise():
    n, m = 200, 100
    _, noisy = _matrix(periodic.load(n, m, seed=5), n, m)
    _, clean = _matrix(periodic.load(n, m, seed=5, noise_weight=0.0), n, m)
    offsets = noisy[:, 0]  # sin(0) = 0 and no noise on the first point: the offset itself
    np.testing.assert_array_equal(offsets, clean[:, 0])
    assert np.all(np.abs(offsets - 1.0) < 0.5)  # 1 + N(0, 0.1^2): 5 sigma
    assert 0.97 < offsets.mean() < 1.03 and 0.07 < offsets.std() < 0.13
    assert np.all(np.abs(clean - offsets[:, None]) <= 1.0 + 1e-12)
    noise = noisy - clean
    assert np.all(noise[:, 0] == 0)
    assert np.all((noise[:, 1:] >= 0) & (noise[:, 1:] < 0.01))
    assert abs(noise[:, 1:].mean() - 0.005) < 3e-4


def test_periodic_determinism():
    a = periodic.load(30, 40, seed=1)
    pd.testing.assert_frame_equal(a, periodic.load(30, 40, seed=1))
    b = periodic.load(30, 40, seed=2)
    assert not np.allclose(a["time"], b["time"])
    assert not np.allclose(a["value"], b["value"])


def test_periodic_frequencies_recovered_within_paper_range():
    n, m = 60, 100
    times, values = _matrix(periodic.load(n, m, t_max=5.0, seed=7), n, m)
    t = times[0]
    centred = values - values[:, :1]  # remove the offset, known from the first point
    candidates = np.linspace(0.2, 1.2, 1001)
    basis = np.sin(2 * np.pi * candidates[:, None] * t[None, :])  # (K, m)
    sse = ((centred[:, None, :] - basis[None, :, :]) ** 2).sum(-1)  # (n, K)
    recovered = candidates[np.argmin(sse, axis=1)]
    assert np.all((recovered >= 0.4 - 2e-3) & (recovered <= 0.8 + 2e-3)), recovered
    assert recovered.min() < 0.5 and recovered.max() > 0.7  # spread over the range


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n_series": 0}, "n_series"),
        ({"n_points": 2.5}, "n_points"),
        ({"t_max": 0.0}, "t_max"),
        ({"t_max": math.inf}, "t_max"),
        ({"seed": -1}, "seed"),
        ({"noise_weight": -0.1}, "noise_weight"),
    ],
)
def test_periodic_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        periodic.load(**kwargs)


def test_periodic_own_grids_keep_the_series_and_unalign_the_times():
    n, m = 12, 20
    shared = periodic.load(n, m, seed=4, noise_weight=0.0)
    own = periodic.load(n, m, seed=4, noise_weight=0.0, own_grids=True)
    times, values = _matrix(own, n, m)
    assert (times[:, 0] == 0).all() and (np.diff(times, axis=1) > 0).all()
    assert (times <= 5.0).all() and len(np.unique(times)) == n * (m - 1) + 1
    _, base = _matrix(shared, n, m)
    offsets = base[:, 0]  # the same series (frequency, offset) as the paper's draws
    np.testing.assert_array_equal(values[:, 0], offsets)
    # each value is the series' sine at its own time: recover the frequency exactly
    ratio = np.arcsin(np.clip(values[:, 1] - offsets, -1, 1)) / (2 * np.pi * times[:, 1])
    small = times[:, 1] < 0.3  # inside the first quarter period, arcsin is the inverse
    assert small.any()
    assert np.all((ratio[small] > 0.4 - 1e-9) & (ratio[small] < 0.8 + 1e-9))

    minutes = periodic.load(n, m, t_max=2.0, seed=4, own_grids=True, resolution=0.01)
    t = minutes["time"].to_numpy()
    np.testing.assert_allclose(t / 0.01, np.round(t / 0.01), atol=1e-9)
    assert (minutes.groupby("series_id")["time"].nunique() == m).all()
    with pytest.raises(ValueError, match="resolution applies to own_grids=True"):
        periodic.load(n, m, resolution=0.01)
    with pytest.raises(ValueError, match="lattice points cannot hold"):
        periodic.load(n, m, t_max=0.1, own_grids=True, resolution=0.01)
    # a full lattice: 0.7 / 0.1 is 6.999... in floating point, which was floored to 6 points
    full = periodic.load(2, 8, t_max=0.7, own_grids=True, resolution=0.1)
    np.testing.assert_allclose(np.sort(full[full.series_id == 0]["time"]), np.arange(8) * 0.1,
                               atol=1e-12)


def test_periodic_single_point():
    df = periodic.load(n_series=3, n_points=1, seed=0)
    assert len(df) == 3 and (df["time"] == 0).all()


# ----------------------------------------------------------------------------------------- co2


@pytest.fixture(scope="module")
def co2_weekly() -> pd.DataFrame:
    pytest.importorskip("statsmodels")
    return co2.load()


def test_co2_weekly(co2_weekly):
    df = co2_weekly
    assert list(df.columns) == ["series_id", "time", *co2.CHANNELS]
    assert (df["series_id"] == "mauna_loa").all()
    assert df["time"].dtype == "datetime64[ns]"
    assert len(df) == 2225  # 2284 weeks in the file, 59 without a measurement
    assert not df["co2"].isna().any()
    assert df["time"].is_monotonic_increasing and df["time"].is_unique
    assert df["time"].iloc[0] == pd.Timestamp("1958-03-29")
    assert df["time"].iloc[-1] == pd.Timestamp("2001-12-29")
    assert df["co2"].between(310, 380).all()
    assert df["co2"].iloc[:52].mean() < 320 < 365 < df["co2"].iloc[-52:].mean()
    steps = df["time"].diff().dropna()
    assert (steps % pd.Timedelta(days=7) == pd.Timedelta(0)).all()
    gaps = steps[steps > pd.Timedelta(days=7)]
    assert len(gaps) > 0 and int((gaps / pd.Timedelta(days=7) - 1).sum()) == 59


def test_co2_keep_missing_and_monthly(co2_weekly):
    full = co2.load(keep_missing=True)
    assert len(full) == 2284 and int(full["co2"].isna().sum()) == 59
    assert (full["time"].diff().dropna() == pd.Timedelta(days=7)).all()

    monthly = co2.load("MS")
    assert monthly["time"].dt.is_month_start.all() and not monthly["co2"].isna().any()
    may_1960 = co2_weekly[co2_weekly["time"].dt.to_period("M") == "1960-05"]["co2"].mean()
    got = monthly.loc[monthly["time"] == pd.Timestamp("1960-05-01"), "co2"].item()
    assert got == pytest.approx(may_1960)
    assert len(co2.load("MS", keep_missing=True)) > len(monthly)  # months with no week observed


def test_co2_bad_freq():
    pytest.importorskip("statsmodels")
    with pytest.raises(ValueError, match="freq='fortnightly-ish'"):
        co2.load("fortnightly-ish")


def test_co2_without_statsmodels(monkeypatch):
    monkeypatch.setitem(sys.modules, "statsmodels", None)
    monkeypatch.setitem(sys.modules, "statsmodels.datasets", None)
    with pytest.raises(ImportError, match="pip install statsmodels"):
        co2.load()


# ----------------------------------------------------------------------------------- physionet


@pytest.fixture()
def fixture(tmp_path) -> dict:
    return write_fixture(tmp_path)


def _load(*args, **kwargs) -> tuple[pd.DataFrame, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = physionet.load(*args, **kwargs)
    return df, [str(w.message) for w in caught]


def _load_registry(load_dataset, root) -> tuple[object, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset("physionet", root=root, labels=False, static=False)
    return ds, [str(w.message) for w in caught]


def test_physionet_channels_match_the_paper_code():
    assert len(physionet.PAPER_PARAMS) == 41 and len(physionet.CHANNELS) == 37
    assert physionet.PAPER_PARAMS[:5] == ["Age", "Gender", "Height", "ICUType", "Weight"]
    assert physionet.CHANNELS[0] == "Weight" and physionet.CHANNELS[-1] == "WBC"


def test_load_dataset_time_scale_puts_stays_on_the_unit_interval(fixture):
    """``time_scale`` reaches ``from_dataframe`` through ``load_dataset`` (the physionet config
    sets 48: model times are fractions of a 48-hour stay); user times stay in hours."""
    from latentode.data import load_dataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hours = load_dataset("physionet", root=fixture["root"], time_scale=1)
        stays = load_dataset("physionet", root=fixture["root"], time_scale=48)
    assert hours.time_transform.scale == 1.0 and stays.time_transform.scale == 48.0
    np.testing.assert_allclose(stays.times, (hours.times + hours.time_transform.offset
                                             - stays.time_transform.offset) / 48)
    assert stays.times.max() <= 1.0
    pd.testing.assert_frame_equal(stays.to_dataframe(), hours.to_dataframe())


@pytest.mark.parametrize("where", ["parent", "set_dir"])
def test_physionet_values_masks_static_labels(fixture, where):
    df, messages = _load(fixture["root"] if where == "parent" else fixture["set_dir"])
    channels = physionet.CHANNELS
    assert list(df.columns) == [
        "series_id", "time", *channels, *physionet.STATIC_COLUMNS, "label",
    ]
    assert df["series_id"].dtype == np.int64
    assert (df.dtypes.iloc[1:] == np.float64).all()
    assert df.equals(df.sort_values(["series_id", "time"], kind="stable", ignore_index=True))
    assert sorted(df["series_id"].unique()) == fixture["record_ids"]

    # Values and the NaN pattern (mask), row by row, against the hand-written expectation.
    rows = 0
    for rid, by_time in fixture["observations"].items():
        patient = df[df["series_id"] == rid]
        np.testing.assert_allclose(patient["time"], sorted(by_time), rtol=0, atol=1e-12)
        for (_, row), (_, expected) in zip(
            patient.iterrows(), sorted(by_time.items()), strict=True
        ):
            observed = {c: row[c] for c in channels if not np.isnan(row[c])}
            assert observed == pytest.approx(expected), (rid, row["time"])
            rows += 1
    assert rows == len(df)

    # Static covariates: -1 is NaN; Weight descriptor also a time-0 observation unless -1.
    for rid in fixture["record_ids"]:
        patient = df[df["series_id"] == rid]
        for name, value in fixture["static"][rid].items():
            got = patient[f"static_{name}"].to_numpy()
            np.testing.assert_array_equal(got, np.full(len(patient), value))
        assert patient["label"].eq(fixture["labels"][rid]).all()

    assert any("2 row(s) with unknown parameter names ('FooBar' x2, first in " in m
               for m in messages)
    assert any("dropped 1 patient(s)" in m and "132541" in m for m in messages)


def test_physionet_keep_empty_patient(fixture):
    df, _ = _load(fixture["root"], keep_empty=True)
    empty = df[df["series_id"] == 132541]
    assert len(empty) == 1 and empty["time"].item() == 0.0
    assert empty[physionet.CHANNELS].isna().all(axis=None)
    assert empty["static_Age"].item() == 44 and np.isnan(empty["static_Height"].item())
    assert empty["label"].item() == 0
    assert len(df) == 1 + sum(len(v) for v in fixture["observations"].values())


def _paper_reference(lines: list[str], quantization: float) -> dict[float, dict[str, float]]:
    """The paper code's parsing loop (physionet.py, PhysioNet.download), restated: every
    PAPER_PARAMS row is an observation (even -1), repeats at one quantized time averaged."""
    out: dict[float, dict[str, list[float]]] = {}
    for line in lines:
        time, param, val = line.split(",")
        hours = float(time.split(":")[0]) + float(time.split(":")[1]) / 60.0
        hours = round(hours / quantization) * quantization
        if param in physionet.PAPER_PARAMS:
            out.setdefault(hours, {}).setdefault(param, []).append(float(val))
    return {t: {p: float(np.mean(v)) for p, v in d.items()} for t, d in out.items()}


@pytest.mark.parametrize("quantization", [0.1, 1.0])
def test_physionet_quantization_matches_the_paper_loop(fixture, quantization):
    df, _ = _load(fixture["root"], quantization=quantization, variables=physionet.PAPER_PARAMS)
    for rid in fixture["record_ids"]:
        reference = _paper_reference(fixture["records"][rid], quantization)
        # Where we differ on purpose: -1 of a descriptor or of Weight is not an observation.
        for values in reference.values():
            for p in [p for p, v in values.items() if p in physionet.DESCRIPTORS and v == -1]:
                del values[p]
        reference = {t: v for t, v in reference.items() if v}
        patient = df[df["series_id"] == rid]
        assert patient["time"].tolist() == sorted(reference)  # exact floats, k * q
        for (_, row), t in zip(patient.iterrows(), sorted(reference), strict=True):
            got = {c: row[c] for c in physionet.PAPER_PARAMS if not np.isnan(row[c])}
            assert got == pytest.approx(reference[t]), (rid, t)


def test_physionet_quantization_hand_checked(fixture):
    df, _ = _load(fixture["root"], quantization=1.0)
    a = df[df["series_id"] == 132539].set_index("time")
    assert a.index.tolist() == [0.0, 1.0, 2.0, 3.0, 26.0, 48.0]  # 2.5 h -> 2 (half to even)
    assert a.loc[0.0, "HR"] == 75.0  # 73 and 77 at 00:07
    assert a.loc[1.0, "HR"] == 85.0  # 80 at 00:37 and 90 at 01:10
    assert a.loc[2.0, "Temp"] == 37.2
    b = df[df["series_id"] == 132540].set_index("time")
    assert b.loc[1.0, ["HR", "Temp", "Weight"]].tolist() == pytest.approx([88.0, 36.7, 75.5])


def test_physionet_variables(fixture):
    df, messages = _load(fixture["root"], variables=["HR", "Age"])
    assert list(df.columns[:4]) == ["series_id", "time", "HR", "Age"]
    assert physionet.frame_kwargs(["HR", "Age"])["value_cols"] == ["HR", "Age"]
    # Age is a channel observed once, at time 0: 132541 (descriptors only) and 132543 (no HR)
    # keep their Age row, so nobody is dropped.
    first = df.groupby("series_id").head(1)
    assert (first["time"] == 0).all() and first["Age"].tolist() == [54, 76, 44, 68]
    assert df["Age"].notna().sum() == 4
    assert df[df["series_id"] == 132539]["HR"].dropna().tolist() == [75.0, 80.0, 90.0]
    assert not any("dropped" in m for m in messages)


def test_physionet_variables_drop_unobserved_patients(fixture):
    df, messages = _load(fixture["root"], variables=["Lactate"])
    assert df["series_id"].unique().tolist() == [132543]
    assert any("dropped 3 patient(s)" in m for m in messages)


@pytest.mark.parametrize(
    ("variables", "match"),
    [(["HeartRate"], "unknown variables"), ("HR", "list of names"), ([], "non-empty")],
)
def test_physionet_bad_variables(fixture, variables, match):
    with pytest.raises(ValueError, match=match):
        physionet.load(fixture["root"], variables=variables)


@pytest.mark.parametrize("quantization", [0, -0.1, math.nan, "0.1"])
def test_physionet_bad_quantization(fixture, quantization):
    with pytest.raises(ValueError, match="quantization"):
        physionet.load(fixture["root"], quantization=quantization)


def test_physionet_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"set-a.*Outcomes-a\.txt"):
        physionet.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        physionet.load(tmp_path / "nowhere")


def test_physionet_labels_missing_patient_or_file(fixture):
    outcomes = fixture["outcomes"]
    lines = outcomes.read_text().splitlines()
    outcomes.write_text("\n".join(line for line in lines if "132540" not in line) + "\n")
    df, messages = _load(fixture["root"])
    assert df.loc[df["series_id"] == 132540, "label"].isna().all()
    assert df.loc[df["series_id"] == 132543, "label"].eq(1).all()
    assert any("1 patient(s) missing from" in m and "132540" in m for m in messages)

    outcomes.unlink()
    df, messages = _load(fixture["root"])
    assert df["label"].isna().all()
    assert any("no outcomes file" in m for m in messages)
    # labels=False (the interpolation recipe's default): the outcomes file is not read at all
    df, messages = _load(fixture["root"], labels=False)
    assert "label" not in df.columns and not any("outcomes" in m for m in messages)
    kwargs = physionet.frame_kwargs(labels=False)  # matches it: no label column asked for
    assert "label_col" not in kwargs and from_dataframe(df, **kwargs).labels is None
    with pytest.raises(ValueError, match=r"column 'label' is not in the DataFrame"):
        from_dataframe(df, **physionet.FRAME_KWARGS)  # not NaN labels read as data
    outcomes.write_text("RecordID,In-hospital_death\nabc,1\n")  # malformed
    with pytest.raises(ValueError, match="abc"):
        physionet.load(fixture["root"])
    _load(fixture["root"], labels=False)  # not read: no error
    from latentode.data import load_dataset

    _, messages = _load_registry(load_dataset, fixture["root"])
    assert not any("outcomes" in m for m in messages)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("Time,Parameter,Value\n00:00,HR\n", r"132539\.txt line 2: .* 3 fields"),
        ("Time,Parameter,Value\n00:00,HR,7,1\n", r"132539\.txt line 2"),
        ("Time,Parameter,Value\n00:00,HR,70\n\n7h15,HR,80\n", r"132539\.txt line 4: bad time"),
        ("Time,Parameter,Value\n00:61,HR,80\n", r"line 2: bad time '00:61'"),
        ("Time,Parameter,Value\n00:10,HR,fast\n", r"line 2: bad value 'fast'"),
        ("Time,Parameter,Value\n00:00,RecordID,999\n", r"line 2: bad RecordID 999 "),
        ("RecordID,Time,Value\n", r"132539\.txt starts with"),
    ],
)
def test_physionet_malformed_files(fixture, content, match):
    (fixture["set_dir"] / "132539.txt").write_text(content)
    with pytest.raises(ValueError, match=match):
        physionet.load(fixture["root"])


def test_physionet_bad_outcomes(fixture):
    fixture["outcomes"].write_text("RecordID,Death\n132539,0\n")
    with pytest.raises(ValueError, match=r"Outcomes-a\.txt lacks the column"):
        _load(fixture["root"])
    fixture["outcomes"].write_text("RecordID,In-hospital_death\n132539,2\n")
    with pytest.raises(ValueError, match=r"line 2: RecordID"):
        _load(fixture["root"])
    fixture["outcomes"].write_text("RecordID,In-hospital_death\n132539,0\n132539,1\n")
    with pytest.raises(ValueError, match="RecordID 132539 more than once"):
        _load(fixture["root"])


def test_physionet_tolerates_spaces_blank_lines_and_crlf(fixture):
    """Off the fast path (the strict parse), the same values come out."""
    clean, _ = _load(fixture["root"])
    path = fixture["set_dir"] / "132540.txt"
    lines = path.read_text().splitlines()
    messy = [lines[0], *(f" {t} , {p} , {v} " for t, p, v in (x.split(",") for x in lines[1:]))]
    messy.insert(4, "")
    path.write_bytes(("\r\n".join(messy) + "\r\n").encode())
    df, _ = _load(fixture["root"])
    pd.testing.assert_frame_equal(df, clean)


@pytest.mark.parametrize("quantization", [None, 0.1])
def test_physionet_fast_and_strict_parse_agree(fixture, monkeypatch, quantization):
    fast, _ = _load(fixture["root"], quantization=quantization, keep_empty=True)
    monkeypatch.setattr(physionet, "_parse_fast", lambda big, n_rows: None)
    strict, _ = _load(fixture["root"], quantization=quantization, keep_empty=True)
    pd.testing.assert_frame_equal(fast, strict)


def test_physionet_stray_file(fixture):
    (fixture["set_dir"] / "notes.txt").write_text("hello\n")
    with pytest.raises(ValueError, match=r"notes\.txt"):
        physionet.load(fixture["root"])


@pytest.mark.parametrize(
    ("content", "match"),
    [  # a 4-field line and a 2-field one cancel in the per-file comma count: pandas' error
       # named no file (and a 4-field first line of the set shifted every column)
        ("Time,Parameter,Value\n00:10,HR,80\n30:00,Temp,37,2\n31:00,HR\n",
         r"132539\.txt line 3: bad line '30:00,Temp,37,2' \(expected the 3 fields"),
        ("Time,Parameter,Value\n00:00,RecordID,132539,1\n00:10,HR\n",
         r"132539\.txt line 2: bad line '00:00,RecordID,132539,1'"),
    ],
)
def test_physionet_lines_with_other_field_counts_are_named(fixture, content, match):
    (fixture["set_dir"] / "132539.txt").write_text(content)
    with pytest.raises(ValueError, match=match):
        physionet.load(fixture["root"])


def test_physionet_a_byte_that_is_not_utf8_is_named(fixture):
    path = fixture["set_dir"] / "132540.txt"
    path.write_bytes(b"Time,Parameter,Value\n00:10,HR,80\n07:40,Temp,37\xb0C\n")
    with pytest.raises(ValueError, match=r"132540\.txt line 3: byte 0xb0 is not UTF-8"):
        physionet.load(fixture["root"])


def test_physionet_a_set_without_observations_is_refused(fixture):
    """Only headers and descriptors (a truncated extraction): the loader returned an empty
    frame and the data layer failed later with "the DataFrame has no rows"."""
    for path in fixture["set_dir"].glob("*.txt"):
        path.write_text("Time,Parameter,Value\n00:00,Age,50\n")
    with pytest.raises(ValueError, match=r"none of the 4 record\(s\) in .*set-a holds an "
                                         r"observed value.*keep_empty=True"):
        _load(fixture["root"])
    df, _ = _load(fixture["root"], keep_empty=True)
    assert len(df) == 4 and df[physionet.CHANNELS].isna().all().all()


def test_physionet_unknown_parameters_say_where(fixture):
    lines = ["Time,Parameter,Value", *fixture["records"][132539]]
    first = next(i for i, line in enumerate(lines, 1) if ",FooBar," in line)
    _, messages = _load(fixture["root"])
    assert any("'FooBar' x2, first in 13253" in m and f"line {first}" in m for m in messages
               if "unknown parameter" in m), messages


def test_physionet_archives_nested_sets_and_the_paper_layout(fixture, tmp_path):
    archive = tmp_path / "dl" / "set-a.tar.gz"
    archive.parent.mkdir()
    archive.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"set-a\.tar\.gz is an archive.*tar xzf "):
        physionet.load(archive)  # the archive given as root
    with pytest.raises(FileNotFoundError, match=r"set-a\.tar\.gz is an archive.*tar xzf "):
        physionet.load(archive.parent)  # the archive beside, not yet extracted
    nested = tmp_path / "nested"
    (nested / "set-a").mkdir(parents=True)
    fixture["set_dir"].rename(nested / "set-a" / "set-a")
    with pytest.raises(FileNotFoundError, match=r"one level down, in .*set-a/set-a"):
        physionet.load(nested)
    # the paper code downloads to <data>/physionet/PhysioNet/raw/set-a (outcomes beside it)
    paper = tmp_path / "physionet" / "PhysioNet" / "raw"
    paper.mkdir(parents=True)
    (nested / "set-a" / "set-a").rename(paper / "set-a")
    fixture["outcomes"].rename(paper / "Outcomes-a.txt")
    df, messages = _load(tmp_path / "physionet")
    assert sorted(df["series_id"].unique()) == fixture["record_ids"]
    assert df["label"].notna().all() and not any("outcomes" in m for m in messages)


def test_physionet_outcomes_of_other_patients_are_not_judged(fixture):
    """Only the loaded patients' outcomes must be 0 or 1; values print plainly (they printed
    as np.int64(...))."""
    text = fixture["outcomes"].read_text()
    fixture["outcomes"].write_text(text + "999999,8,3,7,-1,-1\n")
    df, _ = _load(fixture["root"])
    assert set(df["label"].unique()) <= {0.0, 1.0}
    fixture["outcomes"].write_text(text.replace("132540,16,8,8,-1,1", "132540,16,8,8,-1,-1"))
    with pytest.raises(ValueError, match=r"line 3: RecordID 132540 with In-hospital_death -1;"):
        _load(fixture["root"])


def _renumbered(fixture: dict, root: Path, letter: str, offset: int) -> None:
    """A copy of the fixture's set as set-<letter>, every RecordID moved by ``offset``."""
    (root / f"set-{letter}").mkdir(parents=True)
    for path in fixture["set_dir"].glob("*.txt"):
        rid = int(path.stem)
        text = path.read_text().replace(f"RecordID,{rid}", f"RecordID,{rid + offset}")
        (root / f"set-{letter}" / f"{rid + offset}.txt").write_text(text)


def test_physionet_pools_sets_as_the_paper_code(fixture, tmp_path):
    """subset=[a, b]: the paper's interpolation data (set-a and set-b); RecordIDs must differ."""
    _renumbered(fixture, fixture["root"], "b", 10_000)
    a, _ = _load(fixture["root"], subset="a")
    b, messages = _load(fixture["root"], subset="b")
    assert any("no outcomes file" in m for m in messages)  # set-b has none here
    pooled, _ = _load(fixture["root"], subset=["a", "b"])
    pd.testing.assert_frame_equal(pooled, pd.concat([a, b], ignore_index=True))
    np.testing.assert_array_equal(
        pooled[physionet.CHANNELS].to_numpy()[: len(a)], a[physionet.CHANNELS].to_numpy())
    _renumbered(fixture, fixture["root"], "c", 0)
    with pytest.raises(ValueError, match=r"RecordID 132539 is in both set-a and set-c"):
        _load(fixture["root"], subset=["a", "c"])
    with pytest.raises(ValueError, match="distinct"):
        _load(fixture["root"], subset=["a", "a"])
    with pytest.raises(ValueError, match="holds record files itself"):
        _load(fixture["set_dir"], subset=["a", "b"])
    with pytest.raises(FileNotFoundError, match=r"set-d/.*Pooling sets \['a', 'd'\]; to read "
                                                r"the set\(s\) found alone: subset='a'"):
        _load(fixture["root"], subset=["a", "d"])
    with pytest.raises(FileNotFoundError, match=r"set-e/") as raised:
        _load(fixture["root"], subset=["e", "d"])
    assert "Pooling" not in str(raised.value)  # neither is there: no advice to read one


def test_physionet_variables_paper_is_the_papers_41_channels(fixture):
    by_name, _ = _load(fixture["root"], variables=physionet.PAPER_PARAMS)
    paper, _ = _load(fixture["root"], variables="paper")
    pd.testing.assert_frame_equal(paper, by_name)
    assert physionet.frame_kwargs("paper")["value_cols"] == physionet.PAPER_PARAMS
    with pytest.raises(ValueError, match=r"list of names or 'paper'"):
        physionet.load(fixture["root"], variables="HR")


# ------------------------------------------------------------------- the core layer's contract


def test_sources_feed_from_dataframe(fixture):
    frame = pytest.importorskip("latentode.data.frame")
    data = frame.from_dataframe(periodic.load(5, 10, seed=0), **periodic.FRAME_KWARGS)
    assert len(data) == 5 and data.channels == ["value"]
    df, _ = _load(fixture["root"])
    with pytest.warns(UserWarning, match=r"channel\(s\) have no observed value"):  # 3 records
        data = frame.from_dataframe(df, **physionet.FRAME_KWARGS)
    assert len(data) == 3 and data.channels == physionet.CHANNELS
    assert data.label_kind == "series" and data.labels.tolist() == [0, 1, 1]
    assert data.static_names == physionet.STATIC_COLUMNS
    if importlib.util.find_spec("statsmodels") is not None:
        data = frame.from_dataframe(co2.load(keep_missing=True), **co2.FRAME_KWARGS)
        assert len(data) == 1 and int(data.mask.sum()) == 2225


def test_load_dataset_names_a_missing_path_and_misspelt_options(tmp_path):
    """Hydra's ``???`` does not fire for a partial config: the csv source says path= itself;
    an option a source does not take is named with the nearest one (was a TypeError)."""
    from latentode.data import load_dataset

    with pytest.raises(ValueError, match=r"csv source needs path= .*data\.dataset\.path="):
        load_dataset("csv")
    with pytest.raises(ValueError, match=r"no option\(s\) \['idcol'\] \('idcol': did you mean "
                                         r"'id_col'\?\)"):
        load_dataset("csv", path=tmp_path / "x.csv", idcol="patient")
    with pytest.raises(ValueError, match=r"periodic data source has no option\(s\) "
                                         r"\['n_seires'\].*'n_series'"):
        load_dataset("periodic", n_seires=3)


def test_parquet_without_an_engine_says_what_to_install(tmp_path, monkeypatch):
    from latentode.data.files import read_table, write_table

    frame = pd.DataFrame({"series_id": [1, 1], "time": [0.0, 1.0], "x": [0.5, 0.7]})
    write_table(frame, tmp_path / "f.csv")
    # rows labelled with their lines in the file (the header is line 1)
    pd.testing.assert_frame_equal(read_table(tmp_path / "f.csv"), frame.set_axis([2, 3]),
                                  check_index_type=False)

    def no_engine(*args, **kwargs):
        raise ImportError("Unable to find a usable engine; tried using: 'pyarrow', "
                          "'fastparquet'. A suitable version of pyarrow or fastparquet is "
                          "required for parquet support.")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", no_engine)
    monkeypatch.setattr(pd, "read_parquet", no_engine)
    for call in (lambda: write_table(frame, tmp_path / "f.parquet"),
                 lambda: read_table(tmp_path / "f.pq")):
        with pytest.raises(ImportError, match=r"pip install 'latentode\[parquet\]'"):
            call()
