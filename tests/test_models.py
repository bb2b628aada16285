"""Latent ODE models on tiny data: shapes, gradients, masks honoured, loss terms."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from latentode.cli.checkpoints import (
    check_resume,
    upgrade_state_dict,
    weights_mismatch,
)
from latentode.models import LatentODE, gaussian_kl, masked_gaussian_loglik
from latentode.nn import ODERNNEncoder, RNNEncoder
from latentode.nn.encoders import start_at_last_observation
from latentode.solvers import odeint

ENCODERS = {
    "odernn": ODERNNEncoder,
    "rnn": RNNEncoder,
    # the paper code's encoder state: a mean (moved by the ODE) and a std, MLP-gated updates
    "odernn-std": functools.partial(ODERNNEncoder, std_state=True, gru_units=12),
    # each series walked through its own observations (tests/test_schedule.py for the walk)
    "odernn-series": functools.partial(ODERNNEncoder, schedule="series", max_step=0.3),
    "rnn-series": functools.partial(RNNEncoder, schedule="series"),
}


def tiny_batch(seed: int = 0, batch: int = 4, length: int = 7, dims: int = 3):
    gen = torch.Generator().manual_seed(seed)
    times = torch.sort(torch.rand(length, generator=gen)).values * 2
    values = torch.randn(batch, length, dims, generator=gen)
    mask = torch.rand(batch, length, dims, generator=gen) < 0.6
    mask[:, 0] = True  # every series observed somewhere
    encoder = mask & (torch.rand(batch, length, 1, generator=gen) < 0.5)
    encoder[:, 0] = mask[:, 0]
    return times, values, mask, encoder


def make_model(kind: str, gradient: str = "checkpoint") -> LatentODE:
    torch.manual_seed(0)
    encoder = ENCODERS[kind](3, 4, hidden=8, z0_units=16)
    return LatentODE(3, latents=4, encoder=encoder, gen_units=16, obs_std=0.1, n_samples=2,
                     solver={"gradient": gradient, "rtol": 1e-5, "atol": 1e-6})


@pytest.mark.parametrize("kind", sorted(ENCODERS))
def test_forward_shapes_and_gradients_reach_every_parameter(kind):
    model = make_model(kind)
    times, values, mask, encoder = tiny_batch()
    out = model(times, values, encoder)
    assert out.pred.shape == (2, 4, 7, 3)
    assert out.z0_mean.shape == out.z0_std.shape == (4, 4)
    assert bool((out.z0_std > 0).all())
    terms = model.loss(times, values, encoder, mask)
    terms["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kind", sorted(ENCODERS))
def test_unobserved_values_change_nothing(kind):
    model = make_model(kind)
    times, values, mask, encoder = tiny_batch()
    noisy = torch.where(mask, values, values + 1e3 * torch.randn_like(values))
    torch.manual_seed(5)
    a = model.loss(times, values, encoder, mask)
    torch.manual_seed(5)
    b = model.loss(times, noisy, encoder, mask)
    for key in ("loss", "loglik", "kl", "mse"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


@pytest.mark.parametrize("kind", sorted(ENCODERS))
def test_encoder_reads_only_its_mask(kind):
    """Values the encoder may not see (but that are targets) do not move q(z0)."""
    model = make_model(kind)
    times, values, _, encoder = tiny_batch()
    hidden = torch.where(encoder, values, values + 10.0)
    m1, s1 = model.encode(times, values, encoder)
    m2, s2 = model.encode(times, hidden, encoder)
    torch.testing.assert_close(m1, m2, rtol=0, atol=0)
    torch.testing.assert_close(s1, s2, rtol=0, atol=0)
    seen = torch.where(encoder, values + 1.0, values)
    assert not torch.allclose(model.encode(times, seen, encoder)[0], m1)
    # the encoder called directly: NaN where it may not look (values * mask made q(z0) NaN)
    nan = torch.where(encoder, values, float("nan"))
    m3, s3 = model.encoder(times, nan, encoder)
    torch.testing.assert_close((m3, s3), (m1, s1), rtol=0, atol=0)


@pytest.mark.parametrize("kind", [*sorted(ENCODERS), "odernn-fused-gru"])
def test_encoder_starts_at_the_last_observation(kind):
    """Extrapolation batches carry the target times after what the encoder sees: q(z0) (and
    its gradients) must be what the observed part alone gives, as in the paper's code, whose
    encoder is given only that part: no drift of the zero state through the unobserved tail,
    no first gap spanning it. Eager walks and the static walk a CUDA graph records."""
    torch.manual_seed(0)
    if kind == "odernn-fused-gru":  # nn.GRUCell + one Euler step: the fused CPU scan
        enc = ODERNNEncoder(3, 4, hidden=6, ode_units=10, z0_units=8).double()
        assert enc._fused_euler_gru
    else:
        enc = ENCODERS[kind](3, 4, hidden=6, z0_units=8).double()
    times, values, _, seen = tiny_batch(length=12)
    times, values, seen = times.double(), values.double(), seen.double()
    seen[:, 7:] = 0  # the encoder sees the first 7 points; 5 target times follow
    seen[0, 6] = 1.0
    head = [times[:7], values[:, :7], seen[:, :7]]
    full, alone = enc(times, values, seen), enc(*head)
    walks = [full]
    if enc.schedule == "union":  # the graphed path: forward's times, every point visited
        walked = start_at_last_observation(times, seen.amax(-1) > 0)
        walks.append(enc._static_z0(walked, values, seen))
    for walk in walks:
        for a, b in zip(walk, alone, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-13)
    loss_full = sum(o.square().sum() for o in full)
    loss_head = sum(o.square().sum() for o in enc(*head))
    grads = [torch.autograd.grad(loss, list(enc.parameters())) for loss in (loss_full, loss_head)]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("kind", sorted(ENCODERS))
def test_encoder_knows_where_a_series_observations_begin(kind):
    """Two series with the same values, one seen at 0.1-0.3 and one at 0.7-0.9 of [0, 1]: z0
    sits at 0, so q(z0) must differ. The RNN encoder's GRU steps only at a series' own points
    and gave both the same posterior (5.96e-08 apart) before its lead step."""
    torch.manual_seed(0)
    enc = ENCODERS[kind](2, 3, hidden=6, z0_units=8).double()
    times = torch.linspace(0, 1, 11, dtype=torch.float64)
    values = torch.zeros(2, 11, 2, dtype=torch.float64)
    mask = torch.zeros(2, 11, 2, dtype=torch.bool)
    wave = torch.tensor([[0.5, -1.0], [1.5, 0.2], [-0.3, 0.8]], dtype=torch.float64)
    values[0, 1:4], values[1, 7:10] = wave, wave
    mask[0, 1:4] = mask[1, 7:10] = True
    mean, _ = enc(times, values, mask)
    assert (mean[0] - mean[1]).abs().max() > 1e-3
    if not kind.endswith("series"):
        return  # the union walks depend on the batch: the last gap, the ODE-RNN's zero state
    # each alone (its own points and the start) gives its posterior in the batch
    for b, keep in ((0, [0, 1, 2, 3]), (1, [0, 7, 8, 9])):
        alone = enc(times[keep], values[b : b + 1, keep], mask[b : b + 1, keep])
        torch.testing.assert_close(mean[b : b + 1], alone[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("schedule", ["union", "series"])
def test_rnn_encoder_gives_a_series_never_seen_the_posterior_of_no_data(schedule):
    """The lead is for series with observations: one without any gets ``q(z0)`` of the zero
    state and a zero lead, whatever the batch."""
    torch.manual_seed(0)
    enc = RNNEncoder(3, 4, hidden=6, z0_units=8, schedule=schedule).double()
    times, values, _, seen = tiny_batch(length=9)
    times, values = times.double(), values.double()
    seen[1, :4] = False  # a series that starts late
    seen[2] = False  # one never seen
    ours = enc(times, values, seen)
    blank = enc._z0(torch.zeros(1, enc.state_dim + 1, dtype=torch.float64))
    torch.testing.assert_close(ours[0][2:3], blank[0], rtol=0, atol=0)


def test_rnn_encoder_state_dicts_from_before_the_lead_input_predict_as_trained():
    """A state dict without the lead input (an encoder of before it) loads with a zero weight
    on the lead: exactly the model it was trained as. Judged by shape, since Lightning's weight
    averaging (the default ``callbacks.ema``) writes checkpoints without metadata; through a
    Lightning-like container and the forecaster's pick of the model's weights too."""
    torch.manual_seed(0)
    old = RNNEncoder(3, 4, hidden=6, z0_units=8, lead_gap=False)
    times, values, _, seen = tiny_batch()
    seen[0, :3] = False
    new = RNNEncoder(3, 4, hidden=6, z0_units=8)
    assert not torch.allclose(new(times, values, seen)[0], old(times, values, seen)[0])
    new.load_state_dict(dict(old.state_dict()))  # no metadata, as EMA checkpoints
    # the same model up to float32 rounding: the zero-weight column can change the matmul's
    # summation order (bit-equal on one host's CPU, 6e-9 apart on another's)
    torch.testing.assert_close(new(times, values, seen), old(times, values, seen))
    assert float(new.to_z0[0].weight.detach()[:, -1].abs().max()) == 0.0
    # inside a model inside a Lightning module, as a checkpoint holds it (with and without
    # metadata)
    model = make_model("rnn")
    model.encoder = RNNEncoder(3, 4, hidden=8, z0_units=16, lead_gap=False)
    for checkpoint in (nn.ModuleDict({"model": model}).state_dict(),
                       dict(nn.ModuleDict({"model": model}).state_dict())):
        fresh = make_model("rnn")
        weights = {k.removeprefix("model."): v for k, v in checkpoint.items()}  # as from_run
        assert upgrade_state_dict(fresh, weights) == [
            "encoder: an RNN encoder without the lead input (an earlier latentode's, or "
            "lead_gap=false), given a zero weight on it"]
        assert weights_mismatch(fresh.state_dict(), weights) is None
        fresh.load_state_dict(weights)
        torch.testing.assert_close(fresh.encode(times, values, seen),
                                   model.encode(times, values, seen))
    # a current state dict is left alone; so is any encoder built without the lead
    current = fresh.state_dict()
    assert upgrade_state_dict(fresh, current) == [] and upgrade_state_dict(model, dict(
        model.state_dict())) == []
    # training on from it needs its own layout (the optimiser's state has its shapes); testing
    # it alone (train=false) does not
    container = nn.ModuleDict({"model": fresh})
    with pytest.raises(ValueError, match=r"model\.encoder\.lead_gap=false"):
        check_resume(OmegaConf.create({"train": True}), container,
                     {"state_dict": nn.ModuleDict({"model": model}).state_dict()}, "old.ckpt",
                     Path("run"))
    check_resume(OmegaConf.create({"train": False}), container,
                 {"state_dict": nn.ModuleDict({"model": model}).state_dict()}, "old.ckpt",
                 Path("run"))


def test_gradient_modes_agree():
    times, values, mask, encoder = tiny_batch()
    grads = {}
    for mode in ("backprop", "checkpoint", "adjoint"):
        model = make_model("odernn", mode).double()
        torch.manual_seed(3)
        loss = model.loss(times.double(), values.double(), encoder, mask)["loss"]
        grads[mode] = torch.cat(
            [g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))]
        )
    for mode in ("checkpoint", "adjoint"):
        err = (grads[mode] - grads["backprop"]).norm() / grads["backprop"].norm()
        assert err < 1e-4, (mode, err.item())


def test_likelihood_and_kl_match_closed_forms():
    values = torch.tensor([[[1.0], [2.0], [0.0]]])  # (B=1, T=3, D=1)
    pred = torch.tensor([[[[1.5], [2.0], [9.0]]]])  # (S=1, ...)
    mask = torch.tensor([[[True], [True], [False]]])
    std = 0.5
    ll = masked_gaussian_loglik(values, pred, mask, std)
    per_point = [-0.5 * (r / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)
                 for r in (0.5, 0.0)]
    assert ll.shape == (1, 1)
    assert ll.item() == pytest.approx(sum(per_point) / 2)
    mean, sd = torch.tensor([[0.5, -1.0]]), torch.tensor([[2.0, 0.5]])
    expected = 0.5 * sum(s**2 + m**2 - 1 - math.log(s**2) for m, s in [(0.5, 2.0), (-1.0, 0.5)]) / 2
    assert gaussian_kl(mean, sd).item() == pytest.approx(expected)


def test_prediction_at_other_times():
    model = make_model("odernn")
    times, values, _, encoder = tiny_batch()
    later = torch.cat([times[:1], torch.linspace(float(times[-1]), 4.0, 5)])
    out = model(times, values, encoder, pred_times=later)
    assert out.pred.shape == (2, 4, 6, 3)


def test_std_state_moves_only_the_mean_between_observations():
    torch.manual_seed(0)
    encoder = ODERNNEncoder(3, 4, hidden=5, z0_units=16, std_state=True, gru_units=12)
    h = torch.cat([torch.randn(2, 5), torch.rand(2, 5)], -1)
    moved = encoder.evolve(h, torch.tensor(0.5), torch.tensor(0.2))
    assert not torch.allclose(moved[:, :5], h[:, :5])
    assert torch.equal(moved[:, 5:], h[:, 5:])
    x = torch.randn(2, 6)
    assert bool((encoder.cell(x, h)[:, 5:] >= 0).all())  # the std half stays non-negative


def test_paper_gru_cell_variant_trains():
    torch.manual_seed(0)
    encoder = ODERNNEncoder(3, 4, hidden=8, z0_units=16, gru_units=12)
    model = LatentODE(3, latents=4, encoder=encoder, gen_units=16, obs_std=0.1)
    times, values, mask, enc = tiny_batch()
    model.loss(times, values, enc, mask)["loss"].backward()
    grads = [p.grad for p in model.encoder.cell.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_odernn_euler_shortcut_equals_odeint():
    times, values, _, encoder = tiny_batch()
    torch.manual_seed(0)
    fast = ODERNNEncoder(3, 4, hidden=8, z0_units=16)
    torch.manual_seed(0)
    slow = ODERNNEncoder(3, 4, hidden=8, z0_units=16, solver={"max_steps": 10})
    assert fast._single_euler_step and not slow._single_euler_step
    for a, b in zip(fast(times, values, encoder), slow(times, values, encoder), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_fused_odernn_pass_equals_the_generic_loop_values_and_gradients():
    """The fused Euler+GRU pass (ODERNNEncoder's default) against the generic loop it replaces."""
    times, values, _, encoder = tiny_batch(batch=5, length=9)
    times = times.double()

    class Generic(ODERNNEncoder):
        _fused_euler_gru = False

    torch.manual_seed(0)
    fast = ODERNNEncoder(3, 4, hidden=8, z0_units=16).double()
    slow = Generic(3, 4, hidden=8, z0_units=16).double()
    slow.load_state_dict(fast.state_dict())
    assert fast._fused_euler_gru and not slow._fused_euler_gru
    outs = []
    for net in (fast, slow):
        mean, std = net(times, values.double(), encoder)
        grads = torch.autograd.grad((mean.square().sum() + std.sum()), list(net.parameters()))
        outs.append((mean, std, grads))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    torch.testing.assert_close(outs[0][1], outs[1][1])
    for a, b in zip(outs[0][2], outs[1][2], strict=True):
        torch.testing.assert_close(a, b)


def test_z0_at_first_target_predicts_from_the_first_target_time():
    """The paper code's extrapolation: z0 lives at the first time with a target, the decoder
    integrates from there; the loss equals predicting the target part from that time alone, and
    with targets from the first time on (interpolation) nothing changes."""
    model = make_model("odernn")
    paper = make_model("odernn")
    paper.z0_at = "first_target"
    paper.load_state_dict(model.state_dict())
    times, values, mask, encoder = tiny_batch(length=10)
    encoder = encoder.clone()
    encoder[:, 6:] = False  # the encoder sees the first 6 points, the targets are the last 4
    encoder[:, 0] = True
    target = mask.clone()
    target[:, :6] = False
    target[:, 6] = True
    torch.manual_seed(3)
    out = paper.loss(times, values, encoder, target)
    torch.manual_seed(3)
    alone = model(times, values, encoder, pred_times=times[6:])  # z0 at times[6]
    loglik = masked_gaussian_loglik(values[:, 6:], alone.pred, target[:, 6:], model.obs_std)
    torch.testing.assert_close(out["loglik"], loglik.mean())
    torch.testing.assert_close(out["pred"][:, :, 6:], alone.pred)
    assert out["pred"].shape[2] == len(times)
    torch.manual_seed(3)
    shifted = model.loss(times, values, encoder, target)
    assert not torch.allclose(shifted["loglik"], out["loglik"])  # z0 at times[0]: another model
    torch.manual_seed(4)  # interpolation: targets from the first time on
    x = model.loss(times, values, encoder, mask)
    torch.manual_seed(4)
    y = paper.loss(times, values, encoder, mask)
    for key in ("loss", "loglik", "kl", "mse"):
        assert torch.equal(x[key], y[key]), key


def test_z0_at_is_checked():
    with pytest.raises(ValueError, match="z0_at must be one of"):
        LatentODE(3, z0_at="end")
    with pytest.raises(ValueError, match="z0_at='start' with poisson"):
        LatentODE(3, z0_at="first_target", poisson=True)


def test_plotted_paths_start_where_the_model_places_z0():
    """Plots of a ``first_target`` model start at the first target time, where its z0 is."""
    from latentode.data import Batch
    from latentode.lit.plots import predict_paths

    model = make_model("odernn")
    times, values, mask, encoder = tiny_batch(length=10)
    target = mask.clone()
    target[:, :4] = False
    target[0, 4] = True
    batch = Batch(times, values, mask, encoder, target, torch.arange(len(values)))
    grid, _ = predict_paths(model, batch, n_samples=2, n_grid=20)
    assert grid[0] == times[0]
    model.z0_at = "first_target"
    grid, paths = predict_paths(model, batch, n_samples=2, n_grid=20)
    assert grid[0] == times[4] and paths.shape[2] == len(grid)


def test_latent_ode_class_defaults_are_the_configs():
    from omegaconf import OmegaConf

    from latentode.cli import config_dir

    conf = OmegaConf.load(f"{config_dir()}/model/latent_ode.yaml")
    model = LatentODE(2)
    assert (model.objective, model.n_samples) == (conf.objective, conf.n_samples)
    with pytest.raises(ValueError, match="n_samples must be a whole number >= 1, got 0"):
        LatentODE(2, n_samples=0)
    times = torch.linspace(0, 1, 5)
    values, mask = torch.zeros(3, 5, 2), torch.ones(3, 5, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="n_samples must be at least 1, got 0"):
        model(times, values, mask, n_samples=0)
    with pytest.raises(TypeError, match=r"encoder must be an nn\.Module, got str 'rnn'.*"
                                        r"model/encoder=rnn \(a slash\)"):
        LatentODE(2, encoder="rnn")
    with pytest.raises(ValueError, match=r"LatentODE: latents must be a whole number >= 1, "
                                         r"got -3"):
        LatentODE(2, latents=-3)


# ----------------------------------------------- answering series in batches, each as if alone
@pytest.mark.parametrize("kind", ["odernn", "rnn", "odernn-std"])
def test_series_walk_on_request_gives_each_series_its_lone_posterior(kind):
    """``encode(..., schedule="series")`` walks each series through its own observations,
    whatever the encoder's own walk: a series' posterior in a batch is its posterior alone."""
    model = make_model(kind)
    times, values, _, encoder = tiny_batch()
    encoder[1:, -2:] = False  # series that stop earlier than others: the union walk differs
    mean, std = model.encode(times, values, encoder, schedule="series")
    for b in range(4):
        # alone: its own observation times (and the batch's start, where z0 lives)
        keep = torch.cat([torch.tensor([0]), encoder[b].any(-1).nonzero()[:, 0]]).unique()
        alone = model.encode(times[keep], values[b : b + 1, keep], encoder[b : b + 1, keep])
        torch.testing.assert_close(mean[b : b + 1], alone[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(std[b : b + 1], alone[1], rtol=1e-5, atol=1e-6)


def test_per_series_prediction_times_and_given_z0_noise_match_series_solved_alone():
    """``pred_times`` of shape ``(B, T)`` answers each series at its own times from one solve,
    and ``z0_noise`` fixes the draws: the result is each series' own forward pass, within the
    solver's tolerance (1e-5 here)."""
    model = make_model("odernn")
    times, values, _, encoder = tiny_batch()
    gen = torch.Generator().manual_seed(1)
    rows = torch.cat([torch.zeros(4, 1), torch.sort(torch.rand(4, 5, generator=gen)).values * 3],
                     1)
    rows[0, 4:] = rows[0, 3]  # a shorter row, padded by repeating its last time
    noise = torch.randn(6, 4, 4, generator=gen)
    out = model(times, values, encoder, pred_times=rows, z0_noise=noise,
                encoder_schedule="series")
    assert out.pred.shape == (6, 4, 6, 3)
    for b in range(4):
        own = rows[b].unique()
        alone = model(times, values[b : b + 1], encoder[b : b + 1], pred_times=own,
                      z0_noise=noise[:, b : b + 1], encoder_schedule="series")
        torch.testing.assert_close(out.pred[:, b, : len(own)], alone.pred[:, 0], rtol=1e-4,
                                   atol=1e-4)
    torch.testing.assert_close(out.pred[:, 0, 4:], out.pred[:, 0, 3:4].expand(-1, 2, -1))
    with pytest.raises(ValueError, match=r"z0_noise must have shape \(n_samples, batch, latents"):
        model(times, values, encoder, z0_noise=noise[:, :2])
    with pytest.raises(ValueError, match=r"z0_noise must have shape"):
        model(times, values, encoder, n_samples=3, z0_noise=noise)


def test_series_walk_refused_for_an_encoder_solver_it_cannot_take():
    encoder = ODERNNEncoder(3, 4, hidden=8, solver={"method": "rk4"})
    assert not encoder.walks_series
    times, values, _, mask = tiny_batch()
    with pytest.raises(ValueError, match=r"schedule='series' takes one Euler step per gap"):
        encoder(times, values, mask, schedule="series")
    with pytest.raises(ValueError, match=r"schedule must be one of"):
        encoder(times, values, mask, schedule="each")


@pytest.mark.parametrize("options", [{}, {"std_state": True, "gru_units": 12}],
                         ids=["euler-gru", "mean-std"])
def test_a_derivative_through_the_fused_encoder_walks_is_refused_not_zero(options):
    """The fused walks' hand-written backward is first order: a Hessian through them came out
    zero (torch's once_differentiable catches penalties only). Refused with the way out, which
    walks the same Euler steps twice differentiably."""
    torch.manual_seed(0)
    times = torch.linspace(0, 1, 5, dtype=torch.float64)
    values = torch.randn(2, 5, 2, dtype=torch.float64)
    mask = torch.ones(2, 5, 2, dtype=torch.bool)
    fused = ODERNNEncoder(2, 3, hidden=5, z0_units=8, **options).double()
    generic = ODERNNEncoder(2, 3, hidden=5, z0_units=8, **options,
                            solver={"method": "euler", "max_steps": 10000}).double()
    generic.load_state_dict(fused.state_dict())
    torch.testing.assert_close(generic(times, values, mask)[0], fused(times, values, mask)[0])
    with pytest.raises(RuntimeError, match=r"fused .* walk gives first derivatives only: .* "
                                           r"\+model\.encoder\.solver\.max_steps=10000"):
        torch.autograd.functional.hessian(lambda v: fused(times, v, mask)[0].sum(), values)
    hessian = torch.autograd.functional.hessian(lambda v: generic(times, v, mask)[0].sum(),
                                                values)
    assert hessian.abs().max() > 1e-6
    # first derivatives with create_graph=True still agree
    v = values.clone().requires_grad_(True)
    g_fused, = torch.autograd.grad(fused(times, v, mask)[0].sum(), v, create_graph=True)
    g_generic, = torch.autograd.grad(generic(times, v, mask)[0].sum(), v, create_graph=True)
    torch.testing.assert_close(g_fused.detach(), g_generic.detach())


def unaligned_batch(series: int = 12, points: int = 9, dims: int = 3, task: str = "interp"):
    """A float64 batch of series each at its own random times (a union ~``series`` times
    longer than one series), one channel 30% missing."""
    import numpy as np
    import pandas as pd

    from latentode.data import Collator, Extrapolation, Interpolation, from_dataframe

    rng = np.random.default_rng(0)
    rows = [(s, t, *rng.normal(size=dims)) for s in range(series)
            for t in np.sort(rng.uniform(0, 5, points))]
    df = pd.DataFrame(rows, columns=["series_id", "time", *[f"c{j}" for j in range(dims)]])
    df.loc[rng.random(len(df)) < 0.3, "c1"] = np.nan
    ds = from_dataframe(df, time_scale=1.0)
    made = Interpolation(fraction=0.5) if task == "interp" else Extrapolation(fraction=0.5)
    return Collator(ds, made, origin="series", dtype=torch.float64)(list(range(series)))


@pytest.mark.parametrize("task", ["interp", "extrap"])
@pytest.mark.parametrize("z0_at", ["start", "first_target"])
def test_unaligned_series_are_decoded_at_their_own_targets_with_the_same_terms(
        task, z0_at, monkeypatch):
    """The loss of a batch of unaligned series asks the solver at each series' own target
    times (rows (B, K + 1), not the union of ~B x K times) and gives the terms, the
    predictions at the targets and the gradients of decoding the whole union (float64)."""
    import latentode.models.latent_ode as module

    batch = unaligned_batch(task=task)
    args = (batch.times, batch.values, batch.encoder_mask, batch.target_mask)
    torch.manual_seed(0)
    encoder = ODERNNEncoder(3, 4, hidden=8, ode_units=16, z0_units=16)
    model = LatentODE(3, latents=4, encoder=encoder, gen_units=16, n_samples=3,
                      z0_at=z0_at).double()
    asked = []
    paths = model.latent_paths
    monkeypatch.setattr(model, "latent_paths", lambda z0, t: asked.append(t.shape) or paths(z0, t))
    results = {}
    monkeypatch.setattr(module, "PACK_MIN_CELLS", 0)  # a tiny batch: packed all the same
    for ratio in (module.PACK_RATIO, 10**9):  # packed, then the whole union
        monkeypatch.setattr(module, "PACK_RATIO", ratio)
        model.zero_grad()
        torch.manual_seed(1)
        out = model.loss(*args, kl_weight=0.5)
        out["loss"].backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results[ratio] = (out, grads)
    most = int(batch.target_mask.any(-1).sum(1).max())
    first = module.first_target(batch.target_mask) if z0_at == "first_target" else 0
    assert asked == [(len(batch.values), most + 1), (len(batch.times) - first,)]
    (packed, g_packed), (union, g_union) = results.values()
    for key in ("loss", "loglik", "kl", "mse"):
        assert float(packed[key].detach()) == pytest.approx(float(union[key].detach()),
                                                            rel=1e-12, abs=1e-12)
    target = batch.target_mask.expand_as(union["pred"])
    torch.testing.assert_close(packed["pred"][target], union["pred"][target],
                               rtol=1e-12, atol=1e-14)
    assert bool((packed["pred"][~target.any(-1, keepdim=True).expand_as(target)] == 0).all())
    torch.testing.assert_close(g_packed, g_union, rtol=1e-10, atol=1e-13)


def test_aligned_series_keep_the_union_and_poisson_models_the_whole_grid(monkeypatch):
    """Series on one grid are decoded there (nothing to gather); a Poisson intensity needs
    its integral over every time, so such a model decodes the union even when unaligned."""
    import latentode.models.latent_ode as module

    monkeypatch.setattr(module, "PACK_MIN_CELLS", 0)
    batch = unaligned_batch()
    times, values, target, encoder = tiny_batch()
    for poisson, args in ((False, (times, values.double(), encoder, target)),
                          (True, (batch.times, batch.values, batch.encoder_mask,
                                  batch.target_mask))):
        model = LatentODE(3, latents=4, encoder=ODERNNEncoder(3, 4, hidden=8), gen_units=16,
                          poisson=poisson).double()
        asked = []
        paths = model.latent_paths
        monkeypatch.setattr(model, "latent_paths",
                            lambda z0, t, paths=paths, asked=asked: asked.append(t.dim()) or
                            paths(z0, t))
        model.loss(args[0].double(), *args[1:])
        assert asked == [1]
    # a fixed-step method without step_size steps at the output times: fewer times would be
    # other steps and another loss (rk4 on unaligned extrapolation: 6118 against 6158)
    for solver, dims in (({"method": "rk4"}, 1), ({"method": "rk4", "step_size": 0.3}, 2)):
        model = LatentODE(3, latents=4, encoder=ODERNNEncoder(3, 4, hidden=8), gen_units=16,
                          solver=solver).double()
        assert (model._packed_targets(batch.times, batch.target_mask) is not None) == (dims == 2)


def test_small_batches_of_unaligned_series_keep_the_union(monkeypatch):
    """Below PACK_MIN_CELLS (series x union times) the gathers cost more than they save."""
    import latentode.models.latent_ode as module

    batch = unaligned_batch()
    model = LatentODE(3, latents=4, encoder=ODERNNEncoder(3, 4, hidden=8), gen_units=16).double()
    cells = len(batch.values) * len(batch.times)
    assert model._packed_targets(batch.times, batch.target_mask) is None
    monkeypatch.setattr(module, "PACK_MIN_CELLS", cells)
    assert model._packed_targets(batch.times, batch.target_mask) is not None


def test_latent_ode_names_pred_times_out_of_order():
    """Unsorted pred_times were refused naming the solver's ``t``, which the caller never
    passed; decreasing ones stay a solve backwards from z0 at pred_times[0] (the forecaster's
    times before a history's start)."""
    model = LatentODE(input_dim=2, latents=3).eval()
    times = torch.linspace(0.0, 1.0, 5)
    values, mask = torch.randn(2, 5, 2), torch.ones(2, 5, 2, dtype=torch.bool)
    for bad, where in ((torch.tensor([0.0, 2.0, 1.0]),
                        r"monotonic \(increasing, as it starts\), but pred_times\[2\] = 1 comes "
                        r"after pred_times\[1\] = 2"),
                       (torch.tensor([1.0, 0.5, 0.7]),
                        r"monotonic \(decreasing, as it starts\), but pred_times\[2\] = 0\.7"),
                       ):
        with pytest.raises(ValueError, match=r"pred_times must be .*" + where
                           + r".*integrates from pred_times\[0\].*sort them"):
            model(times, values, mask, 2, pred_times=bad)
    with pytest.raises(ValueError, match=r"strictly monotonic, but pred_times\[2\] = 1 repeats "
                                         r"pred_times\[1\]\. Remove duplicate output times "
                                         r"\(keeping pred_times\[0\], the start, first\).*"
                                         r"integrates from pred_times\[0\].*keep it first\.$"):
        model(times, values, mask, 2, pred_times=torch.tensor([0.0, 1.0, 1.0]))
    rows = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.5, 0.2]])
    with pytest.raises(ValueError, match=r"pred_times\[1\] must be monotonic \(increasing, as it "
                                         r"starts\), but pred_times\[1\]\[2\] = 0\.2 comes after "
                                         r"pred_times\[1\]\[1\] = 0\.5"):
        model(times, values, mask, 2, pred_times=rows)
    with pytest.raises(ValueError, match=r"pred_times contains NaN or inf; output times must "
                                         r"be finite numbers\.$"):  # an IndexError; no sorting
        model(times, values, mask, 2, pred_times=torch.tensor([0.0, math.nan, 1.0]))
    with pytest.raises(ValueError, match=r"every row of per-sample pred_times must start at the "
                                         r"same time.*common start time\.$"):
        model(times, values, mask, 2, pred_times=torch.tensor([[0.0, 1.0], [0.5, 1.0]]))
    with pytest.raises(ValueError, match=r"^t contains NaN"):  # the solver alone names its t
        odeint(lambda t, y: -y, torch.ones(2), torch.tensor([0.0, math.nan]))
    rows[1, 2] = 0.7  # repeats pad a row: fine
    assert model(times, values, mask, 2, pred_times=rows).pred.shape == (2, 2, 3, 2)
    noise = torch.randn(1, 2, 3)
    back = model(times, values, mask, 1, pred_times=torch.tensor([0.0, -0.5]), z0_noise=noise)
    ahead = model(times, values, mask, 1, pred_times=torch.tensor([0.0, 0.5]), z0_noise=noise)
    assert torch.equal(back.pred[:, :, 0], ahead.pred[:, :, 0])  # both start at z0


