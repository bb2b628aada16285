"""The batch every model takes, checked at its entry points: shapes, time order, finite values.

``(times (T,), values (B, T, D), mask (B, T, D))``, as ``latentode.data``'s collator builds it.
A user building tensors by hand gets an error that names the argument and the way out instead
of a shape error from inside a matrix product or NaNs from the solver, and values may carry NaN
where they are not observed (the data layer's convention): they are zero-filled there.
"""

from __future__ import annotations

import itertools
import math
import numbers
from typing import Any

import numpy as np
import torch

from latentode.solvers.precision import autocast_on


def weight_dtype(module: torch.nn.Module) -> torch.dtype | None:
    """The dtype of ``module``'s first floating-point parameter (None without one)."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), None)


def checked_batch(
    input_dim: int, times: torch.Tensor, values: torch.Tensor, *masks: torch.Tensor | None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``values`` with its NaN/inf entries, all unobserved (every mask false), set to zero,
    after checking that
    ``times`` is the batch's strictly increasing 1-D grid, ``values`` is ``(B, T, input_dim)``,
    each mask has its shape and observed values are finite; with ``dtype`` (the model's
    weights'), that ``values`` has it too (outside autocast)."""
    if not isinstance(values, torch.Tensor) or values.dim() != 3 or values.shape[-1] != input_dim:
        shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise ValueError(
            f"values must have shape (batch, T, channels) with channels = input_dim = "
            f"{input_dim}, got {shape}. One series: values[None]; one channel: values[..., None]."
        )
    if not isinstance(times, torch.Tensor) or times.dim() != 1:
        shape = tuple(times.shape) if isinstance(times, torch.Tensor) else type(times).__name__
        raise ValueError(
            f"times must be 1-D (T,): the batch's shared, sorted time grid, with the masks "
            f"saying which series is observed when (latentode.data's Collator builds it); got "
            f"{shape}. Per-series times (B, T) are for pred_times only."
        )
    if len(times) != values.shape[1]:
        raise ValueError(f"times has {len(times)} entries but values has T = {values.shape[1]} "
                         f"(shape {tuple(values.shape)}): one time per column of values.")
    if times.dtype != values.dtype:
        raise ValueError(f"times ({times.dtype}) and values ({values.dtype}) must have one "
                         "dtype: times.to(values.dtype).")
    if (dtype is not None and values.dtype != dtype and values.is_floating_point()
            and not autocast_on(values.device.type)):
        raise ValueError(
            f"values are {values.dtype} but the model's weights are {dtype}: give both one "
            f"dtype, model.to({dtype}) -> values.to({dtype}) and times.to({dtype}), or "
            f"model.to({values.dtype}) (latentode.data's Collator(dtype=...) makes batches of "
            "a dtype; under a Lightning Trainer, precision='64-true' casts both).")
    for i, mask in enumerate(masks):
        name = "encoder_mask" if i == 0 else "target_mask"
        if mask is not None and tuple(mask.shape) != tuple(values.shape):
            raise ValueError(f"{name} must have the shape of values {tuple(values.shape)}, got "
                             f"{tuple(mask.shape)}.")
        if mask is not None and mask.dtype != torch.bool:
            raise ValueError(f"{name} must be a bool tensor (true where observed), got "
                             f"{mask.dtype}: pass {name}.bool() (or {name} > 0).")
    rising = times[1:] > times[:-1]
    # NaN/inf reach the sum: one reduction (isfinite over the batch took 10x longer, at every
    # training step); a finite sum that overflowed only sends us to the elementwise check
    total = values.sum()
    in_order, all_finite = torch.stack([rising.all(), torch.isfinite(total)]).tolist()  # 1 sync
    if not in_order:
        i = int((~rising).nonzero()[0])
        coarse = times.dtype in (torch.float16, torch.bfloat16)
        raise ValueError(
            f"times must be strictly increasing (one sorted grid for the batch, no repeats): "
            f"times[{i}] = {float(times[i]):.6g}, times[{i + 1}] = {float(times[i + 1]):.6g}. "
            + (f"They are {times.dtype}, whose few mantissa bits merge nearby times: a "
               "'16-true'/'bf16-true' precision casts the whole batch; use 'bf16-mixed' or "
               "'16-mixed' (times and weights stay float32)." if coarse else
               "Sort the columns of values and the masks with it.")
        )
    if all_finite:
        return values
    finite = torch.isfinite(values)
    if bool(finite.all()):
        return values
    observed = torch.zeros_like(finite)
    for mask in masks:
        if mask is not None:
            observed |= mask.bool()
    bad = observed & ~finite
    if bool(bad.any()):
        b, t, d = (int(x) for x in bad.nonzero()[0])
        raise ValueError(
            f"values has {int(bad.sum())} NaN/inf entries where a mask marks them observed "
            f"(first: series {b}, time index {t}, channel {d}). An observed value must be "
            "finite: set the mask false there (NaN marks a missing value)."
        )
    return torch.where(finite, values, torch.zeros((), dtype=values.dtype, device=values.device))


