"""The encoders' CUDA-graph option: the static union walk it records equals the eager walk
(on CPU), and on a GPU the replayed graphs train exactly as the eager encoder does."""

from __future__ import annotations

import copy
import json
import pickle
import warnings

import pytest
import torch
from test_ddp import _train_cli

from latentode.models import LatentODE
from latentode.nn import ODERNNEncoder, RNNEncoder

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

ENCODERS = {
    "odernn-gru": lambda **kw: ODERNNEncoder(3, 4, hidden=6, ode_units=10, z0_units=8, **kw),
    "odernn-std": lambda **kw: ODERNNEncoder(3, 4, hidden=6, ode_units=10, ode_layers=2,
                                             z0_units=8, gru_units=7, std_state=True, **kw),
    "odernn-mlp": lambda **kw: ODERNNEncoder(3, 4, hidden=6, ode_units=10, z0_units=8,
                                             gru_units=7, **kw),
    "rnn": lambda **kw: RNNEncoder(3, 4, hidden=6, z0_units=8, **kw),
    "rnn-mlp": lambda **kw: RNNEncoder(3, 4, hidden=6, z0_units=8, gru_units=7, **kw),
}


def _batch(seed: int = 0, batch: int = 5, length: int = 16, device: str = "cpu"):
    gen = torch.Generator().manual_seed(seed)
    times = torch.sort(torch.rand(length, generator=gen, dtype=torch.float64)).values * 4
    values = torch.randn(batch, length, 3, generator=gen, dtype=torch.float64)
    mask = torch.rand(batch, length, 3, generator=gen) < 0.3
    mask[:, 5] = False  # a time point no series sees: the eager walk skips it
    mask[:, -1] = False  # nor the last one
    mask[-1] = False  # a series with nothing to read
    return times.to(device), values.to(device), mask.to(device)


def _grads(encoder, out):
    loss = (out[0] ** 2).sum() + out[1].log().sum()
    return torch.autograd.grad(loss, list(encoder.parameters()))


