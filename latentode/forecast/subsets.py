"""Conditioning each posterior sample on a random subset of a history, at the training density.

A latent ODE trained on the paper's interpolation protocol (the encoder sees, say, 50 of each
series' 100 points) meets another density when the forecaster conditions on *all* of a
series' points, and can predict much worse there: the quick start's model predicted held-out
points from four fifths of a series with residual rms 0.291 against 0.128 from half
(docs/results.md, *In-series noise: folds*). Drawing for each posterior sample a random subset
of the history by the training task's rule, and pooling the samples, gives the model the
density it was trained on and averages over which points it sees: held-out rms 0.105 against
0.266 from all points on that model's test series (docs/results.md, *Subset conditioning*).

:class:`Subsets` says how (the training task's interpolation part and the number of subsets);
:func:`subset_forward` runs a latent ODE that way on a batch: each row repeated once per
subset, ``z0`` sample ``s`` conditioned on subset ``s % K``, the samples put back in order. The
forecaster's answers (``latentode.forecast.draw.solve``) and its noise calibration
(``latentode.forecast.calibration``) both predict through it, so the noise describes the
predictor that answers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from latentode.data import Extrapolation, Interpolation, Mixed
from latentode.data.tasks import Points

SUBSET_DRAWS = 10  # subsets per history (at most the number of posterior samples)


@dataclass(frozen=True)
class Subsets:
    """Condition posterior samples on ``draws`` random subsets of each history, each chosen by
    ``task`` (an :class:`~latentode.data.Interpolation`: a ``fraction`` or a ``count`` of the
    history's observed time points, ``fraction_spread`` drawn per subset) as the encoder's
    training chose its points."""

    task: Interpolation
    draws: int = SUBSET_DRAWS

    def __post_init__(self) -> None:
        if not isinstance(self.task, Interpolation):
            raise TypeError(f"Subsets.task must be a latentode.data.Interpolation (the "
                            f"encoder's training subsample), got {type(self.task).__name__}.")
        if isinstance(self.draws, bool) or not isinstance(self.draws, (int, np.integer)) \
                or self.draws < 1:
            raise ValueError(f"Subsets.draws must be a positive integer, got {self.draws!r}.")

    @classmethod
    def of_task(cls, task: Any, draws: int = SUBSET_DRAWS) -> Subsets | None:
        """The subsets a model trained on ``task`` saw: an ``Interpolation``'s own (None when
        it shows the encoder every point), a ``Mixed`` task's interpolation part, an
        ``Extrapolation``'s ``subsample`` share of the prefix (None without one: as an
        ``Interpolation(fraction=subsample)``, which keeps ``round(f n)`` of ``n`` points where
        training kept ``floor(f n)``: one more at most); None for any other task."""
        if isinstance(task, Mixed):
            task = task.interpolation()
        elif isinstance(task, Extrapolation):
            share = getattr(task, "subsample", None)
            task = None if share is None else Interpolation(fraction=float(share))
        if not isinstance(task, Interpolation) or (
                task.count is None and task.fraction == 1 and not task.fraction_spread):
            return None
        return cls(task, int(draws))

    def to_json(self) -> dict[str, Any]:
        task = self.task
        return {"fraction": task.fraction, "count": task.count,
                "fraction_spread": task.fraction_spread, "draws": int(self.draws)}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Subsets | None:
        if data is None:
            return None
        task = Interpolation(fraction=data.get("fraction"), count=data.get("count"),
                             fraction_spread=data.get("fraction_spread"))
        return cls(task, int(data.get("draws", SUBSET_DRAWS)))

    def __str__(self) -> str:
        task = self.task
        share = (f"count={task.count}" if task.count is not None else
                 f"fraction={task.fraction:g}" + (f"+-{task.fraction_spread:g}"
                                                  if task.fraction_spread else ""))
        return f"{self.draws} subsets ({share})"

    def count(self, n_samples: int) -> int:
        """Subsets used for ``n_samples`` posterior samples (at most one per sample)."""
        return max(1, min(int(self.draws), int(n_samples)))

    def masks(self, seen: np.ndarray, copies: int, rng: np.random.Generator) -> np.ndarray:
        """``(copies, R, T)`` bool: ``copies`` random subsets of each row's ``seen`` points
        (``(R, T)`` bool), each drawn by the task from ``rng``. Only the seen points draw, so a
        history's subsets do not depend on the rows around them that show nothing (a ``z0``
        row, points the encoder steps through)."""
        seen = np.asarray(seen, dtype=bool)
        rows, times = np.nonzero(np.broadcast_to(seen, (copies, *seen.shape)).reshape(
            copies * seen.shape[0], -1))
        out = np.zeros((copies * seen.shape[0], seen.shape[1]), dtype=bool)
        if len(rows):
            # rows with no seen point hold no point at all (reduceat needs non-empty rows)
            row_of = np.unique(rows, return_inverse=True)[1]  # rows renumbered 0, 1, ...
            starts = np.searchsorted(row_of, np.arange(row_of[-1] + 1))
            points = Points(rows=row_of, starts=starts, times=times.astype(np.float64),
                            observed=np.ones((len(rows), 1), dtype=bool))
            chosen = self.task.encoder_points(points, rng)
            out[rows[chosen], times[chosen]] = True
        return out.reshape(copies, *seen.shape)


def subset_forward(
    model: torch.nn.Module, masks: np.ndarray, times: torch.Tensor,
    values: torch.Tensor, encoder_mask: torch.Tensor, z0_noise: torch.Tensor,
    pred_times: torch.Tensor | None = None, **extra: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(pred (S, B, T', D), logits (S, B, ...) or None)`` of a latent ODE whose ``z0``
    sample ``s`` of row ``b`` is conditioned on ``encoder_mask[b]`` within subset
    ``masks[s % K, b]`` (``masks`` ``(K, B, T)`` from :meth:`Subsets.masks`), drawn with
    ``z0_noise[s, b]`` (``(S, B, L)``): one pass over ``K * B`` rows of ``ceil(S / K)``
    samples each. ``pred_times`` (1-D or per row) and ``extra`` (``encoder_schedule``,
    ``encoder_visit``, ``encoder_errors``) as for the model's forward."""
    k, batch = masks.shape[:2]
    samples = int(z0_noise.shape[0])
    if k > samples:
        raise ValueError(f"masks hold {k} subsets for {samples} posterior samples: at most one "
                         f"subset per sample (Subsets.count({samples}) subsets).")
    per = math.ceil(samples / k)
    # sample s -> (its subset s % K, its place s // K there); the last places of subsets
    # with fewer samples repeat sample 0 of theirs (computed, never returned)
    idx = np.arange(per)[:, None] * k + np.arange(k)[None, :]  # (per, K)
    idx = np.where(idx < samples, idx, np.arange(k)[None, :])
    noise = z0_noise[torch.from_numpy(idx.reshape(-1))]  # (per * K, B, L)
    noise = noise.reshape(per, k * batch, -1)  # row k * B + b: subset k of row b
    mask = encoder_mask.unsqueeze(0) & torch.from_numpy(masks).to(
        encoder_mask.device).unsqueeze(-1)  # (K, B, T, D)
    mask = mask.reshape(k * batch, *encoder_mask.shape[1:])
    rep_values = values.repeat(k, *([1] * (values.ndim - 1)))
    if pred_times is not None and pred_times.ndim == 2:
        pred_times = pred_times.repeat(k, 1)
    visit = extra.get("encoder_visit")
    if visit is not None:
        extra = {**extra, "encoder_visit": visit.repeat(k, 1)}
    errors = extra.get("encoder_errors")
    if errors is not None:
        extra = {**extra, "encoder_errors": errors.repeat(k, 1, 1)}
    out = model(times, rep_values, mask, pred_times=pred_times, z0_noise=noise, **extra)

    def back(x: torch.Tensor) -> torch.Tensor:
        # (per, K * B, ...) -> (per * K, B, ...) in sample order, the padding dropped
        x = x.reshape(per, k, batch, *x.shape[2:]).reshape(per * k, batch, *x.shape[2:])
        return x[:samples]

    return back(out.pred), None if out.logits is None else back(out.logits)
