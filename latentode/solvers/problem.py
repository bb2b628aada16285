"""One ``odeint`` call's settings and its forward solve, shared by the three gradient modes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .engine import RungeKutta, integrate
from .errors import NonFiniteStateError
from .stats import SolverStats
from .tableaus import ButcherTableau
from .times import OutputTimes, fixed_grid


@dataclass
class Step:
    """An accepted step kept by the checkpoint mode: its start, size, start state and outputs."""

    t: float
    h: float
    y: torch.Tensor
    start: int  # items answered inside the step: start:stop
    stop: int


@dataclass
class Problem:
    func: Callable
    tableau: ButcherTableau
    outputs: OutputTimes
    rtol: float
    atol: float
    max_steps: int
    step_size: float | None
    first_step: float | None
    stats: SolverStats
    dtype: torch.dtype
    device: torch.device
    shape: tuple
    params: tuple = ()
    adjoint_rtol: float = 1e-3
    adjoint_atol: float = 1e-4
    adjoint_seminorm: bool = True
    adjoint_fold_jumps: bool = True
    rk: RungeKutta = field(init=False)
    last_step: float | None = field(default=None, init=False)  # forward's final step proposal
    final_state: torch.Tensor | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.rk = RungeKutta(self.tableau)
        self.grid = (
            None
            if self.tableau.adaptive
            else fixed_grid(self.outputs, self.step_size, self.max_steps)
        )
        self._checked = False

    def time(self, t: float) -> torch.Tensor:
        return torch.tensor(t, dtype=self.dtype, device=self.device)

    def vector_field(self, backward: bool = False) -> Callable[[float, torch.Tensor], torch.Tensor]:
        """``func`` behind a float-time interface that counts evaluations (and checks the first)."""
        func, stats, time = self.func, self.stats, self.time

        if backward:
            def f(t: float, y: torch.Tensor) -> torch.Tensor:
                stats.nfe_backward += 1
                return func(time(t), y)
            return f

        def f(t: float, y: torch.Tensor) -> torch.Tensor:
            stats.nfe_forward += 1
            dy = func(time(t), y)
            if not self._checked:
                self._check_first(dy, y, t)
            return dy
        return f

    def _check_first(self, dy: object, y: torch.Tensor, t: float) -> None:
        if not isinstance(dy, torch.Tensor):
            raise TypeError(f"func(t, y) must return a tensor, got {type(dy).__name__}.")
        if dy.shape != y.shape:
            raise ValueError(
                f"func(t, y) returned shape {tuple(dy.shape)} but the state y0 has shape "
                f"{tuple(y.shape)}; dy/dt must have exactly the shape of y."
            )
        if dy.dtype != y.dtype or dy.device != y.device:
            raise ValueError(
                f"func(t, y) returned {dy.dtype} on {dy.device} for a state of {y.dtype} on "
                f"{y.device}; return dy/dt with the dtype and device of y."
            )
        if not bool(torch.isfinite(dy).all()):
            raise NonFiniteStateError(
                f"func(t, y) returned NaN or inf at the start time t={t:.6g}; check func and y0."
            )
        self._checked = True

    def solve(self, y0: torch.Tensor, record: list | None = None) -> torch.Tensor:
        """Integrate from ``t0`` answering every output time; optionally record accepted steps."""
        outputs, tab = self.outputs, self.tableau
        chunks = [outputs.start_chunk(y0)]
        cursor = [0]

        def on_step(
            t: float, h: float, t_next: float, y: torch.Tensor, y1: torch.Tensor, ks: list
        ) -> None:
            start = cursor[0]
            stop = outputs.count_until(start, t_next)
            if stop > start:
                chunks.append(outputs.interpolate(tab, t, h, y, y1, ks, start, stop))
            if record is not None:
                record.append(Step(t, h, y, start, stop))
            cursor[0] = stop

        y_end, h_next, counters = integrate(
            self.rk, self.vector_field(), y0, outputs.t0, outputs.t1,
            rtol=self.rtol, atol=self.atol, max_steps=self.max_steps, grid=self.grid,
            first_step=self.first_step, on_step=on_step,
        )
        self.stats.steps_accepted += counters.accepted
        self.stats.steps_rejected += counters.rejected
        self.last_step = h_next
        self.final_state = y_end
        ys = outputs.assemble(chunks)
        if not bool(torch.isfinite(y_end).all()):
            bad = outputs.first_nonfinite_time(ys)
            where = f"t={bad:.6g}" if bad is not None else f"t={outputs.t1:.6g}"
            raise NonFiniteStateError(
                f"the solution became NaN or inf (first output affected: {where}). The "
                "vector field may overflow or the fixed step may be too large for this problem: "
                "try a smaller step_size, an adaptive method, or check func for exploding values."
            )
        return ys
