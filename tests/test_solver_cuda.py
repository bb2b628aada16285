"""The solver on a GPU gives what it gives on the CPU (skipped where no CUDA device exists)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from latentode.solvers import GRADIENT_MODES, odeint

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class Field(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 4))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y) * torch.cos(t)


def _run(device: str, mode: str, per_sample: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    torch.manual_seed(0)
    field = Field().double().to(device)
    y0 = torch.randn(6, 4, dtype=torch.float64).to(device).requires_grad_(True)
    gen = torch.Generator().manual_seed(1)
    if per_sample:
        t = torch.sort(torch.rand(6, 7, generator=gen, dtype=torch.float64), dim=1).values
        t[:, 0] = 0.0
    else:
        t = torch.cat([torch.zeros(1), torch.sort(torch.rand(9, generator=gen)).values])
        t = t.double()
    ys = odeint(field, y0, t.to(device), rtol=1e-9, atol=1e-10, gradient=mode)
    grads = torch.autograd.grad(ys.square().sum(), [y0, *field.parameters()])
    return ys.detach().cpu(), [g.cpu() for g in grads]


@cuda
@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("mode", GRADIENT_MODES)
def test_cuda_matches_cpu(mode: str, per_sample: bool) -> None:
    ys_cpu, g_cpu = _run("cpu", mode, per_sample)
    ys_gpu, g_gpu = _run("cuda", mode, per_sample)
    assert ys_gpu.shape == ys_cpu.shape
    torch.testing.assert_close(ys_gpu, ys_cpu, rtol=1e-7, atol=1e-9)
    for a, b in zip(g_gpu, g_cpu, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
