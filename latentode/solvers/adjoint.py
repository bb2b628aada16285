"""The adjoint sensitivity method: one backward solve of ``[z, a, dL/dtheta]``.

Forward: solve without recording a graph. Backward: starting from ``z(t_N)``, integrate

    dz/dt = f(t, z),   da/dt = -a^T df/dz,   d(dL/dtheta)/dt = -a^T df/dtheta

from the last output time to the first, recomputing ``z`` in reverse, in one call of the engine
whose step-size controller runs on across output times (no restart per interval, unlike
torchdiffeq). Memory is that of a few states: it does not grow with the number of steps.

Three choices make it fast without giving up accuracy:

* *Scale-free tolerances.* The adjoint is linear in the loss, so the backward solve runs on
  ``a / s`` with ``s`` the largest RMS of the output cotangents and scales back at the end: its
  steps, and its relative accuracy, do not depend on whether the loss is a sum or a mean.
* *Seminorm* (``seminorm=True``): the error norm covers ``z`` and ``a`` only, not
  ``dL/dtheta``, which never feeds back into the dynamics (Kidger et al. 2021).
* *Folded jumps* (``fold_jumps=True``, adaptive methods): ``a`` jumps by ``g_i = dL/dz(t_i)`` at
  every output time. Rather than stopping at each one, the solver integrates the continuous
  ``a~ = a - G(t)``, ``G(t) = sum of g_i with t_i at or after t``, whose equation is
  ``da~/dt = -(a~ + G)^T df/dz``, with ``G`` replaced within each step by its step average (exact
  for a constant Jacobian). What that leaves, about ``(h L)^2 sum_i w_i |g_i|`` for a step of
  size ``h`` over jumps at fractions ``w_i (1 - w_i)`` and a Lipschitz estimate ``L`` from the
  stages, enters the error control beside the embedded estimate, so steps shrink where jumps
  demand it and span many output times where they do not. ``a = a~ + G`` is exact at the end.
  With ``fold_jumps=False`` (and for fixed-step methods) every step lands on each output time.
"""

from __future__ import annotations

import math
from bisect import bisect_left

import numpy as np
import torch

from .engine import integrate
from .problem import Problem

# a step is planned to use at most this share of the fold-error budget, so that a Lipschitz
# estimate that grows within the step rarely costs a rejected step
_FORECAST_MARGIN = 0.25


def _flat(tensors: tuple, like: tuple) -> list:
    return [
        (g if g is not None else torch.zeros_like(p)).reshape(-1)
        for g, p in zip(tensors, like, strict=True)
    ]


