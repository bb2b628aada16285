"""``odeint``: the public entry point, shaped like torchdiffeq's so users can switch in one line."""

from __future__ import annotations

import inspect
import math
import numbers
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import torch
from torch import nn

from .adjoint import AdjointSolve
from .checkpoint import CheckpointSolve
from .errors import NonFiniteInitialStateError
from .precision import float32_under_autocast
from .problem import Problem, refuse_hidden_leaves
from .stats import SolverStats
from .tableaus import TABLEAUS, ButcherTableau
from .times import OutputTimes

GRADIENT_MODES = ("backprop", "adjoint", "checkpoint")
"""The values of ``odeint``'s ``gradient=``: how the solve is differentiated."""
FIXED_METHODS = tuple(name for name, tab in TABLEAUS.items() if not tab.adaptive)
"""Fixed-step methods (no error estimate): ``step_size=`` applies to these only."""
ADAPTIVE_METHODS = tuple(name for name, tab in TABLEAUS.items() if tab.adaptive)
"""Adaptive methods (embedded error estimate): ``rtol``/``atol`` control their steps."""


@float32_under_autocast("y0")  # mixed precision: the solve in float32 (see .precision)
def odeint(
    func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    y0: torch.Tensor,
    t: torch.Tensor,
    method: str | None = "dopri5",
    rtol: float = 1e-3,
    atol: float = 1e-4,
    gradient: str = "backprop",
    step_size: float | None = None,
    max_steps: int = 10_000,
    *,
    first_step: float | None = None,
    adjoint_params: Iterable[torch.Tensor] | None = None,
    adjoint_rtol: float | None = None,
    adjoint_atol: float | None = None,
    adjoint_seminorm: bool = True,
    adjoint_fold_jumps: bool = True,
    adjoint_method: str | None = None,
    stats: SolverStats | None = None,
    options: dict | None = None,
    adjoint_options: dict | None = None,
    **unsupported: object,
) -> torch.Tensor:
    """Solve ``dy/dt = func(t, y)`` from ``y(t[0]) = y0`` and return ``y`` at the times ``t``.

    Args:
        func: ``func(t, y) -> dy/dt`` with the shape of ``y``; any callable or ``nn.Module``,
            returning a new tensor on every call (not a buffer it overwrites), and given ``t``
            as a 0-d tensor in ``y0``'s dtype (float32 rounds times near 1e5 to ~0.01).
        y0: initial state, shape ``(..., d)``.
        t: output times. 1-D, strictly increasing or decreasing, ``t[0]`` the start: returns
            ``(len(t), *y0.shape)``. Or 2-D ``(batch, T)`` per-sample times (``y0`` of shape
            ``(batch, ...)``), every row starting at the same time and monotonic in the same
            direction (repeats allowed, e.g. as padding): returns ``(batch, T, ...)`` from one
            batched integration answered by dense output.
        method: fixed-step ``euler``, ``midpoint``, ``rk4`` or adaptive ``bosh3``, ``dopri5``,
            ``tsit5`` (``None``: ``dopri5``, as in torchdiffeq).
        rtol, atol: tolerances of the adaptive error control (RMS norm over all elements).
        gradient: ``backprop`` (autograd through the steps), ``adjoint`` (backward solve of the
            adjoint system; memory independent of the number of steps; where the backward
            reconstruction of ``y`` strays beyond 100x the tolerance, it warns and recomputes
            that gradient by ``checkpoint``) or ``checkpoint`` (replay each step in the
            backward pass; exact gradient of the discrete solution).
        step_size: fixed-step methods only; default one step per output interval.
        max_steps: bound on attempted steps (accepted plus rejected) per solve.
        first_step: adaptive methods: first step size instead of the automatic estimate.
        adjoint_params: tensors to differentiate in ``adjoint``/``checkpoint`` mode when ``func``
            is a closure (an ``nn.Module``'s parameters are found automatically).
        adjoint_rtol, adjoint_atol: tolerances of the backward solve (default: forward ones).
        adjoint_seminorm: leave ``dL/dtheta`` out of the backward error norm.
        adjoint_fold_jumps: let jumps of the adjoint smaller than the tolerance ride on a
            forcing term instead of stopping the backward solve at every output time.
        adjoint_method: tableau of the backward solve (default: ``method``); adaptive if
            ``method`` is, fixed-step (on the forward's grid) if it is not.
        stats: a :class:`SolverStats` to fill with evaluation and step counts.
        options: torchdiffeq's way of passing ``step_size``, ``first_step`` and
            ``max_num_steps`` (= ``max_steps``), accepted so that its calls run unchanged.
        adjoint_options: torchdiffeq's ``dict(norm="seminorm")`` (``adjoint_seminorm=True``,
            already the default here).
    """
    if unsupported:
        raise TypeError(_unsupported_message(sorted(unsupported)))
    _refuse_functorch()
    method = "dopri5" if method is None else method
    if method not in TABLEAUS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(TABLEAUS)}.")
    if options:
        step_size, first_step, max_steps = _torchdiffeq_options(
            options, step_size, first_step, max_steps)
    if adjoint_options:
        adjoint_seminorm = _adjoint_norm(adjoint_options)
    adjoint_tableau = _adjoint_tableau(method, adjoint_method)
    if gradient not in GRADIENT_MODES:
        raise ValueError(f"unknown gradient {gradient!r}; choose one of {list(GRADIENT_MODES)}.")
    if not isinstance(y0, torch.Tensor) or not torch.is_floating_point(y0):
        got = y0.dtype if isinstance(y0, torch.Tensor) else type(y0).__name__
        hint = ""
        if isinstance(y0, (tuple, list)):
            hint = (" A state of several tensors (torchdiffeq's tuples) is one tensor here: "
                    "concatenate them along the last dimension (torch.cat) and split inside "
                    "func.")
        elif isinstance(y0, torch.Tensor) and y0.is_complex():
            hint = (" Complex states are not supported, and y0.float() would drop the imaginary "
                    "part: solve for the real pair instead, y0 = torch.view_as_real(y0) (shape "
                    "(..., d, 2)), with func taking and returning that layout "
                    "(torch.view_as_complex inside it, torch.view_as_real on its answer).")
        elif isinstance(y0, torch.Tensor):
            hint = " Convert it with y0.float() (or .double())."
        raise ValueError(f"y0 must be a floating-point tensor, got {got}.{hint}")
    if y0.dim() == 0:
        raise ValueError("y0 must have at least one dimension: shape (..., d).")
    for name, tol in (("rtol", rtol), ("atol", atol), ("adjoint_rtol", adjoint_rtol),
                      ("adjoint_atol", adjoint_atol)):
        one = isinstance(tol, numbers.Real) or (torch.is_tensor(tol) and tol.numel() == 1)
        if tol is not None and (isinstance(tol, bool) or not one):
            raise ValueError(
                f"{name} must be one number, got {tol!r}: the error norm is an RMS over the "
                "whole state. For components of very different sizes, rescale them (solve "
                "for y / scale) so one tolerance fits all.")
    if not rtol > 0 or not atol >= 0:
        raise ValueError(f"rtol must be > 0 and atol >= 0, got rtol={rtol}, atol={atol}.")
    if max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps}.")
    step_size, first_step = _number("step_size", step_size), _number("first_step", first_step)
    if first_step is not None and not 0 < abs(first_step) < math.inf:
        raise ValueError(f"first_step must be a nonzero number (its size; the direction "
                         f"follows t), got {first_step}.")
    tableau = TABLEAUS[method]
    if tableau.adaptive and torch.finfo(y0.dtype).eps > 2 * rtol:
        wider = ("float64 (y0.double() and the module's .double())" if y0.dtype == torch.float32
                 else "float32 (y0.float() and the module's .float()), or under torch.autocast, "
                 "where odeint solves in float32 itself")
        warnings.warn(
            f"y0 is {y0.dtype} (resolution {torch.finfo(y0.dtype).eps:.1e}), coarser than "
            f"rtol={rtol:g}: the error control cannot reach the tolerance (a test field in "
            f"bfloat16 at rtol 1e-3: errors 50x it). Solve in {wider}.", stacklevel=2)
    if step_size is not None and tableau.adaptive:
        raise ValueError(
            f"step_size is for the fixed-step methods {list(FIXED_METHODS)}; {method!r} chooses "
            "its own steps (use first_step= to set the first one)."
        )
    if not bool(torch.isfinite(y0).all()):
        raise NonFiniteInitialStateError(
            "y0 contains NaN or inf; the initial state must be finite.")
    if y0.numel() == 0 and isinstance(t, torch.Tensor) and t.dim() == 2 and len(t) == 0:
        return y0.new_zeros((0, t.shape[1], *y0.shape[1:])) + 0 * y0.sum()  # no rows at all
    outputs = OutputTimes(t, y0)
    if y0.numel() == 0:  # an empty batch: nothing to integrate, an empty answer of the right shape
        shape = (*t.shape, *y0.shape[1:]) if outputs.per_sample else (len(t), *y0.shape)
        return y0.new_zeros(shape) + 0 * y0.sum()
    tracking = torch.is_grad_enabled() and gradient != "backprop"
    params = _find_params(func, adjoint_params) if tracking else ()
    problem = Problem(
        func=func, tableau=tableau, outputs=outputs, rtol=rtol, atol=atol, max_steps=max_steps,
        step_size=step_size, first_step=first_step,
        stats=stats if stats is not None else SolverStats(),
        dtype=y0.dtype, device=y0.device, shape=tuple(y0.shape), params=params,
        adjoint_rtol=rtol if adjoint_rtol is None else adjoint_rtol,
        adjoint_atol=atol if adjoint_atol is None else adjoint_atol,
        adjoint_seminorm=adjoint_seminorm, adjoint_fold_jumps=adjoint_fold_jumps,
        adjoint_tableau=adjoint_tableau, check_leaves=tracking,
    )
    if not tracking or not (y0.requires_grad or params):
        ys = problem.solve(y0)
        if tracking and ys.requires_grad:
            # func reached a trainable tensor only after the first evaluation (the one checked),
            # in a branch on t or the state: the answer would be backpropagated through every
            # step, the memory the adjoint / checkpoint mode was asked to avoid
            # (nn.Parameters only: a field may make each state it gets a leaf, as FFJORD's
            # trace does, and only the first one shares y0's storage)
            refuse_hidden_leaves(ys, (y0,), params, late="after the solve",
                                 parameters_only=True)
        return ys
    solve = AdjointSolve if gradient == "adjoint" else CheckpointSolve
    return solve.apply(problem, y0, *params)


