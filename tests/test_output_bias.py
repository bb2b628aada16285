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
    (["a", "b", "c"], r"output_bias must be numbers \(one, or one per channel\), got"),
])
def test_bad_values_are_refused(bias, says):
    with pytest.raises(ValueError, match=says):
        LatentODE(3, latents=4, gen_units=8, output_bias=bias)


class ExpDecoder(nn.Module):
    """A positive output: the mean belongs after the exp, not on the linear layer's bias."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, z):
        return self.linear(z).exp()


class SkipDecoder(nn.Module):
    """An MLP plus a bias-free skip map registered after it: no single output layer."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        self.skip = nn.Linear(4, 3, bias=False)

    def forward(self, z):
        return self.net(z) + self.skip(z)


@pytest.mark.parametrize("decoder", [
    ExpDecoder(), SkipDecoder(), nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 5)),
    nn.Linear(4, 3, bias=False)], ids=["exp", "skip", "wrong_width", "no_bias"])
def test_a_decoder_whose_output_is_not_a_biased_linear_layer_is_refused(decoder):
    with pytest.raises(ValueError, match=r"ends in a linear layer with 3 outputs and a bias .* "
                                         r"output_bias=None \(model\.output_bias=null on the "
                                         r"command line\)"):
        start_output_bias(decoder, 1.0, 3)


@pytest.mark.parametrize("bias", [
    np.array([5.0, -2.0, 0.5]), torch.tensor([5.0, -2.0, 0.5]), (5.0, -2.0, 0.5),
    np.array([[5.0, -2.0, 0.5]])], ids=["numpy", "tensor", "tuple", "numpy_2d"])
def test_arrays_and_tensors_of_means_are_taken(bias):
    layer = nn.Linear(4, 3)
    start_output_bias(layer, bias, 3)
    assert layer.bias.tolist() == [5.0, -2.0, 0.5]


@pytest.mark.parametrize("bias", [np.float32(2.5), torch.tensor(2.5), np.array([2.5]), 2.5],
                         ids=["numpy_scalar", "tensor_scalar", "one_value_array", "float"])
def test_one_value_of_any_kind_is_every_channels(bias):
    layer = nn.Linear(4, 3)
    start_output_bias(layer, bias, 3)
    assert layer.bias.tolist() == [2.5] * 3


def test_words_other_than_auto_are_refused_by_the_model():
    with pytest.raises(ValueError, match=r"output_bias='null': a model takes numbers .* or "
                                         r"None; the words 'auto' and 'data_mean' are "
                                         r"latentode-train's config values"):
        LatentODE(3, latents=4, gen_units=8, output_bias="null")


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


def test_auto_leaves_a_users_decoder_as_initialised(tmp_path):
    """What a decoder of the user's returns after its last layer (an exp, a skip map) is its
    own business: auto does not put the data's means on its biases, even fed unscaled."""
    cfg = compose_train([*TINY, "data.scale=false", "+model.decoder={_target_: "
                         "torch.nn.Linear, in_features: 4, out_features: 1}", "model.latents=4"],
                        tmp_path / "run")
    datamodule = train_cli.build_datamodule(cfg)
    train_cli.build_model(cfg, datamodule)
    assert cfg.model.output_bias is None
    cfg = compose_train([*TINY, "data.scale=false", "+model.decoder={_target_: "
                         "torch.nn.Linear, in_features: 4, out_features: 1}", "model.latents=4",
                         "model.output_bias=data_mean"], tmp_path / "run")
    model = train_cli.build_model(cfg, train_cli.build_datamodule(cfg))  # asked for: done
    np.testing.assert_allclose(model.decoder.bias.detach().numpy(),
                               list(cfg.model.output_bias), rtol=1e-6)



def test_resuming_does_not_list_the_starting_bias_as_a_difference():
    """A resumed run loads its own weights: where fresh ones would start is no news (a run
    from before output_bias existed lacks the key; another data file has other means)."""
    from omegaconf import OmegaConf

    from latentode.cli.checkpoints import config_differences

    saved = {"model": {"latents": 4}, "data": {"scale": False}}
    now = OmegaConf.create({"model": {"latents": 5, "output_bias": [79.5, 37.2]},
                            "data": {"scale": False}})
    assert config_differences(saved, now) == ["model.latents: 4 in the run, 5 now"]


def test_an_unscaled_run_trains_from_the_means_and_says_its_units(tmp_path, capsys):
    cfg = compose_train([*TINY, "data.scale=false", "trainer.fast_dev_run=true"],
                        tmp_path / "run")
    metrics = train_cli.train(cfg)
    assert np.isfinite(metrics["test/mse"]) and metrics["test/mse"] == metrics["test/mse_data"]
    assert len(cfg.model.output_bias) == 1  # the run's record holds the numbers
    out = capsys.readouterr().out
    assert "(mse: the model's units, here the data's own (data.scale=false);" in out
