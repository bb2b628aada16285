"""The paper's baselines (ODE-RNN, GRU-dt, RNN-VAE): LatentODE's interface, masks, causality."""

from __future__ import annotations

import math

import pytest
import torch

from latentode.models import GRUDT, ODERNN, RNNVAE, LatentODEOutput, iwae_terms
from latentode.models.latent_ode import sample_kl

MODELS = {
    "odernn": lambda **kw: ODERNN(3, latents=8, ode_units=16, dec_units=16, obs_std=0.1, **kw),
    "odernn_std": lambda **kw: ODERNN(3, latents=8, ode_units=16, gru_units=16, dec_units=16,
                                      obs_std=0.1, std_state=True, **kw),
    "gru_dt": lambda **kw: GRUDT(3, latents=8, dec_units=16, obs_std=0.1, **kw),
    "rnn_vae": lambda **kw: RNNVAE(3, latents=4, enc_hidden=8, z0_units=16, hidden=8,
                                   dec_units=16, obs_std=0.1, n_samples=2, **kw),
}
DETERMINISTIC = ("odernn", "odernn_std", "gru_dt")


def make(kind: str, **kw):
    torch.manual_seed(0)
    return MODELS[kind](**kw)


def tiny_batch(seed: int = 0, batch: int = 4, length: int = 7, dims: int = 3):
    gen = torch.Generator().manual_seed(seed)
    times = torch.sort(torch.rand(length, generator=gen)).values * 2
    times[0] = 0.0
    values = torch.randn(batch, length, dims, generator=gen)
    mask = torch.rand(batch, length, dims, generator=gen) < 0.6
    mask[:, 0] = True
    encoder = mask & (torch.rand(batch, length, 1, generator=gen) < 0.5)
    encoder[:, 0] = mask[:, 0]
    encoder[0, -1] = True  # series 0 is seen at the last time point
    return times, values, mask, encoder