def odeint_adjoint(
    func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    y0: torch.Tensor,
    t: torch.Tensor,
    *,
    rtol: float = 1e-3,
    atol: float = 1e-4,
    method: str | None = None,
    options: dict | None = None,
    adjoint_rtol: float | None = None,
    adjoint_atol: float | None = None,
    adjoint_method: str | None = None,
    adjoint_options: dict | None = None,
    adjoint_params: Iterable[torch.Tensor] | None = None,
    **kwargs: object,
) -> torch.Tensor:
    """torchdiffeq's ``odeint_adjoint`` call: ``odeint(..., gradient="adjoint")``.

    The keywords are torchdiffeq's; the defaults are ours (``rtol=1e-3, atol=1e-4``: torchdiffeq
    uses 1e-7 / 1e-9, pass them for the same accuracy). Any other :func:`odeint` keyword
    (``stats=``, ``max_steps=``, ...) passes through.
    """
    if "gradient" in kwargs:
        raise TypeError("odeint_adjoint is odeint(..., gradient='adjoint'); for another "
                        "gradient mode call odeint(..., gradient=...).")
    return odeint(func, y0, t, method=method, rtol=rtol, atol=atol, gradient="adjoint",
                  options=options, adjoint_rtol=adjoint_rtol, adjoint_atol=adjoint_atol,
                  adjoint_method=adjoint_method, adjoint_options=adjoint_options,
                  adjoint_params=adjoint_params, **kwargs)


