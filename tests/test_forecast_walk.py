"""Forecasting with a model trained on the union walk of gridded data (the quick start's and the
hopper's recipes): each series is walked alone through its observations and the training grid,
with z0 at the grid's start, which is what its training walk gave it. Walked through its own
observations only, the quick start's model answered held-out points with MSE 0.50 instead of
0.012 (data units) and its 90% intervals covered 27%."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentode.forecast.draw import WalkGrid, make_jobs, solve
from latentode.models import LatentODE

F64 = torch.float64


def model() -> LatentODE:
    torch.manual_seed(0)
    m = LatentODE(input_dim=2, latents=3, gen_units=8).double().eval()
    m.solver.update(rtol=1e-10, atol=1e-12)  # batched rows share the decoder's steps
    return m


def history(seed: int, grid: np.ndarray):
    """A series on ``grid`` missing its first point and a third of the others, observing the
    last one (so the union walk starts there as the series walk does)."""
    rng = np.random.default_rng(seed)
    keep = rng.random(len(grid)) < 0.67
    keep[0], keep[-1] = False, True
    values = rng.normal(size=(len(grid), 2))
    values[rng.random(values.shape) < 0.2] = np.nan
    values[-1, 0] = 0.5
    return grid[keep], values[keep]


def union_answer(m: LatentODE, grid: np.ndarray, hist_t, hist_v, want, eps):
    """The model's own union walk over a batch whose union is the grid (a companion series
    observes every point), z0 at the grid's start, decoded at ``want``."""
    values = np.zeros((2, len(grid), 2))
    mask = np.zeros((2, len(grid), 2), dtype=bool)
    at = np.searchsorted(grid, hist_t)
    values[0, at] = np.nan_to_num(hist_v)
    mask[0, at] = ~np.isnan(hist_v)
    mask[1, :, 0] = True
    pred = np.unique(np.concatenate([grid[:1], want]))
    noise = torch.stack([eps, torch.zeros_like(eps)], 1)
    with torch.no_grad():
        out = m(torch.from_numpy(grid), torch.from_numpy(values), torch.from_numpy(mask),
                pred_times=torch.from_numpy(pred), z0_noise=noise)
    return out.pred[:, 0][:, np.searchsorted(pred, want)]


@pytest.mark.parametrize("n_jobs", [1, 3])
def test_jobs_on_the_training_grid_answer_as_the_union_walk(n_jobs):
    m = model()
    grid = np.sort(np.random.default_rng(9).uniform(0, 4, 30))
    grid[0] = 0.0
    walk = WalkGrid(grid, "batch")
    jobs, expected = [], []
    for k in range(n_jobs):
        hist_t, hist_v = history(k, grid)
        want = np.array([grid[0], grid[3], (grid[10] + grid[11]) / 2, grid[-1] + 0.7])
        (_, job), = make_jobs(hist_t, hist_v, want, np.float64, from_target=False,
                              backwards=True, walk=walk)
        job.eps = torch.randn(5, 3, generator=torch.Generator().manual_seed(k), dtype=F64)
        assert job.hist_t[0] == 0.0 and np.isnan(job.hist_v[0]).all()  # z0 at the grid start
        observed = ~np.isnan(hist_v).all(1)
        assert job.visit is not None and job.visit.sum() == len(grid) - observed.sum() - 1
        jobs.append(job)
        expected.append(union_answer(m, grid, hist_t, hist_v, want, job.eps))
    with torch.no_grad():
        answers = solve(m, jobs, 5)
    for (paths, _), want_paths in zip(answers, expected, strict=True):
        torch.testing.assert_close(paths, want_paths, rtol=1e-7, atol=1e-9)


def test_no_anchor_off_the_grid_or_on_a_series_clock():
    grid = np.linspace(0.0, 4.0, 9)
    assert WalkGrid(grid, "batch").anchor(1.0) == 0.0
    assert WalkGrid(grid, "batch").anchor(7.0) is None  # a history after the training span
    assert WalkGrid(grid, "series").anchor(1.0) is None  # each series' own clock: from itself
    # on a series clock the grid starts at the history's first time
    np.testing.assert_allclose(WalkGrid(grid, "series").on_job_clock(10.0, 9.5), grid + 0.5)