def run(model, times, values, encoder, **kw) -> LatentODEOutput:
    torch.manual_seed(7)  # the same posterior samples for every call
    return model(times, values, encoder, **kw)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_shapes_at_data_plot_and_extrapolation_times(kind):
    model = make(kind)
    times, values, _, encoder = tiny_batch()
    samples = 1 if kind in DETERMINISTIC else 2
    out = run(model, times, values, encoder)
    assert out.pred.shape == (samples, 4, 7, 3)
    assert out.z0_mean.shape == out.z0_std.shape and out.z0_mean.shape[0] == 4
    between = (times[1:] + times[:-1]) / 2
    later = times[-1] + torch.tensor([0.3, 1.0, 2.5])
    grid, order = torch.sort(torch.cat([times, between, later]))
    dense = run(model, times, values, encoder, pred_times=grid)
    assert dense.pred.shape == (samples, 4, 7 + 6 + 3, 3)
    assert torch.isfinite(dense.pred).all()
    # extra prediction times are branches: the predictions at the data times do not move
    at_data = dense.pred[:, :, torch.argsort(order)[:7]]
    torch.testing.assert_close(at_data, out.pred, rtol=1e-6, atol=1e-6)
    if kind != "gru_dt":  # the GRU's state is constant between data times
        assert not torch.allclose(dense.pred[:, :, 1], dense.pred[:, :, 2])
    # forecasts beyond the data move (ODE flow / fed-back predictions)
    tail = dense.pred[:, :, -3:]
    assert (tail[:, :, 1:] - tail[:, :, :-1]).abs().amax() > 1e-6


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_pred_times_before_the_data_are_refused(kind):
    times, values, _, encoder = tiny_batch()
    with pytest.raises(ValueError, match="before times"):
        make(kind)(times, values, encoder, pred_times=times - 0.1)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_gradients_reach_every_parameter(kind):
    model = make(kind)
    times, values, mask, encoder = tiny_batch()
    terms = model.loss(times, values, encoder, mask)
    assert set(terms) == {"loss", "loglik", "kl", "mse", "pred"}
    terms["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_values_outside_the_encoder_mask_change_nothing(kind):
    model = make(kind)
    times, values, _, encoder = tiny_batch()
    noisy = torch.where(encoder, values, float("nan"))  # even NaN under the mask is ignored
    grid = torch.cat([times, times[-1] + torch.tensor([0.5, 1.0])])
    a = run(model, times, values, encoder, pred_times=grid)
    b = run(model, times, noisy, encoder, pred_times=grid)
    torch.testing.assert_close(a.pred, b.pred, rtol=0, atol=0)
    seen = torch.where(encoder, values + 1.0, values)
    assert not torch.allclose(run(model, times, seen, encoder).pred, a.pred[:, :, :7])


@pytest.mark.parametrize("kind", DETERMINISTIC)
def test_a_point_never_sees_its_own_value(kind):
    model = make(kind)
    times, values, _, encoder = tiny_batch()
    assert bool(encoder[0, -1].all())
    changed = values.clone()
    changed[:, -1] += 5.0
    a, b = run(model, times, values, encoder), run(model, times, changed, encoder)
    torch.testing.assert_close(a.pred, b.pred, rtol=0, atol=0)
    earlier = values.clone()
    earlier[0, -2:] += 5.0  # series 0's point before last is visible or fed back: it matters
    encoder2 = encoder.clone()
    encoder2[0, -2] = True
    c, d = run(model, times, values, encoder2), run(model, times, earlier, encoder2)
    torch.testing.assert_close(c.pred[..., :-1, :], d.pred[..., :-1, :], rtol=0, atol=0)
    assert not torch.allclose(c.pred[0, 0, -1], d.pred[0, 0, -1])


def test_gru_dt_feeds_back_its_predictions_after_the_last_visible_point():
    model = make("gru_dt")
    times, values, _, encoder = tiny_batch()
    encoder[:, 3:] = False  # extrapolation: only the first three points are visible
    out = run(model, times, values, encoder)
    steps = out.pred[0, :, 4:] - out.pred[0, :, 3:-1]
    assert steps.abs().amax(-1).amin() > 1e-6  # every series' forecast keeps moving


def test_deterministic_loss_is_the_negative_log_likelihood():
    times, values, mask, encoder = tiny_batch()
    for kind in DETERMINISTIC:
        model = make(kind)
        terms = model.loss(times, values, encoder, mask, n_samples=5)
        assert terms["pred"].shape[0] == 1 and terms["kl"].item() == 0.0
        torch.testing.assert_close(terms["loss"], -terms["loglik"])


def test_odernn_solver_options_match_the_euler_shortcut():
    times, values, _, encoder = tiny_batch()
    fast, slow = make("odernn"), make("odernn", solver={"max_steps": 10})
    assert fast._single_euler_step and not slow._single_euler_step
    grid = torch.sort(torch.cat([times, times[:-1] + 0.01, times[-1:] + 1.0])).values
    torch.testing.assert_close(run(fast, times, values, encoder, pred_times=grid).pred,
                               run(slow, times, values, encoder, pred_times=grid).pred,
                               rtol=1e-5, atol=1e-6)
    rk4 = make("odernn", solver={"method": "rk4"})
    assert torch.isfinite(rk4.loss(times, values, encoder, encoder)["loss"])


def test_odernn_std_state_moves_only_the_mean_and_decodes_it():
    model = make("odernn_std")
    assert model.state_dim == 16 and model.cell.hidden == 8
    h = torch.randn(4, 16)
    moved = model.advance(h, torch.tensor(0.0), torch.tensor([0.2, 0.5]))
    assert moved.shape == (2, 4, 16)
    torch.testing.assert_close(moved[..., 8:], h[:, 8:].expand(2, 4, 8), rtol=0, atol=0)
    expected = h[:, :8] + 0.5 * model.ode(torch.tensor(0.0), h[:, :8])
    torch.testing.assert_close(moved[1, :, :8], expected)
    other = h.clone()
    other[:, 8:] += 1.0  # the std half does not reach the prediction directly...
    torch.testing.assert_close(model.readout(other), model.readout(h), rtol=0, atol=0)
    times, values, _, encoder = tiny_batch()  # ...but through the gates of later updates
    out = run(model, times, values, encoder)
    assert out.z0_mean.shape == (4, 8) and torch.isfinite(out.pred).all()
    loss = model.loss(times, values, encoder, encoder)["loss"]
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["cell.new.0.weight"][:, 8:16].abs().sum() > 0  # the std input is used


def test_rnn_vae_kl_and_importance_weighted_bound():
    model = make("rnn_vae")
    times, values, mask, encoder = tiny_batch()
    torch.manual_seed(3)
    terms = model.loss(times, values, encoder, mask, n_samples=6)
    assert terms["pred"].shape == (6, 4, 7, 3)
    assert terms["kl"] > 0
    torch.manual_seed(3)
    out = model(times, values, encoder, n_samples=6)
    torch.testing.assert_close(out.pred, terms["pred"])
    kl = model.kl(out)
    per_sample = sample_kl(out.z0, out.z0_mean, out.z0_std)  # (S, B): Burda's terms
    again = iwae_terms(values, out.pred, mask, model.obs_std, kl, kl_samples=per_sample)
    torch.testing.assert_close(again["loss"], terms["loss"])
    torch.testing.assert_close(again["kl"], kl.mean())  # reported: the analytic KL
    from latentode.models import masked_gaussian_loglik

    elbo = (masked_gaussian_loglik(values, out.pred, mask, model.obs_std) - per_sample).mean()
    assert -terms["loss"] >= elbo - 1e-5  # IWAE bound >= the mean ELBO of the same samples
    weighted = model.loss(times, values, encoder, mask, kl_weight=0.0, n_samples=1)
    assert weighted["kl"] > 0  # reported, not weighted in


def noisy_sines(batch: int = 8, length: int = 20, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    times = torch.sort(torch.rand(length, generator=gen)).values * 5
    times[0] = 0.0
    phase = torch.rand(batch, 1, 1, generator=gen) * 2 * math.pi
    values = torch.sin(2 * times[None, :, None] + phase)
    values = values + 0.01 * torch.randn(values.shape, generator=gen)
    mask = torch.ones_like(values, dtype=torch.bool)
    encoder = mask & (torch.rand(batch, length, 1, generator=gen) < 0.7)
    encoder[:, 0] = True
    return times, values, mask, encoder


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_a_few_adam_steps_fit_noisy_sines(kind):
    torch.manual_seed(0)
    model = {
        "odernn": lambda: ODERNN(1, latents=12, ode_units=24, dec_units=24, obs_std=0.1),
        "odernn_std": lambda: ODERNN(1, latents=12, ode_units=24, gru_units=24, dec_units=24,
                                     obs_std=0.1, std_state=True),
        "gru_dt": lambda: GRUDT(1, latents=12, dec_units=24, obs_std=0.1),
        "rnn_vae": lambda: RNNVAE(1, latents=4, enc_hidden=12, z0_units=24, hidden=12,
                                  dec_units=24, obs_std=0.1, n_samples=2),
    }[kind]()
    times, values, mask, encoder = noisy_sines()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        optimizer.zero_grad()
        loss = model.loss(times, values, encoder, mask)["loss"]
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])


