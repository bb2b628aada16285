"""Mixed precision (``torch.autocast``; Lightning's ``trainer.precision=bf16-mixed``): ODE solves
and the fused encoder walks run in float32 inside it, and their backward passes replay what the
forward computed. Every model and gradient mode failed with a dtype mismatch before
(``mat1 and mat2 must have the same dtype``)."""

from __future__ import annotations

import pytest
import torch
from test_cli import TINY, compose_train
from torch import nn

from latentode.cli import train as train_cli
from latentode.nn import ODERNNEncoder
from latentode.solvers import GRADIENT_MODES, odeint

BF16 = torch.bfloat16


class Field(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 3))

    def forward(self, t, y):
        return self.net(y)


def amp(enabled: bool = True):
    return torch.autocast("cpu", dtype=BF16, enabled=enabled)


@pytest.mark.parametrize("gradient", GRADIENT_MODES)
def test_a_solve_under_autocast_is_the_float32_solve(gradient):
    torch.manual_seed(0)
    field, lift = Field(), nn.Linear(3, 3)
    x, t = torch.randn(8, 3), torch.linspace(0, 1.5, 6)
    with amp():
        y0 = lift(x)  # a bfloat16 autocast output, as an encoder's z0 is
        ys = odeint(field, y0, t, gradient=gradient)
    assert y0.dtype == BF16 and ys.dtype == torch.float32
    loss = ys.square().mean()  # backward outside the region, as Lightning does
    got = torch.autograd.grad(loss, [*field.parameters(), *lift.parameters()])
    assert all(torch.isfinite(g).all() for g in got)

    start = y0.detach().float().requires_grad_(True)  # the same start, all in float32
    want_ys = odeint(field, start, t, gradient=gradient)
    torch.testing.assert_close(ys.detach(), want_ys.detach(), rtol=0, atol=0)
    want = torch.autograd.grad(want_ys.square().mean(), [*field.parameters(), start])
    for a, b in zip(got[:4], want[:4], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("gradient", ["checkpoint", "adjoint"])
def test_backward_inside_an_autocast_region_replays_in_float32(gradient):
    torch.manual_seed(1)
    field = Field()
    y0, t = torch.randn(8, 3, requires_grad=True), torch.linspace(0, 1.5, 6)

    def grads(inside: bool):
        with amp():
            ys = odeint(field, y0, t, gradient=gradient)
            loss = ys.square().mean()
            if inside:
                return torch.autograd.grad(loss, [y0, *field.parameters()])
        return torch.autograd.grad(loss, [y0, *field.parameters()])

    for a, b in zip(grads(True), grads(False), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("std_state", [False, True], ids=["euler_gru", "mean_std_walk"])
def test_fused_encoder_walks_run_under_autocast(std_state):
    torch.manual_seed(0)
    enc = ODERNNEncoder(3, 4, hidden=5, ode_units=9, z0_units=8,
                        gru_units=7 if std_state else None, std_state=std_state)
    assert enc._mean_std_walk if std_state else enc._fused_euler_gru
    gen = torch.Generator().manual_seed(0)
    times = torch.sort(torch.rand(12, generator=gen)).values * 3
    values = torch.randn(6, 12, 3, generator=gen)
    mask = torch.rand(6, 12, 3, generator=gen) < 0.5

    def run(enabled: bool):
        with amp(enabled):
            mean, std = enc(times, values, mask)
            loss = mean.float().square().sum() + std.float().sum()
        return loss, torch.autograd.grad(loss, list(enc.parameters()))

    loss, grads = run(True)
    want_loss, want = run(False)
    # only the layers outside the walk (the input projection, q(z0)'s map) are in bfloat16
    torch.testing.assert_close(loss, want_loss, rtol=3e-2, atol=0)
    for a, b in zip(grads, want, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=0.1, atol=0.05 * b.abs().max().item() + 1e-6)


@pytest.mark.parametrize("overrides", [[], ["model=hopper_latent_ode"], ["model=rnn_vae"]],
                         ids=["default", "paper_cell", "rnn_vae"])
def test_training_with_bf16_mixed_precision(tmp_path, overrides):
    tiny = TINY if not overrides else [o for o in TINY if not o.startswith("model.")]
    cfg = compose_train(["+trainer.precision=bf16-mixed", "trainer.max_epochs=1",
                         "solver.gradient=adjoint", *tiny, *overrides], tmp_path)
    metrics = train_cli.train(cfg)
    assert torch.isfinite(torch.tensor(metrics["test/mse"]))


def test_an_adaptive_solve_in_half_precision_outside_autocast_warns():
    """Plain bfloat16 (a module cast with .bfloat16()): errors 50x the tolerance, silently."""
    torch.manual_seed(0)
    field = Field().to(BF16)
    y0, t = torch.randn(8, 3, dtype=BF16), torch.linspace(0, 1.5, 6, dtype=BF16)
    with pytest.warns(UserWarning, match=r"y0 is torch\.bfloat16 \(resolution 7\.8e-03\), "
                                         r"coarser than rtol=0\.001.*Solve in float32"):
        odeint(field, y0, t)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        odeint(field, y0, t, method="rk4")  # no tolerance to miss
        odeint(field.float(), y0.float(), t.float())


def test_the_dtype_warning_names_the_wider_dtype_and_spares_torchdiffeqs_tolerance():
    torch.manual_seed(0)
    field = Field()
    y0, t = torch.randn(4, 3), torch.linspace(0, 1, 3)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        odeint(field, y0, t, rtol=1e-7, atol=1e-9)  # torchdiffeq's defaults in float32: fine
    with pytest.warns(UserWarning, match=r"y0 is torch\.float32 .* Solve in float64"):
        odeint(field, y0, t, rtol=1e-9, atol=1e-10)
