"""Neural building blocks of the models: MLPs, ODE vector fields, recognition encoders."""

from .encoders import ODERNNEncoder, RNNEncoder
from .layers import ODEFunc, mlp
from .noise import ObservationNoise, WithObservationNoise

__all__ = ["ODEFunc", "ODERNNEncoder", "ObservationNoise", "RNNEncoder", "WithObservationNoise",
           "mlp"]
