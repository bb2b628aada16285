"""The encoders' per-series walk (schedule="series"): its plan, and that it is the union walk of
each series alone."""

from __future__ import annotations

import itertools

import pytest
import torch

from latentode.nn import ODERNNEncoder, RNNEncoder
from latentode.nn.schedule import series_plan


def test_plan_lists_each_series_own_observations_backwards():
    times = torch.tensor([0.0, 1.0, 2.0, 3.0, 5.0])
    seen = torch.tensor([[1, 0, 1, 0, 1], [0, 0, 0, 1, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    plan = series_plan(times, seen)
    assert plan.length == 3 and plan.moves == [False, True, True]
    assert plan.updates == [True, True, True]
    # series 1 ends with a move from its only observation (t = 3) back to the batch's t = 0
    assert plan.dt.T.tolist() == [[0, -3, -2], [0, -3, 0], [0, 0, 0]]
    assert plan.index.T.tolist() == [[4, 2, 0], [3, -1, -1], [-1, -1, -1]]
    assert plan.gap.T.tolist() == [[0, 3, 2], [0, 0, 0], [0, 0, 0]]

    split = series_plan(times, seen, max_step=1.5)  # gap 3 -> 2 x 1.5, gap 2 -> 2 x 1
    assert split.dt[:, 0].tolist() == [0, -1.5, -1.5, -1, -1]
    assert split.index[:, 0].tolist() == [4, -1, 2, -1, 0]
    assert split.gap[:, 0].tolist() == [0, 0, 3, 0, 2]
    assert split.updates == [True, False, True, False, True]
    assert split.dt[:, 1].tolist() == [0, -1.5, -1.5, 0, 0]  # the move back, split too
    assert series_plan(times, seen, max_step=3.0).index[:, 0].tolist() == [4, 2, 0]  # exact fit
    assert series_plan(times, seen, max_step=2.5).index[:, 0].tolist() == [4, -1, 2, 0]
    late = series_plan(times, seen[:, [1, 0, 2, 3, 4]])  # series 0 seen at t = 1, 2, 5
    assert late.dt[:, 0].tolist() == [0, -3, -1, -1] and late.index[:, 0].tolist() == [4, 2, 1, -1]


def _batch(seed: int = 0, batch: int = 5, length: int = 16, dims: int = 3):
    gen = torch.Generator().manual_seed(seed)
    times = torch.sort(torch.rand(length, generator=gen, dtype=torch.float64)).values * 4
    values = torch.randn(batch, length, dims, generator=gen, dtype=torch.float64)
    mask = torch.rand(batch, length, dims, generator=gen) < 0.3
    mask[-1] = False  # a series with nothing to read
    return times, values, mask


ENCODERS = {
    "odernn-gru": lambda **kw: ODERNNEncoder(3, 4, hidden=6, ode_units=10, z0_units=8, **kw),
    "odernn-std": lambda **kw: ODERNNEncoder(3, 4, hidden=6, ode_units=10, z0_units=8,
                                             gru_units=7, std_state=True, **kw),
    "odernn-mlp": lambda **kw: ODERNNEncoder(3, 4, hidden=6, ode_units=10, z0_units=8,
                                             gru_units=7, **kw),
    "rnn": lambda **kw: RNNEncoder(3, 4, hidden=6, z0_units=8, **kw),
}


def _pair(kind: str, **kw):
    torch.manual_seed(0)
    union = ENCODERS[kind]().double()
    series = ENCODERS[kind](schedule="series", **kw).double()
    series.load_state_dict(union.state_dict())
    return union, series


def _alone(union, times, values, mask, b: int, max_step: float | None = None):
    """The union walk of series ``b`` alone over the batch's first time and its own observation
    times (and, with ``max_step``, the points that split its long gaps, where it has no
    observation): ``z0`` lies at the batch's first time, where the decoder starts."""
    own = mask[b].any(-1).nonzero().flatten()
    if own[0] != 0:
        own = torch.cat([own.new_zeros(1), own])  # times[0], unobserved by this series
    t = times[own]
    if max_step is not None:
        points = [t[:1]]
        for lo, hi in itertools.pairwise(t):
            n = int(torch.ceil((hi - lo) / max_step - 1e-9).clamp_min(1))
            points.append(torch.linspace(float(lo), float(hi), n + 1, dtype=t.dtype)[1:])
        grid = torch.cat(points)
        at = torch.searchsorted(grid, t)
        v = values.new_zeros(1, len(grid), values.shape[-1])
        m = torch.zeros(1, len(grid), mask.shape[-1], dtype=torch.bool)
        v[0, at], m[0, at] = values[b, own], mask[b, own]
        return union(grid, v, m)
    return union(t, values[b : b + 1, own], mask[b : b + 1, own])


@pytest.mark.parametrize(("kind", "max_step"), [
    *((kind, None) for kind in sorted(ENCODERS)),
    *((kind, 0.3) for kind in sorted(ENCODERS) if kind != "rnn"),  # the RNN has no ODE moves
])
def test_series_walk_is_the_union_walk_of_each_series_alone(kind, max_step):
    union, series = _pair(kind, **({} if max_step is None else {"max_step": max_step}))
    times, values, mask = _batch()
    mean, std = series(times, values, mask)
    loss = (mean * torch.linspace(1, 2, 4, dtype=mean.dtype)).sum() + std.square().sum()
    grads = torch.autograd.grad(loss, list(series.parameters()), allow_unused=True)
    expected_loss = 0.0
    for b in range(len(values) - 1):
        m, s = _alone(union, times, values, mask, b, max_step)
        torch.testing.assert_close(mean[b], m[0], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(std[b], s[0], rtol=1e-10, atol=1e-12)
        expected_loss = expected_loss + (m[0] * torch.linspace(1, 2, 4, dtype=m.dtype)).sum()
        expected_loss = expected_loss + s[0].square().sum()
    # the series with no observation reads q(z0) from the zero state (alone, it has no times;
    # in a union walk it would drift from zero with the ODE until its first observation)
    nobody = torch.zeros(1, dtype=torch.bool)
    empty = union._z0(union.lead_in(values.new_zeros(1, union.state_dim), values.new_zeros(1),
                                    nobody))
    torch.testing.assert_close(mean[-1], empty[0][0])
    expected_loss = expected_loss + (empty[0][0] * torch.linspace(1, 2, 4, dtype=m.dtype)).sum()
    expected_loss = expected_loss + empty[1][0].square().sum()
    expected = torch.autograd.grad(expected_loss, list(union.parameters()), allow_unused=True)
    for got, want in zip(grads, expected, strict=True):
        if want is None:
            assert got is None or not got.any()
        else:
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_series_walk_is_shorter_for_unaligned_series():
    times = torch.arange(200, dtype=torch.float64)
    seen = torch.zeros(8, 200, dtype=torch.bool)
    for b in range(8):
        seen[b, b::8] = True  # each series sees every 8th point, none in common
    # 25 own points and the move back to the batch's first time, against 200 union steps
    assert series_plan(times, seen).length == 26


def test_gradcheck_series_walk():
    _, series = _pair("odernn-std", max_step=0.5)
    times, values, mask = _batch(batch=3, length=6)
    values.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: series(times, v, mask), (values,))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"schedule": "sorted"}, "schedule must be one of"),
    ({"max_step": 0.1}, "max_step splits the gaps of schedule='series'"),
    ({"schedule": "series", "max_step": 0.0}, "max_step must be a positive number"),
    ({"schedule": "series", "max_step": float("nan")}, "max_step must be a positive number"),
    ({"schedule": "series", "solver": {"method": "rk4"}}, "cannot use the solver options"),
])
def test_schedule_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ODERNNEncoder(3, 4, **kwargs)


