"""The paper's ODE-RNN encoder walk (mean-and-std state, MLP-gated GRU) with fewest kernels.

At the paper's hopper sizes (50 series x 30 states, 100 time points) the encoder is thousands of
tiny kernels, so their number sets its time on a GPU, eagerly or replayed from a CUDA graph,
and on a CPU per-op overhead is a good share of it. Recorded by autograd, the generic walk
(:meth:`~latentode.nn.encoders._BackwardGRU._walk_union`) runs ~142 kernels per time point,
forward and backward, on the paper's encoder (``std_state=True``, MLP-gated GRU, a 4-layer
field). This walk is one autograd node with a hand-written backward, ~71 per point:

* every point's input ``[values * mask, mask]`` goes through the three first layers' input
  columns in one product for the whole walk (outside, differentiated by autograd);
* both gates' first layers share one product, their second layers one block-diagonal product;
* the backward carries the state's gradient only; each weight's gradient is one product over
  all points at the end, not one per point plus an accumulation.

Static (what ``cuda_graph`` records) it is sync-free with control flow fixed by the shapes
(every point visited, a zero gap adds ``0 * f``, updates masked); eager, it skips points nobody
observes and zero gaps after asking the device once which they are. Same recurrence as
:class:`~latentode.nn.encoders.MeanStdGRUCell` after an Euler step of the mean:

    a = tanh(W_g [m, s] + x_g),  [u, r] = sigmoid(W_2 a + b_2)        (both gates)
    a_n = tanh(W_n1 [m r, s r] + x_n),  [n_m, n_s] = W_n2 a_n + b_n2
    m' = u m + (1 - u) n_m,   s' = |u s + (1 - u) |n_s||

equal to the generic walk up to rounding (tested in float64: values, gradients, gradcheck).
The ODE-RNN encoder walks the points last to first; the ODE-RNN baseline first to last, reading
its prediction at each point from the state before that point's update (``emit=True``).
Gradients are first order: the hand-written backward is not itself differentiable (as for
:mod:`latentode.nn.euler_gru`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from ..solvers.first_order import first_order_only
from ..solvers.precision import float32_under_autocast, without_autocast
from .layers import FUSED_FIX, is_tanh_mlp, linear_pairs, tanh_mlp, tanh_mlp_backward

if TYPE_CHECKING:
    from .encoders import MeanStdGRUCell

_ops = torch.ops.aten


def supports(cell: nn.Module, field: nn.Sequential) -> bool:
    """Whether :func:`mean_std_walk` runs this cell and vector field: a ``MeanStdGRUCell`` as
    ``gru_cell`` builds it (one hidden layer per MLP, sigmoid gates) and a ``tanh`` MLP."""
    kind = type(cell)  # by name: this module sits below latentode.nn.encoders, which defines it
    if (kind.__module__, kind.__qualname__) != ("latentode.nn.encoders", "MeanStdGRUCell"):
        return False
    if not is_tanh_mlp(field):
        return False
    gru = cast("MeanStdGRUCell", cell)  # (its type, checked by name above)
    gates = (gru.update, gru.reset)
    return all(len(g) == 2 and type(g[1]) is nn.Sigmoid and isinstance(g[0], nn.Sequential)
               and len(g[0]) == 3 and is_tanh_mlp(g[0]) for g in gates) and len(
                   gru.new) == 3 and is_tanh_mlp(gru.new)


@float32_under_autocast("x")  # mixed precision: the walk in float32 (solvers.precision)
def mean_std_walk(
    times: torch.Tensor, x: torch.Tensor, seen: torch.Tensor, cell: nn.Module,
    field: nn.Sequential, hidden: int, static: bool = True, forward: bool = False,
    emit: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Final ``[mean, std]`` state after the walk (``(B, 2 hidden)``), and with ``emit`` the
    state at every point before its update (``(B, T, 2 hidden)``).

    ``x (B, T, I)`` is the cell's input at every point, ``seen (B, T)`` where a series takes an
    update; ``cell`` a :class:`~latentode.nn.encoders.MeanStdGRUCell` as ``gru_cell`` builds
    it, ``field`` the vector field's ``tanh`` MLP (see :func:`supports`). The walk goes last
    to first (the encoder), or first to last with ``forward``; between points the mean takes one
    Euler step. ``static=False`` (eager use) skips points nobody observes and zero gaps, asking
    the device once which they are; ``static=True`` visits every point, as a CUDA graph needs.
    """
    gru = cast("MeanStdGRUCell", cell)  # as supports() asks
    # (weight, bias) of the two linear layers of the gates' and the new state's MLPs
    ((wu1, bu1), (wu2, bu2)), ((wr1, br1), (wr2, br2)), ((wn1, bn1), (wn2, bn2)) = (
        linear_pairs(cast(nn.Sequential, m)) for m in (gru.update[0], gru.reset[0], gru.new))
    state = 2 * hidden
    projected = nn.functional.linear(
        x, torch.cat([wu1[:, state:], wr1[:, state:], wn1[:, state:]]),
        torch.cat([bu1, br1, bn1]))  # (B, T, 3U)
    w_gates = torch.cat([wu1[:, :state], wr1[:, :state]])  # (2U, 2H)
    length = len(times)
    zero = times.new_zeros(1)
    # the Euler step taken on arriving at each point (none at the first point visited)
    if forward:
        dts = torch.cat([zero, times[1:] - times[:-1]])
    else:
        dts = torch.cat([times[:-1] - times[1:], zero])
    dts = dts.to(x.dtype)  # float64 times with float32 values: the gaps in the values' precision
    seen = seen.unsqueeze(-1)  # (B, T, 1)
    flat = [p for pair in linear_pairs(field) for p in pair]
    visit = move = None
    if not static:
        flags = torch.cat([seen.any(0).squeeze(-1), dts != 0]).tolist()  # one sync
        visit, move = flags[:length], flags[length:]
    order = list(range(length)) if forward else list(range(length - 1, -1, -1))
    # without autograd (evaluation) nothing is kept for a backward: Function.forward cannot
    # tell, its needs_input_grad follows requires_grad only
    keep = torch.is_grad_enabled()
    out = _Walk.apply(projected, seen, dts.unsqueeze(-1), order, visit, move, emit, keep,
                      w_gates, wu2, bu2, wr2, br2, wn1[:, :state], wn2, bn2, *flat)
    return out if emit else out[0]


