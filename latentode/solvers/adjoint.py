"""The adjoint sensitivity method: one backward solve of ``[z, a, dL/dtheta]``.

Forward: solve without recording a graph. Backward: starting from ``z(t_N)``, integrate

    dz/dt = f(t, z),   da/dt = -a^T df/dz,   d(dL/dtheta)/dt = -a^T df/dtheta

from the last output time to the first, recomputing ``z`` in reverse, in one call of the engine
whose step-size controller runs on across output times (no restart per interval, unlike
torchdiffeq). Memory is that of a few states: it does not grow with the number of steps.

The loss gradient ``g_i = dL/dz(t_i)`` makes ``a`` jump at every output time. Each jump is handled
one of two exact ways:

* *stop*: the step lands on ``t_i`` and ``g_i`` is added to ``a`` (what every adjoint does);
* *fold*: jumps that are small against the tolerance (below one unit of ``atol + rtol |g_i|``)
  are carried by a piecewise-constant forcing instead. The solver integrates the continuous
  ``a~ = a - G(t)`` with ``G(t) = sum of folded g_i with t_i at or after t``, whose equation is
  ``da~/dt = -(a~ + G(t))^T df/dz``; ``a = a~ + G`` is recovered exactly at the end. The error
  controller sees the kinks this leaves, so accuracy stays controlled, and steps need not stop at
  every observation time when the jumps do not demand it.

With ``seminorm=True`` the error norm covers ``z`` and ``a`` only, not ``dL/dtheta`` (Kidger et al.
2021, "Hey, that's not an ODE"): the parameter integral does not feed back into the dynamics.
"""

from __future__ import annotations

import math
from bisect import bisect_left

import numpy as np
import torch

from .engine import integrate
from .problem import Problem


def _flat(tensors: tuple, like: tuple) -> list:
    return [
        (g if g is not None else torch.zeros_like(p)).reshape(-1)
        for g, p in zip(tensors, like, strict=True)
    ]


class _Jumps:
    """The adjoint jumps ``g_i`` at item times, split into stops and a folded forcing."""

    def __init__(self, problem: Problem, items: torch.Tensor, fold: bool, rtol: float, atol: float):
        out = problem.outputs
        self.per_sample = out.per_sample
        self.state_shape = problem.shape
        self.items = items
        self.rows = out.rows
        n = len(out.times)
        times = np.asarray(out.times, dtype=np.float64)
        at_end = times == out.t1
        interior = ~at_end
        if fold and interior.any():
            with torch.no_grad():
                g = items.detach().reshape(n, -1)
                ratio = (g / (atol + rtol * g.abs())).square().sum(1)
                numel = math.prod(self.state_shape)
                small = (ratio / numel).sqrt().cpu().numpy() <= 1.0
            folded = interior & small
        else:
            folded = np.zeros(n, dtype=bool)
        stopped = interior & ~folded
        self.end_idx = np.nonzero(at_end)[0]
        self.fold_idx = np.nonzero(folded)[0]
        d = out.direction
        self.fold_keys = [d * times[i] for i in self.fold_idx]  # increasing in forward time
        # stop times in backward order (decreasing forward time), each with its items
        stop_times = sorted({float(times[i]) for i in np.nonzero(stopped)[0]}, key=lambda s: -d * s)
        self.stop_times = stop_times
        self.stop_items = [np.nonzero(stopped & (times == s))[0] for s in stop_times]
        self.direction = d
        if len(self.fold_idx) and not self.per_sample:
            g = items[torch.as_tensor(self.fold_idx, device=items.device)]
            suffix = torch.flip(torch.cumsum(torch.flip(g, [0]), 0), [0])
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

    def forcing(self, t: float) -> torch.Tensor | None:
        """``G(t)``: the folded jumps at or after ``t`` (in forward time), or None if none."""
        k = bisect_left(self.fold_keys, self.direction * t)
        if k == len(self.fold_keys):
            return None
        if not self.per_sample:
            return self.suffix[k]
        zero = torch.zeros(self.state_shape, dtype=self.items.dtype, device=self.items.device)
        return self.add(zero, self.fold_idx[k:])

    def total_folded(self, a: torch.Tensor) -> torch.Tensor:
        return self.add(a, self.fold_idx)


def adjoint_backward(problem: Problem, grad_ys: torch.Tensor) -> tuple:
    """Gradients ``(dL/dy0, *dL/dparams)`` from the output cotangents, by one backward solve."""
    out, params, stats = problem.outputs, problem.params, problem.stats
    start_grad, items = out.split_grads(grad_ys)
    shape, n = problem.shape, math.prod(problem.shape)
    adaptive = problem.grid is None
    rtol, atol = problem.adjoint_rtol, problem.adjoint_atol
    jumps = _Jumps(problem, items, problem.adjoint_fold_jumps and adaptive, rtol, atol)
    func, time = problem.func, problem.time
    n_params = sum(p.numel() for p in params)

    def aug(t: float, s: torch.Tensor) -> torch.Tensor:
        stats.nfe_backward += 1
        z = s[:n].view(shape)
        a = s[n : 2 * n].view(shape)
        if jumps.folds:
            g = jumps.forcing(t)
            if g is not None:
                a = a + g
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            dz = func(time(t), z)
            vjp = torch.autograd.grad(dz, (z, *params), -a, allow_unused=True)
        return torch.cat([dz.detach().reshape(-1), *_flat(vjp, (z, *params))])

    def on_stop(i: int, t: float, s: torch.Tensor) -> torch.Tensor:
        a = jumps.add(s[n : 2 * n].view(shape), jumps.stop_items[i])
        return torch.cat([s[:n], a.reshape(-1), s[2 * n :]])

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
    )
    stats.backward_steps_accepted += counters.accepted
    stats.backward_steps_rejected += counters.rejected
    a0 = jumps.total_folded(state[n : 2 * n].view(shape)) + start_grad
    grads, offset = [], 2 * n
    for p in params:
        grads.append(state[offset : offset + p.numel()].view_as(p))
        offset += p.numel()
    return (a0, *grads)


class AdjointSolve(torch.autograd.Function):
    """Forward without a graph; backward by :func:`adjoint_backward`."""

    @staticmethod
    def forward(ctx, problem: Problem, y0: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        ctx.problem = problem
        return problem.solve(y0.detach())

    @staticmethod
    def backward(ctx, grad_ys: torch.Tensor) -> tuple:
        return (None, *adjoint_backward(ctx.problem, grad_ys))
