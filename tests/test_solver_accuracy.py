"""Accuracy of ``latentode.solvers``: orders, dense output, tolerances, dtypes and statistics.

Reference solutions are closed forms where the problem has one, otherwise scipy's DOP853 run at
``rtol=1e-10, atol=1e-12`` (three or more orders of magnitude below every tolerance checked here,
so its own error does not matter).

Tolerance bound used against the references: an adaptive solve with ``rtol`` and ``atol = rtol``
must satisfy ``|y - y_ref| <= TOL_FACTOR * (atol + rtol * |y_ref|)`` element-wise, with
``TOL_FACTOR = 20``. The controller only bounds the *local* error of each step, and only as an
RMS over all elements of the (batched) state, so one element may carry ``sqrt(numel)`` (about 2.5
to 3.5 here) times the tolerance per step; the global error is then a sum of local errors over
tens to hundreds of steps, damped or amplified by the flow, and outputs between step ends come
from a dense polynomial of lower order than the step. Measured worst cases on these problems:
about 6.5 for bosh3 (MLP field), 4.6 for dopri5, 4 for tsit5 (scipy's own RK23 lands at the
same ratios as bosh3 on the same problem). 20 leaves headroom for platform differences, while a
wrong coefficient, a wrong node or a misplaced output (errors of order h, i.e. 1e3 to 1e6 times
the tolerance) still fails by orders of magnitude.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from torch import nn

from latentode.solvers import ADAPTIVE_METHODS, FIXED_METHODS, TABLEAUS, SolverStats, odeint

F64 = torch.float64
F32 = torch.float32
ORDER = {"euler": 1, "midpoint": 2, "rk4": 4, "bosh3": 3, "dopri5": 5, "tsit5": 5}
# Order of each method's continuous extension (dense output) as documented in tableaus.py.
DENSE_ORDER = {"euler": 1, "midpoint": 2, "rk4": 3, "bosh3": 3, "dopri5": 4, "tsit5": 4}
FIXED = ("euler", "midpoint", "rk4")
ADAPTIVE = ("bosh3", "dopri5", "tsit5")
TOL_FACTOR = 20.0
DIRECTIONS = pytest.mark.parametrize("direction", [1.0, -1.0], ids=["forward", "backward"])


# --------------------------------------------------------------------------- problems


def spiral(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Nonlinear, time-dependent, coupled: ``y' = (cos t + |y|^2) J y`` (|y| is conserved)."""
    g = torch.cos(t) + (y * y).sum(-1, keepdim=True)
    return g * torch.stack([-y[..., 1], y[..., 0]], -1)


def spiral_exact(y0: np.ndarray, ts: np.ndarray, t0: float) -> np.ndarray:
    """Rotation of ``y0`` (shape ``(..., 2)``) by ``sin t - sin t0 + |y0|^2 (t - t0)``.

    Returns shape ``(len(ts), *y0.shape)``.
    """
    y0 = np.asarray(y0, dtype=np.float64)
    ts = np.asarray(ts, dtype=np.float64).reshape(-1, *([1] * (y0.ndim - 1)))
    phi = np.sin(ts) - math.sin(t0) + (y0 * y0).sum(-1) * (ts - t0)
    c, s = np.cos(phi), np.sin(phi)
    return np.stack([c * y0[..., 0] - s * y0[..., 1], s * y0[..., 0] + c * y0[..., 1]], -1)


LINEAR_A = torch.tensor([[-0.5, 2.0, 0.0], [-2.0, -0.5, 0.3], [0.1, 0.0, -0.2]], dtype=F64)


