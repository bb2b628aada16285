"""Neural building blocks of the models: MLPs, ODE vector fields, recognition encoders."""

from .encoders import ODERNNEncoder, RNNEncoder
from .layers import ODEFunc, mlp

__all__ = ["ODEFunc", "ODERNNEncoder", "RNNEncoder", "mlp"]