class _Walk(torch.autograd.Function):
    @staticmethod
    def forward(ctx, projected, seen, dts, order, visit, move, emit, keep, w_gates, w_u2, b_u2,
                w_r2, b_r2, w_n1, w_n2, b_n2, *flat):
        layers = list(zip(flat[0::2], flat[1::2], strict=True))
        batch = projected.shape[0]
        hidden, units = w_u2.shape[0], w_n1.shape[0]
        keep = keep and any(ctx.needs_input_grad)
        x_gates, x_new = projected[..., : 2 * units], projected[..., 2 * units :]
        w_second = torch.block_diag(w_u2, w_r2)  # (2H, 2U)
        b_second = torch.cat([b_u2, b_r2])
        w_gates_t, w_second_t, w_n1_t, w_n2_t = w_gates.t(), w_second.t(), w_n1.t(), w_n2.t()
        h = projected.new_zeros(batch, 2 * hidden)
        states: list = [None] * len(order)  # by time point
        euler, gru = {}, {}  # by time point
        for i in order:
            if i != order[0] and (move is None or move[i]):
                mean = h[:, :hidden]
                a, acts = tanh_mlp(mean, layers)
                if keep:
                    euler[i] = (mean, acts)
                h = torch.cat([torch.addcmul(mean, dts[i], a), h[:, hidden:]], -1)
            if emit:
                states[i] = h
            if visit is not None and not visit[i]:
                continue
            gates = torch.tanh(torch.addmm(x_gates[:, i], h, w_gates_t))
            ur = torch.sigmoid(torch.addmm(b_second, gates, w_second_t))  # [u, r]
            u = ur[:, :hidden]
            r2 = torch.cat([ur[:, hidden:], ur[:, hidden:]], -1)
            hr = h * r2
            a_new = torch.tanh(torch.addmm(x_new[:, i], hr, w_n1_t))
            new = torch.addmm(b_n2, a_new, w_n2_t)
            n_m, n_s = new[:, :hidden], new[:, hidden:]
            abs_s = n_s.abs()
            to_mean, to_std = h[:, :hidden] - n_m, h[:, hidden:] - abs_s
            inner = torch.addcmul(abs_s, u, to_std)  # u s + (1 - u) |n_s|
            updated = torch.cat([torch.addcmul(n_m, u, to_mean), inner.abs()], -1)
            if keep:
                gru[i] = (h, gates, ur, r2, hr, a_new, n_s, inner, to_mean, to_std)
            h = torch.where(seen[:, i], updated, h)
        if keep:
            ctx.save_for_backward(projected, w_gates, w_u2, b_u2, w_r2, b_r2, w_n1, w_n2, b_n2,
                                  *flat)  # for first_order_only
            ctx.first_input = 0
            ctx.euler, ctx.gru, ctx.layers, ctx.order = euler, gru, layers, order
            ctx.seen, ctx.dts, ctx.units, ctx.shape = seen, dts, units, projected.shape
            ctx.weights = (w_gates, w_second, w_n1, w_n2)
        if not emit:
            return h, h.new_zeros(0)
        return h, torch.stack(states, 1)

    @staticmethod
    @first_order_only("The ODE-RNN encoder's fused mean/std walk", FUSED_FIX)
    @without_autocast
    def backward(ctx, grad_h, grad_states):
        layers, seen, dts, units = ctx.layers, ctx.seen, ctx.dts, ctx.units
        w_gates, w_second, w_n1, w_n2 = ctx.weights
        hidden = w_n2.shape[0] // 2
        batch, length, width = ctx.shape
        emitted = grad_states is not None and grad_states.numel() > 0
        saved: dict[str, tuple[list, list]] = {k: ([], []) for k in ("g", "2", "n1", "n2")}
        layer_in: list[list] = [[] for _ in layers]
        layer_d: list[list] = [[] for _ in layers]
        d_x: list = [None] * length
        zero = None
        g = grad_h
        for i in reversed(ctx.order):  # each point: its update's backward, then its Euler step's
            if i in ctx.gru:
                h, gates, ur, r2, hr, a_new, n_s, inner, to_mean, to_std = ctx.gru[i]
                g_new = torch.where(seen[:, i], g, 0.0)
                g_m, g_s = g_new[:, :hidden], g_new[:, hidden:]
                u2 = ur[:, :hidden].repeat(1, 2)
                d_inner = g_s * torch.sign(inner)
                d_new = torch.cat([g_m, d_inner * torch.sign(n_s)], -1) * (1.0 - u2)
                d_pre_n = _ops.tanh_backward(d_new @ w_n2, a_new)
                d_hr = d_pre_n @ w_n1
                d_r2 = d_hr * h
                d_ur = torch.cat([g_m * to_mean + d_inner * to_std,
                                  d_r2[:, :hidden] + d_r2[:, hidden:]], -1)
                d_z = _ops.sigmoid_backward(d_ur, ur)
                d_gates = _ops.tanh_backward(d_z @ w_second, gates)
                d_x[i] = torch.cat([d_gates, d_pre_n], -1)
                for key, inp, delta in (("g", h, d_gates), ("2", gates, d_z),
                                        ("n1", hr, d_pre_n), ("n2", a_new, d_new)):
                    saved[key][0].append(inp)
                    saved[key][1].append(delta)
                g = ((g - g_new) + torch.cat([g_m, d_inner], -1) * u2 + d_hr * r2
                     + d_gates @ w_gates)
            else:  # nobody observed this point: skipped
                if zero is None:
                    zero = grad_h.new_zeros(batch, width)
                d_x[i] = zero
            if emitted:
                g = g + grad_states[:, i]
            if i in ctx.euler:
                mean, acts = ctx.euler[i]
                g = _euler_backward(g, mean, acts, layers, dts[i], layer_in, layer_d)
        d_projected = torch.stack(d_x, 1)

        def product(inputs: list, deltas: list) -> tuple[torch.Tensor, torch.Tensor]:
            d, a = torch.cat(deltas), torch.cat(inputs)
            return d.t() @ a, d.sum(0)

        cell_grads: list = [None] * 8  # nobody observed anything: the cell had no part
        if saved["g"][1]:
            d_w_gates = product(*saved["g"])[0]
            d_w_second, d_b_second = product(*saved["2"])
            d_w_n1 = product(*saved["n1"])[0]
            d_w_n2, d_b_n2 = product(*saved["n2"])
            cell_grads = [d_w_gates, d_w_second[:hidden, :units], d_b_second[:hidden],
                          d_w_second[hidden:, units:], d_b_second[hidden:], d_w_n1, d_w_n2,
                          d_b_n2]
        grads_layers: list = []
        for inputs, deltas in zip(layer_in, layer_d, strict=True):
            grads_layers += list(product(inputs, deltas)) if deltas else [None, None]
        return (d_projected, None, None, None, None, None, None, None, *cell_grads,
                *grads_layers)


def _euler_backward(g: torch.Tensor, mean: torch.Tensor, acts: list, layers: list,
                    gap: torch.Tensor, layer_in: list, layer_d: list) -> torch.Tensor:
    """The state's gradient before an Euler step of the mean, from the one after it; the
    layers' inputs and deltas are kept for the weight gradients."""
    hidden = mean.shape[-1]
    g_m = g[:, :hidden]
    back = tanh_mlp_backward(g_m * gap, mean, acts, layers, layer_in, layer_d)
    return torch.cat([g_m + back, g[:, hidden:]], -1)