@pytest.mark.parametrize("encoder", ["odernn", "rnn"])
def test_a_first_target_model_is_anchored_at_the_grid_start_too(encoder):
    """z0_at="first_target" (the hopper presets): z0 sits at the first asked time, but the
    encoder walked to the batch's first time in training all the same. Unanchored, a history
    starting at grid[6] answered 0.15-0.23 off the union walk (mean |pred| 0.25)."""
    from latentode.nn import ODERNNEncoder, RNNEncoder

    torch.manual_seed(0)
    enc = ODERNNEncoder(2, 3, hidden=8) if encoder == "odernn" else RNNEncoder(2, 3, hidden=8)
    m = LatentODE(input_dim=2, latents=3, gen_units=8, encoder=enc,
                  z0_at="first_target").double().eval()
    m.solver.update(rtol=1e-10, atol=1e-12)
    grid = np.linspace(0, 4, 21)
    rng = np.random.default_rng(1)
    keep = (np.arange(21) >= 6) & (rng.random(21) < 0.8)
    keep[-1] = True
    hist_t, hist_v = grid[keep], rng.normal(size=(keep.sum(), 2))
    want = np.array([4.3, 4.7])
    (_, job), = make_jobs(hist_t, hist_v, want, np.float64, from_target=True, backwards=True,
                          walk=WalkGrid(grid, "batch"))
    job.eps = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    values = np.zeros((2, 21, 2))
    mask = np.zeros((2, 21, 2), dtype=bool)
    values[0, keep], mask[0, keep] = hist_v, True
    mask[1, :, 0] = True
    with torch.no_grad():
        got = solve(m, [job], 4)[0][0]
        out = m(torch.from_numpy(grid), torch.from_numpy(values), torch.from_numpy(mask),
                pred_times=torch.from_numpy(want),
                z0_noise=torch.stack([job.eps, torch.zeros_like(job.eps)], 1))
    torch.testing.assert_close(got, out.pred[:, 0], rtol=1e-7, atol=1e-9)


def test_a_series_clock_grid_is_one_time_per_calendar_step(tmp_path, monkeypatch):
    """Series on a 0.1 calendar starting at different steps, each on its own clock
    (data=csv): times minus each start differ by float rounding (0.3 - 0.0 vs 0.7 - 0.4), which
    made one grid time several, float32 repeats in the walk and every forecast a ValueError."""
    import pandas as pd
    from test_cli import run_main

    from latentode import LatentODEForecaster
    from latentode.cli import train as train_cli
    from latentode.forecast.forecaster import distinct_within

    assert len(distinct_within(np.array([0.3 - 0.0, 0.7 - 0.4, 0.1, 0.0]))) == 3
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        k0 = (0, 3, 7)[i % 3]
        ks = np.arange(k0, k0 + 30)
        ks = ks[(rng.random(len(ks)) < 0.8) | (ks == k0)]
        rows += [{"series_id": f"s{i}", "time": k * 0.1, "value": np.sin(k * 0.1 + i)}
                 for k in ks]
    pd.DataFrame(rows).to_csv(tmp_path / "grid.csv", index=False)
    run = tmp_path / "run"
    run_main(train_cli, ["latentode-train", "data=csv", f"data.dataset.path={tmp_path}/grid.csv",
                         f"hydra.run.dir={run}", "trainer.max_epochs=1", "data.batch_size=8",
                         "plots.n_series=0", "callbacks.progress_bar.refresh_rate=0"],
             monkeypatch)
    fc = LatentODEForecaster.from_run(run)
    assert fc.spec.walk_origin == "series" and len(fc.spec.walk_grid) == 30
    ks = np.array([3, 4, 8, 9, 14, 20, 25, 32])
    hist = pd.DataFrame({"series_id": "x", "time": ks * 0.1, "value": np.sin(ks * 0.1)})
    one = fc.predict(hist, horizon=1.0, n=5, noise=False, batch_size=1)
    many = fc.predict(hist, horizon=1.0, n=5, noise=False)
    assert one["mean"].notna().all()
    np.testing.assert_allclose(one["mean"], many["mean"], rtol=0, atol=1e-4)
