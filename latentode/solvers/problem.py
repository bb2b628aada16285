"""One ``odeint`` call's settings and its forward solve, shared by the three gradient modes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .engine import RungeKutta, integrate
from .errors import NonFiniteStateError
from .rng import RngTape, State
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
    rng_k1: State | None = None  # generator state before the evaluation of its first stage
    rng_stages: State | None = None  # ... and before its other stages (random fields only)


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
    check_leaves: bool = False  # refuse a func depending on trainable tensors not in params
    adjoint_tableau: ButcherTableau | None = None  # the backward solve's (default: tableau)
    rk: RungeKutta = field(init=False)
    adjoint_rk: RungeKutta = field(init=False)
    last_step: float | None = field(default=None, init=False)  # forward's final step proposal
    final_state: torch.Tensor | None = field(default=None, init=False)
    tape: RngTape | None = field(default=None, init=False)  # random fields: states to replay

    def __post_init__(self) -> None:
        self.rk = RungeKutta(self.tableau)
        backward = self.adjoint_tableau
        self.adjoint_rk = self.rk if backward in (None, self.tableau) else RungeKutta(backward)
        self.grid = (
            None
            if self.tableau.adaptive
            else fixed_grid(self.outputs, self.step_size, self.max_steps)
        )
        self._checked = False
        self._first: tuple[torch.Tensor, int] | None = None  # checked by the next evaluation

    def time(self, t: float) -> torch.Tensor:
        return torch.tensor(t, dtype=self.dtype, device=self.device)

    def vector_field(self, backward: bool = False) -> Callable[[float, torch.Tensor], torch.Tensor]:
        """``func`` behind a float-time interface that counts evaluations (and checks the first)."""
        func, stats, time, tape = self.func, self.stats, self.time, self.tape

        if backward:
            def f_backward(t: float, y: torch.Tensor) -> torch.Tensor:
                stats.nfe_backward += 1
                return func(time(t), y)
            return f_backward

        def f(t: float, y: torch.Tensor) -> torch.Tensor:
            stats.nfe_forward += 1
            if tape is not None and tape.active and tape.keep:
                before = tape.read()
                dy = func(time(t), y)
                tape.remember(dy, before)
                return dy
            if self._first is not None:  # the second evaluation: is the first one intact?
                dy = func(time(t), y)
                self._check_reuse(dy)
                return dy
            if self._checked:
                return func(time(t), y)
            return self._first_evaluation(t, y)
        return f

    def _check_reuse(self, dy: object) -> None:
        """Refuse a ``func`` that wrote its answer into the tensor it returned before (a
        preallocated output buffer): the steps keep every evaluation as a stage, so each
        overwrote the last and the solution came out silently wrong (dopri5 on dy/dt = -y:
        0.499 for e^-1 = 0.368). Seen by the version counter of the first answer's storage,
        checked once per solve, without a copy or a device sync; a func that returns one
        unchanging tensor (a constant field) is fine."""
        first, version = self._first  # type: ignore[misc]
        self._first = None
        if not isinstance(dy, torch.Tensor) or dy.is_inference() or first._version == version:
            return
        try:  # the same memory, not another slice of one buffer (whose version it shares)
            shared = dy.data_ptr() == first.data_ptr() and dy.shape == first.shape
        except RuntimeError:  # a tensor without storage of its own
            return
        if shared:
            raise ValueError(
                "func(t, y) returned the tensor it had returned on its previous call, "
                "overwritten in place (out=, copy_, or an in-place op on a buffer it keeps): "
                "the solver keeps each evaluation as a stage of the step, so every answer must "
                "be a new tensor. Return the computed tensor itself, or buffer.clone().")

    def _first_evaluation(self, t: float, y: torch.Tensor) -> torch.Tensor:
        """The first evaluation of a solve, checked: its shape and values, and (``check_leaves``)
        that no trainable tensor outside ``params`` feeds it, which the adjoint and checkpoint
        modes could not differentiate. Checked on every call, on the evaluation the solve needs
        anyway (no extra call of ``func``: its side effects and random draws stay as they are)."""
        if self.check_leaves:
            tt = self.time(t)
            with torch.enable_grad():
                dy = self.func(tt, y)
            refuse_hidden_leaves(dy, (y, tt), self.params)
            dy = dy.detach() if isinstance(dy, torch.Tensor) else dy
        else:
            dy = self.func(self.time(t), y)
        self._check_first(dy, y, t)
        # (tensors made under torch.inference_mode keep no version counter: not checked; a
        # one-stage method (euler) uses each answer before the next call: harmless there)
        if not dy.is_inference() and len(self.tableau.c) > 1:
            self._first = (dy, dy._version)
        tape = self.tape
        if tape is not None and tape.moved_since(tape.start):
            tape.active = True
            if tape.keep:
                tape.remember(dy, tape.start)
        return dy

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
        """Integrate from ``t0`` answering every output time; optionally record accepted steps.

        With ``check_leaves`` (the adjoint and checkpoint modes) the solve also watches the
        random-number generator: ``drew_random`` says whether ``func`` drew from it, and a
        recorded solve keeps the generator state of every step for the checkpoint replay.
        """
        self.tape = RngTape(self.device, keep=record is not None) if self.check_leaves else None
        ys = self._solve(y0, record)
        tape = self.tape
        if (record is not None and tape is not None and not tape.active
                and tape.moved_since(tape.start)):  # drew only after the first evaluation:
            tape.write(tape.start)  # solve again from the same state, taped
            tape.active = True
            record.clear()
            ys = self._solve(y0, record)
        return ys

    @property
    def drew_random(self) -> bool:
        """Whether the last forward solve's ``func`` drew random numbers."""
        tape = self.tape
        return tape is not None and (tape.active or tape.moved_since(tape.start))

    def _solve(self, y0: torch.Tensor, record: list | None) -> torch.Tensor:
        outputs, tab, tape = self.outputs, self.tableau, self.tape
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
                step = Step(t, h, y, start, stop)
                if tape is not None and tape.active:
                    step.rng_k1 = tape.state_of(ks[0])
                    step.rng_stages = tape.state_of(ks[1]) if len(ks) > 1 else None
                    tape.forget_all_but(ks[-1])
                record.append(step)
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
                "vector field may overflow or the fixed step may be too large for this problem "
                "(an explicit method diverges once step_size exceeds about 3/lambda, lambda the "
                "fastest decay rate: a stiff problem needs steps that small, or an implicit "
                "solver): try a smaller step_size, an adaptive method, or check func for "
                "exploding values."
            )
        return ys


