"""The latent ODE's paper options: objectives, the Poisson process and the classification head,
and the Lightning module's label metrics (AUC, accuracy)."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch

from latentode.data import Interpolation, LatentODEDataModule, from_dataframe
from latentode.lit import LatentODELightning
from latentode.lit.module import label_metrics
from latentode.models import LatentODE
from latentode.models.latent_ode import (
    gaussian_kl,
    label_loss,
    masked_gaussian_loglik,
    poisson_process_loglik,
    sample_bound,
    sample_kl,
)
from latentode.nn import ODERNNEncoder


def tiny_batch(seed: int = 0, batch: int = 4, length: int = 7, dims: int = 2):
    gen = torch.Generator().manual_seed(seed)
    times = torch.sort(torch.rand(length, generator=gen)).values * 2
    values = torch.randn(batch, length, dims, generator=gen)
    mask = torch.rand(batch, length, dims, generator=gen) < 0.6
    mask[:, 0] = True
    return times, values, mask


def model(**options) -> LatentODE:
    torch.manual_seed(0)
    encoder = ODERNNEncoder(2, 3, hidden=6, z0_units=8)
    return LatentODE(2, latents=3, encoder=encoder, gen_units=8, obs_std=0.1, n_samples=2,
                     solver={"rtol": 1e-5, "atol": 1e-6}, **options)


def test_objectives_against_their_definitions():
    elbo = torch.tensor([[-1.0, -5.0, 2.0], [-3.0, -4.0, 1.0]])  # (S=2, B=3)
    iwae = torch.logsumexp(elbo, 0) - math.log(2)
    assert torch.allclose(sample_bound(elbo, "iwae"), iwae)
    assert torch.allclose(sample_bound(elbo, "elbo"), elbo.mean(0))
    paper = torch.logsumexp(elbo.mean(1), 0)  # the paper code: over samples of batch means
    assert torch.allclose(sample_bound(elbo, "batch_iwae").mean(), paper)
    # its gradient is the paper's too
    e1 = elbo.clone().requires_grad_(True)
    sample_bound(e1, "batch_iwae").mean().backward()
    e2 = elbo.clone().requires_grad_(True)
    torch.logsumexp(e2.mean(1), 0).backward()
    assert torch.allclose(e1.grad, e2.grad)
    # iwae >= elbo (Jensen)
    assert bool((sample_bound(elbo, "iwae") >= sample_bound(elbo, "elbo")).all())
    with pytest.raises(ValueError, match="objective must be one of"):
        sample_bound(elbo, "vae")


def test_iwae_is_burdas_bound_on_a_conjugate_gaussian():
    """One observed point x ~ N(z, sigma^2), z ~ N(0, 1), q the exact posterior: Burda's IWAE
    equals log p(x). ``iwae`` subtracted the analytic KL inside the logsumexp, which is no
    bound: it exceeded log p(x) by 0.17. With each sample's log q - log p it is Burda's."""
    x, sigma, samples = 3.0, 0.1, 20000
    var = sigma**2 / (1 + sigma**2)
    mean = torch.tensor([[x / (1 + sigma**2)]], dtype=torch.float64)
    std = torch.tensor([[math.sqrt(var)]], dtype=torch.float64)
    torch.manual_seed(0)
    z0 = mean + std * torch.randn(samples, 1, 1, dtype=torch.float64)  # (S, B, L)
    values = torch.full((1, 1, 1), x, dtype=torch.float64)
    loglik = masked_gaussian_loglik(values, z0.view(samples, 1, 1, 1),
                                    torch.ones(1, 1, 1, dtype=torch.bool), sigma)
    log_px = -0.5 * x**2 / (1 + sigma**2) - 0.5 * math.log(2 * math.pi * (1 + sigma**2))
    burda = sample_bound(loglik - sample_kl(z0, mean, std), "iwae").item()
    assert abs(burda - log_px) < 1e-6  # exact posterior: every weight is p(x)
    analytic = sample_bound(loglik - gaussian_kl(mean, std), "iwae").item()
    assert analytic > log_px + 0.1  # the old form
    torch.testing.assert_close(sample_kl(z0, mean, std).mean(), gaussian_kl(mean, std)[0],
                               rtol=0, atol=0.02)


def test_latent_ode_iwae_loss_uses_each_samples_kl():
    m = model(objective="iwae")
    times, values, mask = tiny_batch()
    torch.manual_seed(5)
    terms = m.loss(times, values, mask, mask, kl_weight=0.7, n_samples=3)
    torch.manual_seed(5)
    out = m(times, values, mask, n_samples=3)
    loglik = masked_gaussian_loglik(values, out.pred, mask, m.obs_std)
    bound = sample_bound(loglik - 0.7 * sample_kl(out.z0, out.z0_mean, out.z0_std), "iwae")
    torch.testing.assert_close(terms["loss"], -bound.mean())
    torch.testing.assert_close(terms["kl"], gaussian_kl(out.z0_mean, out.z0_std).mean())


def test_poisson_loglik_of_a_constant_rate_is_closed_form():
    # rate exp(c) on [t0, t_last]: log L = n c - exp(c) (t_last - t0) per channel
    times = torch.tensor([0.0, 0.5, 1.5, 2.0])
    c = 0.3
    log_rate = torch.full((1, 2, 4, 1), c)
    cum_rate = (math.exp(c) * (times - times[0])).view(1, 1, 4, 1).expand(1, 2, 4, 1)
    mask = torch.tensor([[1, 0, 1, 0], [1, 1, 1, 1]], dtype=torch.bool).unsqueeze(-1)
    got = poisson_process_loglik(log_rate, cum_rate, mask)
    want = torch.tensor([[2 * c - math.exp(c) * 1.5, 4 * c - math.exp(c) * 2.0]])
    assert torch.allclose(got, want)


def test_poisson_window_starts_at_each_series_first_point():
    """Targets after a cut (extrapolation), or a series that starts late: the rate is
    integrated from the series' first point under the mask, not from times[0], where no event
    was counted (the rate came out at half the truth on an even split)."""
    times = torch.tensor([0.0, 0.5, 1.5, 2.0])
    c = 0.3
    log_rate = torch.full((1, 1, 4, 1), c)
    cum_rate = (math.exp(c) * (times - times[0])).view(1, 1, 4, 1)
    after_cut = torch.tensor([[0, 0, 1, 1]], dtype=torch.bool).unsqueeze(-1)
    got = poisson_process_loglik(log_rate, cum_rate, after_cut)
    assert torch.allclose(got, torch.tensor([[2 * c - math.exp(c) * 0.5]]))


def test_poisson_model_integrates_the_rate_and_trains_it():
    times, values, mask = tiny_batch()
    net = model(poisson=True)
    out = net(times, values, mask, n_samples=2)
    assert out.log_rate.shape == out.cum_rate.shape == (2, 4, 7, 2)
    # the integral starts at zero and grows (the rate is positive)
    assert torch.all(out.cum_rate[:, :, 0] == 0)
    assert torch.all(out.cum_rate.diff(dim=2) > 0)
    # it is the integral of exp(log_rate): trapezoid on the output grid, loose tolerance
    trap = torch.cumulative_trapezoid(out.log_rate.exp(), times, dim=2)
    assert torch.allclose(out.cum_rate[:, :, 1:], trap, rtol=0.05, atol=1e-3)
    terms = net.loss(times, values, mask, mask)
    assert "poisson" in terms and torch.isfinite(terms["poisson"])
    terms["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.rate.parameters())
    plain = model()
    with torch.random.fork_rng():
        torch.manual_seed(1)
        base = plain.loss(times, values, mask, mask)["loss"]
    with torch.random.fork_rng():
        torch.manual_seed(1)
        both = net.loss(times, values, mask, mask)
    # same encoder/field weights (same seed): the Poisson term is added with weight 0.1
    assert torch.allclose(both["loss"], base - 0.1 * both["poisson"], rtol=1e-4)


class _Still(torch.nn.Module):
    """A field that leaves z where it starts (dz/dt = 0)."""

    def forward(self, t, z):
        return torch.zeros_like(z)


def test_rate_latents_split_the_state_between_the_decoder_and_the_rate():
    # the paper code's Poisson network: the last rate_latents drive the rate alone
    times, values, mask = tiny_batch()
    torch.manual_seed(0)
    encoder = ODERNNEncoder(2, 4, hidden=6, z0_units=8)
    net = LatentODE(2, latents=4, encoder=encoder, gen_units=8, obs_std=0.1, poisson=True,
                    rate_latents=1, rate_layers=2, n_labels=1, field=_Still())
    assert net.decoder.in_features == 3 and net.rate[0].in_features == 1
    assert sum(isinstance(m, torch.nn.Linear) for m in net.rate) == 3  # 2 hidden layers
    assert net.classifier[0].in_features == 3
    eps = torch.randn(2, 4, 4)
    base = net(times, values, mask, z0_noise=eps)
    moved_rate, moved_data = eps.clone(), eps.clone()
    moved_rate[..., 3] += 1.0
    moved_data[..., :3] += 1.0
    rate_only = net(times, values, mask, z0_noise=moved_rate)
    data_only = net(times, values, mask, z0_noise=moved_data)
    # z stays at z0: the prediction and the label read z[:3], the rate z[3:]
    assert torch.equal(rate_only.pred, base.pred) and torch.equal(rate_only.logits, base.logits)
    assert not torch.allclose(rate_only.log_rate, base.log_rate)
    assert torch.equal(data_only.log_rate, base.log_rate)
    assert not torch.allclose(data_only.pred, base.pred)
    # the integral is of the rate read from z[3:]
    trap = torch.cumulative_trapezoid(base.log_rate.exp(), times, dim=2)
    assert torch.allclose(base.cum_rate[:, :, 1:], trap, rtol=1e-4, atol=1e-6)
    terms = net.loss(times, values, mask, mask)
    terms["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.rate.parameters())


@pytest.mark.parametrize(("options", "message"), [
    ({"rate_latents": 2}, "set poisson=True with it"),
    ({"rate_latents": 3, "poisson": True}, "leaves the decoder none of latents=3"),
    ({"rate_latents": -1, "poisson": True}, "rate_latents must be a whole number >= 0"),
    ({"rate_latents": 1.5, "poisson": True}, "rate_latents must be a whole number >= 0"),
    ({"rate_latents": 1, "poisson": True, "rate_layers": -1}, "rate_layers must be"),
    ({"rate_latents": 1, "poisson": True, "decoder": torch.nn.Linear(3, 2)},
     r"given the first 2 of latents=3 \(the rest drive the Poisson rate\): make it "
     r"nn.Linear\(2, ...\)"),
])
def test_rate_latents_refused_with_what_to_set(options, message):
    with pytest.raises(ValueError, match=message):
        model(**options)


def test_series_labels_loss_ignores_unknown_labels_and_reaches_the_classifier():
    times, values, mask = tiny_batch()
    net = model(n_labels=1)
    labels = torch.tensor([1.0, 0.0, float("nan"), 1.0])
    terms = net.loss(times, values, mask, mask, labels=labels)
    assert terms["logits"].shape == (2, 4, 1)
    want = torch.nn.functional.binary_cross_entropy_with_logits(
        terms["logits"][:, [0, 1, 3], 0], labels[[0, 1, 3]].expand(2, 3))
    assert torch.allclose(terms["ce"], want)
    terms["loss"].backward()
    assert all(p.grad is not None for p in net.classifier.parameters())
    # no known label: zero, still differentiable
    none = net.loss(times, values, mask, mask, labels=torch.full((4,), float("nan")))
    assert float(none["ce"].detach()) == 0.0


def test_labels_per_time_point_and_classes():
    times, values, mask = tiny_batch()
    net = model(n_labels=3, label_type="time", reconstruct=False)
    labels = torch.full((4, 7), float("nan"))
    labels[:, ::2] = torch.tensor([0.0, 2.0, 1.0, 2.0])[:, None]
    terms = net.loss(times, values, mask, mask, labels=labels)
    assert terms["logits"].shape == (2, 4, 7, 3)
    assert torch.allclose(terms["loss"], terms["ce"])  # reconstruct=False: labels alone
    assert torch.allclose(terms["ce"], label_loss(terms["logits"], labels))
    with pytest.raises(ValueError, match="needs labels per time point"):
        net.loss(times, values, mask, mask, labels=torch.zeros(4))


def test_integer_labels_and_labels_out_of_range():
    """Integer binary labels are labels too (were a dtype error from inside the loss); a label
    the head cannot take is named (was an IndexError or a silent wrong target)."""
    times, values, mask = tiny_batch()
    net = model(n_labels=1)
    as_int = net.loss(times, values, mask, mask, labels=torch.tensor([1, 0, 0, 1]))
    torch.manual_seed(0)
    net = model(n_labels=1)
    as_float = net.loss(times, values, mask, mask, labels=torch.tensor([1.0, 0.0, 0.0, 1.0]))
    assert torch.isfinite(as_int["ce"]) and as_int["ce"] > 0
    assert as_int["logits"].shape == as_float["logits"].shape
    with pytest.raises(ValueError, match=r"binary label \(n_labels=1\) must be 0 or 1, got 2"):
        net.loss(times, values, mask, mask, labels=torch.tensor([1, 0, 2, 1]))
    classes = model(n_labels=3)
    with pytest.raises(ValueError, match=r"integers 0\.\.2, got 5"):
        classes.loss(times, values, mask, mask, labels=torch.tensor([0, 1, 5, 2]))
    with pytest.raises(ValueError, match=r"integers 0\.\.2, got 0\.5"):
        classes.loss(times, values, mask, mask, labels=torch.tensor([0, 1, 0.5, 2]))


@pytest.mark.parametrize("name", ["latent_ode", "odernn", "gru_dt", "rnn_vae"])
def test_hand_built_batches_are_checked_at_the_models_entry(name):
    """Tensors built by hand (not by the collator): NaN where not observed is fine (the data
    layer's convention) and gives what zeros give; everything else wrong is named."""
    from latentode.models import GRUDT, ODERNN, RNNVAE

    build = {"latent_ode": lambda: model(), "odernn": lambda: ODERNN(2, latents=3),
             "gru_dt": lambda: GRUDT(2, latents=3), "rnn_vae": lambda: RNNVAE(2, latents=3)}
    times, values, mask = tiny_batch()
    net = build[name]()
    torch.manual_seed(1)
    zeros = net.loss(times, torch.where(mask, values, 0.0), mask, mask)["loss"]
    torch.manual_seed(1)
    nans = net.loss(times, torch.where(mask, values, float("nan")), mask, mask)["loss"]
    assert torch.isfinite(nans) and torch.allclose(nans, zeros)
    from latentode.models.inputs import checked_batch  # finite values whose sum overflows
    huge = torch.full((2, 3, 2), 3e38)
    assert checked_batch(2, torch.arange(3.0), huge, huge > 0) is huge
    bad = values.clone()
    bad[1, 3, 0], mask[1, 3, 0] = float("nan"), True
    with pytest.raises(ValueError, match=r"1 NaN/inf entries where a mask marks them observed "
                                         r"\(first: series 1, time index 3, channel 0\)"):
        net.loss(times, bad, mask, mask)
    with pytest.raises(ValueError, match=r"times must be strictly increasing .*times\[0\] = "):
        net.loss(times.flip(0), values, mask, mask)
    with pytest.raises(ValueError, match=r"times must be 1-D \(T,\).*got \(4, 7\)"):
        net.loss(times.expand(4, 7), values, mask, mask)
    with pytest.raises(ValueError, match=r"channels = input_dim = 2, got \(4, 7, 3\)"):
        net.loss(times, torch.cat([values, values[..., :1]], -1), mask, mask)
    with pytest.raises(ValueError, match=r"got \(4, 7\)\. One series"):
        net.loss(times, values[..., 0], mask, mask)
    with pytest.raises(ValueError, match=r"times has 6 entries but values has T = 7"):
        net.loss(times[:6], values, mask, mask)
    with pytest.raises(ValueError, match=r"target_mask must have the shape of values"):
        net.loss(times, values, mask, mask[..., :1])
    # 0/1 float masks worked for the latent ODE only (a torch.where error in the baselines)
    with pytest.raises(ValueError, match=r"encoder_mask must be a bool tensor .* got "
                                         r"torch\.float32: pass encoder_mask\.bool\(\)"):
        net.loss(times, values, mask.float(), mask)
    # float64 times with float32 values: a matmul dtype error in some encoders and baselines
    with pytest.raises(ValueError, match=r"times \(torch\.float64\) and values \(torch\.float32\)"):
        net.loss(times.double(), values, mask, mask)
    # data and weights of different dtypes: a matmul error deep in torch, now named
    for data, weights in ((torch.float64, "float32"), (torch.float32, "float64")):
        net.to(getattr(torch, weights))
        with pytest.raises(ValueError, match=rf"values are {data} but the model's weights are "
                                             rf"torch\.{weights}: give both one dtype"):
            net(times.to(data), values.to(data), mask)
    net.float()
    # any finite filler where nothing is observed: 1e20 overflowed the squared error to NaN
    torch.manual_seed(1)
    filled = net.loss(times, torch.where(mask, values, 1e20), mask, mask)
    assert torch.allclose(filled["loss"], zeros) and torch.isfinite(filled["mse"])


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="label_type must be one of"):
        model(n_labels=1, label_type="window")
    with pytest.raises(ValueError, match="set n_labels"):
        model(reconstruct=False)
    # labels alone, but no labels given: it trained the reconstruction ELBO instead, silently
    times, values, mask = tiny_batch()
    with pytest.raises(ValueError, match=r"reconstruct=False trains on the labels alone, but "
                                         r"loss\(\) got no labels"):
        model(n_labels=1, reconstruct=False).loss(times, values, mask, mask)


