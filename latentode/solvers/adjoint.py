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
  ``da~/dt = -(a~ + G)^T df/dz``. Within a step, each jump inside rides on a forcing linear in
  time whose integral and first moment equal the jump's: folding is then exact to second order
  in the step, also where ``df/dz`` changes along it. What is left, at most
  ``(h L)^3 / 6 sum_i |f_i (1 - f_i) (1/2 - f_i)| |g_i|`` for jumps at fractions ``f_i`` of a
  step of size ``h`` and a Lipschitz estimate ``L`` from the stages and from ``J^T`` applied
  to the jumps, enters the error control beside the embedded estimate, so steps shrink where
  jumps demand it and span many output times where they do not. ``a = a~ + G`` is exact at the
  end. A step whose forcing changed starts where the last evaluation was made, so that
  evaluation is corrected by one vector-Jacobian product rather than repeated.
  With ``fold_jumps=False`` (and for fixed-step methods) every step lands on each output time.

One danger is the reconstruction of ``z`` itself: integrated backwards, a field that contracts
forwards expands, and rounding grows like ``exp(|lambda| T)`` (``lambda = -20`` over ``T = 2``:
by e^40). Where ``a`` is large after jumps at output times, the gradient is then ruined. So
``z`` is held to the forward solution stored at the output times (as torchdiffeq's restarts
from each output do): every landing on output times puts it back; a folded step compares its
dense ``z`` with the stored outputs it passes, is rejected (shorter step) if ``z`` strayed
beyond ``_DRIFT`` times the tolerance at one of them, and otherwise ends with ``z`` moved by
the difference at the output nearest its end (``SolverStats.backward_resets``). The move keeps
the step's last stage for the next one: its error, ``h b_1 J delta``, is far below the
tolerance. Should steps be rejected that way ``_DRIFT_REJECTIONS`` times in a row, the backward
solve starts over landing on every output time (``backward_restarts``).

