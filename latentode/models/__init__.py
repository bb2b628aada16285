"""Models as plain ``nn.Module``s (no Lightning): the latent ODE, its loss, and the paper's
baselines (ODE-RNN, RNN with time gaps, RNN-VAE) behind the same interface."""

from .baselines import GRUDT, ODERNN, RNNVAE, iwae_terms
from .latent_ode import LatentODE, LatentODEOutput, gaussian_kl, masked_gaussian_loglik

__all__ = [
    "GRUDT",
    "ODERNN",
    "RNNVAE",
    "LatentODE",
    "LatentODEOutput",
    "gaussian_kl",
    "iwae_terms",
    "masked_gaussian_loglik",
]
