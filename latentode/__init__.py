"""latentode: latent ODEs for irregularly sampled time series."""

__version__ = "0.1.0"
