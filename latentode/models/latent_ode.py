"""The latent ODE (Rubanova, Chen & Duvenaud 2019): encoder -> q(z0) -> ODE -> decoder.

A plain ``nn.Module`` (no Lightning): it reads the observations the encoder may see, samples
``z0`` (reparameterised, ``n_samples`` of them), integrates the generative vector field with
``latentode.solvers`` to every requested time, and decodes to data space. The loss is the negative
importance-weighted ELBO with a masked Gaussian likelihood of fixed ``obs_std`` (one, or one per
channel), normalised as in
the paper's code (log-density averaged over each channel's observed targets, then over channels;
KL averaged over latent dimensions) so that its hyper-parameters carry over.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

from latentode.nn import ObservationNoise, ODEFunc, ODERNNEncoder, WithObservationNoise, mlp
from latentode.nn.layers import check_sizes, start_output_bias
from latentode.solvers import FIXED_METHODS, OutputTimesError, SolverStats, odeint
from latentode.solvers.odeint import check_options

from .inputs import (
    check_decoded,
    check_error_scale,
    check_error_weighting,
    checked_batch,
    checked_posterior,
    checked_pred_times,
    encoder_confidence,
    point_noise,
    weight_dtype,
)
from .posterior import posterior_noise


@dataclass
class LatentODEOutput:
    """What one pass computes: predictions per posterior sample and the posterior itself."""

    pred: torch.Tensor  # (S, B, T, D) decoded means at the requested times
    z0_mean: torch.Tensor  # (B, L)
    z0_std: torch.Tensor  # (B, L)
    log_rate: torch.Tensor | None = None  # (S, B, T, D) Poisson log-intensity (poisson=True)
    cum_rate: torch.Tensor | None = None  # (S, B, T, D) its integral from times[0]
    logits: torch.Tensor | None = None  # (S, B[, T], C) label logits (n_labels > 0)
    z0: torch.Tensor | None = None  # (S, B, L) the posterior samples behind pred


def masked_gaussian_loglik(
    values: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, obs_std: float | torch.Tensor
) -> torch.Tensor:
    """Per-sample, per-series log-density ``(S, B)``: mean over each channel's observed points,
    then over the channels that have any (the paper's normalisation). ``obs_std``: one std,
    one per channel ``(D,)`` or one per point ``(B, T, D)``."""
    if pred.shape[-1] != values.shape[-1] or pred.shape[-3:] != values.shape[-3:]:
        raise ValueError(f"pred {tuple(pred.shape)} must end with the values' shape "
                         f"{tuple(values.shape)} (samples, batch, T, channels): one prediction "
                         "per series, time and channel.")
    # unobserved entries may hold anything finite (a filler of 1e20 overflowed to inf * 0 = NaN)
    z = torch.where(mask, values - pred, 0.0) / obs_std
    mask = mask.to(pred.dtype)
    log_std = obs_std.log() if torch.is_tensor(obs_std) else math.log(obs_std)
    logp = -0.5 * z.square() - log_std - 0.5 * math.log(2 * math.pi)
    per_channel_sum = (logp * mask).sum(-2)  # (S, B, D)
    count = mask.sum(-2)  # (B, D)
    has = count > 0
    per_channel = per_channel_sum / count.clamp_min(1)
    n_channels = has.sum(-1).clamp_min(1)  # (B,)
    return (per_channel * has).sum(-1) / n_channels


def gaussian_kl(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``KL(N(mean, std^2) || N(0, 1))`` averaged over latent dimensions: ``(B,)``."""
    var = std.square()
    return 0.5 * (var + mean.square() - 1.0 - torch.log(var)).mean(-1)


def sample_kl(z0: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``log q(z0) - log p(z0)`` of each sample ``z0 (S, B, L)`` under ``q = N(mean, std^2)``
    and ``p = N(0, 1)``, averaged over latent dimensions as :func:`gaussian_kl` is: ``(S, B)``.
    Its mean under ``q`` is that KL; inside ``iwae``'s logsumexp it makes the bound Burda's."""
    eps = (z0 - mean) / std
    return (0.5 * (z0.square() - eps.square()) - torch.log(std)).mean(-1)


OBJECTIVES = ("iwae", "elbo", "batch_iwae")
LABELS = ("series", "time")
Z0_AT = ("start", "first_target")


def poisson_process_loglik(
    log_rate: torch.Tensor, cum_rate: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Log-likelihood ``(S, B)`` of *when* channels were observed under an inhomogeneous
    Poisson process per channel: ``sum log rate(t_i) - integral of rate`` over each series'
    window, from its first point under ``mask`` to its last, averaged over channels with a
    point. ``cum_rate`` is the rate's integral from ``times[0]``. The window starts at the first
    point, not at ``times[0]``: in extrapolation the points before the cut are not counted as
    events, so their span must not count either (it biased the rate low, by half on an even
    split), and a series that starts after ``times[0]`` has no events to count before.
    """
    maskf = mask.to(log_rate.dtype)
    events = (log_rate * maskf).sum(-2)  # (S, B, D)
    seen = mask.any(-1)  # (B, T)
    steps = torch.arange(seen.shape[-1], device=seen.device)
    last = torch.where(seen, steps, -1).amax(-1).clamp_min(0)  # (B,) each series' last point
    first = torch.where(seen, steps, seen.shape[-1]).amin(-1).clamp_max(seen.shape[-1] - 1)

    def at(index: torch.Tensor) -> torch.Tensor:
        index = index.view(1, -1, 1, 1).expand(cum_rate.shape[0], -1, 1, cum_rate.shape[-1])
        return cum_rate.gather(2, index).squeeze(2)  # (S, B, D)

    integral = at(last) - at(first)
    has = mask.any(-2)  # (B, D)
    per_channel = (events - integral) * has
    return per_channel.sum(-1) / has.sum(-1).clamp_min(1)


def label_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``logits`` against the known (non-NaN) ``labels``, averaged.

    Per series: ``logits (S, B, C)``, ``labels (B,)``; per time point: ``logits (S, B, T, C)``,
    ``labels (B, T)``. One logit (``C = 1``) is binary (labels 0/1), more are classes
    ``0..C-1``. Every posterior sample is scored (as in the paper code). Zero with no label.
    """
    known = ~torch.isnan(labels)
    if not bool(known.any()):
        return logits.sum() * 0.0
    chosen = logits[:, known]  # (S, N, C)
    target = labels[known]
    n_classes = chosen.shape[-1]
    allowed = (0, 1) if n_classes == 1 else (0, n_classes - 1)
    as_float = target.double()
    fits = (as_float == as_float.round()) & (as_float >= allowed[0]) & (as_float <= allowed[1])
    if not bool(fits.all()):
        bad = as_float[~fits][0].item()
        kind = ("a binary label (n_labels=1) must be 0 or 1" if n_classes == 1 else
                f"class labels (n_labels={n_classes}) must be integers 0..{n_classes - 1}")
        raise ValueError(f"{kind}, got {bad:g}; NaN marks a series without a label.")
    if n_classes == 1:
        target = target.to(chosen.dtype).expand(chosen.shape[0], -1)
        return nn.functional.binary_cross_entropy_with_logits(chosen[..., 0], target)
    target = target.long().expand(chosen.shape[0], -1)
    return nn.functional.cross_entropy(chosen.reshape(-1, chosen.shape[-1]), target.reshape(-1))


class _WithRate(nn.Module):
    """The generative field on ``[z, integral of rate]``: ``d/dt [z, R] = [f(z), exp(g(z))]``;
    ``g`` reads ``z[..., rate_from:]`` (all of ``z`` when 0)."""

    def __init__(self, field: nn.Module, rate: nn.Module, latents: int, rate_from: int = 0):
        super().__init__()
        self.field, self.rate, self.latents, self.rate_from = field, rate, latents, rate_from

    def forward(self, t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        z = state[..., : self.latents]
        rate = torch.exp(self.rate(z[..., self.rate_from :]))
        return torch.cat([self.field(t, z), rate], -1)


def sample_bound(elbo: torch.Tensor, objective: str = "iwae") -> torch.Tensor:
    """Combine per-sample ELBO terms ``(S, B)`` into a bound per series ``(B,)``.

    ``iwae``: ``logsumexp`` over samples per series, minus ``log S`` (Burda et al.: the terms
    must then carry each sample's own ``log q - log p``, :func:`sample_kl`, not the analytic
    KL, or the result is no bound); ``elbo``: the mean over samples; ``batch_iwae``: the paper
    code's objective, ``logsumexp`` over samples of the batch means with the analytic KL (no
    ``- log S``), spread evenly over the series.
    """
    samples = elbo.shape[0]
    if objective == "iwae":
        return torch.logsumexp(elbo, dim=0) - math.log(samples)
    if objective == "elbo":
        return elbo.mean(0)
    if objective == "batch_iwae":
        weights = torch.softmax(elbo.mean(1), dim=0).detach()  # (S,)
        value = torch.logsumexp(elbo.mean(1), dim=0)
        per_series = (weights[:, None] * elbo).sum(0)
        return per_series - per_series.detach() + value.detach()
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")


def iwae_terms(
    values: torch.Tensor, pred: torch.Tensor, target_mask: torch.Tensor,
    obs_std: float | torch.Tensor, kl: torch.Tensor, kl_weight: float = 1.0,
    objective: str = "iwae", kl_samples: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The loss terms of :meth:`LatentODE.loss` and the baselines from ``pred (S, B, T, D)``
    and a per-series ``kl (B,)``; ``objective`` combines the samples as :func:`sample_bound`,
    with each sample's ``log q - log p`` (``kl_samples (S, B)``) in place of ``kl`` for
    ``iwae``."""
    loglik = masked_gaussian_loglik(values, pred, target_mask, obs_std)  # (S, B)
    terms = kl_samples if objective == "iwae" and kl_samples is not None else kl
    bound = sample_bound(loglik - kl_weight * terms, objective)
    mask = target_mask.to(values.dtype)
    sq = torch.where(target_mask, pred.mean(0) - values, 0.0).square()
    return {
        "loss": -bound.mean(),
        "loglik": loglik.mean(),
        "kl": kl.mean(),
        "mse": sq.sum() / mask.sum().clamp_min(1),
        "pred": pred,
    }


def first_target(target_mask: torch.Tensor) -> int:
    """Index of the first time point where any series has a target (0 if none)."""
    any_target = target_mask.reshape(target_mask.shape[0], target_mask.shape[1], -1).any(-1)
    found = any_target.any(0).nonzero()
    return int(found[0]) if len(found) else 0


@dataclass
class TargetRows:
    """Each series' target positions in a batch, for asking a latent ODE at its own times.

    ``idx`` ``(B, K)``: positions (into the batch's times) of each series' targets in time
    order, K the most of one series, shorter rows padded with their last position (a series
    without targets: ``first``'s); ``valid`` ``(B, K)``: which entries are real; ``rows``
    ``(B, K + 1)``: ``pred_times`` for :meth:`LatentODE.forward`, the time of ``first`` (where
    ``z0`` sits) then ``times[idx]``."""

    idx: torch.Tensor
    valid: torch.Tensor
    rows: torch.Tensor

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, T, D)`` at the rows' positions: ``(B, K, D)``."""
        return x.gather(1, self.idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def target_rows(times: torch.Tensor, target_mask: torch.Tensor, first: int = 0) -> TargetRows:
    """:class:`TargetRows` of ``target_mask`` ``(B, T, D)`` on ``times`` ``(T,)``, ``z0`` at
    ``times[first]`` (no target lies before ``first``)."""
    has = target_mask.any(-1)  # (B, T)
    counts = has.sum(1)
    most = max(int(counts.max()), 1) if len(counts) else 1
    row, col = has.nonzero(as_tuple=True)  # row-major: each row's positions in time order
    rank = torch.arange(len(row), device=row.device) - (counts.cumsum(0) - counts)[row]
    idx = torch.full((len(has), most), first, dtype=torch.long, device=has.device)
    idx[row, rank] = col  # (a sort of the (B, T) mask took 157 ms at B = 512, T = 25,089)
    valid = torch.arange(most, device=idx.device) < counts.unsqueeze(1)
    last = idx.gather(1, (counts - 1).clamp_min(0).unsqueeze(1))
    idx = torch.where(valid, idx, torch.where(counts.unsqueeze(1) > 0, last, first))
    start = times[first].expand(len(idx), 1)
    return TargetRows(idx, valid, torch.cat([start, times[idx]], 1))


PACK_RATIO = 4
PACK_MIN_CELLS = 50_000
""":meth:`LatentODE.loss` decodes at each series' own targets when the batch's union of times
is more than ``PACK_RATIO`` times longer than the most targets of one series (unaligned
series: the union is about ``B`` times longer) and the batch holds at least
``PACK_MIN_CELLS`` (series x union times), else at the union. Below that the gathers and the
per-series solve cost more than they save (``scripts/bench_unaligned.py``, 50-point series,
one CPU thread: 1.09-1.12x the time at batch 8-16, 0.80x at 32, 0.60x at 64, 0.20x at 256)."""


def check_rate_latents(rate_latents: int, latents: int, poisson: bool) -> None:
    """``rate_latents``: a whole number, with ``poisson``, leaving the decoder at least one
    latent."""
    whole = isinstance(rate_latents, numbers.Integral) and not isinstance(rate_latents, bool)
    if not whole or rate_latents < 0:
        raise ValueError(f"LatentODE: rate_latents must be a whole number >= 0, got "
                         f"{rate_latents!r}.")
    if rate_latents and not poisson:
        raise ValueError(f"rate_latents={rate_latents} sets the Poisson rate's share of the "
                         "latent state: set poisson=True with it, or rate_latents=0.")
    if rate_latents and rate_latents >= latents:
        raise ValueError(f"rate_latents={rate_latents} leaves the decoder none of "
                         f"latents={latents}: the paper code's network is latents=2 l with "
                         f"rate_latents=l (e.g. latents={2 * rate_latents}).")


def check_parts(encoder: nn.Module, field: nn.Module, decoder: nn.Module, input_dim: int,
                latents: int, decoded: int | None = None) -> None:
    """Refuse parts that cannot fit together, when the model is built (they failed at the
    first batch with a bare matrix-shape error): an encoder of another ``input_dim`` or
    ``latent_dim`` (where it says), a decoder whose first linear layer does not read
    ``decoded`` inputs (default ``latents``), a field that does not take ``(t, z)``."""
    decoded = latents if decoded is None else decoded
    from latentode.nn.encoders import _BackwardGRU

    # (only latentode's encoders: a user's may mean something else by input_dim)
    for name, want, what in (("input_dim", input_dim, "the data's channels"),
                             ("latent_dim", latents, "the model's latents")):
        got = getattr(encoder, name, None) if isinstance(encoder, _BackwardGRU) else None
        if got is not None and got != want:
            raise ValueError(f"encoder {type(encoder).__name__} has {name}={got}, but the "
                             f"model's is {want} ({what}): build it with {name}={want}.")
    # a plain Linear or Sequential only (a subclass may feed its first layer other features;
    # a LazyLinear learns its width from the first batch)
    first = decoder[0] if type(decoder) is nn.Sequential and len(decoder) else decoder
    if type(first) is nn.Linear and first.in_features != decoded:
        given = (f"the latent state z of latents={latents}" if decoded == latents else
                 f"the first {decoded} of latents={latents} (the rest drive the Poisson rate)")
        raise ValueError(f"decoder {type(decoder).__name__}'s first layer reads "
                         f"{first.in_features} input(s), but the decoder is given {given}: "
                         f"make it nn.Linear({decoded}, ...).")
    try:
        params = inspect.signature(getattr(field, "forward", field)).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a C callable): left to the solve
        return
    kinds = [p.kind for p in params]
    positional = sum(k in (inspect.Parameter.POSITIONAL_ONLY,
                           inspect.Parameter.POSITIONAL_OR_KEYWORD) for k in kinds)
    if positional < 2 and inspect.Parameter.VAR_POSITIONAL not in kinds:
        raise TypeError(f"field {type(field).__name__} must be called as field(t, z) (time, "
                        f"latent state) -> dz/dt, as odeint calls it; its forward takes "
                        f"{positional} positional argument(s). An autonomous field ignores t: "
                        "def forward(self, t, z).")