def test_latent_ode_refuses_parts_that_do_not_fit_when_built():
    """They failed at the first batch with "mat1 and mat2 shapes cannot be multiplied"."""
    with pytest.raises(ValueError, match=r"encoder ODERNNEncoder has input_dim=3, but the "
                                         r"model's is 2 \(the data's channels\)"):
        LatentODE(input_dim=2, latents=4, encoder=ODERNNEncoder(3, 4))
    with pytest.raises(ValueError, match=r"encoder RNNEncoder has latent_dim=5, but the "
                                         r"model's is 4"):
        LatentODE(input_dim=2, latents=4, encoder=RNNEncoder(2, 5))
    for decoder in (nn.Linear(5, 2), nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))):
        with pytest.raises(ValueError, match=r"first layer reads 5 input\(s\), but the decoder "
                                             r"is given the latent state z of latents=4"):
            LatentODE(input_dim=2, latents=4, decoder=decoder)

    class NoTime(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, z):
            return self.lin(z)

    with pytest.raises(TypeError, match=r"field NoTime must be called as field\(t, z\).*takes "
                                        r"1 positional argument"):
        LatentODE(input_dim=2, latents=4, field=NoTime())
    # what fits is built as before
    LatentODE(input_dim=2, latents=4, encoder=RNNEncoder(2, 4), decoder=nn.Linear(4, 2))


