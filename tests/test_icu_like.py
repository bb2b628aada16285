"""scripts/make_icu_like.py: synthetic records in the PhysioNet 2012 format that our loader reads,
in units where the paper code's min/max scaling is the identity, and bench_paper_code.py's
packing of them into the archives the paper code's PhysioNet class opens."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
from scripts_loader import load_script

from latentode.data.sources import physionet


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("icu")
    load_script("make_icu_like").write(out, n_patients=6, sets=["a", "b"], seed=3)
    return out


def test_records_parse_with_the_shape_of_icu_stays(records):
    frames = [physionet.load(records, quantization=0.016, subset=s) for s in "ab"]
    assert [f.series_id.nunique() for f in frames] == [6, 6]
    both = frames[0].merge(frames[1], how="outer")
    values = both[physionet.CHANNELS]
    # pooled over the sets every channel spans exactly [0, 1] (paper code's scaling = identity)
    observed = values.nunique() >= 2  # a channel seen once is 0 (nothing to scale)
    assert observed.sum() >= 30
    np.testing.assert_array_equal(values.loc[:, observed].min().to_numpy(), 0.0)
    np.testing.assert_array_equal(values.loc[:, observed].max().to_numpy(), 1.0)
    per_patient = both.groupby("series_id")
    assert per_patient.size().between(40, 150).all()          # distinct minutes per stay
    assert per_patient.time.max().between(40, 48).all()        # 48-hour stays
    assert (values.notna().sum(axis=1) >= 1).all()
    # each patient has its own clock: a batch's union is far longer than any one patient
    assert both.time.nunique() > 5 * per_patient.size().max()
    # descriptors are constant zeros, labels are 0/1 per patient
    assert (both["static_Age"] == 0).all() and (both["static_ICUType"] == 0).all()
    assert set(both.groupby("series_id").label.first().unique()) <= {0.0, 1.0}


def test_generation_is_seeded(tmp_path):
    make = load_script("make_icu_like")
    make.write(tmp_path / "one", 3, ["a"], seed=5)
    make.write(tmp_path / "two", 3, ["a"], seed=5)
    for f in sorted((tmp_path / "one" / "set-a").iterdir()):
        assert f.read_text() == (tmp_path / "two" / "set-a" / f.name).read_text()


def test_paper_code_archives_split_the_records_in_halves(records, tmp_path):
    raw = load_script("bench_paper_code").write_physionet(tmp_path, records)
    assert raw == tmp_path / "data" / "physionet" / "PhysioNet" / "raw"
    names = {}
    for letter in "ab":
        with tarfile.open(raw / f"set-{letter}.tar.gz?download") as tar:
            names[letter] = sorted(tar.getnames())
    ids = sorted(int(f.stem) for f in (records / "set-a").glob("*.txt"))
    assert names["a"] == [f"set-a/{i}.txt" for i in ids[:3]]
    assert names["b"] == [f"set-b/{i}.txt" for i in ids[3:]]
    assert (raw / "Outcomes-a.txt").read_text() == (records / "Outcomes-a.txt").read_text()


def test_paper_mse_aggregate_matches_the_paper_codes_loop():
    """bench_training's ``mse/paper`` is the paper code's ``compute_masked_likelihood`` with
    ``mse``: per (sample, series, channel) over the observed times, 0 where none, then means."""
    import torch

    bench = load_script("bench_training")
    g = torch.Generator().manual_seed(0)
    s, b, t, d, paper_channels = 3, 4, 9, 5, 7
    pred, values = torch.randn(s, b, t, d, generator=g), torch.randn(b, t, d, generator=g)
    mask = (torch.rand(b, t, d, generator=g) < 0.3).float()
    mask[1, :, 2] = 0  # a channel never observed for one series
    expected = torch.zeros(s, b, paper_channels)  # the extra channels: never observed, 0
    for i in range(s):
        for k in range(b):
            for j in range(d):
                seen = mask[k, :, j].bool()
                if seen.any():
                    expected[i, k, j] = torch.nn.functional.mse_loss(pred[i, k, seen, j],
                                                                     values[k, seen, j])
    sq = (pred - values).square() * mask
    got = bench.paper_mse_sum(sq, mask) / (b * paper_channels)
    torch.testing.assert_close(got, expected.mean(-1).mean(), rtol=1e-6, atol=1e-7)
