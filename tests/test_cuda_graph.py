"""The encoders' CUDA-graph option: the static union walk it records equals the eager walk
(on CPU), and on a GPU the replayed graphs train exactly as the eager encoder does."""

from __future__ import annotations

import copy
import json
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from latentode.models import ODERNN, LatentODE
from latentode.nn import ODERNNEncoder, RNNEncoder
from latentode.nn.encoders import start_at_last_observation

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

def _train(run: Path, *overrides: str) -> None:
    """``latentode-train`` on tiny periodic data (one shared grid) into ``run``."""
    script = Path(sys.executable).parent / "latentode-train"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "latentode.cli.train"]
    tiny = ["trainer.max_epochs=1", "data.dataset.n_series=24", "data.dataset.n_points=30",
            "data.batch_size=4", "plots.n_series=1", "plots.n_samples=2",
            "callbacks.progress_bar.refresh_rate=0", f"hydra.run.dir={run}"]
    result = subprocess.run([*command, *tiny, *overrides], capture_output=True, text=True,
                            timeout=300, cwd=run.parent)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]


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
    walked = start_at_last_observation(times, mask.any(-1))  # what forward gives the walks
    static = encoder._static_z0(walked, values, mask.double())
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
    encoder.__dict__["_compiled_call_impl"] = object()  # as torch.compile leaves it
    assert not {"_graph_cache", "_compiled_call_impl"} & set(encoder.__getstate__())


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
    plain.eval()
    graphed.eval()
    for mode in (torch.no_grad, torch.inference_mode):  # evaluation: the forward alone
        for seed in range(3, 6):
            times, values, mask = _batch(seed, device="cuda")
            with mode():
                want, got = plain(times, values, mask), graphed(times, values, mask)
            for a, b in zip(want, got, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
            with torch.no_grad():
                for p, q in zip(plain.parameters(), graphed.parameters(), strict=True):
                    p.mul_(1.1)
                    q.mul_(1.1)
    assert len(graphed._graphs) == 3  # and one forward graph per mode


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
    graphed.eval()  # evaluation: another graph, past the capacity: eager
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
@pytest.mark.parametrize("model", ["latent_ode", "odernn"])
def test_console_script_trains_with_cuda_graphs(model, tmp_path):
    """``latentode-train trainer=gpu model.encoder.cuda_graph=true`` (latent ODE) and
    ``model=odernn model.cuda_graph=true`` train as without."""
    if model == "latent_ode":
        key, sizes = "model.encoder.cuda_graph", ["model.gen_units=8", "model.encoder.hidden=6",
                                                  "model.encoder.z0_units=8", "solver=rk4"]
    else:
        key, sizes = "model.cuda_graph", ["model=odernn", "model.latents=6",
                                          "model.ode_units=8", "model.dec_units=8"]
    metrics = {}
    for name, flag in (("eager", "false"), ("graph", "true")):
        run = tmp_path / name
        _train(run, "trainer=gpu", *sizes, f"{key}={flag}")
        metrics[name] = json.loads((run / "test_metrics.json").read_text())["metrics"]
    for key, value in metrics["eager"].items():
        assert metrics["graph"][key] == pytest.approx(value, rel=1e-3, abs=1e-6), key


@cuda
def test_static_walk_and_replays_never_wait_for_the_gpu():
    """The recorded walk has no host synchronisation (a graph could not hold one), and a
    replay (training: forward and backward; evaluation: forward) adds none: the CPU runs ahead
    of the GPU."""
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
    encoder.eval()
    with torch.inference_mode():
        encoder(times, values, mask)  # records the forward graph
        torch.cuda.set_sync_debug_mode("error")
        try:
            encoder(times, values, mask)
        finally:
            torch.cuda.set_sync_debug_mode(previous)


def test_mixed_precision_autocast_is_refused_with_advice(monkeypatch):
    """Under CUDA autocast with its cache (Lightning's 16-mixed / bf16-mixed) recording would
    freeze casted weights: a clear error instead of torch's."""
    encoder = ENCODERS["odernn-std"](cuda_graph=True)
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda *a: True)
    with pytest.raises(RuntimeError, match=r"32-bit precision or set model\.encoder\.cuda_graph"):
        encoder._graphs(*_batch())


ODERNNS = {
    "plain": lambda **kw: ODERNN(3, latents=5, ode_units=10, dec_units=8, **kw),
    "std": lambda **kw: ODERNN(3, latents=5, ode_units=10, ode_layers=2, gru_units=7,
                               std_state=True, dec_units=8, **kw),
}


def _odernn_pair(kind: str, device: str = "cpu"):
    torch.manual_seed(0)
    plain = ODERNNS[kind]().double().to(device)
    graphed = ODERNNS[kind](cuda_graph=True).double().to(device)
    graphed.load_state_dict(plain.state_dict())
    return plain, graphed


@pytest.mark.parametrize("kind", sorted(ODERNNS))
def test_odernn_static_walk_equals_its_walk(kind):
    """The ODE-RNN baseline's recorded walk (every point visited) gives its predictions and
    final state, and their gradients, also at points nobody observes."""
    model, _ = _odernn_pair(kind)
    times, values, mask = _batch()
    out = model(times, values, mask)
    pred, h = model._graph_fn(times, values, mask)
    torch.testing.assert_close(pred, out.pred[0], rtol=0, atol=1e-14)
    torch.testing.assert_close(h[..., : model.latents], out.z0_mean, rtol=0, atol=1e-14)
    params = list(model.parameters())
    want = torch.autograd.grad(out.pred.square().sum(), params)
    got = torch.autograd.grad(pred.square().sum(), params)
    for a, b in zip(want, got, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="one Euler step per gap"):
        ODERNN(3, solver={"method": "rk4"}, cuda_graph=True)
    assert len(_odernn_pair(kind)[1]._graphs) == 0