class _Jumps:
    """The adjoint jumps ``g_i`` at the output items: stopped at, or folded into a forcing."""

    def __init__(self, problem: Problem, items: torch.Tensor, fold: bool):
        out = problem.outputs
        self.rtol, self.atol = problem.adjoint_rtol, problem.adjoint_atol
        self.numel = math.prod(problem.shape)
        self.lipschitz = 0.0  # latest estimate, from the z-part of the last trial step
        self.per_sample = out.per_sample
        self.state_shape = problem.shape
        self.items = items
        self.rows = out.rows
        self.direction = d = out.direction
        times = np.asarray(out.times, dtype=np.float64)
        interior = times != out.t1
        folded = interior if fold else np.zeros(len(times), dtype=bool)
        stopped = interior & ~folded
        self.end_idx = np.nonzero(~interior)[0]
        self.fold_idx = np.nonzero(folded)[0]
        self.fold_keys = [d * times[i] for i in self.fold_idx]  # increasing in forward time
        # stop times in backward order (decreasing forward time), each with its items
        stop_set = {float(times[i]) for i in np.nonzero(stopped)[0]}
        self.stop_times = sorted(stop_set, key=lambda s: -d * s)
        self.stop_items = [np.nonzero(stopped & (times == s))[0] for s in self.stop_times]
        self.current: torch.Tensor | None = None  # forcing of the step being taken
        self.inside_abs: torch.Tensor | None = None  # sum_i w_i(1 - w_i) |g_i| inside it
        self.probe: torch.Tensor | None = None  # sum_i w_i(1 - w_i) g_i, awaiting J^T probe
        self.probe_gain = 0.0  # |J^T probe| / |probe| at the start of the step
        self._key: tuple = (len(self.fold_keys), ())
        if len(self.fold_idx):
            index = torch.as_tensor(self.fold_idx, device=items.device)
            self.folded = items.index_select(0, index)
            self.fold_rows = (
                torch.as_tensor(self.rows[self.fold_idx], device=items.device)
                if self.per_sample
                else None
            )
            if not self.per_sample:
                suffix = torch.flip(torch.cumsum(torch.flip(self.folded, [0]), 0), [0])
                self.suffix = torch.cat([suffix, torch.zeros_like(suffix[:1])])

    @property
    def folds(self) -> bool:
        return len(self.fold_idx) > 0

    def add(self, a: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        """``a`` plus the jumps of items ``idx`` (into their rows for per-sample times)."""
        if len(idx) == 0:
            return a
        index = torch.as_tensor(idx, device=a.device)
        if not self.per_sample:
            return a + self.items.index_select(0, index).sum(0)
        rows = torch.as_tensor(self.rows[idx], device=a.device)
        return a.index_add(0, rows, self.items.index_select(0, index))

    def _weighted(self, k_lo: int, weights: torch.Tensor, absolute: bool = False) -> torch.Tensor:
        """``sum_i weights_i g_i`` (or ``|g_i|``) over folded items ``k_lo:k_lo + len(weights)``."""
        k_hi = k_lo + len(weights)
        g = self.folded[k_lo:k_hi]
        if absolute:
            g = g.abs()
        if not self.per_sample:
            return torch.tensordot(weights, g, 1)
        scaled = g * weights.view(-1, *([1] * (g.dim() - 1)))
        zero = torch.zeros(self.state_shape, dtype=g.dtype, device=g.device)
        return zero.index_add(0, self.fold_rows[k_lo:k_hi], scaled)

    def spread(self, upper: float, length: float, k_lo: int, absolute: bool) -> torch.Tensor:
        """``sum_i w_i (1 - w_i) g_i`` over the jumps strictly inside a step down from ``upper``."""
        lower = upper - length
        k_up = bisect_left(self.fold_keys, upper)  # only jumps below the step's start can count
        weights = [
            (key - lower) / length * (upper - key) / length if lower < key else 0.0
            for key in self.fold_keys[k_lo:k_up]
        ]
        w = torch.as_tensor(weights, dtype=self.folded.dtype, device=self.folded.device)
        return self._weighted(k_lo, w, absolute=absolute)

    def fold_error(self, length: float, spread: torch.Tensor, tol: torch.Tensor) -> float:
        """``(h L)^2 / 2 * RMS(spread / tol)``: the error folding leaves in one step."""
        ratio = torch.linalg.vector_norm(spread.reshape(-1) / tol).item() / math.sqrt(self.numel)
        return 0.5 * (length * self.lipschitz) ** 2 * ratio

    def limit(self, t: float, h: float, s: torch.Tensor) -> float:
        """Shorten a step whose folded jumps would cost more error than the tolerance allows.

        The step then ends on a jump time (where folding is exact), the longest such that the
        forecast error of the jumps left inside is within tolerance; the controller's own error
        check still decides acceptance.
        """
        if self.lipschitz == 0.0:
            return h
        d, keys = self.direction, self.fold_keys
        upper, length = d * t, abs(h)
        k_lo, k_up = bisect_left(keys, upper - length), bisect_left(keys, upper)
        if k_up - k_lo == 0:
            return h
        n = self.numel
        tol = s[n : 2 * n].abs().mul_(self.rtol).add_(self.atol)

        def forecast(step: float) -> float:
            return self.fold_error(step, self.spread(upper, step, k_lo, True), tol)

        if forecast(length) <= _FORECAST_MARGIN:
            return h
        lo, hi = k_lo, k_up - 1  # candidate ends: keys[lo] (longest) .. keys[hi] (shortest)
        while lo < hi:  # find the longest candidate whose forecast is within tolerance
            mid = (lo + hi) // 2
            if forecast(upper - keys[mid]) <= _FORECAST_MARGIN:
                hi = mid
            else:
                lo = mid + 1
        return d * keys[lo] - t

    def prepare(self, t: float, h: float, s: torch.Tensor) -> tuple[float, bool]:
        """Limit the backward step ``t -> t + h`` and set its forcing to the step average of ``G``.

        Returns ``(h, changed)``; ``changed`` means the first stage must be evaluated afresh.
        """
        h = self.limit(t, h, s)
        return h, self._set_forcing(t, h)

    def _set_forcing(self, t: float, h: float) -> bool:
        d, keys = self.direction, self.fold_keys
        upper, lower = d * t, d * (t + h)
        k_up, k_lo = bisect_left(keys, upper), bisect_left(keys, lower)
        fracs = tuple((keys[k] - lower) / (upper - lower) for k in range(k_lo, k_up))
        key = (k_up, fracs)
        if key == self._key:
            return False
        self._key = key
        self.inside_abs = self.probe = None
        if k_lo == len(keys):
            changed, self.current = self.current is not None, None
            return changed
        g = self.folded
        w = torch.as_tensor(fracs, dtype=g.dtype, device=g.device)
        ones = torch.ones(len(keys) - k_up, dtype=g.dtype, device=g.device)
        if not self.per_sample:
            inside = torch.tensordot(w, g[k_lo:k_up], 1) if fracs else 0.0
            self.current = self.suffix[k_up] + inside
        else:
            self.current = self._weighted(k_lo, torch.cat([w, ones]))
        if fracs:
            self.inside_abs = self.spread(upper, upper - lower, k_lo, absolute=True)
            self.probe = self.spread(upper, upper - lower, k_lo, absolute=False)
        return True

    def total_folded(self, a: torch.Tensor) -> torch.Tensor:
        return self.add(a, self.fold_idx)


def adjoint_backward(problem: Problem, grad_ys: torch.Tensor) -> tuple:
    """Gradients ``(dL/dy0, *dL/dparams)`` from the output cotangents, by one backward solve."""
    out, params, stats = problem.outputs, problem.params, problem.stats
    start_grad, items = out.split_grads(grad_ys)
    shape, n = problem.shape, math.prod(problem.shape)
    scale = _cotangent_scale(items)
    if scale == 0.0:  # nothing flows back through the solve
        return (start_grad, *[torch.zeros_like(p) for p in params])
    items = items / scale
    adaptive = problem.grid is None
    rtol, atol = problem.adjoint_rtol, problem.adjoint_atol
    jumps = _Jumps(problem, items, problem.adjoint_fold_jumps and adaptive)
    func, time = problem.func, problem.time
    n_params = sum(p.numel() for p in params)

    def aug(t: float, s: torch.Tensor) -> torch.Tensor:
        stats.nfe_backward += 1
        z = s[:n].view(shape)
        a = s[n : 2 * n].view(shape)
        if jumps.current is not None:
            a = a + jumps.current
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            dz = func(time(t), z)
            if jumps.probe is not None:  # first stage of a step over folded jumps
                probe, jumps.probe = jumps.probe, None
                gain = _jacobian_gain(dz, z, probe)
                if gain is not None:  # a zero probe (jumps on the step's ends) says nothing
                    jumps.probe_gain = gain
            vjp = torch.autograd.grad(dz, (z, *params), -a, allow_unused=True)
        return torch.cat([dz.detach().reshape(-1), *_flat(vjp, (z, *params))])

    def on_stop(i: int, t: float, s: torch.Tensor) -> torch.Tensor:
        a = jumps.add(s[n : 2 * n].view(shape), jumps.stop_items[i])
        return torch.cat([s[:n], a.reshape(-1), s[2 * n :]])

    def fold_error(h: float, s0: torch.Tensor, s1: torch.Tensor, ks: list) -> float:
        """``(h L)^2 |sum_i w_i (1 - w_i) g_i|`` against the tolerance of ``a``.

        ``L`` is the larger of two free-or-cheap estimates: the growth of ``f`` along the step
        and ``|J^T v| / |v|`` for the jumps ``v`` themselves (one extra vector-Jacobian product
        at the step's start), which sees fast modes that the trajectory has already left.
        """
        if jumps.inside_abs is None:
            return 0.0
        with torch.no_grad():
            dz = torch.linalg.vector_norm(s1[:n] - s0[:n])
            dk = torch.linalg.vector_norm(ks[-1][:n] - ks[0][:n])
            jumps.lipschitz = max((dk / dz).item() if dz > 0 else 0.0, jumps.probe_gain)
            a0, a1 = s0[n : 2 * n].abs(), s1[n : 2 * n].abs()
            tol = torch.maximum(a0, a1).mul_(rtol).add_(atol)
            return jumps.fold_error(abs(h), jumps.inside_abs, tol)

    a_end = jumps.add(torch.zeros(shape, dtype=grad_ys.dtype, device=grad_ys.device), jumps.end_idx)
    state = torch.cat(
        [
            problem.final_state.detach().reshape(-1),
            a_end.reshape(-1),
            torch.zeros(n_params, dtype=grad_ys.dtype, device=grad_ys.device),
        ]
    )
    grid = None
    if not adaptive:  # land on every forward step boundary and every output time
        d = out.direction
        grid = sorted(set(problem.grid) | set(out.times), key=lambda s: -d * s)
    state, _, counters = integrate(
        problem.rk, aug, state, out.t1, out.t0,
        rtol=rtol, atol=atol, max_steps=problem.max_steps, grid=grid,
        first_step=abs(problem.last_step) if adaptive and problem.last_step else None,
        stops=jumps.stop_times, on_stop=on_stop,
        norm_numel=2 * n if problem.adjoint_seminorm else None,
        prepare=jumps.prepare if jumps.folds else None,
        extra_error=fold_error if jumps.folds else None,
    )
    stats.backward_steps_accepted += counters.accepted
    stats.backward_steps_rejected += counters.rejected
    a0 = jumps.total_folded(state[n : 2 * n].view(shape)) * scale + start_grad
    grads, offset = [], 2 * n
    for p in params:
        grads.append(state[offset : offset + p.numel()].view_as(p) * scale)
        offset += p.numel()
    return (a0, *grads)


def _jacobian_gain(dz: torch.Tensor, z: torch.Tensor, v: torch.Tensor) -> float | None:
    """``|J^T v| / |v|``: how fast the adjoint bends along the jumps ``v`` (None if ``v = 0``).

    One vector-Jacobian product on the graph of an evaluation the caller still needs.
    """
    norm = torch.linalg.vector_norm(v).item()
    if norm == 0.0:
        return None
    (jv,) = torch.autograd.grad(dz, z, v, retain_graph=True, allow_unused=True)
    return 0.0 if jv is None else torch.linalg.vector_norm(jv).item() / norm


def _cotangent_scale(items: torch.Tensor) -> float:
    """Largest RMS of one output's cotangent: the unit the backward solve works in."""
    if len(items) == 0:
        return 0.0
    with torch.no_grad():
        return items.reshape(len(items), -1).square().mean(1).max().sqrt().item()


class AdjointSolve(torch.autograd.Function):
    """Forward without a graph; backward by :func:`adjoint_backward`."""

    @staticmethod
    def forward(ctx, problem: Problem, y0: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        ctx.problem = problem
        return problem.solve(y0.detach())

    @staticmethod
    def backward(ctx, grad_ys: torch.Tensor) -> tuple:
        return (None, *adjoint_backward(ctx.problem, grad_ys))