# torchdiffeq keywords we do not have, with the way to do without them
_TORCHDIFFEQ_ONLY = {
    "event_fn": "events are not supported: solve up to the event with one call and go on from "
                "its state with a second one (root-find the event time on the dense output of "
                "the first, e.g. from a fine t grid)",
}


def check_options(options: Mapping[str, object], owner: str) -> None:
    """Refuse keys of ``options`` that :func:`odeint` does not take (or that ``owner``, the
    model passing them, sets itself: ``stats``), when a model is built rather than at its
    first solve, naming ``owner``."""
    reserved = {"func", "y0", "t", "stats", "unsupported"}
    known = set(inspect.signature(odeint).parameters) - reserved
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(_unsupported_message(unknown, f"{owner}'s solver options got",
                                             sorted(known)))


def _unsupported_message(names: list[str], who: str = "odeint() got",
                         known: list[str] | None = None) -> str:
    hints = [f"{n}: {_TORCHDIFFEQ_ONLY[n]}" for n in names if n in _TORCHDIFFEQ_ONLY]
    takes = ", ".join(known or sorted(
        ["method", "rtol", "atol", "gradient", "step_size", "max_steps", "first_step",
         "adjoint_params", "adjoint_rtol", "adjoint_atol", "adjoint_seminorm",
         "adjoint_fold_jumps", "adjoint_method", "stats", "options", "adjoint_options"]))
    text = f"{who} unexpected keyword argument(s) {names}"
    return f"{text}; {'; '.join(hints)}." if hints else f"{text}; it takes {takes}."


