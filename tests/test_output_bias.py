"""The decoder's starting bias (``output_bias``): unscaled channels far from zero start at the
training data's mean instead of having to be reached through the latent state (docs/results.md,
*Unscaled data*: the periodic default, fed unscaled, stayed at the mean)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_cli import TINY, compose_train
from torch import nn

from latentode.cli import train as train_cli
from latentode.models import GRUDT, ODERNN, RNNVAE, LatentODE
from latentode.nn.layers import start_output_bias

MODELS = {
    "latent_ode": lambda **kw: LatentODE(3, latents=4, gen_units=8, **kw),
    "latent_ode_mlp_decoder": lambda **kw: LatentODE(3, latents=4, gen_units=8, dec_layers=2,
                                                     dec_units=8, **kw),
    "odernn": lambda **kw: ODERNN(3, latents=4, ode_units=8, dec_units=8, **kw),
    "gru_dt": lambda **kw: GRUDT(3, latents=4, dec_units=8, **kw),
    "rnn_vae": lambda **kw: RNNVAE(3, latents=4, enc_hidden=4, z0_units=8, hidden=4,
                                   dec_units=8, **kw),
}


def output_layer(model: nn.Module) -> nn.Linear:
    decoder = model.decoder if isinstance(model, LatentODE) else model.out
    return [m for m in decoder.modules() if isinstance(m, nn.Linear)][-1]


@pytest.mark.parametrize("name", MODELS)
def test_every_model_starts_its_output_bias_where_asked(name):
    torch.manual_seed(0)
    default = output_layer(MODELS[name]()).bias.detach().clone()
    torch.manual_seed(0)
    model = MODELS[name](output_bias=[5.0, -2.0, 0.5])
    assert output_layer(model).bias.tolist() == [5.0, -2.0, 0.5]
    torch.manual_seed(0)
    assert output_layer(MODELS[name](output_bias=3.0)).bias.tolist() == [3.0] * 3
    # only the bias moves: the rest of the model is initialised as without the option
    torch.manual_seed(0)
    same = MODELS[name](output_bias=None)
    assert torch.equal(output_layer(same).bias, default)
    torch.manual_seed(0)  # the configs' word: a model built from a config alone has no data
    assert torch.equal(output_layer(MODELS[name](output_bias="auto")).bias, default)
    torch.manual_seed(0)
    other = MODELS[name](output_bias=[5.0, -2.0, 0.5])
    for (key, a), (_, b) in zip(same.state_dict().items(), other.state_dict().items(),
                                strict=True):
        if a is not None and not key.endswith("bias"):
            assert torch.equal(a, b), key


def test_a_fresh_model_predicts_near_the_offset_it_was_given():
    """The point of the option: before any training the predictions sit at the data's level,
    not ~0 (which on channels around 10 and -4 is an error of the offset itself)."""
    torch.manual_seed(0)
    times = torch.linspace(0, 1, 12)
    values = torch.tensor([10.0, -4.0, 0.0]).expand(5, 12, 3) + 0.1 * torch.randn(5, 12, 3)
    mask = torch.ones_like(values, dtype=torch.bool)
    model = LatentODE(3, latents=4, gen_units=8, output_bias=[10.0, -4.0, 0.0]).eval()
    with torch.no_grad():
        pred = model(times, values, mask).pred.mean(0)
    assert (pred - values).abs().mean() < 1.0
    plain = LatentODE(3, latents=4, gen_units=8).eval()
    with torch.no_grad():
        far = plain(times, values, mask).pred.mean(0)
    assert (far - values).abs().mean() > 3.0


@pytest.mark.parametrize("bias, says", [
    ([1.0, 2.0], r"output_bias has 2 values for 3 channels"),
    ([1.0, float("nan"), 0.0], r"output_bias must be finite, got nan for channel 1"),
    ("data_mean", r"output_bias='data_mean': a model takes numbers .* latentode-train's"),
])
def test_bad_values_are_refused(bias, says):
    with pytest.raises(ValueError, match=says):
        LatentODE(3, latents=4, gen_units=8, output_bias=bias)


def test_a_decoder_without_a_final_linear_layer_is_refused():
    class Sum(nn.Module):
        def forward(self, z):
            return z[..., :3]

    with pytest.raises(ValueError, match=r"last linear layer has 3 outputs .* Sum has none.*"
                                         r"output_bias=None"):
        start_output_bias(Sum(), 1.0, 3)
    wrong = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 5))
    with pytest.raises(ValueError, match="last linear layer has 3 outputs"):
        start_output_bias(wrong, 1.0, 3)


def training_means(datamodule) -> np.ndarray:
    values = datamodule.splits["train"].values
    return np.array([np.nanmean(values[:, d]) for d in range(values.shape[1])])


def test_auto_starts_at_the_training_means_when_the_data_are_fed_unscaled(tmp_path):
    cfg = compose_train([*TINY, "data.scale=false"], tmp_path / "run")
    assert cfg.model.output_bias == "auto"
    datamodule = train_cli.build_datamodule(cfg)
    model = train_cli.build_model(cfg, datamodule)
    means = training_means(datamodule)
    assert abs(means[0]) > 0.5  # the periodic toy's offset (~1), the case that stalled
    # the config records the numbers the run started from (for its record and for reloads)
    np.testing.assert_allclose(list(cfg.model.output_bias), means, rtol=1e-12)
    np.testing.assert_allclose(model.decoder.bias.detach().numpy(), means, rtol=1e-6)


def test_auto_keeps_torchs_start_on_standardised_data(tmp_path):
    cfg = compose_train(TINY, tmp_path / "run")
    datamodule = train_cli.build_datamodule(cfg)
    train_cli.build_model(cfg, datamodule)
    assert cfg.model.output_bias is None
    cfg = compose_train([*TINY, "model.output_bias=data_mean"], tmp_path / "run")
    datamodule = train_cli.build_datamodule(cfg)
    model = train_cli.build_model(cfg, datamodule)
    assert np.abs(np.asarray(cfg.model.output_bias)).max() < 1e-9  # standardised: mean 0
    assert model.decoder.bias.abs().max() < 1e-6


def test_channel_means_skip_missing_values_and_unobserved_channels():
    values = np.array([[1.0, np.nan, np.nan], [3.0, 4.0, np.nan], [np.nan, 8.0, np.nan]])
    assert train_cli.channel_means(values) == [2.0, 6.0, 0.0]


def test_an_unknown_word_is_refused(tmp_path):
    cfg = compose_train([*TINY, "model.output_bias=mean"], tmp_path / "run")
    datamodule = train_cli.build_datamodule(cfg)
    with pytest.raises(ValueError, match=r"model\.output_bias must be a number, one per "
                                         r"channel, null or one of \('auto', 'data_mean'\), "
                                         r"got 'mean'"):
        train_cli.build_model(cfg, datamodule)


@pytest.mark.parametrize("model", ["hopper_latent_ode", "hopper_latent_ode_rnn", "hopper_odernn",
                                   "hopper_rnn_vae", "hopper_gru_dt"])
def test_the_hopper_recipes_keep_the_start_their_numbers_were_measured_with(model):
    cfg = compose_train(["experiment=hopper_interp", f"model={model}"])
    assert cfg.model.output_bias is None