def test_label_metrics_against_sklearn_definitions():
    probs = torch.tensor([[0.9], [0.2], [0.6], [0.4]], dtype=torch.float64)
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    got = label_metrics(probs, labels)
    assert got["accuracy"] == pytest.approx(0.5)
    assert got["auc"] == pytest.approx(0.75)  # pairs (pos, neg) ranked right: 3 of 4
    multi = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype=torch.float64)
    assert label_metrics(multi, torch.tensor([0.0, 1.0]))["accuracy"] == pytest.approx(0.5)
    assert "auc" not in label_metrics(probs[:2], torch.tensor([1.0, 1.0]))  # one class only


def labelled_frame(n: int = 40, seed: int = 0) -> pd.DataFrame:
    """Sines whose label says whether the offset is positive: learnable from z0."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        offset = rng.choice([-1.0, 1.0])
        t = np.sort(rng.uniform(0, 3, 12))
        for tt in t:
            rows.append((i, tt, np.sin(2 * tt) + offset, float(offset > 0)))
    return pd.DataFrame(rows, columns=["series_id", "time", "value", "label"])


@pytest.mark.filterwarnings("ignore:.*treespec, LeafSpec")
@pytest.mark.filterwarnings("ignore:.*does not have many workers")
def test_lightning_logs_auc_and_accuracy_and_learns_the_label():
    import lightning as L

    L.seed_everything(0, verbose=False)  # the data module's mask seed follows it (passes 1/42/7/3)
    data = from_dataframe(labelled_frame(n=80), label_col="label")
    dm = LatentODEDataModule(data, task=Interpolation(fraction=0.5), batch_size=8,
                             val_fraction=0.25, test_fraction=0.25)
    dm.setup("fit")
    encoder = ODERNNEncoder(1, 3, hidden=8, z0_units=16)
    net = LatentODE(1, latents=3, encoder=encoder, gen_units=16, n_labels=1, label_units=16,
                    label_weight=1.0, solver={"method": "rk4"})
    module = LatentODELightning(net, kl_wait_epochs=0,
                                optimizer=partial(torch.optim.Adamax, lr=0.03))
    trainer = L.Trainer(max_epochs=20, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu")
    trainer.fit(module, datamodule=dm)
    metrics = trainer.callback_metrics
    assert {"val/auc", "val/accuracy", "val/ce", "train/ce"} <= set(metrics)
    # the label is the sign of the offset, plain in every observation: learnt
    assert float(metrics["val/accuracy"]) >= 0.8
    assert float(metrics["val/auc"]) >= 0.8