def test_misspelt_solver_options_are_refused_when_a_model_is_built():
    from latentode.models import ODERNN

    with pytest.raises(TypeError, match=r"LatentODE's solver options got unexpected keyword "
                                        r"argument\(s\) \['methd'\]; it takes .*method"):
        LatentODE(input_dim=2, solver=dict(methd="rk4"))
    with pytest.raises(TypeError, match=r"ODERNN's solver options .*\['event_fn'\]; event_fn: "
                                        r"events are not supported"):
        ODERNN(2, solver={"event_fn": None})
    with pytest.raises(TypeError, match=r"ODERNNEncoder's solver options .*\['stats'\]"):
        ODERNNEncoder(2, 3, solver={"stats": None})


def test_sizes_that_would_build_a_broken_network_are_refused_by_name():
    """gen_layers=-1 built no hidden layer ([units] * -1 is empty), gen_units=0 a zero-width
    field, an encoder of hidden=0 a q(z0) that ignored its input, latents=4.5 a TypeError
    from torch: each trained or failed without naming the option."""
    from latentode.models import GRUDT, ODERNN, RNNVAE

    for kwargs, message in ((dict(gen_layers=-1), r"LatentODE: gen_layers must be a whole number "
                                                  r">= 0, got -1"),
                            (dict(gen_units=0), r"gen_units must be a whole number >= 1, got 0"),
                            (dict(latents=4.5), r"latents must be a whole number >= 1, got 4\.5"),
                            (dict(n_samples=1.5), r"n_samples must be a whole number >= 1")):
        with pytest.raises(ValueError, match=message):
            LatentODE(input_dim=2, **kwargs)
    with pytest.raises(ValueError, match=r"RNNEncoder: hidden must be a whole number >= 1, got 0"):
        RNNEncoder(2, 3, hidden=0)
    with pytest.raises(ValueError, match=r"ODERNNEncoder: ode_layers must be a whole number >= 0"):
        ODERNNEncoder(2, 3, ode_layers=-2)
    for model, kwargs in ((ODERNN, dict(ode_units=0)), (GRUDT, dict(dec_layers=-1)),
                          (RNNVAE, dict(enc_hidden=0))):
        with pytest.raises(ValueError, match=rf"{model.__name__}: {next(iter(kwargs))} must be"):
            model(2, **kwargs)


