"""Checkpointed gradients: keep accepted step boundaries, replay the steps under autograd.

The forward pass runs without a graph and keeps only ``(t_n, h_n, y_n)`` of every accepted step:
memory ``O(steps x state)``. The backward pass walks the steps in reverse in segments of a few
steps (``_SEGMENT``), recomputes each segment (same step sizes, same arithmetic) with autograd
on, and pulls the cotangent of its end state and of the outputs answered inside it back to its
start. The result is the exact gradient of the discrete solution, as ``backprop`` gives, while
holding the graph of one segment at a time. One backward call per segment rather than per step:
each call has a fixed cost that, at the paper's sizes, is a large share of a step's.

For first-same-as-last tableaus (dopri5, tsit5, bosh3) the last stage of a segment is the first
stage of the next one; the replay evaluates it once, in the later segment, and hands it the
cotangent that the earlier segment's last dense outputs send to it (dense output is linear in
the stages, so that cotangent needs no graph). One evaluation per segment fewer than a plain
replay.

A ``func`` that draws random numbers (dropout) draws the same ones in the replay: the forward
solve kept the generator state before each step's evaluations (:mod:`.rng`), the replay sets it
back, and the caller's generator is left as it was before the backward pass.
"""

from __future__ import annotations

import torch

from .first_order import first_order_only
from .precision import without_autocast
from .problem import Problem, refuse_hidden_leaves
from .rng import RngTape, State

# steps replayed under one graph: fewer backward calls (each has a fixed cost) for a graph of a
# few steps at a time; memory stays O(steps x state)
_SEGMENT = 4


def checkpoint_backward(problem: Problem, steps: list, grad_ys: torch.Tensor) -> tuple:
    """Gradients ``(dL/dy0, *dL/dparams)`` by replaying ``steps`` in reverse, in segments."""
    out, params, rk, tab = problem.outputs, problem.params, problem.rk, problem.tableau
    start_grad, items = out.split_grads(grad_ys)
    f = problem.vector_field(backward=True)
    assert problem.final_state is not None  # set by the forward solve
    cot = torch.zeros_like(problem.final_state)
    totals = [torch.zeros_like(p) for p in params]
    stats = problem.stats
    shared = rk.fsal
    last = len(steps) - 1
    tape = problem.tape if problem.tape is not None and problem.tape.active else None
    caller_state = tape.read() if tape is not None else None
    for i in range(last, -1, -_SEGMENT):
        first = max(i - _SEGMENT + 1, 0)
        with torch.enable_grad():
            y0 = steps[first].y.detach().requires_grad_(True)
            _rewind(tape, steps[first].rng_k1)
            k1 = f(steps[first].t, y0)
            outputs, cotangents = [], []
            if shared and first > 0 and steps[first - 1].stop > steps[first - 1].start:
                prev = steps[first - 1]
                outputs.append(k1)
                cotangents.append(
                    out.stage_cotangent(tab, prev.t, prev.h, prev.start, prev.stop, items)
                )
            y = y0
            for m in range(first, i + 1):
                step = steps[m]
                skip_last = shared and m == i and i < last
                _rewind(tape, step.rng_stages)
                y1, ks = rk.step(f, step.t, step.h, y, k1, skip_last=skip_last)
                if step.stop > step.start:
                    # the skipped last stage enters the outputs linearly: any value gives the
                    # right gradient for the other stages; its own cotangent goes to step m + 1
                    stages = [*ks, torch.zeros_like(k1)] if skip_last else ks
                    outputs.append(
                        out.interpolate(tab, step.t, step.h, y, y1, stages, step.start, step.stop)
                    )
                    cotangents.append(items[step.start : step.stop])
                if m < i and shared:
                    k1 = ks[-1]
                elif m < i:
                    _rewind(tape, steps[m + 1].rng_k1)
                    k1 = f(steps[m + 1].t, y1)
                y = y1
            outputs.append(y)
            cotangents.append(cot)
            refuse_hidden_leaves(outputs, (y0,), params, late="in the backward pass")
            # retain_graph: func may read a tensor whose graph (an encoder's, say) reaches the
            # parameters; every segment differentiates through it again
            grads = torch.autograd.grad(outputs, (y0, *params), cotangents, allow_unused=True,
                                        retain_graph=True)
        stats.backward_steps_accepted += i - first + 1
        cot = grads[0] if grads[0] is not None else torch.zeros_like(cot)
        for total, g in zip(totals, grads[1:], strict=True):
            if g is not None:
                total.add_(g)
    if tape is not None and caller_state is not None:  # read together above
        tape.write(caller_state)
    return (cot + start_grad, *totals)


def _rewind(tape: RngTape | None, state: State | None) -> None:
    """Set the generator back to where the forward solve had it (random fields only)."""
    if tape is not None and state is not None:
        tape.write(state)


class CheckpointSolve(torch.autograd.Function):
    """Forward without a graph, recording steps; backward by :func:`checkpoint_backward`."""

    @staticmethod
    def forward(ctx, problem: Problem, y0: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        steps: list = []
        ys = problem.solve(y0.detach(), record=steps)
        ctx.problem, ctx.steps = problem, steps
        ctx.save_for_backward(y0, *params)  # for first_order_only
        ctx.first_input = 0
        return ys

    @staticmethod
    @first_order_only("odeint(gradient='checkpoint')", "Use gradient='backprop' for them.")
    @without_autocast
    def backward(ctx, grad_ys: torch.Tensor) -> tuple:
        return (None, *checkpoint_backward(ctx.problem, ctx.steps, grad_ys))
