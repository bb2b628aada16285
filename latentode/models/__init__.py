"""Models as plain ``nn.Module``s (no Lightning): the latent ODE and its loss."""

from .latent_ode import LatentODE, LatentODEOutput, gaussian_kl, masked_gaussian_loglik

__all__ = ["LatentODE", "LatentODEOutput", "gaussian_kl", "masked_gaussian_loglik"]
