"""The likelihood's observation noise: one fixed std, or one per channel (``model.obs_std``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats

from latentode.forecast.calibration import (
    calibrate_noise,
    format_obs_std,
    model_obs_std,
    obs_std_array,
)
from latentode.models import GRUDT, ODERNN, RNNVAE, LatentODE, masked_gaussian_loglik
from latentode.nn import ObservationNoise


def _batch(seed: int = 0, batch: int = 3, length: int = 7, dims: int = 2):
    g = torch.Generator().manual_seed(seed)
    times = torch.linspace(0, 1, length, dtype=torch.float64)
    values = torch.randn(batch, length, dims, generator=g, dtype=torch.float64)
    mask = torch.rand(batch, length, dims, generator=g) < 0.6
    mask[0, :, 1] = False  # a series without any point of channel 1
    return times, values, mask


def test_per_channel_loglik_is_the_gaussian_density_in_the_papers_normalisation():
    """Mean of log N(value; pred, std_c^2) over each channel's observed points, then over the
    channels a series has, against scipy."""
    _, values, mask = _batch()
    pred = torch.randn(2, *values.shape, generator=torch.Generator().manual_seed(1),
                       dtype=torch.float64)
    std = [0.3, 0.05]
    got = masked_gaussian_loglik(values, pred, mask, torch.tensor(std, dtype=torch.float64))
    logpdf = stats.norm.logpdf(values.numpy(), pred.numpy(), np.asarray(std))  # (S, B, T, D)
    m = mask.numpy()
    for s in range(2):
        for b in range(values.shape[0]):
            per = [logpdf[s, b][m[b, :, c], c].mean() for c in range(2) if m[b, :, c].any()]
            assert got[s, b].item() == pytest.approx(np.mean(per), rel=1e-12)
    # the same std for every channel is the scalar likelihood
    same = masked_gaussian_loglik(values, pred, mask, torch.full((2,), 0.1, dtype=torch.float64))
    torch.testing.assert_close(same, masked_gaussian_loglik(values, pred, mask, 0.1))


@pytest.mark.parametrize("cls", [LatentODE, ODERNN, GRUDT, RNNVAE])
def test_a_larger_std_weighs_a_channels_errors_less(cls):
    """Per channel: each channel's squared errors enter the loss with weight 1 / std_c^2, so the
    gradient reaching the decoder's row of channel c scales with (s / std_c)^2 (where no
    prediction is fed back as an input: not RNN-VAE, GRU-dt past a series' data); equal stds
    are the scalar model; the keys of a checkpoint do not change (old checkpoints load)."""
    times, values, mask = _batch(2)
    models = {}
    for name, obs in (("scalar", 0.1), ("equal", [0.1, 0.1]), ("wide", [0.1, 0.4])):
        torch.manual_seed(0)
        models[name] = cls(input_dim=2, obs_std=obs).double()
    keys = set(models["scalar"].state_dict())
    assert set(models["wide"].state_dict()) == keys
    models["wide"].load_state_dict(models["scalar"].state_dict())
    losses, grads = {}, {}
    for name, model in models.items():
        torch.manual_seed(5)
        out = model.loss(times, values, mask, mask, kl_weight=0.0)
        out["loss"].backward()
        losses[name] = out["loss"].detach()
        head = model.decoder if cls is LatentODE else model.out
        last = [m for m in head.modules() if isinstance(m, torch.nn.Linear)][-1]
        grads[name] = last.bias.grad.clone()
    torch.testing.assert_close(losses["equal"], losses["scalar"])
    torch.testing.assert_close(grads["equal"], grads["scalar"])
    assert models["wide"].obs_std == [0.1, 0.4] and models["scalar"].obs_std == 0.1
    if cls in (RNNVAE, GRUDT):
        return
    assert grads["wide"][0].item() == pytest.approx(grads["scalar"][0].item(), rel=1e-9)
    assert grads["wide"][1].item() == pytest.approx(grads["scalar"][1].item() / 16, rel=1e-9)


def test_bad_obs_std_is_refused_with_the_count_or_the_value():
    with pytest.raises(ValueError, match=r"obs_std has 3 value\(s\) for 2 channel\(s\): give "
                                         r"one number, or one per channel"):
        LatentODE(input_dim=2, obs_std=[0.1, 0.2, 0.3])
    for bad in (0.0, -1.0, float("nan"), [0.1, 0.0]):
        with pytest.raises(ValueError, match=r"obs_std must be positive numbers"):
            ObservationNoise(2, bad)
    assert ObservationNoise(2, np.float32(0.5)).values() == 0.5  # a numpy scalar is one number


def test_the_forecasting_side_reads_a_std_per_channel():
    """Calibration's floor, the 'model' noise and log lines take one std per channel."""
    model = LatentODE(input_dim=2, obs_std=[0.02, 3.0])
    assert model_obs_std(model) == [0.02, 3.0]
    np.testing.assert_array_equal(obs_std_array(model_obs_std(model), 2), [0.02, 3.0])
    np.testing.assert_array_equal(obs_std_array(0.1, 2), [0.1, 0.1])
    with pytest.raises(ValueError, match=r"obs_std has 2 channel\(s\), the data 3"):
        obs_std_array([0.02, 3.0], 3)
    assert format_obs_std([0.02, 3.0]) == "[0.02, 3]" and format_obs_std(0.01) == "0.01"
    assert model_obs_std(LatentODE(input_dim=2)) == 0.01

    from test_calibration import FakeModel, make_batches

    fake = FakeModel(obs_std=[0.01, 1.0])  # the true noise is (0.3, 0.1)
    cal = calibrate_noise(fake, make_batches(0), n_samples=20)
    assert cal.std[0] == pytest.approx(0.3, rel=0.1) and cal.std[1] == 1.0  # the floor
    assert json.loads(json.dumps(cal.to_json()))["obs_std"] == [0.01, 1.0]


def test_train_eval_and_forecast_with_a_std_per_channel(tmp_path, monkeypatch, capsys):
    """From the command line (``model.obs_std=[...]``, one per channel of the data) through
    training, evaluation's coverage record and the forecaster's 'model' noise."""
    from test_predict_cli import TINY, run_main

    from latentode import LatentODEForecaster
    from latentode.cli import evaluate as eval_cli
    from latentode.cli import train as train_cli

    run = tmp_path / "run"
    run_main(train_cli, ["latentode-train", f"hydra.run.dir={run}", *TINY,
                         "model.obs_std=[0.05]"], monkeypatch)
    out = tmp_path / "eval"
    run_main(eval_cli, ["latentode-eval", f"ckpt_path={run}/checkpoints/last.ckpt",
                        f"hydra.run.dir={out}", "plot=false", "coverage.n_samples=10"],
             monkeypatch)
    coverage = json.loads((out / "test_metrics.json").read_text())["coverage"]
    assert coverage["obs_std"] == [0.05] and coverage["noise_std"][0] >= 0.05
    forecaster = LatentODEForecaster.from_run(run)
    np.testing.assert_array_equal(forecaster.noise_std("model"), [0.05])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        run_main(train_cli, ["latentode-train", f"hydra.run.dir={tmp_path}/bad", *TINY,
                             "model.obs_std=[0.05,0.1]"], monkeypatch)
    assert "obs_std has 2 value(s) for 1 channel(s)" in capsys.readouterr().err