On the solver benchmark's "hard" workload (float64, seeds 0-7) this takes 121-176 backward
evaluations (146-166 when steps were shortened to end on output times; 115-146 before ``z``
was held at all, with errors up to 22x torchdiffeq's) for gradient errors 0.19-0.51x
torchdiffeq's. Tolerances stay elementwise: an absolute tolerance in units of ``a``'s RMS saved
another 20% but let small components of ``a`` that a parameter's gradient depends on go
(Van der Pol's ``mu`` on clustered per-sample times erred 5-30x more).
"""

from __future__ import annotations

import math
import warnings
from bisect import bisect_left

import numpy as np
import torch

from .checkpoint import checkpoint_backward
from .engine import integrate
from .errors import SolverError
from .first_order import first_order_only
from .precision import without_autocast
from .problem import Problem, refuse_hidden_leaves

# a step is planned to use at most this share of the fold-error budget, so that a Lipschitz
# estimate that grows within the step rarely costs a rejected step (and an estimate that is too
# low rarely costs accuracy: at 1, gradients of a validation pass's Van der Pol case on
# clustered per-sample times erred 2-4x more, at 10% fewer evaluations on the benchmark)
_FORECAST_MARGIN = 0.25
# leading coefficient of the third-order fold error (constant Jacobian)
_KAPPA = 1.0 / 6.0
# evaluations kept with their graphs, so that a step whose forcing changed can reuse the last
# evaluation at its start point (one step's stages and the step's start)
_KEPT = 8
# backward evaluations whose graph is searched for trainable tensors outside the parameters
# (the forward checks its first evaluation only): one in this many, a few per backward step
_LEAF_CHECK_EVERY = 3
# a folded step whose reconstructed z strays more than this many times the tolerance from a
# stored forward output it passes is rejected (1000 left errors up to 67x the tolerance on a
# strongly contracting field)
_DRIFT = 10.0
# ... and after this many such rejections in a row the solve starts over, anchored at every
# output time
_DRIFT_REJECTIONS = 3
# numbers per chunk where loops run over many outputs' cotangents or stored values
_CHUNK = 1 << 16
# a backward solve whose z ends this many times the tolerance from the forward solution at an
# output time or at the start (where it lands without a check inside steps) has lost it: the
# gradient is recomputed by checkpointing (a decay at rate 20 over [0, 5] without outputs gave
# gradients 1e31 off, 9e21 with rk4; the benchmark's "hard" MLP over [0, 1] without outputs
# strays 150-240x, for errors twice backprop's). The yardstick is the looser of the forward's
# and the backward solve's tolerances (_yardstick): against the forward's alone, a backward
# solve asked for less accuracy was judged lost. Fixed-step methods are measured the same way
# (the exact gradient of their discrete solution is what checkpointing gives).
_LOST = 100.0


class _DriftError(Exception):
    """The reconstructed ``z`` left the forward solution: solve again, anchored."""


def _residual(f: float) -> float:
    """Third-order fold-error coefficient of a jump at fraction ``f`` from the step's far end."""
    return f * (1.0 - f) * (0.5 - f)


def _flat(tensors: tuple, like: tuple) -> list:
    return [
        (g if g is not None else torch.zeros_like(p)).reshape(-1)
        for g, p in zip(tensors, like, strict=True)
    ]


class _Jumps:
    """The adjoint jumps ``g_i`` at the output items: stopped at, or folded into a forcing.

    ``items`` are the output cotangents as given (views where possible, never copied whole),
    read in units of ``scale``: a backward solve over many outputs holds no copy of them.
    """

    def __init__(self, problem: Problem, items: torch.Tensor, fold: bool, scale: float):
        out = problem.outputs
        self.rtol, self.atol = problem.adjoint_rtol, problem.adjoint_atol
        self.numel = math.prod(problem.shape)
        self.lipschitz = 0.0  # latest estimate, from the z-part of the last trial step
        self.per_sample = out.per_sample
        self.state_shape = problem.shape
        self.items = items
        self.inv = 1.0 / scale
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
        self.current: torch.Tensor | None = None  # forcing of the step being taken: its level
        self.slope: torch.Tensor | None = None  # ... and its change over the step
        self.step_start, self.step_len = 0.0, 1.0
        self.inside_abs: torch.Tensor | None = None  # sum_i |c(f_i)| |g_i| inside it (_residual)
        self.probe: torch.Tensor | None = None  # sum_i f_i (1 - f_i) g_i, awaiting J^T probe
        self.probe_gain = 0.0  # |J^T probe| / |probe| at the start of the step
        self._key: tuple = (len(self.fold_keys), ())
        self._residual_key: tuple | None = None
        self._residual_value: torch.Tensor | None = None
        if len(self.fold_idx):
            self.folded = _picked(items, self.fold_idx)
            self.fold_rows = (
                torch.as_tensor(self.rows[self.fold_idx], device=items.device)
                if self.rows is not None  # per-sample times
                else None
            )
        # sum of the folded jumps from item _suffix_k on, kept as the solve passes them
        self._suffix_k = len(self.fold_idx)
        self._suffix = torch.zeros(problem.shape, dtype=items.dtype, device=items.device)

    @property
    def folds(self) -> bool:
        return len(self.fold_idx) > 0

    def add(self, a: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        """``a`` plus the jumps of items ``idx`` (into their rows for per-sample times)."""
        if len(idx) == 0:
            return a
        picked = _picked(self.items, idx)
        if not self.per_sample:
            return a + picked.sum(0) * self.inv
        assert self.rows is not None  # per-sample times
        rows = torch.as_tensor(self.rows[idx], device=a.device)
        return a.index_add(0, rows, picked, alpha=self.inv)

    def _suffix_from(self, k: int) -> torch.Tensor:
        """``sum of g_i`` over folded items ``k`` on; the solve passes items in decreasing
        order, so each is added once."""
        if k > self._suffix_k:  # never in a backward solve's order: sum afresh
            return self._weighted(k, torch.ones(len(self.fold_idx) - k, dtype=self.items.dtype,
                                                device=self.items.device))
        if k < self._suffix_k:
            ones = torch.ones(self._suffix_k - k, dtype=self.items.dtype, device=self.items.device)
            self._suffix = self._suffix + self._weighted(k, ones)
            self._suffix_k = k
        return self._suffix

    def _weighted(self, k_lo: int, weights: torch.Tensor, absolute: bool = False) -> torch.Tensor:
        """``sum_i weights[r, i] g_i`` (or ``|g_i|``) over folded items ``k_lo:k_lo + k`` for
        each row ``r`` of ``weights`` (shape ``(k,)`` or ``(rows, k)``; the result has the
        state's shape, after ``rows``), in chunks: a step over many outputs makes no temporary
        of their size."""
        lead, k = weights.shape[:-1], weights.shape[-1]
        weights = weights.reshape(-1, k)
        total = torch.zeros((len(weights), *self.state_shape), dtype=self.items.dtype,
                            device=self.items.device)
        flat = total.view(len(weights), -1)
        step = _chunk(self.folded)
        for lo in range(0, k, step):
            w = weights[:, lo : lo + step]
            g = self.folded[k_lo + lo : k_lo + lo + w.shape[1]]
            if absolute:
                g = g.abs()
            if not self.per_sample:
                flat.addmm_(w, g.reshape(w.shape[1], -1), alpha=self.inv)
            else:
                assert self.fold_rows is not None  # per-sample times
                rows = self.fold_rows[k_lo + lo : k_lo + lo + w.shape[1]]
                spread = (-1, *([1] * (g.dim() - 1)))
                for r in range(len(w)):
                    total[r].index_add_(0, rows, g * w[r].view(spread), alpha=self.inv)
        return total.view(*lead, *self.state_shape)

    def _inside(self, upper: float, lower: float) -> tuple[int, int, tuple]:
        """The folded jumps strictly below a step's start ``upper`` and at or above its end
        ``lower`` (forward-time keys): ``(k_lo, k_up, fractions from the far end)``."""
        keys = self.fold_keys
        k_up, k_lo = bisect_left(keys, upper), bisect_left(keys, lower)
        return k_lo, k_up, tuple((keys[k] - lower) / (upper - lower) for k in range(k_lo, k_up))

    def _residuals(self, k_lo: int, fracs: tuple) -> torch.Tensor:
        """``sum_i |c(f_i)| |g_i|`` (:func:`_residual`) for jumps ``k_lo, ...`` at fractions
        ``fracs``; the last one asked is kept (a step's forecast and its forcing ask alike)."""
        key = (k_lo, fracs)
        if self._residual_key != key or self._residual_value is None:  # (None: key too)
            w = [abs(_residual(f)) for f in fracs]
            self._residual_value = self._weighted(
                k_lo, torch.as_tensor(w, dtype=self.folded.dtype, device=self.folded.device),
                absolute=True)
            self._residual_key = key
        return self._residual_value

    def fold_error(self, length: float, spread: torch.Tensor, tol: torch.Tensor) -> float:
        """``kappa (h L)^3 RMS(spread / tol)``: the error folding leaves in one step.

        ``kappa = 1/6`` is the exact leading coefficient for a constant Jacobian; the terms from
        its change along the step carry the same factors ``f (1 - f) (1/2 - f)`` and are
        covered by ``L``, the larger of the Lipschitz estimates.
        """
        ratio = torch.linalg.vector_norm(spread.reshape(-1) / tol).item() / math.sqrt(self.numel)
        return _KAPPA * (length * self.lipschitz) ** 3 * ratio

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
        k_lo, k_up, fracs = self._inside(upper, upper - length)
        if not fracs:
            return h
        n = self.numel
        tol = s[n : 2 * n].abs().mul_(self.rtol).add_(self.atol)

        def forecast(end: float) -> float:
            lo, _, fracs = self._inside(upper, end)
            return self.fold_error(upper - end, self._residuals(lo, fracs), tol)

        if forecast(upper - length) <= _FORECAST_MARGIN:
            return h
        lo, hi = k_lo, k_up - 1  # candidate ends: keys[lo] (longest) .. keys[hi] (shortest)
        while lo < hi:  # find the longest candidate whose forecast is within tolerance
            mid = (lo + hi) // 2
            if forecast(keys[mid]) <= _FORECAST_MARGIN:
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
        d = self.direction
        k_lo, k_up, fracs = self._inside(d * t, d * (t + h))
        key = (k_up, fracs)
        self.step_start, self.step_len = t, h
        if key == self._key:
            return False
        self._key = key
        self.inside_abs = self.probe = self.slope = None
        if k_lo == len(self.fold_keys):
            changed, self.current = self.current is not None, None
            return changed
        g = self.folded
        # jump i inside the step, at fraction f of the step from its far end, rides on the
        # forcing g_i (f (3f - 2) + 6 f (1 - f) s) for s from 0 (start) to 1 (end of the step):
        # its integral, and its first moment, match the jump's, so folding is exact to second
        # order even where J changes along the step; what is left is third order (_residual)
        later = self._suffix_from(k_up)
        if not fracs:
            self.current = later
            return True
        rows = [[f * (3 * f - 2), 6 * f * (1 - f), f * (1 - f)] for f in fracs]
        level, self.slope, self.probe = self._weighted(
            k_lo, torch.as_tensor(rows, dtype=g.dtype, device=g.device).T
        )
        self.current = later + level
        self.inside_abs = self._residuals(k_lo, fracs)
        return True

    def forcing(self, t: float) -> torch.Tensor:
        """The folded jumps' forcing at time ``t`` of the current step."""
        current = self.current
        assert current is not None  # callers ask while the step has a forcing
        if self.slope is None:
            return current
        return torch.add(current, self.slope, alpha=(t - self.step_start) / self.step_len)

    def total_folded(self, a: torch.Tensor) -> torch.Tensor:
        return self.add(a, self.fold_idx)


def adjoint_backward(problem: Problem, grad_ys: torch.Tensor, ys: torch.Tensor) -> tuple:
    """Gradients ``(dL/dy0, *dL/dparams)`` from the output cotangents, by one backward solve
    (two when ``z`` strays from the forward outputs ``ys`` in a folded solve)."""
    fold = problem.adjoint_fold_jumps and problem.grid is None
    tape = problem.tape
    caller_state = tape.read() if tape is not None and problem.drew_random else None
    try:
        grads, strayed = None, 0.0
        if fold:
            try:
                grads, strayed = _backward(problem, grad_ys, ys, fold=True)
            except _DriftError:
                problem.stats.backward_restarts += 1
        if grads is None:
            grads, strayed = _backward(problem, grad_ys, ys, fold=False)
        if strayed > _LOST:
            return _checkpointed(problem, grad_ys, ys, strayed)
        return grads
    except SolverError as err:
        raise type(err)(
            f"in the adjoint's backward solve (z reconstructed from the last output time "
            f"back to the first, with the adjoint): {err} If the forward solve is fine, "
            "gradient='checkpoint' (exact, memory O(steps)) or 'backprop' avoid this solve."
        ) from err
    finally:
        tape = problem.tape
        if tape is not None and caller_state is not None:  # the caller's random stream as
            tape.write(caller_state)  # the forward left it


def _checkpointed(problem: Problem, grad_ys: torch.Tensor, ys: torch.Tensor,
                  strayed: float) -> tuple:
    """The gradient by checkpointing, for a backward solve whose ``z`` was lost: the forward
    solve again, recording its steps (its evaluations count as backward ones), then replayed."""
    rtol, atol = _yardstick(problem)
    yardstick = "the tolerance" if problem.grid is None else (
        f"rtol={rtol:g}/atol={atol:g} (the yardstick for fixed steps too)")
    warnings.warn(
        f"gradient='adjoint': z, reconstructed backwards, strayed {strayed:.3g} times "
        f"{yardstick} from the forward solution (a field that contracts forward expands "
        "backwards, and between output times nothing puts z back): the adjoint's gradient "
        "would be off by as much or far more, so this one was computed by "
        "checkpointing instead (exact, memory O(steps x state)). gradient='checkpoint' skips "
        "the failed backward solve; more output times inside the span keep the adjoint's z "
        "on track.", stacklevel=3)
    stats = problem.stats
    kept = stats.nfe_forward, stats.steps_accepted, stats.steps_rejected
    y0, _ = problem.outputs.split_values(ys.detach())
    steps: list = []
    problem.solve(y0, record=steps)
    stats.nfe_backward += stats.nfe_forward - kept[0]
    stats.nfe_forward, stats.steps_accepted, stats.steps_rejected = kept
    stats.backward_checkpointed += 1
    return checkpoint_backward(problem, steps, grad_ys)


def _yardstick(problem: Problem) -> tuple[float, float]:
    """``(rtol, atol)`` that z's stray from the forward outputs is measured in: the looser of
    the forward's and the backward solve's, since either solve's error shows in it."""
    return (max(problem.rtol, problem.adjoint_rtol), max(problem.atol, problem.adjoint_atol))


def _stray(z: torch.Tensor, want: torch.Tensor, rtol: float, atol: float) -> torch.Tensor:
    """The RMS of ``(z - want) / (rtol |want| + atol)`` per row (a tensor: no host
    synchronisation here)."""
    with torch.no_grad():
        tol = want.abs().mul_(rtol).add_(atol)
        return (z - want).div_(tol).square_().mean(-1).sqrt_()


def _backward(problem: Problem, grad_ys: torch.Tensor, ys: torch.Tensor, fold: bool
              ) -> tuple[tuple, float]:
    """The gradients by one backward solve, and how far ``z`` strayed where it was checked
    last (at output times it landed on, and at the start) in units of the tolerance."""
    out, params, stats = problem.outputs, problem.params, problem.stats
    start_grad, items = out.split_grads(grad_ys)
    y_start, anchors = out.split_values(ys.detach())  # the forward solution at every output
    shape, n = problem.shape, math.prod(problem.shape)
    scale = _cotangent_scale(items)  # the backward solve's unit
    if not math.isfinite(scale):
        raise ValueError("the gradient of the loss with respect to odeint's output holds NaN or "
                         "inf: check the loss (a log of 0, a division by 0) rather than func.")
    if scale == 0.0:  # nothing flows back through the solve
        return (start_grad, *[torch.zeros_like(p) for p in params]), 0.0
    adaptive = problem.grid is None
    rtol, atol = problem.adjoint_rtol, problem.adjoint_atol
    yardstick = _yardstick(problem)
    jumps = _Jumps(problem, items, fold, scale)
    func, time = problem.func, problem.time
    n_params = sum(p.numel() for p in params)

    kept: list = []  # recent evaluations with their graphs: (t, state, z, dz, forcing, out)

    def aug(t: float, s: torch.Tensor) -> torch.Tensor:
        forcing = jumps.forcing(t) if jumps.current is not None else None
        for i, (t_k, s_k, z, dz, forcing_k, out_k) in enumerate(kept):
            if t_k == t and s_k is s:  # same point, new forcing (a step over folded jumps
                # begins where the last one ended): correct the kept evaluation by one
                # vector-Jacobian product instead of evaluating func again
                delta = _difference(forcing, forcing_k, shape, s)
                out = out_k + torch.cat([torch.zeros_like(out_k[:n]), *_vjp(dz, z, params, delta)])
                kept[i] = (t_k, s_k, z, dz, forcing, out)
                _probe(dz, z)
                return out
        stats.nfe_backward += 1
        a = s[n : 2 * n].view(shape)
        if forcing is not None:
            a = a + forcing
        with torch.enable_grad():
            z = s[:n].view(shape).detach().requires_grad_(True)
            tt = time(t)
            dz = func(tt, z)
        if stats.nfe_backward % _LEAF_CHECK_EVERY == 1:  # a tensor func reaches only later
            refuse_hidden_leaves(dz, (z, tt), params, late="in the backward pass")
        _probe(dz, z)
        out = torch.cat([dz.detach().reshape(-1), *_vjp(dz, z, params, a)])
        kept.append((t, s, z, dz, forcing, out))
        if len(kept) > _KEPT:
            del kept[0]
        return out

    def _probe(dz: torch.Tensor, z: torch.Tensor) -> None:
        if jumps.probe is not None:  # first stage of a step over folded jumps
            probe, jumps.probe = jumps.probe, None
            gain = _jacobian_gain(dz, z, probe)
            if gain is not None:  # a zero probe (jumps on the step's ends) says nothing
                jumps.probe_gain = gain

    strayed: list = []  # how far z strayed where landings checked it

    def on_stop(i: int, t: float, s: torch.Tensor) -> torch.Tensor:
        idx = jumps.stop_items[i]
        a = jumps.add(s[n : 2 * n].view(shape), idx)
        z = _anchored(s[:n].view(shape), anchors, idx, out.rows)  # back on the forward path
        rows = (len(z), -1) if out.per_sample else (1, -1)
        strayed.append(_stray(s[:n].reshape(rows), z.reshape(rows), *yardstick).max())
        return torch.cat([z.reshape(-1), a.reshape(-1), s[2 * n :]])

    keys = [out.direction * float(v) for v in out.times]  # items' times, increasing
    # the last trial step's comparison with the forward outputs it passes, and how many trial
    # steps in a row were rejected for drift
    trial: dict = {"drift": None, "rejections": 0}

    def drift(t: float, h: float, s0: torch.Tensor, ks: list) -> tuple | None:
        """The dense ``z`` of a trial step at the output items it passes against the stored
        forward outputs: ``(picked items, their z, their stored outputs, ratios to the
        tolerance of all)``; picked is the item nearest the step's end (of each row, for
        per-sample times). Ratios are computed in chunks of items."""
        d = out.direction
        lo, hi = bisect_left(keys, d * (t + h)), bisect_left(keys, d * t)
        if hi <= lo:
            return None
        theta = (np.asarray(out.times[lo:hi], dtype=np.float64) - t) / h
        weights = torch.as_tensor(problem.adjoint_rk.tableau.dense_weights(theta) * h,
                                  dtype=s0.dtype, device=s0.device)
        with torch.no_grad():
            stages = torch.stack([k[:n] for k in ks])  # (stages, n)
            if out.per_sample:
                per_row = stages.view(len(ks), shape[0], -1)
                start_rows = s0[:n].view(shape[0], -1)

            def dense(pos: np.ndarray) -> tuple:  # positions among lo:hi
                index = torch.as_tensor(pos, device=s0.device)
                want = anchors[lo:hi].index_select(0, index).reshape(len(pos), -1)
                if out.per_sample:  # each item is one row of the state: only that row
                    assert out.rows is not None
                    rows = torch.as_tensor(out.rows[lo + pos], device=s0.device)
                    z = start_rows.index_select(0, rows) + torch.einsum(
                        "ks,skr->kr", weights.index_select(0, index), per_row.index_select(1, rows))
                else:
                    z = torch.addmm(s0[:n].unsqueeze(0), weights.index_select(0, index), stages)
                return z, want

            if out.per_sample:  # the first of each row's items is its nearest the end
                assert out.rows is not None
                picked = np.sort(np.unique(out.rows[lo:hi], return_index=True)[1])
                copies = len(ks) + 4  # the gathered stages, z, want, tol, difference
            else:
                picked = np.zeros(1, dtype=np.int64)
                copies = 4  # z, want, tol, difference
            ratios, near_z, near_want = [], [], []
            step = _chunk(anchors, copies=copies)
            for c in range(0, hi - lo, step):
                z, want = dense(np.arange(c, min(c + step, hi - lo)))
                inside = picked[(picked >= c) & (picked < c + step)] - c
                if len(inside):  # the picked items of this chunk (all in the first, usually)
                    index = torch.as_tensor(inside, device=s0.device)
                    near_z.append(z.index_select(0, index))
                    near_want.append(want.index_select(0, index))
                ratios.append(_stray(z, want, *yardstick))
            z, want = torch.cat(near_z), torch.cat(near_want)
        return lo + picked, z, want, torch.cat(ratios)

    def step_error(t: float, h: float, s0: torch.Tensor, s1: torch.Tensor, ks: list) -> float:
        """What folding leaves (:func:`fold_error`), or a rejection where ``z`` strayed beyond
        ``_DRIFT`` times the tolerance from an output the step passes."""
        error = fold_error(h, s0, s1, ks)
        trial["drift"] = measured = drift(t, h, s0, ks)
        if measured is None:
            return error
        worst = measured[3].max().item()
        if worst <= _DRIFT:
            trial["rejections"] = 0
            return error
        trial["rejections"] += 1
        if trial["rejections"] > _DRIFT_REJECTIONS:
            raise _DriftError
        return max(error, 1.01 * worst / _DRIFT)  # > 1: rejected, shortened by its order

    def watch(t: float, h: float, t_next: float, s0: torch.Tensor, s1: torch.Tensor,
              ks: list) -> torch.Tensor | None:
        """After a folded step: move ``z`` by its difference from the forward output nearest
        the step's end (per row for per-sample times), keeping the step's last stage."""
        measured, trial["drift"] = trial["drift"], None
        if measured is None:
            return None
        picked, z, want, _ = measured
        stats.backward_resets += 1
        with torch.no_grad():
            delta = want - z
            if out.per_sample:
                assert out.rows is not None
                rows = torch.as_tensor(out.rows[picked], device=s1.device)
                z1 = s1[:n].view(shape[0], -1).index_add(0, rows, delta.to(s1))
            else:
                z1 = s1[:n] + delta[0].to(s1)
            moved = torch.cat([z1.reshape(-1), s1[n:]])
        for i, entry in enumerate(kept):  # the kept last stage now belongs to the moved state
            if entry[1] is s1:
                kept[i] = (entry[0], moved, *entry[2:])
        return moved

    def fold_error(h: float, s0: torch.Tensor, s1: torch.Tensor, ks: list) -> float:
        """The third-order bound of what folding leaves, against the tolerance of ``a``.

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
    assert problem.final_state is not None  # set by the forward solve
    state = torch.cat(
        [
            problem.final_state.detach().reshape(-1),
            a_end.reshape(-1),
            torch.zeros(n_params, dtype=grad_ys.dtype, device=grad_ys.device),
        ]
    )
    grid = None
    if problem.grid is not None:  # fixed steps: land on every forward step boundary and output
        d = out.direction
        grid = sorted(set(problem.grid) | set(out.times), key=lambda s: -d * s)
    state, _, counters = integrate(
        problem.adjoint_rk, aug, state, out.t1, out.t0,
        rtol=rtol, atol=atol, max_steps=problem.max_steps, grid=grid,
        first_step=abs(problem.last_step) if adaptive and problem.last_step else None,
        stops=jumps.stop_times, on_stop=on_stop,
        norm_numel=2 * n if problem.adjoint_seminorm else None,
        prepare=jumps.prepare if jumps.folds else None,
        extra_error=step_error if jumps.folds else None,
        extra_order=3, on_step=watch if jumps.folds else None,
    )
    stats.backward_steps_accepted += counters.accepted
    stats.backward_steps_rejected += counters.rejected
    rows = len(y_start) if out.per_sample else 1
    strayed.append(_stray(state[:n].view(rows, -1), y_start.reshape(rows, -1), *yardstick).max())
    a0 = jumps.total_folded(state[n : 2 * n].view(shape)) * scale + start_grad
    grads, offset = [], 2 * n
    for p in params:
        grads.append(state[offset : offset + p.numel()].view_as(p) * scale)
        offset += p.numel()
    return (a0, *grads), torch.stack(strayed).max().item()


def _anchored(z: torch.Tensor, anchors: torch.Tensor, idx: np.ndarray, rows: np.ndarray | None
              ) -> torch.Tensor:
    """``z`` with the forward solution of items ``idx`` put back (their rows for per-sample
    times; the whole state for shared ones)."""
    if len(idx) == 0:
        return z
    index = torch.as_tensor(idx, device=z.device)
    if rows is None:
        return anchors[int(idx[-1])].to(z)
    return z.index_copy(0, torch.as_tensor(rows[idx], device=z.device),
                        anchors.index_select(0, index).to(z))


def _picked(items: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
    """``items[idx]``: a view where ``idx`` is a run of consecutive items (the usual case),
    else a copy of those only."""
    first, last = int(idx[0]), int(idx[-1])
    if last - first + 1 == len(idx):
        return items[first : last + 1]
    return items.index_select(0, torch.as_tensor(idx, device=items.device))


def _chunk(items: torch.Tensor, copies: int = 1) -> int:
    """How many items make ``_CHUNK`` numbers (``copies`` of them): the chunk of loops over
    many outputs, so that no temporary grows with the number of outputs."""
    return max(1, _CHUNK // (copies * max(items[0].numel(), 1))) if len(items) else 1


def _vjp(dz: torch.Tensor, z: torch.Tensor, params: tuple, a: torch.Tensor) -> list:
    """``-a^T df/dz`` and ``-a^T df/dparams`` as flat pieces; the graph is kept for reuse."""
    vjp = torch.autograd.grad(dz, (z, *params), -a, retain_graph=True, allow_unused=True)
    return _flat(vjp, (z, *params))


def _difference(new, old, shape: tuple, like: torch.Tensor) -> torch.Tensor:
    """``new - old`` for forcings that may be None (zero)."""
    if new is None and old is None:
        return torch.zeros(shape, dtype=like.dtype, device=like.device)
    if old is None:
        return new
    if new is None:
        return -old
    return new - old


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
    """Largest RMS of one output's cotangent: the unit the backward solve works in. Computed
    on cotangents divided by their largest magnitude first, so that squaring neither
    underflows (a loss times 1e-23 in float32 gave zero gradients) nor overflows (NaN); in
    chunks, so that many outputs cost no copy of them all."""
    if len(items) == 0:
        return 0.0
    rows = items.reshape(len(items), -1)
    chunks = rows.split(_chunk(rows))
    with torch.no_grad():
        peak = max(chunk.abs().max().item() for chunk in chunks)
        if peak == 0.0 or not math.isfinite(peak):
            return peak if peak == 0.0 else float("nan")
        unit = max((chunk / peak).square().mean(1).max().item() for chunk in chunks)
        return peak * math.sqrt(unit)


class AdjointSolve(torch.autograd.Function):
    """Forward without a graph; backward by :func:`adjoint_backward`."""

    @staticmethod
    def forward(ctx, problem: Problem, y0: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        ctx.problem = problem
        ys = problem.solve(y0.detach())
        ctx.save_for_backward(ys, y0, *params)  # y0, params: for first_order_only
        ctx.first_input = 1
        if problem.drew_random:
            warnings.warn(
                "func draws random numbers (dropout? noise?): the adjoint's backward solve "
                "evaluates it at other times and draws other numbers, so the gradient is not "
                "that of the forward pass. Use gradient='checkpoint' (replays the same draws) or "
                "'backprop', or put func in eval mode.",
                stacklevel=4,
            )
        return ys

    @staticmethod
    @first_order_only("odeint(gradient='adjoint')", "Use gradient='backprop' for them.")
    @without_autocast
    def backward(ctx, grad_ys: torch.Tensor) -> tuple:
        ys = ctx.saved_tensors[0]
        return (None, *adjoint_backward(ctx.problem, grad_ys, ys))
