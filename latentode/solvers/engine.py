"""The one explicit Runge-Kutta engine: a step of any tableau, a PI controller, the step loop.

The loop works on a single tensor state and Python-float times. Step-size decisions are made on
detached values (they are not differentiated, as in diffrax), so in ``backprop`` mode autograd
records only the stage arithmetic and the vector-field calls. Stage sums are built in place
(``add_`` with a scalar ``alpha``), which autograd can differentiate without saving anything.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .errors import MaxStepsExceededError, NonFiniteStateError, StepSizeUnderflowError
from .tableaus import ButcherTableau

# f(t, y) with a Python-float time; counts its own evaluations.
VectorField = Callable[[float, torch.Tensor], torch.Tensor]
# on_step(t, h, t_next, y, y1, ks) is called after every accepted step; an adaptive solve
# goes on from the state it returns, if any, still reusing the step's last stage (first same as
# last): the hook may only nudge the state, by so little that the stage's error is negligible.
StepHook = Callable[[float, float, float, torch.Tensor, torch.Tensor, list],
                    torch.Tensor | None]
# on_stop(index, t, y) -> y is called on landing at stops[index]; it may change the state.
StopHook = Callable[[int, float, torch.Tensor], torch.Tensor]


class RungeKutta:
    """One step of an explicit RK tableau, with the tableau's zero entries skipped."""

    def __init__(self, tableau: ButcherTableau):
        self.tableau = tableau
        self.rows = [[(j, a) for j, a in enumerate(row) if a != 0.0] for row in tableau.a]
        self.c = tableau.c
        self.b = [(j, b) for j, b in enumerate(tableau.b) if b != 0.0]
        self.e = [(j, e) for j, e in enumerate(tableau.b_error or ()) if e != 0.0]
        self.fsal = tableau.fsal

    @staticmethod
    def _combine(y: torch.Tensor, ks: list, terms: list, h: float) -> torch.Tensor:
        if not terms:
            return y
        (j, a), *rest = terms
        out = torch.add(y, ks[j], alpha=h * a)
        for j, a in rest:
            out.add_(ks[j], alpha=h * a)
        return out

    def step(
        self, f: VectorField, t: float, h: float, y: torch.Tensor, k1: torch.Tensor,
        skip_last: bool = False,
    ) -> tuple[torch.Tensor, list]:
        """Return ``(y1, stages)``; for FSAL tableaus the last stage is ``f(t + h, y1)``.

        ``skip_last`` (FSAL only) leaves that last evaluation out: the stage list is one short.
        """
        ks = [k1]
        yi = y
        for i in range(1, len(self.c)):
            yi = self._combine(y, ks, self.rows[i], h)
            if skip_last and i == len(self.c) - 1:
                return yi, ks
            ks.append(f(t + self.c[i] * h, yi))
        y1 = yi if self.fsal else self._combine(y, ks, self.b, h)
        return y1, ks

    def error(self, ks: list, h: float) -> torch.Tensor:
        """Embedded error estimate ``h * sum_i (b_i - bhat_i) k_i`` (no autograd)."""
        with torch.no_grad():
            (j, e), *rest = self.e
            err = ks[j].detach() * (h * e)
            for j, e in rest:
                err.add_(ks[j].detach(), alpha=h * e)
        return err


def rms_ratio(
    x: torch.Tensor,
    y: torch.Tensor,
    y1: torch.Tensor | None,
    rtol: float,
    atol: float,
    n: int | None,
) -> float:
    """RMS of ``x / (atol + rtol * max(|y|, |y1|))`` over the first ``n`` elements (all if None)."""
    with torch.no_grad():
        x, y = x.detach().reshape(-1), y.detach().reshape(-1)
        if n is not None:
            x, y = x[:n], y[:n]
        scale = y.abs()
        if y1 is not None:
            y1 = y1.detach().reshape(-1)
            scale = torch.maximum(scale, (y1[:n] if n is not None else y1).abs())
        scale = scale.mul_(rtol).add_(atol)
        return torch.linalg.vector_norm(x / scale).item() / math.sqrt(max(x.numel(), 1))


def initial_step(
    f: VectorField, t0: float, y0: torch.Tensor, f0: torch.Tensor, direction: float, order: int,
    rtol: float, atol: float, span: float, n: int | None,
) -> float:
    """Hairer, Norsett & Wanner's automatic first step (Solving ODEs I, II.4); one evaluation."""
    with torch.no_grad():
        d0 = rms_ratio(y0, y0, None, rtol, atol, n)
        d1 = rms_ratio(f0, y0, None, rtol, atol, n)
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        h0 = min(h0, span)
        y1 = torch.add(y0.detach(), f0.detach(), alpha=direction * h0)
        f1 = f(t0 + direction * h0, y1)
        d2 = rms_ratio(f1.detach() - f0.detach(), y0, None, rtol, atol, n) / h0
        dmax = max(d1, d2)
        h1 = max(1e-6, h0 * 1e-3) if dmax <= 1e-15 else (0.01 / dmax) ** (1.0 / (order + 1))
    return min(100 * h0, h1, span)


