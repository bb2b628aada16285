"""Checkpointed gradients: keep accepted step boundaries, replay each step under autograd.

The forward pass runs without a graph and keeps only ``(t_n, h_n, y_n)`` of every accepted step:
memory ``O(steps x state)``. The backward pass walks the steps in reverse, recomputes each one
(same step size, same arithmetic) with autograd on, and pulls the cotangent of its end state and of
the outputs answered inside it back to its start. The result is the exact gradient of the discrete
solution, as ``backprop`` gives, while holding the graph of one step at a time.
"""

from __future__ import annotations

import torch

from .problem import Problem


def checkpoint_backward(problem: Problem, steps: list, grad_ys: torch.Tensor) -> tuple:
    """Gradients ``(dL/dy0, *dL/dparams)`` by replaying ``steps`` in reverse."""
    out, params, rk = problem.outputs, problem.params, problem.rk
    start_grad, items = out.split_grads(grad_ys)
    f = problem.vector_field(backward=True)
    cot = torch.zeros_like(problem.final_state)
    totals = [torch.zeros_like(p) for p in params]
    stats = problem.stats
    for step in reversed(steps):
        with torch.enable_grad():
            y = step.y.detach().requires_grad_(True)
            y1, ks = rk.step(f, step.t, step.h, y, f(step.t, y))
            outputs, cotangents = [y1], [cot]
            if step.stop > step.start:
                chunk = out.interpolate(
                    problem.tableau, step.t, step.h, y, y1, ks, step.start, step.stop
                )
                outputs.append(chunk)
                cotangents.append(items[step.start : step.stop])
            grads = torch.autograd.grad(outputs, (y, *params), cotangents, allow_unused=True)
        stats.backward_steps_accepted += 1
        cot = grads[0] if grads[0] is not None else torch.zeros_like(cot)
        for total, g in zip(totals, grads[1:], strict=False):
            if g is not None:
                total.add_(g)
    return (cot + start_grad, *totals)


class CheckpointSolve(torch.autograd.Function):
    """Forward without a graph, recording steps; backward by :func:`checkpoint_backward`."""

    @staticmethod
    def forward(ctx, problem: Problem, y0: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        steps: list = []
        ys = problem.solve(y0.detach(), record=steps)
        ctx.problem, ctx.steps = problem, steps
        return ys

    @staticmethod
    def backward(ctx, grad_ys: torch.Tensor) -> tuple:
        return (None, *checkpoint_backward(ctx.problem, ctx.steps, grad_ys))