def refuse_hidden_leaves(out: object, inputs: tuple, params: tuple, late: str = "",
                         parameters_only: bool = False) -> None:
    """Refuse an output that depends on trainable tensors the custom backward would not see.

    The adjoint and checkpoint modes run the forward pass without a graph, so a trainable tensor
    reached through a closure, a ``functools.partial``, a callable object or a tensor attribute
    set on a module (conditioning from an encoder, say) would silently get no gradient. The
    inputs ``(y, t)`` and views of them are not: a field may make them require grad (FFJORD's
    trace makes its slice of the state a leaf). ``late``: where a later check found them
    (the first evaluation of every solve is checked; later ones where it is cheap);
    ``parameters_only``: only ``nn.Parameter``s count (a check over the whole solve's graph,
    where the states a field made leaves of cannot be told apart from trainable tensors).
    """
    own = {id(p) for p in params}
    storages = {x.untyped_storage().data_ptr() for x in inputs}
    hidden = [v for v in _graph_leaves(out)
              if id(v) not in own and v.untyped_storage().data_ptr() not in storages
              and (not parameters_only or isinstance(v, torch.nn.Parameter))]
    if hidden:
        shapes = ", ".join(str(tuple(v.shape)) for v in hidden[:5])
        when = (f" (found {late}: func reached them only after its first evaluation, in a "
                "branch on t or on the state)" if late else "")
        raise ValueError(
            f"func depends on {len(hidden)} trainable tensor(s) (shapes {shapes}){when} that the "
            "adjoint and checkpoint modes cannot see, so they would get no gradient: pass them "
            "as adjoint_params=[...] (e.g. list(model.parameters())), or make func an nn.Module "
            "that owns them. A tensor computed from trainable weights outside func (e.g. "
            "conditioning from an encoder) belongs in the state y0 instead, or use "
            "gradient='backprop'. A leaf func makes itself from y or t (torch.cat([y, t])"
            ".requires_grad_()) counts too: make y itself require grad (y.requires_grad_()) "
            "and build from it."
        )


def _graph_leaves(out: object) -> list[torch.Tensor]:
    """The leaf tensors requiring grad that ``out`` (a tensor or a list of them) came from."""
    outs = out if isinstance(out, (list, tuple)) else [out]
    roots = [o.grad_fn for o in outs if isinstance(o, torch.Tensor) and o.grad_fn is not None]
    if not roots:
        return []
    stack: list[torch.autograd.graph.Node | None] = list(roots)
    leaves, seen = [], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        variable = getattr(fn, "variable", None)  # AccumulateGrad nodes hold the leaf
        if variable is not None:
            leaves.append(variable)
            continue
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return leaves
