"""Lightning training of the models: the LightningModule and plots of predictions.

Lightning lives here only; ``latentode.models`` and ``latentode.nn`` stay plain PyTorch.
"""

from .checkpoints import RunModelCheckpoint
from .csv_logger import RunCSVLogger
from .module import LatentODELightning, exponential_decay, kl_weight_schedule

__all__ = ["LatentODELightning", "RunCSVLogger", "RunModelCheckpoint", "exponential_decay",
           "kl_weight_schedule"]
