"""MLPs and the MLP vector field used inside every ODE of the models."""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from numpy.typing import ArrayLike


def check_sizes(owner: str, **sizes: Any) -> None:
    """Refuse sizes that would build a broken network without a word, naming them: a count of
    units that is not a whole number >= 1 (0 made a layer of no width: an encoder whose
    q(z0) ignored its input), or of layers (``*_layers``) not >= 0 (-1 made none: ``[u] * -1``
    is empty). None: the option's default, not checked."""
    for name, value in sizes.items():
        if value is None:
            continue
        least = 0 if name.endswith("layers") else 1
        whole = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        if not whole or value < least:  # (numpy integers are whole numbers too)
            raise ValueError(f"{owner}: {name} must be a whole number >= {least}, got "
                             f"{value!r}.")


def mlp(
    n_in: int, n_out: int, units: int = 100, layers: int = 1, act: type = nn.Tanh
) -> nn.Sequential:
    """``layers`` hidden layers of ``units`` with ``act`` between linear maps (paper's create_net).

    Weights start small (normal, std 0.1) and biases at zero, as in the paper's code, so a fresh
    vector field is gentle and the first solves take few steps.
    """
    check_sizes("mlp", units=units, layers=layers)
    sizes = [n_in] + [units] * layers + [n_out]
    modules: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        linear = nn.Linear(a, b)
        nn.init.normal_(linear.weight, std=0.1)
        nn.init.zeros_(linear.bias)
        modules.append(linear)
        if i < len(sizes) - 2:
            modules.append(act())
    return nn.Sequential(*modules)


def output_layer(decoder: nn.Module) -> nn.Linear | None:
    """The layer whose output is ``decoder``'s: the decoder itself when it is an ``nn.Linear``,
    the last module of an ``nn.Sequential`` when that is one (the models' own decoders), else
    None: what a module of another kind returns is its ``forward``'s business (an ``exp`` or a
    skip connection after its last linear layer)."""
    if isinstance(decoder, nn.Linear):
        return decoder
    if isinstance(decoder, nn.Sequential) and len(decoder) and isinstance(decoder[-1], nn.Linear):
        return decoder[-1]
    return None


def start_output_bias(decoder: nn.Module, bias: ArrayLike | str | None, out: int) -> None:
    """Start the bias of ``decoder``'s output layer (``out`` features) at ``bias``: one value,
    or one per channel (a list, tuple, numpy array or tensor: the training data's channel
    means, say), in the model's units. ``None`` and ``"auto"`` leave it as initialised:
    ``"auto"`` is the model configs' default, which ``latentode-train`` replaces with the
    training data's channel means when it feeds them unscaled; a model built from the config
    alone has no data to read them from.

    Why: channels far from zero fed unscaled otherwise have to be reached through the latent
    state, shared by every series; training then stays at the mean for tens of epochs
    (docs/results.md, *Unscaled data*). A decoder whose output is not a biased linear layer's
    (:func:`output_layer`) is refused.
    """
    if bias is None or (isinstance(bias, str) and bias == "auto"):
        return
    if isinstance(bias, str):
        raise ValueError(f"output_bias={bias!r}: a model takes numbers (one, or one per channel) "
                         "or None; the words 'auto' and 'data_mean' are latentode-train's "
                         "config values, which it resolves from the training data.")
    layer = output_layer(decoder)
    if layer is None or layer.out_features != out or layer.bias is None:
        raise ValueError(
            f"output_bias needs a decoder that ends in a linear layer with {out} outputs and a "
            f"bias (an nn.Linear, or an nn.Sequential ending in one); {type(decoder).__name__} "
            "does not: start its output yourself, and leave output_bias=None "
            "(model.output_bias=null on the command line).")
    try:
        values = torch.as_tensor(bias, dtype=torch.float64).detach().cpu().flatten()
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"output_bias must be numbers (one, or one per channel), got "
                         f"{bias!r}.") from error
    if values.numel() == 1:
        values = values.expand(out)
    if values.numel() != out:
        raise ValueError(f"output_bias has {values.numel()} values for {out} channels: give one "
                         "value, or one per channel.")
    bad = [i for i, v in enumerate(values.tolist()) if not math.isfinite(v)]
    if bad:
        raise ValueError(f"output_bias must be finite, got {values[bad[0]].item()} for channel "
                         f"{bad[0]}.")
    with torch.no_grad():
        layer.bias.copy_(values.to(device=layer.bias.device, dtype=layer.bias.dtype))


class ODEFunc(nn.Module):
    """An autonomous vector field ``dz/dt = MLP(z)`` (time enters only through the solve)."""

    def __init__(self, dim: int, units: int = 100, layers: int = 1):
        super().__init__()
        self.net = mlp(dim, dim, units, layers)

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        # the layers' functions called directly: a solve evaluates this hundreds of times per
        # batch and the per-module call overhead was ~30% of an evaluation at the paper's sizes
        for m in self.net:
            if type(m) is nn.Linear:
                z = nn.functional.linear(z, m.weight, m.bias)
            elif type(m) is nn.Tanh:
                z = torch.tanh(z)
            else:
                z = m(z)
        return z


FUSED_FIX = ("For them, walk the same Euler steps through the generic loop: give the encoder's "
             "solver any other option, e.g. +model.encoder.solver.max_steps=10000 (slower).")
"""What to do instead when a derivative of the fused walks' gradient is asked for."""


def is_single_euler_step(solver: dict) -> bool:
    """Whether ``odeint`` options mean one plain Euler step per gap (the recurrent models'
    default, which they take without ``odeint``'s per-call set-up)."""
    options = set(solver) - {"method", "gradient"}
    return solver["method"] == "euler" and not options and (
        solver.get("gradient", "backprop") == "backprop")


def is_tanh_mlp(net: Iterable[nn.Module]) -> bool:
    """Whether ``net`` is linear layers with biases and ``tanh`` between them, nothing else (what
    the hand-written walks differentiate)."""
    return all(type(m) is nn.Tanh or (type(m) is nn.Linear and m.bias is not None) for m in net)


def linear_pairs(net: Iterable[nn.Module]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(weight, bias)`` of ``net``'s linear layers, first to last (a ``tanh`` MLP as the
    hand-written walks take it)."""
    return [(m.weight, m.bias) for m in net if isinstance(m, nn.Linear)]


def tanh_mlp(x: torch.Tensor, layers: list[tuple[torch.Tensor, torch.Tensor]]
             ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A ``tanh`` MLP given as ``(weight, bias)`` pairs, for hand-written backward passes: its
    output and its hidden activations (what :func:`tanh_mlp_backward` needs)."""
    acts, a = [], x
    for k, (w, b) in enumerate(layers):
        a = torch.addmm(b, a, w.t())
        if k < len(layers) - 1:
            a = torch.tanh(a)
            acts.append(a)
    return a, acts


def tanh_mlp_backward(
    delta: torch.Tensor, x: torch.Tensor, acts: list[torch.Tensor],
    layers: list[tuple[torch.Tensor, torch.Tensor]], inputs: list[list], deltas: list[list],
) -> torch.Tensor:
    """The gradient at ``x`` of :func:`tanh_mlp` for the output's cotangent ``delta``; each
    layer's input and output delta are appended to ``inputs[k]`` / ``deltas[k]``, so that the
    caller forms every weight gradient in one product over many calls."""
    for k in range(len(layers) - 1, -1, -1):
        inputs[k].append(acts[k - 1] if k > 0 else x)
        deltas[k].append(delta)
        back = delta @ layers[k][0]
        if k > 0:
            delta = torch.ops.aten.tanh_backward(back, acts[k - 1])
    return back
