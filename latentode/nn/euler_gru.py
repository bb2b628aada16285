"""The ODE-RNN encoder's recurrence (one Euler step per gap, then a masked GRU update) as one
autograd node with a hand-written backward.

Autograd records about twenty nodes per time point for this loop, and their per-node overhead,
not arithmetic, is what an encoder pass costs on a CPU at the paper's sizes. Here the forward
keeps the few tensors the backward needs; the backward walks the time points in reverse with the
gradient of the hidden state only and leaves the weight gradients to one matrix product per
weight over all time points at the end.

The GRU is ``torch.nn.GRUCell``'s: ``r = s(x_r + h_r)``, ``z = s(x_z + h_z)``,
``n = tanh(x_n + r h_n)``, ``h' = (1 - z) n + z h`` with ``[h_r, h_z, h_n] = h W_hh^T + b_hh``;
the input projection ``x = input W_ih^T + b_ih`` is computed outside (one matmul, differentiated
by autograd). The vector field is an MLP of ``nn.Linear`` layers with ``tanh`` between them.
"""

from __future__ import annotations

import torch

from ..solvers.first_order import first_order_only
from ..solvers.precision import float32_under_autocast, without_autocast
from .layers import FUSED_FIX, tanh_mlp


@float32_under_autocast("projected")  # mixed precision: the walk in float32 (solvers.precision)
def euler_gru_scan(
    projected: torch.Tensor,
    updates: torch.Tensor,
    gaps: list[float],
    steps: list[bool],
    weight_hh: torch.Tensor,
    bias_hh: torch.Tensor,
    field: list[tuple[torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """Final hidden state of the backward-in-time Euler + masked GRU recurrence.

    Args:
        projected: ``(B, T, 3H)`` GRU input projections per time point.
        updates: ``(B, T)`` bool, whether a series is updated at a time point.
        gaps: ``T - 1`` floats ``t_i - t_{i+1}`` (Euler step from point ``i + 1`` to ``i``).
        steps: ``T`` bools, whether any series is updated at a time point.
        weight_hh, bias_hh: the GRU's hidden-to-hidden weights ``(3H, H)`` and bias ``(3H,)``.
        field: ``(weight, bias)`` of the vector field's linear layers, first to last.
    """
    flat = [p for layer in field for p in layer]
    return _EulerGRUScan.apply(projected, updates, gaps, steps, weight_hh, bias_hh, *flat)


class _EulerGRUScan(torch.autograd.Function):
    """Forward keeps per time point what the backward needs; backward as described above.

    Internally the update gate's pre-activation is negated (rows of ``W_hh``, ``b_hh`` and
    columns of the projection, once per call), so one sigmoid gives ``r`` and ``c = 1 - z``
    together and the update is ``h + u c (n - h)``: fewer operations per time point.
    """

    @staticmethod
    def forward(ctx, projected, updates, gaps, steps, weight_hh, bias_hh, *flat):
        layers = list(zip(flat[0::2], flat[1::2], strict=True))
        batch, length, three_h = projected.shape
        hidden = three_h // 3
        keep_for_grad = any(ctx.needs_input_grad)
        sign = projected.new_ones(three_h)
        sign[hidden : 2 * hidden] = -1.0
        w_hh = weight_hh * sign.unsqueeze(-1)
        b_hh = bias_hh * sign
        signed = projected * sign
        x_rc = signed[..., : 2 * hidden].unbind(1)
        x_n = signed[..., 2 * hidden :].unbind(1)
        u = updates.to(projected.dtype).unsqueeze(-1).unbind(1)  # (B, 1) per time point
        w_hh_t = w_hh.t()
        h = projected.new_zeros(batch, hidden)
        euler_saved, gru_saved = [], []
        for i in range(length - 1, -1, -1):
            if i < length - 1 and gaps[i] != 0.0:
                a, acts = tanh_mlp(h, layers)
                if keep_for_grad:
                    euler_saved.append((i, h, acts))
                h = torch.add(h, a, alpha=gaps[i])
            if not steps[i]:
                continue
            hh = torch.addmm(b_hh, h, w_hh_t)
            r, c = torch.sigmoid(x_rc[i] + hh[:, : 2 * hidden]).chunk(2, -1)
            h_n = hh[:, 2 * hidden :]
            n = torch.tanh(torch.addcmul(x_n[i], r, h_n))
            step = n - h
            if keep_for_grad:
                gru_saved.append((i, h, r, c, n, h_n, step))
            h = torch.addcmul(h, u[i] * c, step)
        if keep_for_grad:
            ctx.save_for_backward(projected, weight_hh, bias_hh, *flat)  # for first_order_only
            ctx.first_input = 0
            ctx.euler_saved, ctx.gru_saved = euler_saved, gru_saved
            ctx.layers, ctx.u, ctx.gaps = layers, u, gaps
            ctx.w_hh, ctx.sign, ctx.shape = w_hh, sign, projected.shape
        return h

    @staticmethod
    @first_order_only("The ODE-RNN encoder's fused Euler-GRU walk", FUSED_FIX)
    @without_autocast
    def backward(ctx, grad_h):
        layers, u, gaps, w_hh = ctx.layers, ctx.u, ctx.gaps, ctx.w_hh
        euler = {i: rest for i, *rest in ctx.euler_saved}
        gru = {i: rest for i, *rest in ctx.gru_saved}
        batch, length, three_h = ctx.shape
        zero = None
        d_x = []  # per time point, in reverse order of i
        gru_inputs, gru_deltas = [], []
        layer_inputs: list[list[torch.Tensor]] = [[] for _ in layers]
        layer_deltas: list[list[torch.Tensor]] = [[] for _ in layers]
        g = grad_h
        for i in range(length):  # the forward's order reversed: GRU(i), then Euler(i)
            if i in gru:
                h, r, c, n, h_n, step = gru[i]
                g_new = g * u[i]
                gc = g_new * c
                d_pre_n = gc - gc * n * n
                d_pre_c = g_new * step * (c - c * c)
                d_pre_r = d_pre_n * h_n * (r - r * r)
                d_hh = torch.cat([d_pre_r, d_pre_c, d_pre_n * r], -1)
                d_x.append(torch.cat([d_pre_r, d_pre_c, d_pre_n], -1))
                gru_inputs.append(h)
                gru_deltas.append(d_hh)
                g = torch.addmm(g - gc, d_hh, w_hh)
            else:
                if zero is None:
                    zero = grad_h.new_zeros(batch, three_h)
                d_x.append(zero)
            if i in euler:
                h, acts = euler[i]
                delta = g * gaps[i]
                for k in range(len(layers) - 1, -1, -1):
                    layer_inputs[k].append(acts[k - 1] if k > 0 else h)
                    layer_deltas[k].append(delta)
                    back = delta @ layers[k][0]
                    if k > 0:  # not tanh_backward: its rounding differs, and this walk's
                        # numbers are the periodic default's (kept bit for bit)
                        delta = back * (1.0 - acts[k - 1] * acts[k - 1])
                g = g + back
        sign = ctx.sign
        d_projected = torch.stack(d_x, 1) * sign
        grads_layers: list[torch.Tensor | None] = []
        for inputs, deltas in zip(layer_inputs, layer_deltas, strict=True):
            if deltas:
                d, a = torch.cat(deltas), torch.cat(inputs)
                grads_layers += [d.t() @ a, d.sum(0)]
            else:
                grads_layers += [None, None]
        d_w_hh = d_b_hh = None
        if gru_deltas:
            d, a = torch.cat(gru_deltas), torch.cat(gru_inputs)
            d_w_hh, d_b_hh = (d.t() @ a) * sign.unsqueeze(-1), d.sum(0) * sign
        return (d_projected, None, None, None, d_w_hh, d_b_hh, *grads_layers)