@dataclass
class PIController:
    """Hairer's PI step-size controller (DOPRI5 code): ``h_new = h * safety / (err^a / prev^b)``."""

    order: int  # order of the error estimate + 1
    safety: float = 0.9
    min_factor: float = 0.2
    max_factor: float = 10.0
    beta: float = 0.04

    def __post_init__(self) -> None:
        self.alpha = 1.0 / self.order - 0.75 * self.beta
        self.prev = 1e-4
        self.last_rejected = False

    def propose(self, h: float, ratio: float, accepted: bool, order: int | None = None) -> float:
        """Next step size; ``order`` overrides the error's order for this proposal."""
        if not math.isfinite(ratio):
            self.last_rejected = True
            return h * 0.1
        fac11 = ratio ** (self.alpha if order is None else 1.0 / order)
        if accepted:
            fac = fac11 / self.prev**self.beta
            fac = min(1.0 / self.min_factor, max(1.0 / self.max_factor, fac / self.safety))
            h_new = h / fac
            if self.last_rejected:
                h_new = math.copysign(min(abs(h_new), abs(h)), h)
            self.prev = max(ratio, 1e-4)
            self.last_rejected = False
            return h_new
        self.last_rejected = True
        return h / min(1.0 / self.min_factor, fac11 / self.safety)


@dataclass
class Counters:
    """Steps taken by one ``integrate`` call."""

    accepted: int = 0
    rejected: int = 0


def _check_finite(y: torch.Tensor, t: float, what: str) -> None:
    if not bool(torch.isfinite(y).all()):
        raise NonFiniteStateError(
            f"the {what} is not finite (NaN or inf) at t={t:.6g}. Check the vector field for "
            "division by zero, overflow or exploding weights; a smaller step or a looser "
            "time scale can help if the solution itself blows up."
        )