def _adjoint_norm(adjoint_options: dict) -> bool:
    """``adjoint_options=dict(norm="seminorm")`` as torchdiffeq takes it."""
    unknown = sorted(set(adjoint_options) - {"norm"})
    norm = adjoint_options.get("norm", "seminorm")
    if unknown or norm not in ("seminorm", "default"):
        raise ValueError(
            f"adjoint_options={adjoint_options!r} is not supported: only norm='seminorm' (the "
            "default here: adjoint_seminorm=True) or norm='default' (adjoint_seminorm=False); "
            "backward tolerances are adjoint_rtol= / adjoint_atol=, its method adjoint_method=."
        )
    return norm == "seminorm"


def _adjoint_tableau(method: str, adjoint_method: str | None) -> ButcherTableau:
    """The backward solve's tableau: ``method``'s, or another of the same kind."""
    if adjoint_method is None or adjoint_method == method:
        return TABLEAUS[method]
    if adjoint_method not in TABLEAUS:
        raise ValueError(
            f"unknown adjoint_method {adjoint_method!r}; choose one of {sorted(TABLEAUS)}.")
    forward, backward = TABLEAUS[method], TABLEAUS[adjoint_method]
    if forward.adaptive != backward.adaptive:
        kinds = list(ADAPTIVE_METHODS if forward.adaptive else FIXED_METHODS)
        raise ValueError(
            f"adjoint_method={adjoint_method!r} with method={method!r}: the backward solve "
            f"{'chooses its own steps' if forward.adaptive else 'follows the forward grid'}, "
            f"so its method must be one of {kinds}."
        )
    return backward


_OPTIONS = {"step_size", "first_step", "max_num_steps"}


def _number(name: str, value: object) -> float | None:
    """``step_size`` / ``first_step`` as a Python float: torchdiffeq's callers often pass
    one-element tensors (refused with the reason when it is anything else)."""
    if value is None:
        return None
    if torch.is_tensor(value) and value.numel() == 1 and not value.requires_grad:
        return float(value)
    if getattr(value, "shape", None) == () and hasattr(value, "dtype"):  # 0-d numpy arrays
        value = cast(Any, value).item()
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"{name} must be one number (a float, or a one-element tensor that needs "
                     f"no gradient), got {value!r}.")


def _refuse_functorch() -> None:
    """Refuse a call under a ``torch.func`` transform (grad, jacrev, jacfwd, jvp, vmap), which
    failed deep inside with "Cannot access data pointer of Tensor that doesn't have storage":
    the solver reads output times and error norms on the host to choose its steps. Skipped
    while torch.compile traces (it runs the solver eagerly between graph breaks)."""
    if torch.compiler.is_compiling():
        return
    level = getattr(torch._C._functorch, "maybe_current_level", None)
    if level is not None and level() is not None:
        raise RuntimeError(
            "odeint does not run under torch.func transforms (grad, jacrev, jacfwd, jvp, "
            "vmap, functional_call inside them): it reads times and error norms on the host "
            "to choose its steps. Use torch.autograd instead: torch.autograd.grad or "
            "loss.backward() (functional_call works there, with adjoint_params= its "
            "tensors), torch.autograd.functional.jacobian / jvp, and a batch dimension in "
            "y0 in place of vmap.")


def _torchdiffeq_options(options: dict, step_size: float | None, first_step: float | None,
                         max_steps: int) -> tuple:
    """``options=dict(step_size=...)`` as torchdiffeq takes it, mapped onto our arguments."""
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        jumps = (" For jump_t/step_t/perturb (a discontinuity of func in time), solve up to it "
                 "with one call and go on from there with a second: every step then sees a "
                 "smooth field." if {"jump_t", "step_t", "perturb"} & set(unknown) else "")
        raise ValueError(
            f"options {unknown} are not supported; odeint understands {sorted(_OPTIONS)} there "
            f"(or pass step_size=, first_step=, max_steps= directly).{jumps}"
        )
    return (options.get("step_size", step_size), options.get("first_step", first_step),
            int(options.get("max_num_steps", max_steps)))


def _find_params(func: Callable, adjoint_params: Iterable[torch.Tensor] | None) -> tuple:
    """The tensors a custom backward must differentiate: explicit, or found on a Module."""
    if adjoint_params is not None:
        if isinstance(adjoint_params, (dict, torch.Tensor)):
            kind = "a dict" if isinstance(adjoint_params, dict) else "one tensor"
            raise TypeError(f"adjoint_params must be a sequence of tensors (e.g. "
                            f"list(model.parameters()) or [w]), got {kind}.")
        params = tuple(adjoint_params)
        for p in params:
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"adjoint_params must hold tensors, got {type(p).__name__}.")
        return tuple(p for p in params if p.requires_grad)
    owner = func if isinstance(func, nn.Module) else getattr(func, "__self__", None)
    if isinstance(owner, nn.Module):
        return tuple(p for p in owner.parameters() if p.requires_grad)
    return ()
