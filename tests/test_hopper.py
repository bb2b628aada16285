"""Hopper source: generation (paper's recipe), cache, scaling, interp/extrap frames, split."""

from __future__ import annotations

import logging.config
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("dm_control")
pytest.importorskip("mujoco")

from latentode.data.sources import hopper

N = 20


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hopper_cache")


@pytest.fixture(scope="module")
def raw(cache_dir: Path) -> np.ndarray:
    return hopper.generate(N, cache_dir=cache_dir, progress=False)


def test_constants() -> None:
    expected = [f"qpos{i}" for i in range(7)] + [f"qvel{i}" for i in range(7)]
    assert expected == hopper.CHANNELS
    assert hopper.FRAME_KWARGS == {"id_col": "series_id", "time_col": "time"}
    assert hopper.ENCODER_STEPS_EXTRAP == 66


def test_shape_dtype_finite(raw: np.ndarray) -> None:
    assert raw.shape == (N, 200, 14)
    assert raw.dtype == np.float32
    assert np.isfinite(raw).all()


def test_first_step_is_sampled_initial_state(raw: np.ndarray) -> None:
    first = raw[:, 0]
    assert ((first[:, :2] >= 0) & (first[:, :2] <= 0.5)).all()
    assert ((first[:, 2:7] >= -2) & (first[:, 2:7] <= 2)).all()
    assert ((first[:, 7:] >= -5) & (first[:, 7:] <= 5)).all()
    # The paper records the state before each physics.step(): step 0 is exactly what was drawn.
    np.testing.assert_array_equal(first, hopper.initial_states(N, 123).astype(np.float32))
    assert not np.array_equal(raw[:, 1], raw[:, 0])  # and the physics moves it afterwards


def test_matches_paper_style_dm_control_loop(raw: np.ndarray) -> None:
    """The paper's generation loop, physics.step() and all, gives bit-identical trajectories."""
    physics = hopper._load_physics()
    rng = np.random.RandomState(123)  # the same stream as np.random.seed(123)
    ref = np.zeros((3, 200, 14))
    for i in range(3):
        with physics.reset_context():
            physics.data.qpos[:2] = rng.uniform(0, 0.5, size=2)
            physics.data.qpos[2:] = rng.uniform(-2, 2, size=physics.data.qpos[2:].shape)
            physics.data.qvel[:] = rng.uniform(-5, 5, size=physics.data.qvel.shape)
        for t in range(200):
            ref[i, t, :7] = physics.data.qpos
            ref[i, t, 7:] = physics.data.qvel
            physics.step()
    np.testing.assert_array_equal(raw[:3], ref.astype(np.float32))


def test_deterministic_cached_and_prefix_stable(
    raw: np.ndarray, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert len(list(cache_dir.glob("hopper_*.npz"))) == 1

    def no_simulation(*args: object, **kwargs: object) -> None:
        raise AssertionError("regenerated despite a cache hit")

    with monkeypatch.context() as m:
        m.setattr(hopper, "_simulate", no_simulation)
        m.setattr(hopper, "_load_physics", no_simulation)
        again = hopper.generate(N, cache_dir=cache_dir, progress=False)
    np.testing.assert_array_equal(again, raw)
    # A fresh generation (no cache) of fewer trajectories is the same random stream's prefix.
    fresh = hopper.generate(5, cache_dir=None, progress=False)
    np.testing.assert_array_equal(fresh, raw[:5])
    other = hopper.generate(2, seed=124, cache_dir=None, progress=False)
    assert not np.array_equal(other, raw[:2])


def test_logging_reconfigured_after_dm_control_keeps_pytests_capture_open(
    raw: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    """dm_control's absl log handler closed the stream it was made with (pytest's capture file)
    when an in-process Hydra run reconfigured logging: this test errored at teardown and every
    later test with "I/O operation on closed file" (conftest hands absl the real stderr)."""
    logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})  # as Hydra does
    print("still captured")
    assert capsys.readouterr().out == "still captured\n"


def test_missing_dm_control_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "dm_control", None)
    with pytest.raises(ImportError, match=r'pip install "latentode\[hopper\]"'):
        hopper.generate(2, cache_dir=tmp_path, progress=False)


def test_preprocess_paper_scaling(raw: np.ndarray) -> None:
    scaled, params = hopper.preprocess(raw)
    flat = raw.reshape(-1, 14)
    lo, hi = flat.min(0), flat.max(0)
    np.testing.assert_array_equal(params["min"], lo)
    np.testing.assert_array_equal(params["max"], np.where(hi == 0, 1, hi))
    assert scaled.shape == raw.shape and scaled.dtype == np.float32
    s = scaled.reshape(-1, 14)
    np.testing.assert_array_equal(s.min(0), np.zeros(14, np.float32))  # (min - min) / max
    np.testing.assert_allclose(s.max(0), (hi - lo) / hi, rtol=1e-6)  # not min-max: divides by max
    np.testing.assert_allclose(hopper.inverse_transform(scaled, params), raw, atol=1e-5)


