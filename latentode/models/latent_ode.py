"""The latent ODE (Rubanova, Chen & Duvenaud 2019): encoder -> q(z0) -> ODE -> decoder.

A plain ``nn.Module`` (no Lightning): it reads the observations the encoder may see, samples
``z0`` (reparameterised, ``n_samples`` of them), integrates the generative vector field with
``latentode.solvers`` to every requested time, and decodes to data space. The loss is the negative
importance-weighted ELBO with a masked Gaussian likelihood of fixed ``obs_std``, normalised as in
the paper's code (log-density averaged over each channel's observed targets, then over channels;
KL averaged over latent dimensions) so that its hyper-parameters carry over.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from latentode.nn import ODEFunc, ODERNNEncoder
from latentode.solvers import odeint


@dataclass
class LatentODEOutput:
    """What one pass computes: predictions per posterior sample and the posterior itself."""

    pred: torch.Tensor  # (S, B, T, D) decoded means at the requested times
    z0_mean: torch.Tensor  # (B, L)
    z0_std: torch.Tensor  # (B, L)


def masked_gaussian_loglik(
    values: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, obs_std: float
) -> torch.Tensor:
    """Per-sample, per-series log-density ``(S, B)``: mean over each channel's observed points,
    then over the channels that have any (the paper's normalisation)."""
    mask = mask.to(pred.dtype)
    z = (values - pred) / obs_std
    logp = -0.5 * z.square() - math.log(obs_std) - 0.5 * math.log(2 * math.pi)
    per_channel_sum = (logp * mask).sum(-2)  # (S, B, D)
    count = mask.sum(-2)  # (B, D)
    has = count > 0
    per_channel = per_channel_sum / count.clamp_min(1)
    n_channels = has.sum(-1).clamp_min(1)  # (B,)
    return (per_channel * has).sum(-1) / n_channels


def gaussian_kl(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``KL(N(mean, std^2) || N(0, 1))`` averaged over latent dimensions: ``(B,)``."""
    var = std.square()
    return 0.5 * (var + mean.square() - 1.0 - torch.log(var)).mean(-1)


class LatentODE(nn.Module):
    """Latent ODE with an ODE-RNN (default) or RNN recognition network.

    Args:
        input_dim: channels ``D``.
        latents: latent state size ``L``.
        encoder: a recognition network (``RNNEncoder`` / ``ODERNNEncoder``) mapping
            ``(times, values, mask)`` to ``(mean, std)`` of ``q(z0)``; default an ODE-RNN.
        gen_units, gen_layers: the generative vector field's MLP.
        dec_units, dec_layers: decoder MLP (``dec_layers=0``: linear, as in the paper).
        obs_std: fixed observation noise of the Gaussian likelihood.
        n_samples: posterior samples for the IWAE bound.
        solver: ``odeint`` options for the generative ODE (method, rtol, atol, gradient, ...).
    """

    def __init__(
        self,
        input_dim: int,
        latents: int = 10,
        encoder: nn.Module | None = None,
        gen_units: int = 100,
        gen_layers: int = 1,
        dec_units: int = 100,
        dec_layers: int = 0,
        obs_std: float = 0.01,
        n_samples: int = 3,
        solver: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.input_dim, self.latents = input_dim, latents
        self.encoder = encoder if encoder is not None else ODERNNEncoder(input_dim, latents)
        self.field = ODEFunc(latents, gen_units, gen_layers)
        if dec_layers == 0:
            self.decoder: nn.Module = nn.Linear(latents, input_dim)
        else:
            from latentode.nn import mlp

            self.decoder = mlp(latents, input_dim, dec_units, dec_layers)
        self.obs_std, self.n_samples = obs_std, n_samples
        self.solver = {"method": "dopri5", "rtol": 1e-3, "atol": 1e-4,
                       "gradient": "checkpoint", **(solver or {})}

    def encode(
        self, times: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior ``q(z0)`` from the observations under ``mask``."""
        return self.encoder(times, values, mask)

    def decode_paths(
        self, z0: torch.Tensor, times: torch.Tensor
    ) -> torch.Tensor:
        """Integrate ``z0 (S, B, L)`` from ``times[0]`` to every ``times``; decode: (S, B, T, D)."""
        samples, batch, latents = z0.shape
        z = odeint(self.field, z0.reshape(samples * batch, latents), times, **self.solver)
        z = z.reshape(len(times), samples, batch, latents).permute(1, 2, 0, 3)
        return self.decoder(z)

    def forward(
        self, times: torch.Tensor, values: torch.Tensor, encoder_mask: torch.Tensor,
        n_samples: int | None = None, pred_times: torch.Tensor | None = None,
    ) -> LatentODEOutput:
        """Encode what ``encoder_mask`` shows, sample ``z0``, predict at ``pred_times`` (default
        ``times``; the first must be ``times[0]``, where ``z0`` lives)."""
        mean, std = self.encode(times, values, encoder_mask)
        n = n_samples or self.n_samples
        eps = torch.randn((n, *mean.shape), dtype=mean.dtype, device=mean.device)
        z0 = mean + std * eps
        out_times = times if pred_times is None else pred_times
        return LatentODEOutput(self.decode_paths(z0, out_times), mean, std)

    def loss(
        self, times: torch.Tensor, values: torch.Tensor, encoder_mask: torch.Tensor,
        target_mask: torch.Tensor, kl_weight: float = 1.0, n_samples: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Negative IWAE bound and its terms; MSE of the sample-mean prediction on the targets."""
        out = self(times, values, encoder_mask, n_samples)
        loglik = masked_gaussian_loglik(values, out.pred, target_mask, self.obs_std)  # (S, B)
        kl = gaussian_kl(out.z0_mean, out.z0_std)  # (B,)
        samples = out.pred.shape[0]
        bound = torch.logsumexp(loglik - kl_weight * kl, dim=0) - math.log(samples)
        mask = target_mask.to(values.dtype)
        sq = (out.pred.mean(0) - values).square() * mask
        mse = sq.sum() / mask.sum().clamp_min(1)
        return {
            "loss": -bound.mean(),
            "loglik": loglik.mean(),
            "kl": kl.mean(),
            "mse": mse,
            "pred": out.pred,
        }
