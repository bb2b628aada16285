"""latentode: latent ODEs for irregularly sampled time series."""

from typing import Any

__version__ = "0.1.0"

__all__ = ["LatentODEForecaster"]


def __getattr__(name: str) -> Any:
    """``LatentODEForecaster`` is imported on first use, so ``import latentode`` stays light."""
    if name == "LatentODEForecaster":
        from latentode.forecast import LatentODEForecaster

        return LatentODEForecaster
    raise AttributeError(f"module 'latentode' has no attribute {name!r}")
