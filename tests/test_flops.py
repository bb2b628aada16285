"""``latentode.utils.flops``: the matrix-product FLOP counter used by the training benchmarks."""

from __future__ import annotations

import torch

from latentode.solvers import SolverStats, odeint
from latentode.utils.flops import CountFlops, matmul_gflops


def test_counts_a_linear_layer_forward_and_backward():
    """y = x W^T: 2 * 8 * 5 * 3 FLOPs forward; the backward's two products (dx, dW) as many each."""
    layer = torch.nn.Linear(5, 3, bias=False)
    x = torch.randn(8, 5, requires_grad=True)
    with CountFlops() as forward:
        y = layer(x)
    assert forward.total == 2 * 8 * 5 * 3
    with CountFlops() as backward:
        y.sum().backward()
    assert backward.total == 2 * (2 * 8 * 5 * 3)


def test_counts_inside_a_backward_that_calls_autograd_grad():
    """The checkpointed solver replays steps with ``autograd.grad`` inside its backward pass,
    which torch's FlopCounterMode (module hooks) refuses; this counter sees those products."""
    layer = torch.nn.Linear(4, 4)
    y0 = torch.randn(6, 4)
    t = torch.tensor([0.0, 0.5, 1.0])
    stats = SolverStats()
    with CountFlops() as counted:
        ys = odeint(lambda t, y: torch.tanh(layer(y)), y0, t, method="rk4", step_size=0.25,
                    gradient="checkpoint", adjoint_params=list(layer.parameters()), stats=stats)
        ys.square().sum().backward()
    per_eval = 2 * 6 * 4 * 4  # one (6, 4) @ (4, 4) product
    assert stats.nfe_backward == 16  # rk4, 4 steps of 4 evaluations, replayed
    # the forward solve's and the replay's evaluations, then two products (dy, dW) per replayed
    # evaluation
    expected = (stats.nfe_forward + stats.nfe_backward + 2 * stats.nfe_backward) * per_eval
    assert counted.total == expected


def test_matmul_rate_is_positive():
    assert matmul_gflops(rows=8, width=16, repeats=5) > 0.0
