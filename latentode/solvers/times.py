"""Output times: validation, and answering them from accepted steps by dense output.

Two layouts share one mechanism. Every requested output is an *item* with a time (and, for
per-sample times ``t`` of shape ``(batch, T)``, the batch row it belongs to). Items are sorted in
the direction of integration; after each accepted step the items inside it are answered at once
by the tableau's interpolant, so one batched integration serves all rows.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .errors import OutputTimesError
from .tableaus import ButcherTableau


def _describe_order(t: np.ndarray, row: int | None) -> OutputTimesError | None:
    """The error for the first place where a time series is not monotonic, else None."""
    t_ = OutputTimesError.MARK
    where = t_ if row is None else f"{t_}[{row}]"
    diffs = np.diff(t)
    if diffs.size == 0:
        return None
    if row is None and np.any(diffs == 0):
        i = int(np.argmax(diffs == 0)) + 1
        return OutputTimesError(
            f"{where} must be strictly monotonic, but {where}[{i}] = {t[i]:.6g} repeats "
            f"{where}[{i - 1}]. Remove duplicate output times (keeping {where}[0], the start, "
            "first) and index the result.", kind="repeat"
        )
    nonzero = diffs[diffs != 0]
    if nonzero.size == 0:
        return None
    sign = np.sign(nonzero[0])
    bad = np.nonzero(np.sign(diffs) == -sign)[0]
    if bad.size:
        i = int(bad[0]) + 1
        direction = "increasing" if sign > 0 else "decreasing"
        return OutputTimesError(
            f"{where} must be monotonic ({direction}, as it starts), but {where}[{i}] = "
            f"{t[i]:.6g} comes after {where}[{i - 1}] = {t[i - 1]:.6g}. Sort the output times."
        )
    return None


class OutputTimes:
    """The validated output times of one call and the bookkeeping to answer them."""

    def __init__(self, t: torch.Tensor, y0: torch.Tensor):
        if not isinstance(t, torch.Tensor):
            t = torch.as_tensor(t, dtype=torch.float64)
        if t.dim() not in (1, 2):
            raise ValueError(
                f"t must have shape (T,) or (batch, T) for per-sample times, got {tuple(t.shape)}."
            )
        if t.numel() == 0:
            raise ValueError("t is empty: pass at least the start time.")
        if t.requires_grad and torch.is_grad_enabled():
            raise ValueError(
                "t requires grad, but odeint does not differentiate with respect to the output "
                "times (the answer's gradient reaches y0 and the parameters of func only). "
                "Pass t.detach(); to learn a time, rescale it inside func instead (e.g. "
                "func(s, y) = T * f(s * T, y) on s in [0, 1] with a trainable T)."
            )
        host = t.detach().to("cpu", torch.float64).numpy()
        if not np.all(np.isfinite(host)):
            raise OutputTimesError(f"{OutputTimesError.MARK} contains NaN or inf; output times "
                                   "must be finite numbers.", kind="finite")
        self.per_sample = t.dim() == 2
        self.shape = tuple(y0.shape)
        self.rows: np.ndarray | None  # each item's row of the state (per-sample times only)
        if self.per_sample:
            self._init_per_sample(host, y0)
        else:
            error = _describe_order(host, None)
            if error is not None:
                raise error
            self.t0, self.t1 = float(host[0]), float(host[-1])
            self.times = host[1:].tolist()  # items: every time after the start
            self.rows = None
            self.n_start = 1
        self.direction = 1.0 if self.t1 >= self.t0 else -1.0

    def _init_per_sample(self, host: np.ndarray, y0: torch.Tensor) -> None:
        batch, length = host.shape
        if y0.dim() < 1 or y0.shape[0] != batch:
            raise ValueError(
                f"per-sample times t of shape {tuple(host.shape)} need y0 of shape "
                f"({batch}, ...), one row per sample; got y0 of shape {tuple(y0.shape)}."
            )
        starts = host[:, 0]
        if not np.all(starts == starts[0]):
            r = int(np.argmax(starts != starts[0]))
            t_ = OutputTimesError.MARK
            raise OutputTimesError(
                f"every row of per-sample {t_} must start at the same time: {t_}[0, 0] = "
                f"{starts[0]:.6g} but {t_}[{r}, 0] = {starts[r]:.6g}. Prepend the common start "
                "time.", kind="start"
            )
        spans = host[:, -1] - host[:, 0]
        sign = np.sign(spans[np.argmax(np.abs(spans))]) or 1.0
        for r in range(batch):
            diffs = np.diff(host[r])
            if np.any(np.sign(diffs) == -sign):
                own = _describe_order(host[r], r)
                if own is None:  # monotonic, but the other way round from the longest row
                    ways = ["increasing", "decreasing"][:: 1 if sign > 0 else -1]
                    t_ = OutputTimesError.MARK
                    raise OutputTimesError(
                        f"every row of per-sample {t_} must run the same way: the longest row "
                        f"is {ways[0]} but {t_}[{r}] is {ways[1]} ({t_}[{r}, -1] = "
                        f"{host[r, -1]:.6g} vs start {host[r, 0]:.6g}). Integrate the two "
                        "directions in separate calls.", kind="direction")
                raise own
        self.t0 = float(starts[0])
        flat = host.reshape(-1)
        self.t1 = float(flat.max() if sign > 0 else flat.min())
        order = np.argsort(sign * flat, kind="stable")
        self.times_all = flat[order]
        self.rows_all = order // length
        self.inverse = torch.as_tensor(np.argsort(order, kind="stable"))
        self.n_start = int(np.sum(self.times_all == self.t0))
        self.times = self.times_all[self.n_start:].tolist()
        self.rows = self.rows_all[self.n_start:]
        self.length = length

    def grid(self) -> list[float]:
        """Every distinct output time, start first: the fixed-step grid when no step is given."""
        out = [self.t0]
        for s in self.times:
            if s != out[-1]:
                out.append(s)
        return out

    def start_chunk(self, y0: torch.Tensor) -> torch.Tensor:
        if self.per_sample:
            return y0[torch.as_tensor(self.rows_all[: self.n_start])]
        return y0.unsqueeze(0)

    def count_until(self, start: int, t_end: float) -> int:
        """Index one past the last item at or before ``t_end`` (in integration order)."""
        times, d = self.times, self.direction
        stop = start
        while stop < len(times) and d * (times[stop] - t_end) <= 0.0:
            stop += 1
        return stop

    def interpolate(
        self, tableau: ButcherTableau, t: float, h: float, y: torch.Tensor, y1: torch.Tensor,
        ks: list, start: int, stop: int,
    ) -> torch.Tensor:
        """Answer items ``start:stop`` (all inside the step ``[t, t + h]``) by dense output."""
        times = self.times[start:stop]
        theta = (np.asarray(times) - t) / h
        stages = torch.stack(ks)
        if not self.per_sample:
            weights = torch.as_tensor(tableau.dense_weights(theta) * h, dtype=y.dtype).to(
                y.device)
            if theta[-1] == 1.0:  # the step's end: answer it with y1 exactly
                if len(times) == 1:
                    return y1.unsqueeze(0)
                inner = torch.addmm(y.reshape(1, -1), weights[:-1], stages.reshape(len(ks), -1))
                return torch.cat([inner.view(-1, *self.shape), y1.unsqueeze(0)])
            out = torch.addmm(y.reshape(1, -1), weights, stages.reshape(len(ks), -1))
            return out.view(-1, *self.shape)
        # per-sample times: the interpolant's polynomial coefficients for every row first
        # (h D^T k: a few powers instead of all stages), then gathered for the items' rows
        # and summed by powers of theta; gathering the stages themselves moved 2-3x the data
        # (items outnumber rows when each row asks for several times in one step)
        assert self.rows is not None  # per-sample times
        host_rows = self.rows[start:stop]
        batch, n = y.shape[0], len(host_rows)
        used = tableau.dense_powers
        coef = torch.as_tensor(tableau.dense[:, used].T * h, dtype=y.dtype).to(y.device)
        poly = (coef @ stages.reshape(len(ks), -1)).view(len(used), batch, -1)
        table = torch.cat([y.reshape(1, batch, -1), poly])  # (1 + powers, batch, d)
        powers = np.concatenate([np.ones((n, 1)), np.power.outer(theta, used)], 1)
        counts = np.bincount(host_rows, minlength=batch)
        most = int(counts.max())
        if batch * most <= 2 * n:  # rows ask for several times each: one small matmul per row
            order = np.argsort(host_rows, kind="stable")
            slot = np.empty(n, dtype=np.int64)
            slot[order] = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
            grid = np.zeros((batch, most, powers.shape[1]))
            grid[host_rows, slot] = powers
            weights = torch.as_tensor(grid, dtype=y.dtype).to(y.device)
            out = torch.bmm(weights, table.transpose(0, 1)).reshape(batch * most, -1)
            at = torch.as_tensor(host_rows * most + slot, device=y.device)
            return out.index_select(0, at).view(n, *self.shape[1:])
        rows = torch.as_tensor(host_rows, device=y.device)
        picked = table.index_select(1, rows)
        weights = torch.as_tensor(powers.T, dtype=y.dtype).to(y.device)
        out = picked[0]
        for p in range(len(used)):
            out = torch.addcmul(out, weights[p + 1].unsqueeze(-1), picked[p + 1])
        return out.view(n, *self.shape[1:])

    def stage_cotangent(
        self, tableau: ButcherTableau, t: float, h: float, start: int, stop: int,
        cotangents: torch.Tensor, stage: int = -1,
    ) -> torch.Tensor:
        """Cotangent that the items ``start:stop`` of a step send to one of its stages.

        Dense output is linear in the stages, so this needs no graph: ``h sum_j b(theta_j) g_j``.
        """
        theta = (np.asarray(self.times[start:stop]) - t) / h
        w = tableau.dense_weights(theta)[:, stage] * h
        if not self.per_sample and theta[-1] == 1.0:
            w[-1] = 0.0  # answered by y1 itself, not by the interpolant
        weights = torch.as_tensor(w, dtype=cotangents.dtype).to(cotangents.device)
        g = cotangents[start:stop]
        if not self.per_sample:
            return torch.tensordot(weights, g, 1)
        assert self.rows is not None  # per-sample times
        rows = torch.as_tensor(self.rows[start:stop], device=g.device)
        out = torch.zeros(self.shape, dtype=g.dtype, device=g.device)
        return out.index_add(0, rows, g * weights.view(-1, *([1] * (g.dim() - 1))))

    def split_grads(self, grad_ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cotangents of the output as ``(start, items)``, in the items' order.

        ``start`` has the shape of y0 (per-sample: the start rows added into place); ``items`` has
        one row per item: ``(n, *y0.shape)``, or ``(n, *rest)`` for per-sample times.
        """
        if not self.per_sample:
            return grad_ys[0], grad_ys[1:]
        flat = grad_ys.reshape(-1, *self.shape[1:])
        order = torch.argsort(self.inverse).to(flat.device)
        ordered = flat.index_select(0, order)
        rows = torch.as_tensor(self.rows_all[: self.n_start], device=flat.device)
        start = torch.zeros(self.shape, dtype=flat.dtype, device=flat.device)
        start.index_add_(0, rows, ordered[: self.n_start])
        return start, ordered[self.n_start :]

    def split_values(self, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The output ``ys`` itself as ``(start state, items)``: as :meth:`split_grads`, but a
        row whose start time repeats (padding) gives its start state once, not summed."""
        if not self.per_sample:
            return ys[0], ys[1:]
        flat = ys.reshape(-1, *self.shape[1:])
        ordered = flat.index_select(0, torch.argsort(self.inverse).to(flat.device))
        rows = torch.as_tensor(self.rows_all[: self.n_start], device=flat.device)
        start = torch.zeros(self.shape, dtype=flat.dtype, device=flat.device)
        start.index_copy_(0, rows, ordered[: self.n_start])  # repeats hold the same state
        return start, ordered[self.n_start :]

    def assemble(self, chunks: list) -> torch.Tensor:
        """Concatenate answered chunks into ``(T, *y0.shape)`` or ``(batch, T, *rest)``."""
        out = torch.cat(chunks)
        if not self.per_sample:
            return out
        out = out.index_select(0, self.inverse.to(out.device))
        return out.view(self.shape[0], self.length, *self.shape[1:])

    def first_nonfinite_time(self, ys: torch.Tensor) -> float | None:
        """The earliest output time whose value is NaN/inf (for error messages)."""
        bad = ~torch.isfinite(ys.detach())
        if not bool(bad.any()):
            return None
        if not self.per_sample:
            idx = int(bad.reshape(len(ys), -1).any(1).nonzero()[0])
            return self.t0 if idx == 0 else self.times[idx - 1]
        flat_bad = bad.reshape(ys.shape[0] * ys.shape[1], -1).any(1).cpu().numpy()
        sorted_bad = flat_bad[np.argsort(self.inverse.numpy(), kind="stable")]
        return float(self.times_all[int(np.argmax(sorted_bad))])


def fixed_grid(outputs: OutputTimes, step_size: float | None, max_steps: int) -> list[float]:
    """Step boundaries for a fixed-step method: the output times, or a uniform grid."""
    from .errors import MaxStepsExceededError

    if step_size is None:
        grid = outputs.grid()
        if len(grid) - 1 > max_steps:
            raise MaxStepsExceededError(
                f"one step per output interval makes {len(grid) - 1} steps, more than "
                f"max_steps={max_steps}. Raise max_steps or give a step_size (the outputs are "
                "then answered by interpolation between its steps)."
            )
        return grid
    if not step_size > 0:
        raise ValueError(f"step_size must be a positive number, got {step_size}.")
    span = abs(outputs.t1 - outputs.t0)
    n = max(1, math.ceil(span / step_size - 1e-9))
    if n > max_steps:
        raise MaxStepsExceededError(
            f"step_size={step_size:g} needs {n} steps to cover [{outputs.t0:g}, {outputs.t1:g}], "
            f"more than max_steps={max_steps}. Raise max_steps or use a larger step_size."
        )
    d = outputs.direction
    return [outputs.t0 + d * step_size * k for k in range(n)] + [outputs.t1]