@cuda
@pytest.mark.parametrize("kind", sorted(ODERNNS))
def test_odernn_replayed_graph_equals_eager_on_a_gpu(kind):
    plain, graphed = _odernn_pair(kind, "cuda")
    for seed in range(3):
        times, values, mask = _batch(seed, device="cuda")
        want = plain.loss(times, values, mask, torch.ones_like(mask))
        got = graphed.loss(times, values, mask, torch.ones_like(mask))
        torch.testing.assert_close(got["loss"], want["loss"], rtol=1e-12, atol=1e-13)
        for a, b in zip(torch.autograd.grad(want["loss"], list(plain.parameters())),
                        torch.autograd.grad(got["loss"], list(graphed.parameters())),
                        strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert len(graphed._graphs) == 1
    plain.eval()
    graphed.eval()  # evaluation at the data times: a forward graph; other times: eager
    later = torch.tensor([5.0], dtype=torch.float64, device="cuda")  # past every data time
    for seed in range(3, 5):
        times, values, mask = _batch(seed, device="cuda")
        with torch.inference_mode():
            torch.testing.assert_close(graphed(times, values, mask).pred,
                                       plain(times, values, mask).pred, rtol=1e-12, atol=1e-13)
            torch.testing.assert_close(graphed(times, values, mask, pred_times=later).pred,
                                       plain(times, values, mask, pred_times=later).pred)
    assert len(graphed._graphs) == 2


def test_cli_suggests_cuda_graph_on_a_gpu_where_it_applies():
    from latentode.cli.train import cuda_graph_hint

    lode = LatentODE(3, 4, encoder=ENCODERS["odernn-std"]())
    assert "model.encoder.cuda_graph=true" in cuda_graph_hint("cuda", lode)
    assert cuda_graph_hint("cpu", lode) is None
    assert cuda_graph_hint("cuda", LatentODE(3, 4, encoder=ENCODERS["odernn-std"](
        cuda_graph=True))) is None
    series = LatentODE(3, 4, encoder=ENCODERS["odernn-std"](schedule="series"))
    assert cuda_graph_hint("cuda", series) is None
    rk4 = LatentODE(3, 4, encoder=ODERNNEncoder(3, 4, solver={"method": "rk4"}))
    assert cuda_graph_hint("cuda", rk4) is None
    assert "model.cuda_graph=true" in cuda_graph_hint("cuda", ODERNNS["std"]())


class _Twice(torch.autograd.Function):
    """Stands in for a recorded graph on CPU: one autograd node per call, counted."""

    calls = 0

    @staticmethod
    def forward(ctx, x):
        _Twice.calls += 1
        return 2 * x

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad


def test_a_call_owing_a_backward_is_not_replayed_over(recwarn):
    """Two forward passes before one backward: the second must not overwrite the first's
    activations in the graph, so it runs eagerly; replays resume after the backward, or once
    the pending call's autograd graph is gone."""
    from latentode.nn.graphs import GraphCache

    _Twice.calls = 0
    owner = torch.nn.Linear(1, 1)
    eager_calls = []
    cache = GraphCache(owner, lambda x: (eager_calls.append(1) or 2 * x,))
    x = torch.ones(3, requires_grad=True)
    key = (True, False, (x.shape, x.dtype, x.device, True))
    cache._params = tuple(p.data_ptr() for p in owner.parameters())
    cache._graphs[key] = lambda a: (_Twice.apply(a),)  # as if recorded
    first = cache(x)[0]
    second = cache(x)[0]  # first's backward is still owed: eager
    assert (_Twice.calls, len(eager_calls)) == (1, 1)
    assert any("before the backward of its previous call" in str(w.message) for w in recwarn)
    first.sum().backward()
    third = cache(x)[0]  # first's backward ran: replay
    assert (_Twice.calls, len(eager_calls)) == (2, 1)
    del third  # dropped without a backward: its graph is freed, replays go on
    cache(x)
    assert (_Twice.calls, len(eager_calls)) == (3, 1)
    torch.testing.assert_close(second, 2 * x)


def test_evaluation_without_autograd_uses_its_own_forward_graphs():
    """Under ``no_grad`` and ``inference_mode`` the cache replays a forward-only graph, one per
    mode (a graph recorded in inference mode holds inference tensors), never the training
    graph, and owes no backward."""
    from latentode.nn.graphs import GraphCache

    owner = torch.nn.Linear(1, 1)
    eager_calls = []
    cache = GraphCache(owner, lambda x: (eager_calls.append(1) or 2 * x,))
    cache._params = tuple(p.data_ptr() for p in owner.parameters())
    x = torch.ones(3)
    shape = (x.shape, x.dtype, x.device, False)
    replays = {"train": 0, "no_grad": 0, "inference": 0}

    def stand_in(kind):
        def replay(a):
            replays[kind] += 1
            return (3 * a,)
        return replay

    cache._graphs[(True, False, shape)] = stand_in("train")
    cache._graphs[(False, False, shape)] = stand_in("no_grad")
    cache._graphs[(False, True, shape)] = stand_in("inference")
    with torch.no_grad():
        cache(x)
        cache(x)  # no backward is owed without autograd: replayed again
    with torch.inference_mode():
        out = cache(x)[0]
    torch.testing.assert_close(out, 3 * x)
    assert replays == {"train": 0, "no_grad": 2, "inference": 1} and not eager_calls
    assert not cache._pending