@pytest.mark.parametrize(("name", "cls"), [("odernn", ODERNN), ("gru_dt", GRUDT),
                                           ("rnn_vae", RNNVAE)])
def test_configs_compose_and_instantiate(name, cls):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from latentode.cli import config_dir

    with initialize_config_dir(config_dir(), version_base=None):
        cfg = compose("train", overrides=[f"model={name}", "model.input_dim=3"])
    assert "encoder" not in cfg.model  # latent_ode's encoder group is not pulled in
    model = instantiate(cfg.model)
    assert type(model) is cls
    times, values, mask, encoder = tiny_batch()
    assert torch.isfinite(model.loss(times, values, encoder, mask)["loss"])


def test_rnn_vae_first_target_is_the_paper_codes_extrapolation():
    """``z0_at="first_target"``: with targets after everything the encoder sees, the encoder
    reads the data forwards (the backward walk of the time-reversed series) and the decoder
    starts at the first target time, as the paper code's RNN-VAE; in interpolation (targets
    from the first time on) nothing changes."""
    start, paper = make("rnn_vae"), make("rnn_vae", z0_at="first_target")
    times, values, mask, encoder = tiny_batch(length=9)
    encoder = encoder.clone()
    encoder[:, 5:] = False  # the encoder sees the first 5 points, the targets are the last 4
    target = mask.clone()
    target[:, :5] = False
    target[:, 5] = True
    torch.manual_seed(1)
    out = paper.loss(times, values, encoder, target)
    masked = torch.where(encoder, values, 0.0)
    until_z0 = torch.minimum(times, times[5])  # read up to where z0 sits (the lead ends there)
    mean, std = paper.encoder(-until_z0.flip(0), masked.flip(1), encoder.flip(1))
    torch.manual_seed(1)
    z0 = mean + std * torch.randn((2, *mean.shape))
    pred, _ = paper.walk(paper.init(z0.reshape(-1, 4)), times[5:], times[5:])
    torch.testing.assert_close(out["pred"][:, :, 5:], pred.reshape(2, 4, 4, 3))
    forwards = paper.encoder(-until_z0.flip(0), masked.flip(1), encoder.flip(1))[0]
    assert not torch.allclose(forwards, paper.encoder(times, masked, encoder)[0])
    # q(z0) does not depend on how far after z0 the batch predicts
    for end in (6, 7):
        shorter = paper(times[:end], values[:, :end], encoder[:, :end], n_samples=1,
                        pred_times=times[5:end])
        torch.testing.assert_close(shorter.z0_mean, mean, rtol=0, atol=0)
    torch.manual_seed(2)  # interpolation: the same model as z0_at="start"
    a = start.loss(times, values, encoder, mask)
    torch.manual_seed(2)
    b = paper.loss(times, values, encoder, mask)
    for key in ("loss", "mse"):
        assert torch.equal(a[key], b[key]), key
