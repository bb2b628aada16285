"""The ODE-RNN encoder's fused recurrence (``latentode.nn.euler_gru``): a hand-written backward,
so it is checked against finite differences in float64 and against the plain autograd loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck

from latentode.nn.euler_gru import euler_gru_scan
from latentode.nn.layers import mlp

F64 = torch.float64


def reference_scan(projected, updates, gaps, steps, cell: nn.GRUCell, field: nn.Sequential):
    """The recurrence written with ``nn.GRUCell`` and the field module, recorded by autograd."""
    batch, length, _ = projected.shape
    h = projected.new_zeros(batch, cell.hidden_size)
    for i in range(length - 1, -1, -1):
        if i < length - 1 and gaps[i] != 0.0:
            h = h + gaps[i] * field(h)
        if not steps[i]:
            continue
        x = projected[:, i]
        hh = h @ cell.weight_hh.t() + cell.bias_hh
        x_r, x_z, x_n = x.chunk(3, -1)
        h_r, h_z, h_n = hh.chunk(3, -1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        h = torch.where(updates[:, i].unsqueeze(-1), (1 - z) * n + z * h, h)
    return h


def case(layers: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    batch, length, hidden = 3, 6, 4
    torch.manual_seed(seed)
    cell = nn.GRUCell(2, hidden).double()
    field = mlp(hidden, hidden, 5, layers).double()
    projected = torch.randn(batch, length, 3 * hidden, generator=gen, dtype=F64)
    updates = torch.rand(batch, length, generator=gen) < 0.6
    updates[:, 2] = False  # a time point where no series is updated
    steps = updates.any(0).tolist()
    gaps = [-0.3, 0.0, -0.2, -0.5, -0.1]  # one repeated time point: no Euler step there
    return projected, updates, gaps, steps, cell, field


@pytest.mark.parametrize("layers", [1, 2])
def test_scan_matches_the_autograd_loop(layers):
    projected, updates, gaps, steps, cell, field = case(layers)
    projected.requires_grad_(True)
    params = [projected, cell.weight_hh, cell.bias_hh, *field.parameters()]
    linears = [(m.weight, m.bias) for m in field if isinstance(m, nn.Linear)]
    fast = euler_gru_scan(projected, updates, gaps, steps, cell.weight_hh, cell.bias_hh, linears)
    slow = reference_scan(projected, updates, gaps, steps, cell, field)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
    weights = torch.randn_like(fast)
    for a, b in zip(torch.autograd.grad((weights * fast).sum(), params),
                    torch.autograd.grad((weights * slow).sum(), params), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layers", [1, 2])
def test_scan_gradcheck(layers):
    projected, updates, gaps, steps, cell, field = case(layers, seed=1)
    linears = [m for m in field if isinstance(m, nn.Linear)]
    tensors = [projected, cell.weight_hh.detach(), cell.bias_hh.detach()]
    for m in linears:
        tensors += [m.weight.detach(), m.bias.detach()]
    tensors = [t.clone().requires_grad_(True) for t in tensors]

    def run(projected, w_hh, b_hh, *flat):
        pairs = list(zip(flat[0::2], flat[1::2], strict=True))
        return euler_gru_scan(projected, updates, gaps, steps, w_hh, b_hh, pairs)

    assert gradcheck(run, tuple(tensors), eps=1e-6, atol=1e-8)


def test_scan_without_grad_keeps_nothing_and_agrees():
    projected, updates, gaps, steps, cell, field = case(1)
    linears = [(m.weight, m.bias) for m in field if isinstance(m, nn.Linear)]
    with torch.no_grad():
        a = euler_gru_scan(projected, updates, gaps, steps, cell.weight_hh, cell.bias_hh, linears)
    b = reference_scan(projected, updates, gaps, steps, cell, field)
    torch.testing.assert_close(a, b.detach(), rtol=1e-12, atol=1e-12)