def test_plan_steps_through_visited_points_without_updating_there():
    times = torch.tensor([0.0, 1.0, 2.0, 3.0, 5.0])
    seen = torch.tensor([[0, 0, 1, 0, 1], [0, 0, 0, 1, 0]], dtype=torch.bool)
    visit = torch.ones_like(seen)
    plan = series_plan(times, seen, visit=visit)
    # series 0: 5 (update) -> 3 -> 2 (update) -> 1 -> 0; the gap of an update is still to the
    # series' next observation (the RNN's input), not to the next stop
    assert plan.dt[:, 0].tolist() == [0, -2, -1, -1, -1]
    assert plan.index[:, 0].tolist() == [4, -1, 2, -1, -1]
    assert plan.gap[:, 0].tolist() == [0, 0, 3, 0, 0]
    # series 1 starts at its last observation (t = 3): points after it are not visited
    assert plan.dt[:, 1].tolist() == [0, -1, -1, -1, 0]
    assert plan.index[:, 1].tolist() == [3, -1, -1, -1, -1]


@pytest.mark.parametrize("kind", sorted(ENCODERS))
def test_series_walk_through_a_grid_is_the_union_walk_over_that_grid(kind):
    """What the forecaster does for a model trained on the union walk of gridded data: each
    series walked alone, through its observations and the grid, equals the union walk of a
    batch covering the grid (every series here observes the last point, so the union walk
    starts at each one's last observation too)."""
    union, series = _pair(kind)
    times, values, mask = _batch()
    mask[:, -1, 0] = True
    mask[-1] = False
    companion = torch.zeros_like(mask[:1])
    companion[..., 0] = True  # observes every point: the batch's union is the whole grid
    u_mean, u_std = union(times, torch.cat([values, values[:1]]), torch.cat([mask, companion]))
    visit = torch.ones(mask.shape[:2], dtype=torch.bool)
    s_mean, s_std = series(times, values, mask, visit=visit)
    for b in range(len(values) - 1):  # (the empty series drifts from zero in the union walk)
        torch.testing.assert_close(s_mean[b], u_mean[b], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(s_std[b], u_std[b], rtol=1e-10, atol=1e-12)
    plain = series(times, values, mask)
    if kind == "rnn":  # no ODE between points: visiting changes nothing
        torch.testing.assert_close(plain[0], s_mean, rtol=0, atol=0)
    else:
        assert not torch.allclose(plain[0][:-1], s_mean[:-1])
    with pytest.raises(ValueError, match=r"visit= lays out the series walk"):
        union(times, values, mask, visit=visit)
