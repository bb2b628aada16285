"""``load_dataset``: every source by name, files by path, source-fixed splits reach the loaders."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from latentode.data import Extrapolation, Interpolation, LatentODEDataModule, load_dataset


def test_periodic_by_name_feeds_the_data_module():
    ds = load_dataset("periodic", n_series=40, seed=3)
    assert len(ds) == 40 and ds.channels == ["value"]
    assert np.all(ds.lengths == 100)
    dm = LatentODEDataModule(ds, Interpolation(fraction=0.5), batch_size=8, split_seed=1)
    dm.setup()
    sizes = {k: len(v) for k, v in dm.splits.items()}
    assert sizes == {"train": 28, "val": 4, "test": 8}
    batch = next(iter(dm.train_dataloader()))
    assert batch.values.shape == (8, 100, 1)  # shared grid: the union is the grid
    assert batch.encoder_mask.sum(1).squeeze(-1).tolist() == [50] * 8


def test_same_name_and_seed_same_data():
    a = load_dataset("periodic", n_series=5, seed=0)
    b = load_dataset("periodic", n_series=5, seed=0)
    np.testing.assert_array_equal(a.values, b.values)


def test_hopper_split_is_the_sources_own(tmp_path):
    pytest.importorskip("dm_control")
    ds = load_dataset("hopper", task="extrap", n_trajectories=10, cache_dir=str(tmp_path),
                      progress=False)
    assert ds.split.tolist() == ["train"] * 8 + ["test"] * 2
    dm = LatentODEDataModule(ds, Extrapolation(count=66), batch_size=4, scale=False)
    dm.setup()
    assert [len(dm.splits[k]) for k in ("train", "val", "test")] == [8, 0, 2]
    batch = next(iter(dm.test_dataloader()))
    assert batch.values.shape == (2, 200, 14)
    assert batch.encoder_mask.any(-1).sum(1).tolist() == [66, 66]
    assert batch.target_mask.any(-1).sum(1).tolist() == [134, 134]


def test_csv_with_iso_dates(tmp_path):
    frame = pd.DataFrame(
        {
            "patient": ["a", "a", "b"],
            "when": ["2024-01-01 08:00", "2024-01-01 09:30", "2024-01-02 10:00"],
            "hr": [80.0, np.nan, 70.0],
            "temp": [37.0, 37.5, np.nan],
        }
    )
    path = tmp_path / "vitals.csv"
    frame.to_csv(path, index=False)
    ds = load_dataset("csv", path=path, id_col="patient", time_col="when")
    back = ds.to_dataframe()
    assert pd.api.types.is_datetime64_any_dtype(back["when"])
    assert back["hr"].isna().tolist() == [False, True, False]
    assert ds.time_transform.kind == "datetime"


def test_csv_times_and_ids_read_as_written(tmp_path):
    """Only ISO 8601 text is a datetime (any format pandas guessed was read: day-first dates a
    month apart, clock times dated today); ids '007' and '7' are two series (type inference
    made them one), while ids written as integers stay integers."""
    path = tmp_path / "v.csv"
    pd.DataFrame({"series_id": ["a", "a"], "time": ["01/02/2024", "02/02/2024"],
                  "x": [1.0, 2.0]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"holds text times that are not ISO 8601"):
        load_dataset("csv", path=path)
    path.write_text("patient,time,hr\n007,0,60\n007,1,61\n7,0.5,90\n7,1.5,NA\n")
    ds = load_dataset("csv", path=path, id_col="patient")
    assert ds.ids == ["007", "7"] and ds.lengths.tolist() == [2, 2]
    assert np.isnan(ds.to_dataframe()["hr"].iloc[-1])
    path.write_text("patient,time,hr\n12,0,60\n12,1,61\n3,0.5,90\n")
    assert load_dataset("csv", path=path, id_col="patient").ids == [3, 12]


def test_bad_names_and_paths(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("csv", path=tmp_path / "nope.csv")


@pytest.mark.filterwarnings("ignore:physionet. (dropped|skipped)")
def test_physionet_variables_choose_the_channels(tmp_path):
    """Regression: the registry took the 37 default channels whatever ``variables`` said."""
    from fixtures.make_physionet_fixture import write_fixture

    write_fixture(tmp_path / "physionet")
    data = load_dataset("physionet", root=tmp_path / "physionet", variables=["Age", "HR"])
    assert list(data.channels) == ["Age", "HR"]
