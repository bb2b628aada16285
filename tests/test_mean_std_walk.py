"""The paper encoder's walk (``latentode.nn.mean_std_walk``): one autograd node with a hand-written
backward, so it is checked against finite differences in float64 and against the generic
autograd loop; and it must launch about half the kernels of the generic walk, which is its
reason to exist."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck
from torch.profiler import ProfilerActivity, profile

from latentode.nn import ODERNNEncoder
from latentode.nn.encoders import _BackwardGRU, start_at_last_observation
from latentode.nn.mean_std_walk import _Walk

F64 = torch.float64


def encoder(layers: int = 4, **kw) -> ODERNNEncoder:
    torch.manual_seed(0)
    return ODERNNEncoder(3, 4, hidden=5, ode_units=9, ode_layers=layers, z0_units=8,
                         gru_units=7, std_state=True, **kw).double()


def batch(seed: int = 0, n: int = 6, length: int = 12, repeat: bool = True):
    gen = torch.Generator().manual_seed(seed)
    times = torch.sort(torch.rand(length, generator=gen, dtype=F64)).values * 3
    if repeat:
        times[4] = times[3]  # a repeated time point: a zero gap
    values = torch.randn(n, length, 3, generator=gen, dtype=F64)
    mask = (torch.rand(n, length, 3, generator=gen) < 0.4).to(F64)
    mask[:, length - 3] = 0  # a time point nobody observes
    mask[:, -1] = 0  # nor the last one
    mask[-1] = 0  # a series with nothing to read
    return times, values, mask


@pytest.mark.parametrize("layers", [1, 2, 4])
def test_walk_equals_the_generic_autograd_loop(layers):
    """q(z0) and the gradients of the inputs and of every parameter, eager (skipping points
    nobody observes and zero gaps) and static (what a graph records), as the generic loop."""
    enc = encoder(layers)
    assert enc._mean_std_walk
    for seed in range(2):
        times, values, mask = batch(seed)
        values.requires_grad_(True)
        times = start_at_last_observation(times, mask.amax(-1) > 0)  # what forward walks
        reference = enc._z0(enc._walk_union(times, values, mask, mask.amax(-1) > 0))
        weights = [torch.randn_like(reference[0]), torch.randn_like(reference[1])]
        params = [values, *enc.parameters()]

        def grads(out, params=params, weights=weights):
            loss = (weights[0] * out[0]).sum() + (weights[1] * out[1]).sum()
            return torch.autograd.grad(loss, params)

        want = grads(reference)
        for walk in (enc(times, values, mask), enc._static_z0(times, values, mask)):
            for a, b in zip(reference, walk, strict=True):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-13)
            for a, b in zip(want, grads(walk), strict=True):
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_walk_gradcheck():
    """Finite differences through the hand-written backward, every input it differentiates."""
    gen = torch.Generator().manual_seed(3)
    batch_size, length, hidden, units, fields = 3, 5, 2, 3, 4

    def rand(*shape):
        return (0.5 * torch.randn(*shape, generator=gen, dtype=F64)).requires_grad_(True)

    projected = rand(batch_size, length, 3 * units)
    seen = torch.rand(batch_size, length, 1, generator=gen) < 0.6
    dts = -torch.rand(length, 1, generator=gen, dtype=F64)
    dts[1] = 0.0
    cell = [rand(2 * units, 2 * hidden), rand(hidden, units), rand(hidden), rand(hidden, units),
            rand(hidden), rand(units, 2 * hidden), rand(2 * hidden, units), rand(2 * hidden)]
    field = [rand(fields, hidden), rand(fields), rand(fields, fields), rand(fields),
             rand(hidden, fields), rand(hidden)]
    visit = [True, False, True, True, False]  # points skipped (nobody observes them)
    move = [True, False, True, False, True]  # zero gaps skipped
    for first_to_last, emit in ((False, False), (True, True), (False, True)):
        order = list(range(length))
        if not first_to_last:
            order.reverse()
        for skips in ((None, None), (visit, move)):
            def run(projected, *rest, order=order, skips=skips, emit=emit):
                h, states = _Walk.apply(projected, seen, dts, order, *skips, emit, True, *rest)
                return (h, states) if emit else h

            assert gradcheck(run, (projected, *cell, *field), eps=1e-6, atol=1e-8)


def _kernels(fn) -> int:
    """Non-view ATen ops (on a GPU: kernel launches) of ``fn``, outermost calls only."""
    views = {"aten::slice", "aten::select", "aten::view", "aten::t", "aten::transpose",
             "aten::unsqueeze", "aten::expand", "aten::split", "aten::split_with_sizes",
             "aten::narrow", "aten::as_strided", "aten::alias", "aten::detach", "aten::unbind",
             "aten::reshape", "aten::_reshape_alias", "aten::squeeze", "aten::permute",
             "aten::chunk", "aten::numpy_T"}

    def outermost(event) -> bool:
        parent = event.cpu_parent
        while parent is not None:
            if parent.name.startswith("aten::"):
                return False
            parent = parent.cpu_parent
        return True

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events()
               if e.name.startswith("aten::") and e.name not in views and outermost(e))


def test_walk_launches_half_the_kernels_of_the_generic_walk():
    """Forward and backward of the paper-shaped encoder: ~70 kernels per time point against
    ~142 for the generic static walk (what a CUDA graph replays; counted on CPU)."""
    enc = encoder(4).float()
    times, values, mask = (x.float() for x in batch(0, length=40))

    def step(walk):
        mean, std = walk(enc, times, values, mask)
        (mean.sum() + std.sum()).backward()

    generic = _kernels(lambda: step(_BackwardGRU._static_z0))
    lean = _kernels(lambda: step(ODERNNEncoder._static_z0))
    assert lean < 0.55 * generic, (lean, generic)


def test_walk_only_for_the_paper_cell():
    assert not ODERNNEncoder(3, 4, hidden=5, gru_units=7)._mean_std_walk  # no std state
    assert not ODERNNEncoder(3, 4, hidden=5)._mean_std_walk  # nn.GRUCell
    assert not encoder(solver={"method": "rk4"})._mean_std_walk


@pytest.mark.parametrize(("length", "observed"), [(1, True), (6, False)])
def test_walk_of_one_point_or_of_nothing_observed(length, observed):
    """Edge batches: a single time point; a batch nobody observes (the eager walk then never
    visits the cell: its backward must not fail on empty lists; found by hand)."""
    enc = encoder(2)
    times = torch.linspace(0, 1, length, dtype=F64)
    values = torch.randn(3, length, 3, dtype=F64, requires_grad=True)
    mask = torch.full((3, length, 3), float(observed), dtype=F64)
    reference = enc._z0(enc._walk_union(times, values, mask, mask.amax(-1) > 0))
    def grad(out):  # unobserved values take no part: a zero gradient
        return torch.autograd.grad(out[0].sum() + out[1].sum(), values, allow_unused=True,
                                   materialize_grads=True)[0]

    want = grad(reference)
    for walk in (enc(times, values, mask), enc._static_z0(times, values, mask)):
        torch.testing.assert_close(walk, reference, rtol=0, atol=1e-13)
        torch.testing.assert_close(grad(walk), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layers", [1, 3])
def test_odernn_baseline_walk_equals_its_generic_walk(layers):
    """The ODE-RNN baseline with the paper code's state walks first to last and predicts each
    point from the state before its update: predictions, final state and every gradient as its
    generic walk, eager (skips) and static (what a graph records)."""
    from latentode.models import ODERNN
    from latentode.models.baselines import _Deterministic

    torch.manual_seed(0)
    model = ODERNN(3, latents=5, ode_units=9, ode_layers=layers, gru_units=7, std_state=True,
                   dec_units=8).double()
    assert model._mean_std_walk
    assert not ODERNN(3, latents=5, gru_units=7)._mean_std_walk  # no std state
    # distinct times: the generic walk maps prediction times to data points by value, so a
    # repeated time would take the first point's prediction (batches hold distinct times)
    times, values, mask = batch(4, repeat=False)
    mask = mask.bool()
    values.requires_grad_(True)
    params = [values, *model.parameters()]
    reference = _Deterministic.forward(model, times, values, mask)
    weights = torch.randn_like(reference.pred)

    def grads(pred, h):
        return torch.autograd.grad((weights * pred).sum() + h.square().sum(), params)

    want = grads(reference.pred, reference.z0_mean)
    eager = model(times, values, mask)
    static_pred, static_h = model._graph_fn(times, values, mask)
    for pred, h in ((eager.pred, eager.z0_mean), (static_pred.unsqueeze(0),
                                                   static_h[..., : model.latents])):
        torch.testing.assert_close(pred, reference.pred, rtol=0, atol=1e-13)
        torch.testing.assert_close(h, reference.z0_mean, rtol=0, atol=1e-13)
        for a, b in zip(want, grads(pred, h), strict=True):
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_float64_times_with_float32_values():
    """Gaps are taken in the values' precision, as the generic walk's 0-dim gap does: the
    state stays float32 (a 1-element float64 gap would have promoted it; found by review)."""
    enc = encoder(2).float()
    times = torch.linspace(0, 1, 7, dtype=F64)
    values, mask = torch.randn(2, 7, 3), torch.ones(2, 7, 3)
    mean, std = enc(times, values, mask)
    want = enc._z0(enc._walk_union(times, values, mask, mask.amax(-1) > 0))
    assert mean.dtype == std.dtype == torch.float32
    torch.testing.assert_close(mean, want[0])
    torch.testing.assert_close(std, want[1])