def predict_at_targets(
    model: nn.Module, times: torch.Tensor, values: torch.Tensor, encoder_mask: torch.Tensor,
    target_mask: torch.Tensor, n_samples: int | None = None,
    encoder_errors: torch.Tensor | None = None,
) -> LatentODEOutput:
    """``model(...)`` at ``times`` with ``z0`` where the model's ``z0_at`` puts it.

    With ``first_target`` the decoder starts at the first time any series has a target; the
    points before it, which hold no target, repeat the first prediction so that ``pred`` keeps
    the batch's length for masked metrics. ``encoder_errors`` reach a latent ODE's encoder
    (:meth:`LatentODE.encode`); other models are not given them."""
    extra = {} if encoder_errors is None else {"encoder_errors": encoder_errors}
    first = first_target(target_mask) if model.z0_at == "first_target" else 0
    if not first:
        return model(times, values, encoder_mask, n_samples, **extra)
    out = model(times, values, encoder_mask, n_samples, pred_times=times[first:], **extra)
    out.pred = torch.cat([out.pred[:, :, :1].expand(-1, -1, first, -1), out.pred], 2)
    return out


class LatentODE(WithObservationNoise, nn.Module):
    """Latent ODE with an ODE-RNN (default) or RNN recognition network.

    Args:
        input_dim: channels ``D``.
        latents: latent state size ``L``.
        encoder: a recognition network (``RNNEncoder`` / ``ODERNNEncoder``) mapping
            ``(times, values, mask)`` to ``(mean, std)`` of ``q(z0)``; default an ODE-RNN.
        gen_units, gen_layers: the generative vector field's MLP.
        dec_units, dec_layers: decoder MLP (``dec_layers=0``: linear, as in the paper).
        obs_std: fixed observation noise std of the Gaussian likelihood: one, or one per
            channel (:class:`~latentode.nn.ObservationNoise`).
        error_weighting: how measurement uncertainties (``loss(errors=...)``) are read:
            ``relative`` (in the likelihood they share each series' weight among its points,
            the mean weight staying ``1 / obs_std^2``; the encoder's confidences are relative
            to each series-channel's most precise value) or ``absolute`` (variance
            ``obs_std^2 + err^2``; confidences as they are);
            :func:`~latentode.models.inputs.point_noise`,
            :func:`~latentode.models.inputs.encoder_confidence`.
        n_samples: posterior samples per series in the loss (and by default in ``forward``).
        solver: ``odeint`` options for the generative ODE (method, rtol, atol, gradient, ...).
        objective: how posterior samples combine (:func:`sample_bound`): ``elbo`` (the mean
            over samples), ``iwae`` (per series) or ``batch_iwae`` (the paper code's). The
            defaults (``elbo``, one sample) are ``conf/model/latent_ode.yaml``'s.
        poisson: also model *when* points are observed: a Poisson process per channel whose
            log-intensity is an MLP of ``z(t)``, integrated with the latent ODE (paper, 3.4);
            its log-likelihood enters the loss with weight ``poisson_weight`` (paper: 0.1).
        rate_latents: with ``poisson``, the last ``rate_latents`` of the ``latents`` drive
            the rate alone and the decoder reads the others (the paper code's network:
            ``latents=2 l, rate_latents=l``, the field on all ``2 l``); 0: the rate and the
            decoder both read the whole state. The classifier reads the decoder's share (as
            the paper code's reads its decoder's latents).
        rate_layers: hidden layers of the rate's MLP (``gen_units`` wide, tanh; the paper
            code's has 2).
        n_labels: a classification head (0: none): ``1`` for a binary label, ``C > 1`` for
            classes. ``label_type="series"`` classifies each series from ``z0`` (e.g.
            mortality); ``"time"`` labels every time point from ``z(t)`` (e.g. activity).
        label_weight: weight of the cross-entropy in the loss (paper: 100 with reconstruction).
        reconstruct: ``False`` trains on the classification loss alone (the paper's activity
            setting); the ELBO terms are still reported.
        label_units: hidden units of the classifier's two ReLU layers (paper: 300).
        z0_at: where the training loss places ``z0``: ``"start"``, the batch's first time;
            ``"first_target"``, the first time with a target, as the paper's code does (its
            decoder integrates from the first time it predicts: in extrapolation the first
            point after what the encoder saw, in interpolation the first time, the same as
            ``"start"``). Not with ``poisson`` or a classifier.
        field, decoder: your own modules in place of the generative ``tanh`` MLP (``field(t,
            z) -> dz/dt``, the shape of ``z (..., latents)``; autonomous in effect, as the
            forecaster answers each series on its own clock) and of the decoder (``z (...,
            latents) -> (..., input_dim)``); from the command line
            ``'+model.decoder={_target_: mymod.MyDecoder}'``.
        output_bias: start the decoder's output bias here: one value or one per channel
            (``latentode-train``'s default: the training data's channel means when they are
            fed unscaled); None or ``"auto"`` (the configs' word, resolved there): as
            initialised. Channels far from zero otherwise stall training at the mean
            (docs/results.md, *Unscaled data*).
        encoder_error_scale: with measurement uncertainties (``encoder_errors=`` /
            ``loss(errors=)``), the encoder reads each observed value with confidence
            ``1 / (1 + (err / scale)^2)`` in place of its mask's 1 (a soft mask: the value
            and its mask entry both scaled), so noisy values move ``q(z0)`` less; ``scale`` is
            the uncertainty, in model units (the scaler's: units of the channel's spread), at
            which a value counts half. Under ``error_weighting="relative"`` the confidences
            are divided by each series-channel's best, so equal uncertainties within a series
            change nothing (measured: the run without them, exactly). None (here;
            ``conf/model/latent_ode.yaml`` and so ``latentode-train`` and the forecaster
            default to 1.0, and a run saved before the option existed rebuilds with None, as
            it trained): the encoder reads every value alike and the uncertainties only
            weigh the likelihood (docs/results.md, *Measurement uncertainties*). Your own
            ``encoder`` is given the soft mask only if it says it reads one
            (``reads_soft_mask = True``).
    """

    def __init__(
        self,
        input_dim: int,
        latents: int = 10,
        encoder: nn.Module | None = None,
        gen_units: int = 100,
        gen_layers: int = 1,
        dec_units: int = 100,
        dec_layers: int = 0,
        obs_std: float | Sequence[float] = 0.01,
        n_samples: int = 1,
        solver: dict[str, Any] | None = None,
        objective: str = "elbo",
        poisson: bool = False,
        poisson_weight: float = 0.1,
        n_labels: int = 0,
        label_type: str = "series",
        label_weight: float = 100.0,
        reconstruct: bool = True,
        label_units: int = 300,
        z0_at: str = "start",
        field: nn.Module | None = None,
        decoder: nn.Module | None = None,
        output_bias: ArrayLike | str | None = None,
        rate_latents: int = 0,
        rate_layers: int = 1,
        error_weighting: str = "relative",
        encoder_error_scale: float | None = None,
    ):
        super().__init__()
        check_sizes("LatentODE", latents=latents, input_dim=input_dim, gen_units=gen_units,
                    gen_layers=gen_layers, dec_units=dec_units, dec_layers=dec_layers,
                    n_samples=n_samples, label_units=label_units if n_labels else None,
                    rate_layers=rate_layers if poisson else None)
        check_rate_latents(rate_latents, latents, poisson)
        if encoder is not None and not isinstance(encoder, nn.Module):
            raise TypeError(
                f"encoder must be an nn.Module, got {type(encoder).__name__} {encoder!r}; on the "
                "command line the encoder is a config group: model/encoder=rnn (a slash), not "
                "model.encoder=rnn."
            )
        for name, part in (("field", field), ("decoder", decoder)):
            if part is not None and not isinstance(part, nn.Module):
                raise TypeError(f"{name} must be an nn.Module (a config with a _target_), got "
                                f"{type(part).__name__} {part!r}.")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")
        if label_type not in LABELS:
            raise ValueError(f"label_type must be one of {LABELS}, got {label_type!r}.")
        if z0_at not in Z0_AT:
            raise ValueError(f"z0_at must be one of {Z0_AT}, got {z0_at!r}.")
        if z0_at != "start" and (poisson or n_labels):
            raise ValueError("z0_at='first_target' predicts from the first target time on; the "
                             "Poisson process and the classifier read the whole path: use "
                             "z0_at='start' with poisson or n_labels.")
        self.z0_at = z0_at
        if not reconstruct and n_labels < 1:
            raise ValueError("reconstruct=False trains on labels alone: set n_labels >= 1.")
        self.objective = objective
        self.input_dim, self.latents = input_dim, latents
        self.encoder = encoder if encoder is not None else ODERNNEncoder(input_dim, latents)
        # a user's field (t, z) -> dz/dt and decoder z -> (..., input_dim) replace the MLPs
        # (gen_units/gen_layers and dec_units/dec_layers size those only)
        self.field = field if field is not None else ODEFunc(latents, gen_units, gen_layers)
        # the decoder's share of the latent state (all of it unless the rate has its own)
        self.decoded = latents - rate_latents
        if decoder is not None:
            self.decoder: nn.Module = decoder
        elif dec_layers == 0:
            self.decoder = nn.Linear(self.decoded, input_dim)
        else:
            self.decoder = mlp(self.decoded, input_dim, dec_units, dec_layers)
        check_parts(self.encoder, self.field, self.decoder, input_dim, latents, self.decoded)
        start_output_bias(self.decoder, output_bias, input_dim)
        self.noise = ObservationNoise(input_dim, obs_std)
        self.error_weighting = check_error_weighting(error_weighting)
        self.encoder_error_scale = check_error_scale(encoder_error_scale)
        self.n_samples = n_samples
        self.poisson, self.poisson_weight = poisson, poisson_weight
        self.rate_latents = rate_latents
        self.rate = (mlp(rate_latents or latents, input_dim, gen_units, rate_layers)
                     if poisson else None)
        self.n_labels, self.label_type = n_labels, label_type
        self.label_weight, self.reconstruct = label_weight, reconstruct
        self.classifier = None
        if n_labels > 0:
            self.classifier = nn.Sequential(
                nn.Linear(self.decoded, label_units), nn.ReLU(),
                nn.Linear(label_units, label_units), nn.ReLU(),
                nn.Linear(label_units, n_labels),
            )
        check_options(solver or {}, "LatentODE")
        self.solver = {"method": "dopri5", "rtol": 1e-3, "atol": 1e-4,
                       "gradient": "checkpoint", **(solver or {})}
        self.solver_stats = SolverStats()
        """Evaluations and steps of the generative ODE's solves (forward, and backward in the
        adjoint and checkpoint modes), accumulated until ``solver_stats.reset()``; the training
        module logs them per batch (``solver_nfe_forward`` ...)."""

    def encode(
        self, times: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
        schedule: str | None = None, visit: torch.Tensor | None = None,
        errors: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior ``q(z0)`` from the observations under ``mask``; ``schedule`` overrides the
        encoder's walk (``"series"``: each series' posterior independent of the batch), and
        ``visit`` adds points that walk steps through (the encoder's ``forward``). ``errors``
        ``(B, T, D)``: measurement uncertainties in model units (0 where none), read as a soft
        mask with ``encoder_error_scale`` (:func:`~latentode.models.inputs.encoder_confidence`;
        the encoder is then given a float mask)."""
        # only what is given: a user's encoder need not take either
        options = {k: v for k, v in (("schedule", schedule), ("visit", visit)) if v is not None}
        if errors is not None and self.encoder_error_scale is not None and not getattr(
                self.encoder, "reads_soft_mask", False):
            raise ValueError(
                f"encoder_error_scale={self.encoder_error_scale} hands the encoder the "
                f"measurement uncertainties as a float mask of confidences in [0, 1], but "
                f"encoder {type(self.encoder).__name__} does not say it reads one: if it reads "
                f"[values * mask, mask] (a float mask), set reads_soft_mask = True on it; else "
                f"set encoder_error_scale=None (model.encoder_error_scale=null).")
        mask = encoder_confidence(mask, errors, self.encoder_error_scale, values.dtype,
                                  relative=self.error_weighting == "relative")
        return self.encoder(times, values, mask, **options)

    def latent_paths(self, z0: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        """Integrate ``z0 (S, B, L)`` from the first time to every ``times``: ``(S, B, T, L)``,
        with the Poisson intensity's integral appended (``L + D`` channels) when modelled.

        ``times`` is ``(T,)``, shared, or ``(B, T)``, each series' own (rows starting at the
        same time; repeats pad shorter rows), answered from one batched solve."""
        samples, batch, latents = z0.shape
        per_series = times.dim() == 2
        # per-series times: one solver row per series, carrying all its samples
        state = z0.transpose(0, 1) if per_series else z0.reshape(samples * batch, latents)
        func = self.field
        if self.rate is not None:
            state = torch.cat([state, state.new_zeros(*state.shape[:-1], self.input_dim)], -1)
            func = _WithRate(self.field, self.rate, latents, self.decoded if self.rate_latents
                             else 0)
        z = odeint(func, state, times, stats=self.solver_stats, **self.solver)
        if per_series:  # (B, T, S, L) -> (S, B, T, L)
            return z.permute(2, 0, 1, 3)
        return z.reshape(len(times), samples, batch, -1).permute(1, 2, 0, 3)

    def decode_paths(self, z0: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        """Integrate ``z0 (S, B, L)`` to every ``times`` and decode: ``(S, B, T, D)``."""
        return self.decoder(self.latent_paths(z0, times)[..., : self.decoded])

    def forward(
        self, times: torch.Tensor, values: torch.Tensor, encoder_mask: torch.Tensor,
        n_samples: int | None = None, pred_times: torch.Tensor | None = None,
        z0_noise: torch.Tensor | None = None, encoder_schedule: str | None = None,
        encoder_visit: torch.Tensor | None = None, encoder_errors: torch.Tensor | None = None,
    ) -> LatentODEOutput:
        """Encode what ``encoder_mask`` shows, sample ``z0`` and predict at ``pred_times``
        (model times, sorted: increasing, or decreasing for a solve backwards from ``z0``;
        default ``times``). ``z0`` is the latent state at
        ``pred_times[0]``: to predict later times from the batch's start, begin ``pred_times``
        with ``times[0]`` (and drop that row from ``pred``); starting later places ``z0`` there,
        as ``z0_at="first_target"`` does on purpose. ``pred_times`` may be ``(B, T)``: each
        series' own times, all rows starting at the same time (:meth:`latent_paths`).

        ``z0_noise`` ``(S, B, L)``: the standard normal draws behind ``z0 = mean + std *
        noise`` (default: drawn here, ``n_samples`` of them), e.g. drawn per series from its own
        seed so that a series' samples do not depend on the batch it is in.
        ``encoder_schedule`` overrides the encoder's walk and ``encoder_visit`` adds points it
        steps through; ``encoder_errors`` ``(B, T, D)`` are the values' measurement
        uncertainties in model units (0 where none) the encoder reads with
        ``encoder_error_scale`` (:meth:`encode`).

        Returns a :class:`LatentODEOutput`: ``pred`` ``(S, B, T, D)``, ``mean`` and ``std`` of
        ``q(z0)`` ``(B, L)`` (and the Poisson and label terms when modelled)."""
        values = checked_batch(self.input_dim, times, values, encoder_mask,
                               dtype=weight_dtype(self))
        checked_pred_times(pred_times, times, values.shape[0], per_series=True)
        mean, std = checked_posterior(
            self.encoder, self.encode(times, values, encoder_mask, encoder_schedule,
                                      encoder_visit, encoder_errors),
            values.shape[0], self.latents)
        if z0_noise is None:
            n = self.n_samples if n_samples is None else n_samples
            if n < 1:
                raise ValueError(f"n_samples must be at least 1, got {n}.")
            eps = posterior_noise(n, mean)
        else:
            if z0_noise.shape[1:] != mean.shape or (
                    n_samples is not None and n_samples != z0_noise.shape[0]):
                raise ValueError(f"z0_noise must have shape (n_samples, batch, latents) = "
                                 f"({n_samples or 'S'}, {mean.shape[0]}, {mean.shape[1]}), got "
                                 f"{tuple(z0_noise.shape)}.")
            eps = z0_noise.to(mean)
        z0 = mean + std * eps
        out_times = times if pred_times is None else pred_times
        try:
            paths = self.latent_paths(z0, out_times)
        except OutputTimesError as error:  # the solver's t is pred_times, passed through
            if pred_times is None:
                raise
            first = "pred_times[0]" if out_times.dim() == 1 else "pred_times[:, 0]"
            advice = {"order": f" The latent ODE integrates from {first}, its z0's time "
                               "(backwards where they decrease): sort them and reorder the "
                               "answer.",
                      "repeat": f" The latent ODE integrates from {first}, its z0's time: keep "
                                "it first."}.get(error.kind, "")
            raise ValueError(f"{error.named('pred_times')}{advice}") from None
        z = paths[..., : self.latents]
        out = LatentODEOutput(self.decoder(z[..., : self.decoded]), mean, std, z0=z0)
        check_decoded(self.decoder, out.pred, self.input_dim)
        if self.rate is not None:
            rate_from = self.decoded if self.rate_latents else 0
            out.log_rate = self.rate(z[..., rate_from:])
            out.cum_rate = paths[..., self.latents :]
        if self.classifier is not None:
            read = z0 if self.label_type == "series" else z
            out.logits = self.classifier(read[..., : self.decoded])
        return out

    def predict(
        self, times: torch.Tensor, values: torch.Tensor, encoder_mask: torch.Tensor,
        target_mask: torch.Tensor, n_samples: int | None = None,
        encoder_errors: torch.Tensor | None = None,
    ) -> LatentODEOutput:
        """:meth:`forward` at ``times`` with ``z0`` where ``z0_at`` puts it for these targets
        (:func:`predict_at_targets`)."""
        return predict_at_targets(self, times, values, encoder_mask, target_mask, n_samples,
                                  encoder_errors)

    def _packed_targets(self, times: torch.Tensor, target_mask: torch.Tensor
                        ) -> TargetRows | None:
        """Each series' own target times when the batch's union of times is much longer (see
        ``PACK_RATIO``), for a model whose terms need nothing but the targets (no Poisson
        intensity over the whole grid, no label per time point) and whose solver's steps do
        not depend on the output times (a fixed-step method without ``step_size`` steps once
        per output time: fewer times, other steps, another loss); else None."""
        if self.rate is not None or (self.classifier is not None and self.label_type == "time"):
            return None
        if self.solver.get("method") in FIXED_METHODS and self.solver.get("step_size") is None:
            return None
        length, batch = times.shape[0], target_mask.shape[0]
        if not batch or length * batch < PACK_MIN_CELLS:  # shapes only: no device sync
            return None
        counts = target_mask.any(-1).sum(1)
        if length <= PACK_RATIO * max(int(counts.max()), 1):
            return None
        first = first_target(target_mask) if self.z0_at == "first_target" else 0
        return target_rows(times, target_mask, first)

    def loss(
        self, times: torch.Tensor, values: torch.Tensor, encoder_mask: torch.Tensor,
        target_mask: torch.Tensor, kl_weight: float = 1.0, n_samples: int | None = None,
        labels: torch.Tensor | None = None, errors: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Negative bound (``objective``) and its terms; MSE of the sample-mean prediction on
        the targets. With ``poisson``: the point process term ``poisson``; with a classifier
        and ``labels``: ``ce`` and the ``logits``. ``errors`` ``(B, T, D)``: each value's
        measurement uncertainty in model units (0 where none): they weigh the points in the
        likelihood (``error_weighting``, :func:`~latentode.models.inputs.point_noise`) and,
        with ``encoder_error_scale``, soften the encoder's mask (:meth:`encode`).

        Unaligned series (the batch's union of times more than ``PACK_RATIO`` times longer
        than the most targets of one series, in a batch of at least ``PACK_MIN_CELLS`` series
        x times) are decoded at each series' own target times rather than at the whole
        union: the same terms (to rounding; the solver's steps are the same), decoded at a
        cost linear in the batch size instead of quadratic (batch 256 of 50-point series:
        forward and backward 1.38 s -> 0.28 s on a CPU thread; the union batch's own checks
        stay quadratic). ``pred`` ``(S, B, T, D)`` then holds the predictions at the targets
        only (0 elsewhere, detached: it is for metrics; the terms carry the gradient); ask
        :meth:`forward` or :meth:`predict` for paths at other times. Not for fixed-step
        methods without ``step_size`` (one step per output time: the union's times are the
        steps); in the adjoint mode the backward solve differs within its tolerance (fewer
        output times)."""
        values = checked_batch(self.input_dim, times, values, encoder_mask, target_mask,
                               dtype=weight_dtype(self))
        if not self.reconstruct and labels is None:
            raise ValueError(
                "reconstruct=False trains on the labels alone, but loss() got no labels (a "
                "batch built without label_col holds labels=None): pass labels=batch.labels "
                "from labelled data, or reconstruct=True.")
        # (the encoder checks the uncertainties it reads: checked once per step, not twice)
        noise = point_noise(self.noise(values), errors, values, target_mask,
                            self.error_weighting, check=self.encoder_error_scale is None)
        packed = self._packed_targets(times, target_mask)
        if packed is None:
            out = self.predict(times, values, encoder_mask, target_mask, n_samples, errors)
            at_values, at_pred, at_target = values, out.pred, target_mask
        else:
            out = self(times, values, encoder_mask, n_samples, pred_times=packed.rows,
                       encoder_errors=errors)
            at_values, at_pred = packed.gather(values), out.pred[:, :, 1:]
            at_target = packed.gather(target_mask) & packed.valid.unsqueeze(-1)
            if isinstance(noise, torch.Tensor) and noise.dim() == 3:  # per point: (B, T, D)
                noise = packed.gather(noise)
        kl = gaussian_kl(out.z0_mean, out.z0_std)  # (B,)
        samples = None if out.z0 is None else sample_kl(out.z0, out.z0_mean, out.z0_std)
        result = iwae_terms(at_values, at_pred, at_target, noise, kl, kl_weight,
                            self.objective, samples)
        if packed is not None:  # on the batch's times for metrics: the targets' predictions
            result["pred"] = _scattered(at_pred.detach(), packed, target_mask.shape[1])
        loss = result.pop("loss")
        if out.log_rate is not None:
            assert out.cum_rate is not None  # set with log_rate
            poisson = poisson_process_loglik(out.log_rate, out.cum_rate, target_mask).mean()
            loss = loss - self.poisson_weight * poisson
            result["poisson"] = poisson
        if out.logits is not None and labels is not None:
            if self.label_type == "time" and labels.dim() != 2:
                raise ValueError(f"label_type='time' needs labels per time point (B, T), got "
                                 f"shape {tuple(labels.shape)}.")
            if self.label_type == "series" and labels.dim() != 1:
                raise ValueError(f"label_type='series' needs one label per series (B,), got "
                                 f"shape {tuple(labels.shape)}; use label_type='time'.")
            ce = label_loss(out.logits, labels)
            loss = loss + self.label_weight * ce if self.reconstruct else ce
            result["ce"], result["logits"] = ce, out.logits
        result["loss"] = loss
        return result


def _scattered(pred: torch.Tensor, rows: TargetRows, length: int) -> torch.Tensor:
    """``pred`` ``(S, B, K, D)`` at ``rows``' positions put back on the batch's ``length``
    times: ``(S, B, T, D)``, 0 at the other times (padding repeats a real position with its
    own value, so the writes agree; a series without targets gets its prediction at
    ``first``, a point nothing scores)."""
    samples, batch, _, dims = pred.shape
    out = pred.new_zeros(samples, batch, length, dims)
    at = rows.idx.view(1, batch, -1, 1).expand(samples, -1, -1, dims)
    return out.scatter_(2, at, pred)