def integrate(
    rk: RungeKutta,
    f: VectorField,
    y0: torch.Tensor,
    t0: float,
    t1: float,
    *,
    rtol: float,
    atol: float,
    max_steps: int,
    grid: Sequence[float] | None = None,
    first_step: float | None = None,
    stops: Sequence[float] = (),
    on_step: StepHook | None = None,
    on_stop: StopHook | None = None,
    norm_numel: int | None = None,
    k1: torch.Tensor | None = None,
    prepare: Callable[[float, float, torch.Tensor], tuple[float, bool]] | None = None,
    extra_error: Callable[[float, float, torch.Tensor, torch.Tensor, list], float] | None = None,
    extra_order: int = 2,
) -> tuple[torch.Tensor, float, Counters]:
    """Integrate from ``t0`` to ``t1``; return ``(y(t1), next proposed step, counters)``.

    ``grid`` (fixed-step methods) lists every step boundary from ``t0`` to ``t1``. Otherwise the
    step is adaptive, starting from ``first_step`` or Hairer's estimate. ``stops`` are times
    (in integration order, strictly between ``t0`` and ``t1``) on which a step must land, e.g.
    where the adjoint state jumps; landing calls ``on_stop``, which may change the state, and
    the controller keeps its proposal across the stop instead of restarting. ``prepare(t, h, y)``
    runs before every trial step and returns ``(h, changed)``: it may shorten the step, and
    ``changed`` asks for the first stage afresh (the vector field changed between steps, e.g.
    a step-averaged forcing term).
    ``extra_error(t, h, y, y1, stages)`` adds an error estimate of order ``extra_order`` in ``h``
    (as a ratio to the tolerance) to the step's embedded one; the controller rejects on the
    larger of the two.
    """
    direction = 1.0 if t1 >= t0 else -1.0
    counters = Counters()
    y, t = y0, t0
    if k1 is None and (grid is not None or first_step is None):
        k1 = f(t, y)
    if grid is not None:
        stop_index = {s: i for i, s in enumerate(stops)}
        h = 0.0
        for t_next in grid[1:]:
            h = t_next - t
            assert k1 is not None  # evaluated above, and below for every next step
            y1, ks = rk.step(f, t, h, y, k1)
            counters.accepted += 1
            if on_step is not None:
                on_step(t, h, t_next, y, y1, ks)
            y, t = y1, t_next
            if t_next in stop_index and on_stop is not None:
                y = on_stop(stop_index[t_next], t, y)
            if t != t1:
                k1 = f(t, y)
        return y, h, counters

    tab = rk.tableau
    span = abs(t1 - t0)
    if span == 0.0:
        return y, 0.0, counters
    if first_step is None:
        assert k1 is not None  # evaluated above
        h_abs = initial_step(f, t0, y, k1, direction, tab.order, rtol, atol, span, norm_numel)
    else:
        h_abs = abs(first_step)
    h = direction * h_abs
    controller = PIController(order=(tab.error_order or tab.order) + 1)
    targets = [*list(stops), t1]
    target = 0
    last_trial_finite = True
    while True:
        if counters.accepted + counters.rejected >= max_steps:
            mean = abs(t - t0) / counters.accepted if counters.accepted else abs(h)
            raise MaxStepsExceededError(
                f"max_steps={max_steps} exceeded at t={t:.6g} on the way to t={t1:.6g} "
                f"({counters.accepted} accepted, {counters.rejected} rejected steps, mean "
                f"accepted step {mean:.3g}). Raise max_steps (torchdiffeq has no limit) or "
                "loosen rtol/atol. If the steps stay tiny while the solution changes slowly, "
                "the problem is stiff: explicit methods (all of ours, fixed-step ones too) are "
                "stable only for steps below about 3/lambda, lambda the fastest decay rate, "
                "whatever the tolerance; rescale time or the fast rate, or use an implicit "
                "solver (e.g. scipy.integrate.solve_ivp(method='Radau'))."
            )
        goal = targets[target]
        planned = h
        lands = direction * (t + h - goal) >= 0.0
        if lands:
            h = goal - t
        if abs(h) <= 16 * math.ulp(max(abs(t), abs(goal), 1e-300)) and not lands:
            _raise_underflow(t, h, rtol, atol, last_trial_finite)
        if prepare is not None:
            shortened, changed = prepare(t, h, y)
            if shortened != h:
                h, lands = shortened, False
            if changed:
                k1 = None
        if k1 is None:
            k1 = f(t, y)
        y1, ks = rk.step(f, t, h, y, k1)
        ratio = rms_ratio(rk.error(ks, h), y, y1, rtol, atol, norm_numel)
        extra = extra_error(t, h, y, y1, ks) if extra_error is not None else 0.0
        accepted = max(ratio, extra) <= 1.0
        last_trial_finite = math.isfinite(ratio)
        if extra > ratio:  # the extra term decides: propose by its order
            h_new = controller.propose(h, extra, accepted, order=extra_order)
        else:
            h_new = controller.propose(h, ratio, accepted)
            if extra > 0.0 and accepted:  # do not grow past what the extra term allows
                limit = abs(h) * controller.safety * extra ** (-1.0 / extra_order)
                h_new = math.copysign(min(abs(h_new), limit), h_new)
        if not accepted:
            counters.rejected += 1
            h = h_new
            if abs(h) <= 16 * math.ulp(max(abs(t), 1e-300)):
                _raise_underflow(t, h, rtol, atol, last_trial_finite)
            continue
        counters.accepted += 1
        t_next = goal if lands else t + h
        replaced = on_step(t, h, t_next, y, y1, ks) if on_step is not None else None
        y, t = (y1 if replaced is None else replaced), t_next
        k1 = ks[-1] if rk.fsal else None
        if lands:
            # keep the controller's plan across the landing rather than the clipped step
            h_new = max(h_new, planned) if direction > 0 else min(h_new, planned)
            if target == len(targets) - 1:
                return y, h_new, counters
            if on_stop is not None:
                y = on_stop(target, t, y)
            k1 = None
            target += 1
        h = h_new


def _raise_underflow(t: float, h: float, rtol: float, atol: float, finite: bool) -> None:
    if not finite:
        raise NonFiniteStateError(
            f"the vector field or the state became NaN/inf at t={t:.6g}: every trial step, "
            f"down to h={h:.3g}, produced non-finite values. Check func for overflow, division by "
            "zero or exploding weights."
        )
    raise StepSizeUnderflowError(
        f"step size underflow at t={t:.6g} (h={h:.3g}): the solver cannot meet rtol={rtol:g}, "
        f"atol={atol:g} here. Try a looser tolerance, a fixed-step method "
        "(method='rk4', step_size=...), or rescaling time to a range of order one; the "
        "problem may be stiff (then a fixed step must stay below about 3/lambda for the "
        "fastest decay rate lambda, or use an implicit solver such as "
        "scipy.integrate.solve_ivp(method='Radau')) or the solution may blow up near this time."
    )