def test_construction_checks_leave_what_works_alone():
    """Refused by the first version of the construction checks, all of it working before:
    numpy integers as sizes, label_units=0 without labels, a Sequential subclass reading
    features of z, a LazyLinear decoder, a user's encoder whose input_dim means its own input
    width."""
    import numpy as np

    LatentODE(np.int64(3), latents=np.int64(4), dec_units=np.int64(20))
    LatentODE(2, label_units=0)

    class Squares(nn.Sequential):
        def forward(self, z):
            return super().forward(torch.cat([z, z**2], -1))

    class OwnEncoder(nn.Module):
        input_dim = 6  # values and mask of 3 channels: its own meaning

        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(6, 8)

        def forward(self, times, values, mask):
            x = torch.cat([values.nan_to_num(), mask.to(values.dtype)], -1).mean(1)
            mean, log_std = self.lin(x).chunk(2, -1)
            return mean, log_std.exp()

    model = LatentODE(3, latents=4, encoder=OwnEncoder(),
                      decoder=Squares(nn.Linear(8, 3)))
    times = torch.linspace(0, 1, 5)
    values, mask = torch.randn(2, 5, 3), torch.ones(2, 5, 3, dtype=torch.bool)
    assert model(times, values, mask, 2).pred.shape == (2, 2, 5, 3)
    lazy = LatentODE(3, latents=4, decoder=nn.Sequential(nn.LazyLinear(3)))
    assert lazy(times, values, mask, 1).pred.shape == (1, 2, 5, 3)
