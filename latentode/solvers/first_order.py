"""Gradients that are first derivatives only (the checkpoint and adjoint solves, the encoders'
fused walks): refuse to differentiate them.

Both backward passes compute the gradient from states saved without their history (the
checkpoint's step boundaries, the adjoint's reverse solve), so the gradient they return does not
depend on ``y0`` or the parameters in autograd's eyes: a Hessian or a gradient penalty through
them came out exactly zero, silently. torch's ``once_differentiable`` would not catch it either:
it marks the result only when the incoming gradient requires grad, which a Hessian's does not.
Here, whenever the backward runs with grad mode on (``create_graph=True``), its results carry a
node that raises, with the way out, if and only if something differentiates through them (the
node hangs on the solve's inputs, which the forward saved after ``ctx.first_input`` others, so
a derivative with respect to them reaches it): a ``backward(create_graph=True)`` that needs no
second derivative of the solve still works.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch._C import _functions


def first_order_only(what: str, fix: str) -> Callable[[Callable[..., tuple]],
                                                     Callable[..., tuple]]:
    """Decorate an ``autograd.Function.backward`` whose result is not differentiable (see the
    module doc): ``what`` names it in the error, ``fix`` says what to use instead. The backward
    runs without recording a graph, as under torch's ``once_differentiable``."""
    message = (f"{what} gives first derivatives only: its backward pass is not differentiable, "
               "so a Hessian, a gradient penalty or any derivative of a gradient through it "
               f"would be wrong (zero). {fix}").encode()

    def decorate(backward: Callable[..., tuple]) -> Callable[..., tuple]:
        @functools.wraps(backward)
        def wrapper(ctx: Any, *grads: torch.Tensor) -> tuple:
            with torch.no_grad():
                outputs = backward(ctx, *grads)
            if not torch.is_grad_enabled():
                return outputs
            tensors = [i for i, out in enumerate(outputs) if isinstance(out, torch.Tensor)]
            inputs = [x for x in ctx.saved_tensors[ctx.first_input:] if x.requires_grad]
            if not tensors or not inputs:
                return outputs
            # zero, but a function of every input: differentiating a result reaches the error
            anchor = sum((x.reshape(-1)[:1] * 0).sum() for x in inputs)
            raising = _functions.DelayedError(message, len(tensors))(
                *[outputs[i].detach() + anchor for i in tensors])
            if isinstance(raising, torch.Tensor):
                raising = (raising,)
            result = list(outputs)
            for i, out in zip(tensors, raising, strict=True):
                result[i] = out
            return tuple(result)

        return wrapper

    return decorate
