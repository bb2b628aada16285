"""Observation noise of the Gaussian likelihood: one fixed std, or one per channel.

The paper trains with one fixed ``obs_std`` (0.01, 1e-3 for the hopper). Per channel, a user
who knows one sensor is noisier than the rest gives that channel a larger std, so that its
errors weigh less in the loss (the weight of a channel's squared errors is ``1 / std^2``).
Measurement uncertainties known per point (``from_dataframe(uncertainty_cols=...)``) are added
to it in quadrature by the models' loss and, by default, share each series' weight among its
points relative to each other (:func:`latentode.models.inputs.point_noise`).

The noise is not learned: with the paper's normalisation (log-density averaged over each
channel's points, KL averaged over latents) and Adamax, a learned std made the quick start's
model no better than the mean (test MSE 0.82 against 0.019 fixed; a fixed 0.04, where the
learned one ended, gives 0.021): as the std grows, every gradient of the reconstruction shrinks
by ``1 / std^2`` while the optimiser's normaliser still remembers the early, larger ones, so
the whole model's steps shrink (docs/results.md, *Learned observation noise*). The noise of
the predictions is estimated after training instead (:mod:`latentode.forecast.calibration`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import nn


class ObservationNoise(nn.Module):
    """The likelihood's fixed noise std: one number, or one per channel.

    Args:
        channels: the data's channels ``D``.
        obs_std: the std, one for all channels or one per channel.

    Calling it gives the std for the likelihood: the float ``obs_std`` when it is one number, a
    ``(D,)`` tensor in the dtype and device of ``like`` when per channel (made from the numbers
    given, so float64 models get them exactly; no buffer: checkpoints keep their keys).
    """

    def __init__(self, channels: int, obs_std: float | Sequence[float] = 0.01):
        super().__init__()
        per_channel = not isinstance(obs_std, numbers.Real)
        values = ([float(v) for v in obs_std] if per_channel  # type: ignore[union-attr]
                  else [float(obs_std)])  # type: ignore[arg-type]
        if per_channel and len(values) != channels:
            raise ValueError(f"obs_std has {len(values)} value(s) for {channels} channel(s): "
                             f"give one number, or one per channel.")
        if not all(math.isfinite(v) and v > 0 for v in values):
            raise ValueError(f"obs_std must be positive numbers, got {obs_std!r}.")
        self._values = values if per_channel else values[0]
        self._tensors: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    def forward(self, like: torch.Tensor) -> float | torch.Tensor:
        """The std: a float, or ``(D,)`` per channel in ``like``'s dtype and device."""
        if not isinstance(self._values, list):
            return self._values
        key = (like.dtype, like.device)
        if key not in self._tensors:
            self._tensors[key] = torch.tensor(self._values, dtype=like.dtype, device=like.device)
        return self._tensors[key]

    def values(self) -> float | list[float]:
        """The std as plain numbers: a float, or a list per channel."""
        return list(self._values) if isinstance(self._values, list) else self._values

    def extra_repr(self) -> str:
        return f"obs_std={self._values}"


class WithObservationNoise:
    """For a model holding an :class:`ObservationNoise` as ``noise``: ``obs_std`` reads it (a
    float, or a list per channel), as the forecaster and evaluation do."""

    noise: ObservationNoise

    @property
    def obs_std(self) -> float | list[float]:
        """The likelihood's noise std: one, or one per channel."""
        return self.noise.values()
