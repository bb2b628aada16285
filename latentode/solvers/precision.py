"""Mixed precision: ODE solves run in float32 inside a ``torch.autocast`` region.

Adaptive error control at ``rtol=1e-3`` needs more resolution than bfloat16 (eps 7.8e-3) or
float16 (9.8e-4) gives: on such a state the step-size controller sees rounding as error. Under
autocast (Lightning's ``precision="bf16-mixed"`` or ``"16-mixed"``) the solver, and the fused
encoder walks built on the same reasoning, run with autocast off and a float32 state; the
layers around them keep the autocast dtype. Backward passes that re-evaluate the vector field
(checkpoint, adjoint, the fused walks) run with autocast off too, so the replay computes what
the forward computed even when ``backward()`` is called inside an autocast region.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch

HALF = (torch.float16, torch.bfloat16)
_DEVICE_TYPES = ("cpu", "cuda")


def autocast_on(device_type: str) -> bool:
    """Whether autocast is active for ``device_type`` (any torch >= 2.1)."""
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except TypeError:  # torch < 2.4: no device argument
        if device_type == "cpu":
            return bool(torch.is_autocast_cpu_enabled())
        return device_type == "cuda" and bool(torch.is_autocast_enabled())


@contextmanager
def autocast_off(*device_types: str) -> Iterator[None]:
    """Autocast disabled for the given device types (default: every one that is active)."""
    with ExitStack() as stack:
        for device_type in device_types or _DEVICE_TYPES:
            if autocast_on(device_type):
                stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


def full(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 if it is half precision (an autocast output), else unchanged."""
    return x.float() if x.dtype in HALF else x


def float32_under_autocast(arg: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Run the decorated function with autocast off and its tensor argument ``arg`` (the state)
    in float32 when autocast is active for that tensor's device; else call it as it is."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if not any(autocast_on(d) for d in _DEVICE_TYPES):  # the common case: one check
                return fn(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            x = bound.arguments.get(arg)
            if not isinstance(x, torch.Tensor) or not autocast_on(x.device.type):
                return fn(*args, **kwargs)
            bound.arguments[arg] = full(x)
            with autocast_off(x.device.type):
                return fn(*bound.args, **bound.kwargs)

        return wrapped

    return decorate


def without_autocast(backward: Callable[..., Any]) -> Callable[..., Any]:
    """Run an ``autograd.Function.backward`` with autocast off (see the module docstring)."""

    @functools.wraps(backward)
    def wrapped(*args: Any) -> Any:
        with autocast_off():
            return backward(*args)

    return wrapped