@pytest.mark.parametrize("kind", sorted(ENCODERS))
def test_static_walk_equals_the_eager_walk(kind):
    """What a graph records (every point visited, updates masked) is the eager walk's result,
    values and gradients, including time points nobody observes."""
    torch.manual_seed(0)
    encoder = ENCODERS[kind]().double()
    times, values, mask = _batch()
    eager = encoder(times, values, mask)
    static = encoder._static_z0(times, values, mask.double())
    for a, b in zip(eager, static, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)
    for a, b in zip(_grads(encoder, eager), _grads(encoder, static), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_cuda_graph_on_cpu_is_the_eager_encoder():
    torch.manual_seed(0)
    plain = ENCODERS["odernn-std"]().double()
    graphed = ENCODERS["odernn-std"](cuda_graph=True).double()
    graphed.load_state_dict(plain.state_dict())
    times, values, mask = _batch()
    for a, b in zip(plain(times, values, mask), graphed(times, values, mask), strict=True):
        assert torch.equal(a, b)
    assert len(graphed._graphs) == 0  # nothing recorded off the GPU


def test_cuda_graph_rejects_walks_it_cannot_record():
    with pytest.raises(ValueError, match="schedule='union'"):
        ODERNNEncoder(3, 4, schedule="series", cuda_graph=True)
    with pytest.raises(ValueError, match="schedule='union'"):
        RNNEncoder(3, 4, schedule="series", cuda_graph=True)
    with pytest.raises(ValueError, match=r"one Euler step per gap.*'rk4'"):
        ODERNNEncoder(3, 4, solver={"method": "rk4"}, cuda_graph=True)


def test_encoder_with_graph_cache_copies_and_pickles_without_it():
    encoder = ENCODERS["odernn-std"](cuda_graph=True)
    cache = encoder._graphs
    twin = copy.deepcopy(encoder)
    assert twin._graphs is not cache and twin._graphs.owner is twin
    again = pickle.loads(pickle.dumps(encoder))
    assert again._graphs.owner is again and again.cuda_graph


@cuda
@pytest.mark.parametrize("kind", sorted(ENCODERS))
def test_replayed_graph_equals_the_eager_encoder_on_a_gpu(kind):
    """Several replays (new data each time, weights changed in place between them) give the
    eager encoder's values and gradients."""
    torch.manual_seed(0)
    plain = ENCODERS[kind]().double().cuda()
    graphed = ENCODERS[kind](cuda_graph=True).double().cuda()
    graphed.load_state_dict(plain.state_dict())
    for seed in range(3):
        times, values, mask = _batch(seed, device="cuda")
        want, got = plain(times, values, mask), graphed(times, values, mask)
        for a, b in zip(want, got, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
        for a, b in zip(_grads(plain, want), _grads(graphed, got), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        with torch.no_grad():
            for p, q in zip(plain.parameters(), graphed.parameters(), strict=True):
                p.mul_(0.9)
                q.mul_(0.9)
    assert len(graphed._graphs) == 1  # one shape, one graph


@cuda
def test_graphs_follow_the_model_across_devices_and_shapes():
    torch.manual_seed(0)
    plain = ENCODERS["odernn-std"]().double().cuda()
    graphed = ENCODERS["odernn-std"](cuda_graph=True).double().cuda()
    graphed.load_state_dict(plain.state_dict())
    graphed._graphs.capacity = 2
    times, values, mask = _batch(device="cuda")
    graphed(times, values, mask)
    graphed.cpu().cuda()  # new parameter tensors: the recorded graph is stale and dropped
    for batch, length in ((5, 16), (4, 16), (5, 12)):
        times, values, mask = _batch(1, batch, length, device="cuda")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = graphed(times, values, mask)
        torch.testing.assert_close(got, plain(times, values, mask), rtol=1e-12, atol=1e-13)
        assert any("run without a graph" in str(w.message) for w in caught) == (length == 12)
    assert len(graphed._graphs) == 2
    graphed.eval()  # evaluation runs eagerly
    with torch.no_grad():
        torch.testing.assert_close(graphed(times, values, mask), plain(times, values, mask))


@cuda
def test_latent_ode_trains_alike_with_and_without_graphs():
    """Five Adamax steps of a latent ODE (float64): the same parameters with the graphed
    encoder as with the eager one."""
    times, values, mask = _batch(batch=6, device="cuda")
    values = values.double()
    models = []
    for cuda_graph in (False, True):
        torch.manual_seed(0)
        encoder = ENCODERS["odernn-std"](cuda_graph=cuda_graph)
        model = LatentODE(3, 4, encoder=encoder, solver={"method": "rk4"}).double().cuda()
        optimizer = torch.optim.Adamax(model.parameters(), lr=1e-2)
        torch.manual_seed(1)
        for _ in range(5):
            optimizer.zero_grad()
            terms = model.loss(times, values, mask, torch.ones_like(mask))
            terms["loss"].backward()
            optimizer.step()
        models.append(model)
    for p, q in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-11)


@cuda
def test_console_script_trains_with_cuda_graphs(tmp_path):
    """``latentode-train trainer=gpu model.encoder.cuda_graph=true`` trains as without."""
    metrics = {}
    for name, flag in (("eager", "false"), ("graph", "true")):
        run = tmp_path / name
        _train_cli(run, "trainer=gpu", f"model.encoder.cuda_graph={flag}")
        metrics[name] = json.loads((run / "test_metrics.json").read_text())["metrics"]
    for key, value in metrics["eager"].items():
        assert metrics["graph"][key] == pytest.approx(value, rel=1e-3, abs=1e-6), key


@cuda
def test_static_walk_and_replays_never_wait_for_the_gpu():
    """The recorded walk has no host synchronisation (a graph could not hold one), and a
    replay, forward and backward, adds none: the CPU runs ahead of the GPU."""
    torch.manual_seed(0)
    encoder = ENCODERS["odernn-std"](cuda_graph=True).cuda()
    times, values, mask = (x.float() if x.is_floating_point() else x
                           for x in _batch(device="cuda"))
    mask = mask.float()
    encoder(times, values, mask)  # the first call records (make_graphed_callables synchronises)
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        mean, std = encoder._static_z0(times, values, mask)
        (mean.sum() + std.sum()).backward()
        mean, std = encoder(times, values, mask)
        (mean.sum() + std.sum()).backward()
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def test_mixed_precision_autocast_is_refused_with_advice(monkeypatch):
    """Under CUDA autocast with its cache (Lightning's 16-mixed / bf16-mixed) recording would
    freeze casted weights: a clear error instead of torch's."""
    encoder = ENCODERS["odernn-std"](cuda_graph=True)
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda *a: True)
    with pytest.raises(RuntimeError, match=r"32-bit precision or set model\.encoder\.cuda_graph"):
        encoder._graphs(*_batch())