def test_preprocess_zero_max_quirk() -> None:
    x = np.array([[[-2.0, 1.0], [0.0, 3.0]], [[-1.0, 2.0], [-4.0, 5.0]]])
    scaled, params = hopper.preprocess(x)
    np.testing.assert_array_equal(params["max"], [1.0, 5.0])  # max 0 -> 1
    np.testing.assert_allclose(scaled[..., 0], x[..., 0] + 4.0)
    np.testing.assert_allclose(scaled[..., 1], (x[..., 1] - 1.0) / 5.0)
    with pytest.raises(ValueError, match="NaN"):
        hopper.preprocess(np.full((1, 2, 2), np.nan))


def _check_split(df: pd.DataFrame, length: int) -> None:
    per_series = df.groupby("series_id", observed=True)["split"].agg(["first", "nunique"])
    assert (per_series["nunique"] == 1).all()
    assert list(per_series["first"]) == ["train"] * 16 + ["test"] * 4  # 80/20 in order
    assert df.attrs["hopper"]["n_train"] == 16
    assert len(df) == N * length


def test_load_interp_windows(raw: np.ndarray, cache_dir: Path) -> None:
    df = hopper.load("interp", n_trajectories=N, cache_dir=cache_dir, progress=False)
    assert list(df.columns) == ["series_id", "time", *hopper.CHANNELS, "split"]
    _check_split(df, 100)
    grid = np.arange(100) / 200
    assert grid[-1] == 0.495
    scaled, _ = hopper.preprocess(raw)
    starts = np.random.RandomState(1991).randint(0, 101, size=N)  # the paper's windows
    np.testing.assert_array_equal(hopper.interp_window_starts(N), starts)
    assert len(set(starts.tolist())) > 1
    for sid, g in df.groupby("series_id"):
        assert len(g) == 100
        np.testing.assert_array_equal(g["time"].to_numpy(), grid)
        s = starts[sid]
        np.testing.assert_array_equal(g[hopper.CHANNELS].to_numpy(), scaled[sid, s : s + 100])


def test_load_extrap_full_trajectories(raw: np.ndarray, cache_dir: Path) -> None:
    df = hopper.load("extrap", n_trajectories=N, cache_dir=cache_dir, progress=False)
    _check_split(df, 200)
    assert df.attrs["hopper"]["encoder_steps"] == hopper.ENCODER_STEPS_EXTRAP
    scaled, _ = hopper.preprocess(raw)
    values = df[hopper.CHANNELS].to_numpy().reshape(N, 200, 14)
    np.testing.assert_array_equal(values, scaled)
    times = df["time"].to_numpy().reshape(N, 200)
    np.testing.assert_array_equal(times, np.tile(np.arange(200) / 200, (N, 1)))
    np.testing.assert_array_equal(df["series_id"].to_numpy(), np.arange(N).repeat(200))


def test_load_scales_over_more_trajectories_as_the_paper_code(
    raw: np.ndarray, cache_dir: Path
) -> None:
    """``scale_trajectories``: the first ``n`` trajectories, scaled by the min/max of a longer
    run (the paper's code scales its whole file, then takes ``-n``)."""
    n = N // 2
    df = hopper.load("extrap", n_trajectories=n, scale_trajectories=N, cache_dir=cache_dir,
                     progress=False)
    scaled, params = hopper.preprocess(raw)  # over all N
    values = df[hopper.CHANNELS].to_numpy().reshape(n, 200, 14)
    np.testing.assert_array_equal(values, scaled[:n])
    assert df.attrs["hopper"]["scale_max"] == params["max"].tolist()
    assert df.attrs["hopper"]["scale_trajectories"] == N
    own = hopper.load("extrap", n_trajectories=n, cache_dir=cache_dir, progress=False)
    np.testing.assert_array_equal(own[hopper.CHANNELS].to_numpy().reshape(n, 200, 14),
                                  hopper.preprocess(raw[:n])[0])
    with pytest.raises(ValueError, match="scale_trajectories=5 must be at least"):
        hopper.load("interp", n_trajectories=n, scale_trajectories=5, cache_dir=cache_dir)


def test_load_rejects_bad_arguments(cache_dir: Path) -> None:
    with pytest.raises(ValueError, match="task"):
        hopper.load("forecast", n_trajectories=N, cache_dir=cache_dir)
    with pytest.raises(ValueError, match="window"):
        hopper.load("interp", n_trajectories=N, window=201, cache_dir=cache_dir, progress=False)