def linear(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return y @ LINEAR_A.to(y.dtype).T


def linear_exact(y0: np.ndarray, ts: np.ndarray, t0: float) -> np.ndarray:
    y0t = torch.as_tensor(np.asarray(y0), dtype=F64)
    out = [torch.linalg.matrix_exp(LINEAR_A * (float(s) - t0)) @ y0t for s in ts]
    return torch.stack(out).numpy()


def forced(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``y' = -y + sin t``: the solution depends on t only through the forcing."""
    return -y + torch.sin(t)


def forced_exact(y0: np.ndarray, ts: np.ndarray, t0: float) -> np.ndarray:
    y0 = np.asarray(y0, dtype=np.float64)
    ts = np.asarray(ts, dtype=np.float64).reshape(-1, *([1] * y0.ndim))
    particular = (np.sin(ts) - np.cos(ts)) / 2
    c = y0 - (math.sin(t0) - math.cos(t0)) / 2
    return c * np.exp(-(ts - t0)) + particular


EXACT = {"spiral": (spiral, spiral_exact), "linear": (linear, linear_exact)}


def van_der_pol(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x, v = y[..., 0], y[..., 1]
    return torch.stack([v, (1.0 - x * x) * v - x], -1)  # mu = 1


class Autonomous(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


def make_mlp() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 4)).to(F64)
        with torch.no_grad():
            net[0].weight.mul_(2.0)  # make the tanh layer properly nonlinear over the run
    for p in net.parameters():
        p.requires_grad_(False)
    return Autonomous(net)


MLP_FIELD = make_mlp()
MLP_Y0 = torch.tensor(
    [[0.5, -1.0, 0.3, 0.8], [-0.7, 0.2, 1.1, -0.4], [1.2, 0.9, -0.6, 0.1]], dtype=F64
)
# Inside Van der Pol's limit cycle: forwards they spiral out to it, backwards into the origin
# (backwards from *on* the cycle the flow is unstable and amplifies any error).
VDP_Y0 = torch.tensor([[1.0, 0.0], [0.5, -1.0], [-0.5, 0.5]], dtype=F64)
SCIPY_PROBLEMS = {"mlp": (MLP_FIELD, MLP_Y0), "vdp": (van_der_pol, VDP_Y0)}
_REFERENCE_CACHE: dict = {}


def scipy_reference(problem: str, row: int, ts: np.ndarray) -> np.ndarray:
    """DOP853 solution of one initial state of ``problem`` at ``ts`` (sorted, repeats allowed)."""
    key = (problem, row, tuple(ts.tolist()))
    if key not in _REFERENCE_CACHE:
        func, y0 = SCIPY_PROBLEMS[problem]

        def rhs(t: float, y: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return func(torch.tensor(t, dtype=F64), torch.from_numpy(y)).numpy()

        unique, inverse = np.unique(ts, return_inverse=True)
        if ts[-1] < ts[0]:
            unique, inverse = unique[::-1], len(unique) - 1 - inverse
        sol = solve_ivp(
            rhs, (unique[0], unique[-1]), y0[row].numpy(), method="DOP853", rtol=1e-10,
            atol=1e-12, t_eval=unique,
        )
        assert sol.success, sol.message
        _REFERENCE_CACHE[key] = sol.y.T[inverse]
    return _REFERENCE_CACHE[key]


def tolerance_ratio(y: np.ndarray, ref: np.ndarray, rtol: float, atol: float) -> float:
    return float(np.max(np.abs(y - ref) / (atol + rtol * np.abs(ref))))


def fitted_slope(hs, errs) -> float:
    errs = np.asarray(errs, dtype=np.float64)
    assert np.all(errs > 0) and np.all(np.isfinite(errs)), errs
    return float(np.polyfit(np.log(hs), np.log(errs), 1)[0])


def reference_rk(method: str, func, y0: torch.Tensor, ts: np.ndarray) -> np.ndarray:
    """Textbook explicit RK with one step per interval of ``ts`` (the tableau read as data)."""
    tab = TABLEAUS[method]
    y = y0.numpy().astype(np.float64)
    out = [y]

    def f(t, y):
        return func(torch.tensor(t, dtype=F64), torch.from_numpy(y)).numpy()

    for t, t_next in itertools.pairwise(ts):
        h = t_next - t
        ks = []
        for i in range(tab.stages):
            yi = y + h * sum((a * k for a, k in zip(tab.a[i], ks, strict=False)), np.zeros_like(y))
            ks.append(f(t + tab.c[i] * h, yi))
        y = y + h * sum(b * k for b, k in zip(tab.b, ks, strict=True))
        out.append(y)
    return np.stack(out)


def per_sample_times(direction: float, length: int = 9) -> np.ndarray:
    """Three rows of sorted times from 0, ending at 3, 2 and 2.5; the last row is padded."""
    rng = np.random.default_rng(7)
    rows = []
    for end in (3.0, 2.0, 2.5):
        inner = np.sort(rng.uniform(0.05, end - 0.05, size=length - 2))
        rows.append(np.concatenate([[0.0], inner, [end]]))
    rows[2][-3:] = 2.5  # padding by repeating the last time
    return direction * np.stack(rows)


# --------------------------------------------------------------------------- tableaus


def test_method_lists_and_orders():
    assert set(FIXED_METHODS) == set(FIXED)
    assert set(ADAPTIVE_METHODS) == set(ADAPTIVE)
    assert set(TABLEAUS) == set(ORDER)
    for name, tab in TABLEAUS.items():
        assert tab.order == ORDER[name]
        assert tab.adaptive == (name in ADAPTIVE)
        if tab.adaptive:
            assert tab.error_order == tab.order - 1


@pytest.mark.parametrize("method", sorted(TABLEAUS))
def test_tableau_consistency(method):
    tab = TABLEAUS[method]
    b = np.array(tab.b)
    # The continuous extension ends on the step's own weights and starts at zero.
    np.testing.assert_allclose(tab.dense_weights([1.0])[0], b, rtol=0, atol=1e-13)
    np.testing.assert_allclose(tab.dense_weights([0.0])[0], 0.0, rtol=0, atol=0)
    # Consistency of the method and of its interpolant: sum_i b_i(theta) = theta.
    theta = np.linspace(0.0, 1.0, 11)
    np.testing.assert_allclose(tab.dense_weights(theta).sum(1), theta, rtol=0, atol=1e-13)
    assert b.sum() == pytest.approx(1.0, abs=1e-14)
    for ci, row in zip(tab.c, tab.a, strict=True):
        assert sum(row) == pytest.approx(ci, abs=1e-14)
    if tab.adaptive:
        # Error weights b - b_hat: both weight vectors are consistent, so they sum to zero.
        assert len(tab.b_error) == tab.stages
        assert sum(tab.b_error) == pytest.approx(0.0, abs=1e-14)
        assert np.abs(np.array(tab.b_error)).max() > 1e-3
        assert tab.fsal
    else:
        assert tab.b_error is None


# --------------------------------------------------------------------------- fixed-step orders


@DIRECTIONS
@pytest.mark.parametrize("problem", ["spiral", "linear"])
@pytest.mark.parametrize("method", FIXED)
def test_fixed_step_convergence_order(method, problem, direction):
    """Final-time and between-step (dense) errors both fall like step_size**order."""
    func, exact = EXACT[problem]
    y0 = torch.tensor([0.7, -0.4, 0.2][: 2 if problem == "spiral" else 3], dtype=F64)
    ts = direction * np.array([0.0, 0.1234, 0.377, 0.61, 0.893, 1.0])
    ref = exact(y0.numpy(), ts, 0.0)
    hs = 1.0 / 2.0 ** np.arange(3, 8)  # 1/8 ... 1/128: the output times fall inside steps
    final, inside = [], []
    for h in hs:
        stats = SolverStats()
        ys = odeint(func, y0, torch.tensor(ts), method=method, step_size=h, stats=stats)
        assert ys.shape == (len(ts), *y0.shape) and ys.dtype == F64
        assert stats.steps_accepted == round(1 / h)
        err = np.abs(ys.numpy() - ref).max(-1)
        assert err[0] == 0.0
        final.append(err[-1])
        inside.append(err[1:-1].max())
    order = ORDER[method]
    assert abs(fitted_slope(hs, final) - order) < 0.3, final
    assert abs(fitted_slope(hs, inside) - order) < 0.3, inside
    assert all(np.diff(final) < 0) and all(np.diff(inside) < 0)


@DIRECTIONS
@pytest.mark.parametrize("method", FIXED)
def test_fixed_step_default_grid_is_the_output_times(method, direction):
    """``step_size=None``: exactly one step per output interval, landing on each output time."""
    ts = direction * np.array([0.0, 0.05, 0.2, 0.23, 0.5, 0.9, 1.0])
    y0 = torch.tensor([0.7, -0.4], dtype=F64)
    stats = SolverStats()
    ys = odeint(spiral, y0, torch.tensor(ts), method=method, stats=stats)
    n = len(ts) - 1
    assert stats.steps_accepted == n and stats.steps_rejected == 0
    assert stats.nfe_forward == TABLEAUS[method].stages * n
    np.testing.assert_allclose(ys.numpy(), reference_rk(method, spiral, y0, ts), rtol=1e-13,
                               atol=1e-14)
    for k in range(1, len(ts)):  # the value at t[k] is the step's end value, not interpolated
        alone = odeint(spiral, y0, torch.tensor(ts[: k + 1]), method=method)
        assert torch.equal(ys[k], alone[-1])
    # An output time on a step boundary of a uniform grid is that step's value as well.
    on_grid = odeint(spiral, y0, torch.tensor(direction * np.array([0.0, 0.5, 1.0])),
                     method=method, step_size=0.25)
    steps = odeint(spiral, y0, torch.tensor(direction * np.array([0.0, 0.25, 0.5, 0.75, 1.0])),
                   method=method)
    assert torch.equal(on_grid, steps[::2])
    # Convergence with the default grid too: halving every interval.
    err = []
    for refine in (4, 8, 16, 32):
        grid = np.interp(np.linspace(0, n, n * refine + 1), np.arange(n + 1), ts)
        y = odeint(spiral, y0, torch.tensor(grid), method=method)[-1].numpy()
        err.append(np.abs(y - spiral_exact(y0.numpy(), ts[-1:], 0.0)[0]).max())
    assert abs(fitted_slope(1.0 / np.array([4, 8, 16, 32]), err) - ORDER[method]) < 0.3, err


# --------------------------------------------------------------------------- dense output


@pytest.mark.parametrize("method", sorted(TABLEAUS))
def test_dense_output_local_order(method):
    """One step of size h: the interpolant's error inside the step is O(h**(dense order + 1)).

    The step end is y1 itself, with local error O(h**(order + 1)).
    """
    y0 = torch.tensor([0.7, -0.4], dtype=F64)
    t0 = 0.3
    thetas = np.array([0.3, 0.55, 0.8, 1.0])
    hs = 0.2 / 2.0 ** np.arange(5)
    inside, end = [], []
    for h in hs:
        ts = t0 + np.concatenate([[0.0], thetas * h])
        stats = SolverStats()
        if TABLEAUS[method].adaptive:  # a huge tolerance accepts the given first step
            kwargs = {"first_step": h, "rtol": 1.0, "atol": 1.0}
        else:
            kwargs = {"step_size": h}
        ys = odeint(spiral, y0, torch.tensor(ts), method=method, stats=stats, **kwargs)
        assert stats.steps_accepted == 1 and stats.steps_rejected == 0
        err = np.abs(ys.numpy() - spiral_exact(y0.numpy(), ts, t0)).max(-1)
        inside.append(err[1:-1].max())
        end.append(err[-1])
    slope = fitted_slope(hs, inside)
    assert abs(slope - (DENSE_ORDER[method] + 1)) < 0.3, (slope, inside)
    # (the 5th-order pairs reach ~1e-14 at the smallest h, so only a lower bound here)
    assert fitted_slope(hs, end) > ORDER[method] + 1 - 0.3, end


@DIRECTIONS
@pytest.mark.parametrize("method", ADAPTIVE)
def test_adaptive_many_outputs_cost_nothing_extra(method, direction):
    """200 output times: same steps and evaluations as 2, each answer accurate by dense output."""
    # (a small radius: the spiral's phase shears with |y|^2, which amplifies global errors)
    y0 = torch.tensor([[0.5, -0.3], [0.1, 0.6]], dtype=F64)
    rtol = atol = 1e-6
    t_end = direction * 2.0
    few = torch.tensor([0.0, t_end], dtype=F64)
    many = torch.linspace(0.0, t_end, 200, dtype=F64)
    s_few, s_many = SolverStats(), SolverStats()
    y_few = odeint(spiral, y0, few, method=method, rtol=rtol, atol=atol, stats=s_few)
    y_many = odeint(spiral, y0, many, method=method, rtol=rtol, atol=atol, stats=s_many)
    assert s_many.nfe_forward <= s_few.nfe_forward
    assert s_many.as_dict() == s_few.as_dict()  # the very same steps
    assert s_few.steps_accepted < 199  # so most of the 200 answers lie strictly inside steps
    assert torch.equal(y_many[-1], y_few[-1])
    assert y_many.shape == (200, 2, 2)
    ref = spiral_exact(y0.numpy(), many.numpy(), 0.0)
    assert tolerance_ratio(y_many.numpy(), ref, rtol, atol) < TOL_FACTOR
    # Per-sample times (batch, 200) are answered from one batched solve with the same steps.
    s_rows = SolverStats()
    rows = torch.stack([many, torch.linspace(0.0, t_end, 200, dtype=F64) ** 3 / t_end**2])
    y_rows = odeint(spiral, y0, rows, method=method, rtol=rtol, atol=atol, stats=s_rows)
    assert s_rows.as_dict() == s_few.as_dict()
    assert y_rows.shape == (2, 200, 2)
    for r in range(2):
        ref = spiral_exact(y0[r].numpy(), rows[r].numpy(), 0.0)
        assert tolerance_ratio(y_rows[r].numpy(), ref, rtol, atol) < TOL_FACTOR


# --------------------------------------------------------------------------- adaptive vs scipy


@DIRECTIONS
@pytest.mark.parametrize("rtol", [1e-5, 1e-7])
@pytest.mark.parametrize("problem", ["mlp", "vdp"])
@pytest.mark.parametrize("method", ADAPTIVE)
def test_adaptive_matches_scipy(method, problem, rtol, direction):
    func, y0 = SCIPY_PROBLEMS[problem]
    ts = direction * np.linspace(0.0, 3.0, 13)
    atol = rtol
    ys = odeint(func, y0, torch.tensor(ts), method=method, rtol=rtol, atol=atol)
    assert ys.shape == (len(ts), *y0.shape) and ys.dtype == F64
    ref = np.stack([scipy_reference(problem, r, ts) for r in range(len(y0))], 1)
    assert np.abs(ref[-1] - ref[0]).max() > 0.5  # the states really move
    ratio = tolerance_ratio(ys.numpy(), ref, rtol, atol)
    assert ratio < TOL_FACTOR, f"max error / (atol + rtol |y|) = {ratio:.3g}"


@DIRECTIONS
@pytest.mark.parametrize("problem", ["mlp", "vdp"])
@pytest.mark.parametrize("method", ADAPTIVE)
def test_adaptive_per_sample_times_match_scipy(method, problem, direction):
    """t of shape (batch, T): each row its own times, answered like its own scipy solve."""
    func, y0 = SCIPY_PROBLEMS[problem]
    t = per_sample_times(direction)
    rtol = atol = 1e-6
    ys = odeint(func, y0, torch.tensor(t), method=method, rtol=rtol, atol=atol)
    assert ys.shape == (len(y0), t.shape[1], y0.shape[1]) and ys.dtype == F64
    assert torch.equal(ys[:, 0], y0)
    assert torch.equal(ys[2, -1], ys[2, -3])  # repeated (padding) times give the same answer
    for r in range(len(y0)):
        ratio = tolerance_ratio(ys[r].numpy(), scipy_reference(problem, r, t[r]), rtol, atol)
        assert ratio < TOL_FACTOR, f"row {r}: max error / (atol + rtol |y|) = {ratio:.3g}"


@pytest.mark.parametrize("lengths", [(150, 150, 150), (150, 4, 4)], ids=["dense", "skewed"])
@pytest.mark.parametrize("method", ADAPTIVE)
def test_per_sample_times_many_per_step_match_scipy(method, lengths, monkeypatch):
    """Rows asking for many times per step are answered by one small matmul per row (dense),
    a row asking for far more than the others by gathering each time's row (skewed): both
    like each row's own scipy solve, values and gradients."""
    func, y0 = SCIPY_PROBLEMS["mlp"]
    rng = np.random.default_rng(3)
    t = np.stack([np.concatenate([[0.0], np.sort(rng.uniform(0.0, 2.0, n - 1)),
                                  np.full(max(lengths) - n, 2.0)]) for n in lengths])
    rtol = atol = 1e-6
    calls = {"bmm": 0, "addcmul": 0}

    def counting(name: str):
        real = getattr(torch, name)

        def counted(*args):
            calls[name] += 1
            return real(*args)
        return counted

    for name in calls:
        monkeypatch.setattr(torch, name, counting(name))
    y = y0.clone().requires_grad_(True)
    ys = odeint(func, y, torch.tensor(t), method=method, rtol=rtol, atol=atol)
    assert calls["bmm"] > 0  # which ways the items were answered
    assert (calls["addcmul"] > 0) == (lengths[1] < lengths[0]), calls
    for r, n in enumerate(lengths):
        got = ys[r, :n].detach().numpy()
        ratio = tolerance_ratio(got, scipy_reference("mlp", r, t[r, :n]), rtol, atol)
        assert ratio < TOL_FACTOR, f"row {r}: max error / (atol + rtol |y|) = {ratio:.3g}"
    weights = torch.randn(ys.shape, generator=torch.Generator().manual_seed(0), dtype=F64)
    (grad,) = torch.autograd.grad((weights * ys).sum(), y)
    per_row = []
    for r in range(len(lengths)):
        y_r = y0[r : r + 1].clone().requires_grad_(True)
        ys_r = odeint(func, y_r, torch.tensor(np.unique(t[r])), method=method, rtol=1e-10,
                      atol=1e-10)
        w_r = torch.stack([weights[r, t[r] == s].sum(0) for s in np.unique(t[r])])[:, None]
        per_row.append(torch.autograd.grad((w_r * ys_r).sum(), y_r)[0])
    torch.testing.assert_close(grad, torch.cat(per_row), rtol=1e-4, atol=1e-5)


@DIRECTIONS
@pytest.mark.parametrize("method", FIXED)
def test_fixed_step_per_sample_times(method, direction):
    y0 = torch.tensor([[0.7, -0.4], [0.1, 0.9], [-0.5, 0.3]], dtype=F64)
    t = per_sample_times(direction)
    h = {"euler": 1e-3, "midpoint": 1e-2, "rk4": 2e-2}[method]
    bound = {"euler": 2e-2, "midpoint": 2e-4, "rk4": 1e-6}[method]
    ys = odeint(spiral, y0, torch.tensor(t), method=method, step_size=h)
    assert ys.shape == (3, t.shape[1], 2)
    for r in range(3):
        err = np.abs(ys[r].numpy() - spiral_exact(y0[r].numpy(), t[r], 0.0)).max()
        assert err < bound, (r, err)
    # Without a step size the steps are all rows' distinct times: the same numbers as a 1-D
    # solve on that merged grid, each row read off at its own times.
    stats_2d, stats_1d = SolverStats(), SolverStats()
    ys_default = odeint(spiral, y0, torch.tensor(t), method=method, stats=stats_2d)
    grid = np.unique(t)[:: int(direction)].copy()
    merged = odeint(spiral, y0, torch.tensor(grid), method=method, stats=stats_1d)
    assert stats_2d.as_dict() == stats_1d.as_dict()
    assert stats_2d.steps_accepted == len(grid) - 1
    for r in range(3):
        at = np.searchsorted(grid * direction, t[r] * direction)
        np.testing.assert_allclose(ys_default[r].numpy(), merged[at, r].numpy(), rtol=1e-13,
                                   atol=1e-14)


# --------------------------------------------------------------------------- t-dependence, float32


@DIRECTIONS
@pytest.mark.parametrize("method", ADAPTIVE)
def test_adaptive_time_dependent_field(method, direction):
    seen = []

    def func(t, y):
        seen.append(t)
        return forced(t, y)

    y0 = torch.tensor([[1.0, -0.5, 2.0], [0.0, 0.3, -1.0]], dtype=F64)
    ts = 1.0 + direction * np.linspace(0.0, 4.0, 9)
    rtol = atol = 1e-7
    ys = odeint(func, y0, torch.tensor(ts), method=method, rtol=rtol, atol=atol)
    ref = forced_exact(y0.numpy(), ts, ts[0])
    assert ys.shape == (9, 2, 3)
    assert tolerance_ratio(ys.numpy(), ref, rtol, atol) < TOL_FACTOR
    times = np.array([float(s) for s in seen])
    assert all(isinstance(s, torch.Tensor) and s.dtype == F64 and s.dim() == 0 for s in seen)
    assert times.min() >= ts.min() and times.max() <= ts.max()  # never evaluated outside


@pytest.mark.parametrize("method", sorted(TABLEAUS))
def test_float32_all_methods(method):
    """float32 in, float32 out, right shapes, and the float64 answer up to float32 rounding."""
    y0 = torch.tensor([[0.5, -0.3], [0.1, 0.6], [-0.4, 0.2]], dtype=F64)
    adaptive = TABLEAUS[method].adaptive
    kwargs = {"rtol": 1e-5, "atol": 1e-5} if adaptive else {"step_size": 0.01}
    # the float64 answer's own error against the closed form (10x what was measured)
    fixed_bound = {"euler": 0.05, "midpoint": 1e-4, "rk4": 5e-9}
    ts_1d = np.linspace(0.0, 2.0, 11)
    ts_2d = per_sample_times(1.0)
    for ts, shape in ((ts_1d, (11, 3, 2)), (ts_2d, (3, ts_2d.shape[1], 2))):
        y32 = odeint(spiral, y0.to(F32), torch.tensor(ts, dtype=F32), method=method, **kwargs)
        y64 = odeint(spiral, y0, torch.tensor(ts, dtype=F64), method=method, **kwargs)
        assert y32.dtype == F32 and y32.shape == shape
        assert y64.dtype == F64 and y64.shape == shape
        # float32 rounding (~1e-7 per step, a few hundred steps) is all that separates them
        assert (y32.to(F64) - y64).abs().max().item() < 1e-5
        if ts.ndim == 1:
            ref = spiral_exact(y0.numpy(), ts, 0.0)
        else:
            ref = np.stack([spiral_exact(y0[r].numpy(), ts[r], 0.0) for r in range(3)])
        if adaptive:
            assert tolerance_ratio(y64.numpy(), ref, 1e-5, 1e-5) < TOL_FACTOR
        else:
            assert np.abs(y64.numpy() - ref).max() < fixed_bound[method]


@DIRECTIONS
@pytest.mark.parametrize("method", FIXED)
def test_fixed_step_time_dependent_closed_form(method, direction):
    y0 = torch.tensor([1.0, -0.5, 2.0], dtype=F64)
    ts = 0.5 + direction * np.linspace(0.0, 3.0, 7)
    ref = forced_exact(y0.numpy(), ts, ts[0])
    hs = [0.1, 0.05, 0.025, 0.0125]
    errs = [
        np.abs(odeint(forced, y0, torch.tensor(ts), method=method, step_size=h).numpy() - ref)
        .max()
        for h in hs
    ]
    assert abs(fitted_slope(hs, errs) - ORDER[method]) < 0.3, errs


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("method", FIXED)
def test_stats_fixed_step(method):
    y0 = torch.tensor([0.7, -0.4], dtype=F64)
    stats = SolverStats()
    odeint(spiral, y0, torch.linspace(0, 1, 5, dtype=F64), method=method, step_size=0.1,
           stats=stats)
    stages = TABLEAUS[method].stages
    assert stats.steps_accepted == 10 and stats.steps_rejected == 0
    assert stats.nfe_forward == stages * 10  # k1 of each step plus the other stages
    assert stats.nfe_backward == 0 and stats.backward_steps_accepted == 0


@pytest.mark.parametrize("first_step", [None, 0.5], ids=["auto_first_step", "first_step"])
@pytest.mark.parametrize("method", ADAPTIVE)
def test_stats_adaptive(method, first_step):
    """FSAL pairs: (stages - 1) evaluations per attempted step, plus k1 at the start, plus one
    for the automatic first-step estimate; rejected steps reuse k1 and cost the same."""
    stats = SolverStats()
    ts = torch.linspace(0, 6, 7, dtype=F64)
    odeint(van_der_pol, VDP_Y0, ts, method=method, rtol=1e-8, atol=1e-8,
           first_step=first_step, stats=stats)
    stages = TABLEAUS[method].stages
    attempted = stats.steps_accepted + stats.steps_rejected
    assert stats.steps_accepted > 10
    extra = 2 if first_step is None else 1
    assert stats.nfe_forward == (stages - 1) * attempted + extra
    assert stats.nfe_forward >= (stages - 1) * stats.steps_accepted
    if first_step is not None:
        assert stats.steps_rejected >= 1  # 0.5 is far too large for rtol 1e-8
    assert stats.nfe_backward == 0 and stats.backward_steps_accepted == 0


def test_stats_accumulate_and_reset():
    stats = SolverStats()
    ts = torch.linspace(0, 3, 4, dtype=F64)
    odeint(van_der_pol, VDP_Y0, ts, method="dopri5", stats=stats)
    once = stats.as_dict()
    assert once["nfe_forward"] > 0 and once["steps_accepted"] > 0
    odeint(van_der_pol, VDP_Y0, ts, method="dopri5", stats=stats)
    assert stats.as_dict() == {k: 2 * v for k, v in once.items()}
    stats.reset()
    assert all(v == 0 for v in stats.as_dict().values())
