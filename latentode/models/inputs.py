"""The batch every model takes, checked at its entry points: shapes, time order, finite values.

``(times (T,), values (B, T, D), mask (B, T, D))``, as ``latentode.data``'s collator builds it.
A user building tensors by hand gets an error that names the argument and the way out instead
of a shape error from inside a matrix product or NaNs from the solver, and values may carry NaN
where they are not observed (the data layer's convention): they are zero-filled there.
"""

from __future__ import annotations

import torch


def checked_batch(
    input_dim: int, times: torch.Tensor, values: torch.Tensor, *masks: torch.Tensor | None
) -> torch.Tensor:
    """``values`` with its NaN/inf entries, all unobserved (every mask false), set to zero,
    after checking that
    ``times`` is the batch's strictly increasing 1-D grid, ``values`` is ``(B, T, input_dim)``,
    each mask has its shape and observed values are finite."""
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
        raise ValueError(
            f"times must be strictly increasing (one sorted grid for the batch, no repeats): "
            f"times[{i}] = {float(times[i]):.6g}, times[{i + 1}] = {float(times[i + 1]):.6g}. "
            "Sort the columns of values and the masks with it."
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
