"""What a user's own parts (encoder, decoder, model) must return is checked where they are
used, naming the part: an extender's pass found a 1-channel decoder broadcast over 2 data
channels silently (training, test and plots ran; predict failed much later), a negative
"std" (a log-std) end as a NaN loss, and a one-tensor encoder as an unpacking error."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from latentode.data import Collator, Interpolation, load_dataset
from latentode.lit import LatentODELightning
from latentode.models import LatentODE
from latentode.models.latent_ode import masked_gaussian_loglik


def batch(n: int = 6, dims: int = 3):
    gen = torch.Generator().manual_seed(0)
    times = torch.linspace(0, 1, 8)
    values = torch.randn(n, 8, dims, generator=gen)
    mask = torch.rand(n, 8, dims, generator=gen) < 0.6
    return times, values, mask


class MeanPool(nn.Module):
    """A user's encoder: q(z0) from the mean of the observed values."""

    def __init__(self, dims: int, latents: int, how: str = "ok"):
        super().__init__()
        self.how, self.latents = how, latents
        self.net = nn.Linear(dims, 2 * latents)

    def forward(self, times, values, mask):
        pooled = (values * mask).sum(1) / mask.sum(1).clamp_min(1)
        mean, raw = self.net(pooled).chunk(2, -1)
        if self.how == "one":
            return mean
        if self.how == "log_std":
            return mean, raw - 5.0
        if self.how == "narrow":
            return mean[:, :-1], raw[:, :-1].exp()
        return mean, nn.functional.softplus(raw) + 1e-6


def test_a_decoder_with_the_wrong_channel_count_is_named():
    times, values, mask = batch()
    model = LatentODE(input_dim=3, latents=4)
    model.decoder = nn.Linear(4, 1)
    with pytest.raises(ValueError, match=r"decoder Linear gives 1 output channel\(s\) per "
                                         r"point; the data has input_dim = 3"):
        model.loss(times, values, mask, mask)
    with pytest.raises(ValueError, match=r"pred \(2, 6, 8, 1\) must end with the values' "
                                         r"shape \(6, 8, 3\)"):
        masked_gaussian_loglik(values, torch.zeros(2, 6, 8, 1), mask, 0.1)


@pytest.mark.parametrize(("how", "says"), [
    ("one", r"encoder MeanPool must return \(mean, std\) of q\(z0\), two tensors of shape "
            r"\(batch, latents\) = \(6, 4\); it returned a Tensor"),
    ("narrow", r"encoder MeanPool returned a mean of shape \(6, 3\); q\(z0\) needs "
               r"\(batch, latents\) = \(6, 4\)"),
    ("log_std", r"encoder MeanPool returned a std of q\(z0\) that is not positive everywhere "
                r".*not a log-std"),
])
def test_a_users_encoder_returning_something_else_is_named(how, says):
    times, values, mask = batch()
    model = LatentODE(input_dim=3, latents=4, encoder=MeanPool(3, 4, how))
    with pytest.raises(ValueError, match=says):
        model.loss(times, values, mask, mask)
    ok = LatentODE(input_dim=3, latents=4, encoder=MeanPool(3, 4))
    assert torch.isfinite(ok.loss(times, values, mask, mask)["loss"])


class ForwardOnly(nn.Module):
    """A model with the loss/forward interface but no predict method."""

    def __init__(self):
        super().__init__()
        self.inner = LatentODE(input_dim=1, latents=4)

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs)

    def loss(self, *args, **kwargs):
        return self.inner.loss(*args, **kwargs)


def test_predict_step_falls_back_to_forward_for_a_model_without_predict():
    ds = load_dataset("periodic", n_series=4, n_points=20)
    b = Collator(ds, Interpolation(count=10), fixed=True)(list(range(4)))
    module = LatentODELightning(ForwardOnly(), eval_samples=2)
    out = module.predict_step(b, 0)
    assert out["pred"].shape == (2, 4, 20, 1)


def test_pred_times_of_the_wrong_shape_are_named():
    from latentode.models import GRUDT, ODERNN, RNNVAE

    times, values, mask = batch(dims=1)
    rows = times.expand(7, -1)  # one row too many
    with pytest.raises(ValueError, match=r"per-series pred_times \(7, 8\) need one row per "
                                         r"series: \(6, T\)"):
        LatentODE(input_dim=1, latents=4)(times, values, mask, pred_times=rows)
    for model in (ODERNN(input_dim=1), GRUDT(input_dim=1), RNNVAE(input_dim=1)):
        with pytest.raises(ValueError, match=r"pred_times must be 1-D \(T',\) \(per-series "
                                             r"times \(batch, T'\) are the latent ODE's only"):
            model(times, values, mask, pred_times=times.expand(6, -1))
        with pytest.raises(ValueError, match=r"pred_times must be strictly increasing"):
            model(times, values, mask, pred_times=times.flip(0))


class Damped(nn.Module):
    """A user's vector field: linear damping with a learnt rate."""

    def __init__(self):
        super().__init__()
        self.rate = nn.Parameter(torch.tensor(0.5))

    def forward(self, t, z):
        return -self.rate * z


def test_a_users_field_and_decoder_replace_the_mlps_from_the_config(tmp_path):
    from test_cli import TINY, compose_train

    from latentode.cli import train as train_cli

    cfg = compose_train([*TINY, "trainer.max_epochs=1", "+model.field._target_="
                         "test_extension_errors.Damped", "+model.decoder._target_="
                         "torch.nn.Linear", "+model.decoder.in_features=${model.latents}",
                         "+model.decoder.out_features=1"], tmp_path)
    datamodule = train_cli.build_datamodule(cfg)
    model = train_cli.build_model(cfg, datamodule)
    assert isinstance(model.field, Damped) and isinstance(model.decoder, nn.Linear)
    assert "test/mse" in train_cli.train(cfg)
    with pytest.raises(TypeError, match=r"decoder must be an nn\.Module"):
        LatentODE(input_dim=1, decoder="linear")