def checked_posterior(encoder: Any, out: Any, batch: int, latents: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's ``q(z0)``: a ``(mean, std)`` pair of ``(batch, latents)`` tensors, ``std``
    positive. A user's encoder (any class outside latentode) that returns something else is
    named here, rather than by an unpacking or matmul error further on or, for a negative
    "std" (a log-std by mistake), a NaN loss; latentode's own encoders are not re-checked for
    positivity (that would cost a device synchronisation per step)."""
    name = type(encoder).__name__
    if not (isinstance(out, (tuple, list)) and len(out) == 2
            and all(isinstance(x, torch.Tensor) for x in out)):
        got = (f"a {type(out).__name__} of {len(out)}" if isinstance(out, (tuple, list))
               else f"a {type(out).__name__}")
        raise ValueError(f"encoder {name} must return (mean, std) of q(z0), two tensors of "
                         f"shape (batch, latents) = ({batch}, {latents}); it returned {got}.")
    mean, std = out
    for what, x in (("mean", mean), ("std", std)):
        if tuple(x.shape) != (batch, latents):
            raise ValueError(f"encoder {name} returned a {what} of shape {tuple(x.shape)}; "
                             f"q(z0) needs (batch, latents) = ({batch}, {latents}) (the "
                             "model's latents).")
    if not type(encoder).__module__.startswith("latentode.") and not bool((std > 0).all()):
        raise ValueError(f"encoder {name} returned a std of q(z0) that is not positive "
                         f"everywhere (min {float(std.min()):.3g}): return a standard "
                         "deviation, e.g. softplus(raw) + 1e-6 or exp(log_std), not a log-std.")
    return mean, std


def check_decoded(decoder: Any, pred: torch.Tensor, input_dim: int) -> None:
    """A decoder must give one output per data channel (a single output was broadcast across
    every channel by the likelihood, silently)."""
    if pred.shape[-1] != input_dim:
        raise ValueError(f"decoder {type(decoder).__name__} gives {pred.shape[-1]} output "
                         f"channel(s) per point; the data has input_dim = {input_dim}: its "
                         f"last layer must output {input_dim}.")


def checked_pred_times(pred_times: torch.Tensor | None, times: torch.Tensor, batch: int,
                       per_series: bool) -> None:
    """``pred_times``: 1-D or, ``per_series`` (the latent ODE), ``(batch, T)`` rows; refused
    here by name rather than deep in the solver or a baseline's walk."""
    if pred_times is None:
        return
    if not isinstance(pred_times, torch.Tensor):
        raise ValueError(f"pred_times must be a tensor of model times, got "
                         f"{type(pred_times).__name__}.")
    if pred_times.dim() == 2 and per_series:
        if pred_times.shape[0] != batch:
            raise ValueError(f"per-series pred_times {tuple(pred_times.shape)} need one row per "
                             f"series: ({batch}, T).")
        return
    if pred_times.dim() != 1:
        what = ("1-D (T',) or per series (batch, T')" if per_series else
                "1-D (T',) (per-series times (batch, T') are the latent ODE's only: ask this "
                "model on their union, or one series at a time)")
        raise ValueError(f"pred_times must be {what}, got shape {tuple(pred_times.shape)}.")
    # their order: the baselines' walk refuses unsorted times on the host list it reads
    # anyway (check_increasing); the latent ODE's solver checks them and the model renames
    # its t (OutputTimesError.named)


def check_increasing(wanted: list[float]) -> None:
    """A baseline's ``pred_times`` (as the host list its walk reads) strictly increasing."""
    if any(b <= a for a, b in itertools.pairwise(wanted)):
        raise ValueError("pred_times must be strictly increasing (sorted, no repeats): "
                         "torch.unique(pred_times) sorts them.")


ERROR_WEIGHTINGS = ("relative", "absolute")


def check_error_weighting(weighting: str) -> str:
    if weighting not in ERROR_WEIGHTINGS:
        raise ValueError(f"error_weighting must be one of {ERROR_WEIGHTINGS}, got "
                         f"{weighting!r}: relative (uncertainties share the data's weight among "
                         "the points) or absolute (variance obs_std^2 + err^2).")
    return weighting


def encoder_confidence(mask: torch.Tensor, errors: torch.Tensor | None, scale: float | None,
                       dtype: torch.dtype, relative: bool = False,
                       compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The encoder's view of ``mask`` given measurement uncertainties: each observed value's
    confidence ``1 / (1 + (err / scale)^2)`` in ``(0, 1]`` (1 without an uncertainty, 1/2 at
    ``err = scale``), 0 where not observed, as ``dtype``; ``mask`` itself when there are no
    ``errors`` or no ``scale``. Every encoder reads ``[values * mask, mask]``, so a soft mask
    lets a noisy value move the posterior less, and tells the encoder so, without new inputs.

    ``relative``: divided by the most confident value ``mask`` shows of each series and
    channel (which then reads 1): only how much less precise a value is than that best
    counts, so equal uncertainties within a series change nothing (as the likelihood's
    ``relative`` weighting, :func:`point_noise`), however large: a value not measured is NaN,
    not one with a huge uncertainty. Per series, whatever the batch. ``compute_dtype``:
    float64 by default, float32 on MPS (no float64 there)."""
    if errors is None or scale is None:
        return mask
    if not isinstance(errors, torch.Tensor) or tuple(errors.shape) != tuple(mask.shape):
        shape = tuple(errors.shape) if isinstance(errors, torch.Tensor) else type(errors).__name__
        raise ValueError(f"encoder_errors must have the shape of the encoder mask "
                         f"{tuple(mask.shape)} (one uncertainty per series, time and channel; "
                         f"0 where none), got {shape}.")
    # float64: squares of uncertainties up to float32's largest stay finite, and equal ones
    # divide to exactly 1; where a device has no float64 (MPS), float32 with the ratio
    # capped at 1e18 (confidence 1e-36: the same reading, short of overflow)
    wide = compute_dtype or (torch.float32 if mask.device.type == "mps" else torch.float64)
    errors = errors.to(dtype=wide, device=mask.device)
    check_errors(errors)
    ratio = errors / scale
    if wide == torch.float32:
        ratio = ratio.clamp_max(1e18)
    # (float64: a square beyond its range, from a float64 model's uncertainty above 1e154,
    # is inf: confidence 0)
    confidence = mask.to(wide) / (1.0 + ratio.square())
    if relative:
        best = confidence.amax(-2, keepdim=True)  # (B, 1, D): each series-channel's best
        confidence = torch.where(best > 0, confidence / best, confidence)
    return confidence.to(dtype)


def encoder_error_kwargs(model: Any, errors: torch.Tensor | None) -> dict[str, Any]:
    """``{"encoder_errors": errors}`` for a model whose encoder reads measurement
    uncertainties (a latent ODE with ``encoder_error_scale``), else ``{}``: what a caller
    holding a batch's ``errors`` passes to ``forward`` / ``predict`` (a baseline's take no
    such argument)."""
    if errors is None or getattr(model, "encoder_error_scale", None) is None:
        return {}
    return {"encoder_errors": errors}


def check_error_scale(scale: float | None) -> float | None:
    if scale is None:
        return None
    if isinstance(scale, bool | np.bool_) or not isinstance(scale, numbers.Real) or not (
            math.isfinite(scale) and scale > 0):
        raise ValueError(f"encoder_error_scale must be a positive number (the uncertainty, in "
                         f"model units, at which a value counts half in the encoder) or None "
                         f"(the encoder reads every value alike), got {scale!r}.")
    return float(scale)


def check_errors(errors: torch.Tensor) -> None:
    """Measurement uncertainties must be finite and >= 0 (one host sync)."""
    if not bool((torch.isfinite(errors) & (errors >= 0)).all()):
        raise ValueError("measurement uncertainties (errors= / encoder_errors=) must be finite "
                         "and >= 0 (standard deviations; 0 where none was given), got a "
                         "negative, NaN or infinite one.")


def point_noise(obs_std: float | torch.Tensor, errors: torch.Tensor | None,
                values: torch.Tensor, target_mask: torch.Tensor | None = None,
                weighting: str = "relative", check: bool = True) -> float | torch.Tensor:
    """The likelihood's std at each point: ``obs_std`` (one, or ``(D,)``) alone, or with
    measurement uncertainties ``errors`` ``(B, T, D)`` (one std each, in the values' units, 0
    where none): ``sqrt(obs_std^2 + errors^2)`` ``(B, T, D)``, so a point measured less
    precisely weighs less, in proportion to its variance.

    ``weighting="relative"`` (the default) then rescales the stds of each series and channel
    so that their mean weight ``1 / std^2`` over its targets (``target_mask``; None: every
    point) is ``1 / obs_std^2``, as without uncertainties: the uncertainties share a series'
    weight among its points, and ``obs_std`` keeps setting the weight of the data against the
    series' KL term. With the paper's normalisation (log-density averaged over each series'
    points, not summed) ``obs_std`` is that balance's knob rather than a noise level: the
    variances themselves (``"absolute"``) trained 1.2-3x worse on noisy sines, even with the
    same uncertainty at every point (docs/results.md, *Measurement uncertainties*). Per
    series, so a series' terms do not depend on the others in its batch; a series noisier
    than another as a whole does not weigh less than it under ``"relative"`` (each series
    weighs the same under this normalisation anyway). Equal uncertainties within a series
    change nothing, and a point without one (0) is the series' most precise. ``check``:
    refuse negative and non-finite ones here (False where the caller's encoder checks the
    same tensor: one host sync per step, not two)."""
    check_error_weighting(weighting)
    if errors is None:
        return obs_std
    if not isinstance(errors, torch.Tensor) or tuple(errors.shape) != tuple(values.shape):
        shape = tuple(errors.shape) if isinstance(errors, torch.Tensor) else type(errors).__name__
        raise ValueError(f"errors must have the shape of values {tuple(values.shape)} (one "
                         f"uncertainty per series, time and channel; 0 where none), got {shape}.")
    # at least float32: half precision's sums and squares overflow and underflow here
    dtype = torch.promote_types(values.dtype, torch.float32)
    errors = errors.to(dtype=dtype, device=values.device)
    if check:
        check_errors(errors)
    base = torch.as_tensor(obs_std, dtype=dtype, device=values.device)
    # hypot: a huge uncertainty (a catalogue's 1e20 for "unmeasured") squared overflows float32
    std = torch.hypot(base, errors)
    if weighting == "absolute":
        return std
    mask = torch.ones_like(errors, dtype=torch.bool) if target_mask is None else target_mask
    # relative to each series-channel's most precise target: ratios in (0, 1], one of them 1,
    # so their mean neither underflows nor overflows whatever the uncertainties' size
    least = torch.where(mask, std, torch.inf).amin(1, keepdim=True)  # (B, 1, D)
    has = mask.any(1, keepdim=True)
    least = torch.where(has, least, 1.0)
    ratio = torch.where(mask, (least / std).square(), 0.0)
    mean = ratio.sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp_min(1)
    # (a non-target's rescaled std underflowed to 0 beside targets of ~1e38 at obs_std 1e-4:
    # 0 / 0 made the loss NaN where the mask zeroes it)
    return torch.where(has, std * (base / least) * mean.sqrt(), std).clamp_min(
        torch.finfo(dtype).tiny)
