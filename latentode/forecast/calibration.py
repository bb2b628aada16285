"""Calibrated predictive noise: the observation noise of the posterior predictive distribution,
estimated per channel on held-out residuals.

The latent ODE is trained with a Gaussian likelihood of a *fixed* ``obs_std`` (``model.obs_std``,
0.01 in standardised units by default, or one per channel). That number shapes training; it is
not an estimate of how far observations lie from the model's predictions. Intervals built from
"sample paths plus N(0, obs_std^2)" are then far too narrow whenever the model's errors are
larger (the quick start's 40-epoch model: errors ~0.14, and only about a third of held-out
points inside the 90% intervals).

The standard remedy is to calibrate the noise post hoc on residuals of points the model was not
trained to reproduce. An observation ``y`` at a point is predicted as

    y = f(z) + eps,   z ~ q(z0 | what the encoder saw),   eps ~ N(0, sigma_c^2) for channel c,

so its predictive variance is epistemic (the spread of the sampled paths ``f(z)``) plus aleatoric
(``sigma_c^2``). On points the encoder did not see (``target_mask & ~encoder_mask``) within the
span of that channel's encoder points (lead 0: past it, forecasts take the lead curve below;
all held-out points when none lies within, all targets when a loader holds none), with ``r`` the
value minus the posterior-mean prediction (the mean of ``S`` sampled paths) and ``s^2`` the
variance of the sampled paths at the point, moment matching gives per channel

    sigma_c^2 = max(0, mean(r^2) - mean(s^2))      (means over the channel's held-out points)

and the predictive noise is ``max(model.obs_std, sigma_c, sigma_90)``: never below the model's
own noise (per channel when the model has one per channel), nor below ``sigma_90``, the least
noise whose central ``COVERAGE_LEVEL`` (90%) intervals of the predictive mixture
``(1/S) sum_s N(path_s, sigma^2)`` (what ``predict``'s quantiles are) cover that share of the
channel's points. Moment matching alone under-covers when the paths' spread is a large part of
the predictive variance but says little about which points are wrong: conditioned on subsets
(:mod:`latentode.forecast.subsets`), the quick start's model covered 0.84 of held-out test
points for 0.9, with the floor 0.90 (docs/results.md, *Subset conditioning*). Where the noise
dominates, the floor seldom binds (the same model conditioned on every point: 0.264 against
0.267).
``r^2`` is not centred, so a systematic bias widens the noise too (the intervals must cover it).

Measurement uncertainties (``batch.errors``, a value's known std ``e_i``, model units): a value
is the quantity plus its own ``N(0, e_i^2)``, which no model predicts, so the noise is
calibrated on what is left: ``sigma_c^2`` the likeliest under ``r ~ N(0, sigma^2 + s^2 +
e^2)`` (:func:`likely_noise`: the plain ``mean(r^2 - s^2 - e^2)`` is dominated by the noisiest
points), and so are the floor (the mixture ``N(path_s, sigma^2 + e_i^2)`` per point), the lead
curve (likeliest per bin), the history factor (``r^2 - e^2``) and the factor per series (its
seen points' ``r^2 - e^2``). The
calibrated noise is then that of the quantity itself (what the latent path misses, plus any
variability the uncertainties do not state): ``predict``'s intervals are of the quantity,
and coverage of *observed* values (:func:`predictive_coverage`, ``score``) adds each value's
own ``e_i^2``. Without uncertainties everything is as before.
A channel without any such point gets the estimate pooled over all channels (standardised units
make them comparable). Everything is in the model's units (standardised when the data module
scales); ``std * scaler.scale`` is the noise in data units.

Forecasts: how far ahead. Held-out points between observations say how wrong the model is
*inside* a series; a forecast's error grows with the lead time ``tau`` (from the series' last
observation), and the paths' spread seldom grows with it as much (a posterior over ``z0``
fitted to reconstruct shows little of the dynamics' own uncertainty). So a second pass
(:func:`calibrate_lead`) cuts each series of the same split at a random point (``LEAD_TASK``:
between 20% and 80% of its span), forecasts the rest and estimates the excess variance
``mean(r^2) - mean(s^2)`` per channel in bins of ``tau`` (equal counts), made non-decreasing
in ``tau`` (pool adjacent violators) and never below the noise above. A forecast ``tau``
ahead then gets the noise interpolated (linearly in variance) between the bins' mean leads,
the first bin's below its mean and the last bin's beyond its. Leads are per channel,
from that channel's own last observation (a lab drawn two days ago is two days stale even if
the vitals were measured an hour ago; a channel never observed in a series gets the last bin's
noise); times inside a channel's span keep the noise above, times before its first
observation count their lead backwards. A series with a short history is forecast worse than
one with a long one, and the paths' spread hardly shows it: the forecast variance also gets a
factor per bin of history length (the excess over what the curve gives, non-increasing in
the length, within ``HISTORY_FACTOR_RANGE``).

Where: the validation split when there is one, else the training split. The training split is
a fallback only: the decoder was fitted to those points (though not through the encoder's view
of them), so its residuals are smaller than on new series and the noise comes out on the narrow
side. Which points: ``calibration_batches`` draws the data module's task masks the fixed,
seeded way validation draws them (the very validation batches); with ``folds=K`` it makes ``K``
passes of :class:`~latentode.data.Folds` instead, every point held out once while the encoder
sees the other ``(K - 1) / K`` of its series. The forecaster calibrates on five folds:
``predict`` conditions on all of a series' points, and the noise of a model shown 50-100% of
each series (a ``Mixed`` task's subsample) left its imputation intervals wide on dense data
(docs/results.md, *In-series noise: folds*).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latentode.data import Interpolation
from latentode.data.tasks import interpolation_task
from latentode.utils.stack import user_stacklevel

from .coverage import check_level, interval_hits
from .spec import without_version
from .subsets import Subsets, subset_forward

log = logging.getLogger(__name__)

CALIBRATION_VERSION = 4  # 4: measurement uncertainties (error_rms); 3: the factor per series
# (series_*); 2: the lead-time curve (lead_*)
LEAD_BINS = 8  # bins of lead time (equal counts) of the forecast noise curve
LEAD_MIN_POINTS = 30  # a bin's own channel estimate needs this many points, else pooled
HISTORY_BINS = 4  # bins of history length (equal counts) of the forecast noise's factor
HISTORY_FACTOR_RANGE = (0.25, 16.0)  # bounds of that factor on the variance
CALIBRATION_MAX_SERIES = 1000  # series of a split used for calibration (first ones, stored order)
CALIBRATION_FOLDS = 5  # passes of the forecaster's in-series calibration (Folds)
SERIES_FACTOR_RANGE = (1 / 16, 16.0)  # bounds of that factor on the variance (std x 0.25-4)
SERIES_KAPPA = 4.0  # shrinkage (in points) of a series' own noise factor toward 1: see
# NoiseCalibration.series_factor; 2-8 were within 0.02 nats of the best everywhere, 0 failed on
# series whose few seen points fit almost exactly (docs/results.md, a factor per series)
CALIBRATION_MIN_SERIES = 10  # fewer: the calibrated noise, and so the coverage, varies widely
CALIBRATION_MIN_POINTS = 20  # a channel's noise from fewer held-out points: ~16%+ std error
DENSITY_RATIO = 1.5  # in-series noise on folds over the training task's: above, a warning
COVERAGE_LEVEL = 0.9  # the noise is at least what covers this share of calibration points
COVERAGE_POINTS = 10_000  # per channel: a uniform sample of the points behind that floor
COVERAGE_BUDGET = 20_000_000  # float32 values kept for it in all (80 MB): fewer points per
                              # channel on wide data (at 100 samples: 10000 up to 20 channels;
                              # never fewer than 200, so past 1000 channels it is exceeded)
RUN_SPLITS = {
    "val": ("the run's validation split", "Train with a larger data.val_fraction."),
    "train": ("the run's training split: it has no validation series",
              "Train with data.val_fraction > 0."),
}
"""Where a trained run's calibration series come from, and how to have more of them: the
``advice`` of :func:`few_series_warning` for ``from_run`` and ``latentode-eval``."""


def distinct_series(part: Any) -> int:
    """Series in ``part``, windows of one series (``split_windows``) counted once: they are
    not independent evidence of how the model errs on a new series."""
    window = getattr(part, "window", None)
    if window is None:
        return len(part)
    from latentode.data.windows import window_owner

    return len({window_owner(i) for i in part.ids})


def few_series_warning(part: Any, what: str, remedy: str) -> str | None:
    """The warning for a noise calibrated on ``part`` (what the batches held: ``what`` names
    it) when it holds fewer than ``CALIBRATION_MIN_SERIES`` distinct series (None otherwise);
    ``remedy`` says how to give more. Measured (docs/results.md, *Calibration on few series*):
    90% intervals calibrated on 1-5 random validation series of the periodic toy covered
    0.45-0.98 of the test points (10th percentile 0.61-0.81), on 10 series 0.79-0.98
    (0.82-0.84), on all 100 0.87-0.88."""
    n = distinct_series(part)
    if n >= CALIBRATION_MIN_SERIES:
        return None
    windows = f", cut into {len(part)} windows" if getattr(part, "window", None) else ""
    return (f"The predictive noise is calibrated on {n} series ({what}{windows}): with fewer "
            f"than {CALIBRATION_MIN_SERIES} the intervals' coverage varies widely (90% "
            f"intervals calibrated on 1-5 series covered 0.45-0.98 in a measurement). {remedy}")


def few_points_warning(calibration: NoiseCalibration, channels: list[str]) -> str | None:
    """The warning for channels whose calibrated noise rests on fewer than
    ``CALIBRATION_MIN_POINTS`` points (none: the others' pooled noise stands in), or None."""
    if not calibration.count:
        return None
    low = [(c, n) for c, n in zip(channels, calibration.count, strict=True)
           if n < CALIBRATION_MIN_POINTS]
    if not low:
        return None
    named = ", ".join(f"{c!r} ({n} point{'s' if n != 1 else ''}"
                      f"{': the other channels pooled stand in' if n == 0 else ''})"
                      for c, n in low)
    return (f"The predictive noise of channel(s) {named} is calibrated on fewer than "
            f"{CALIBRATION_MIN_POINTS} held-out points ({calibration.split} split): their "
            "intervals may be far off. Calibrate on more series, or on series observing "
            "those channels.")


def density_warning(on_folds: NoiseCalibration, on_task: NoiseCalibration, task: Any,
                    channels: list[str], folds: int = CALIBRATION_FOLDS) -> str | None:
    """The warning for a model that predicts points inside a series clearly worse (in-series
    noise more than ``DENSITY_RATIO`` times) when its encoder sees ``(folds - 1) / folds`` of
    the series than at its training ``task``'s density (its interpolation part for a
    ``Mixed`` task), or None. Only held-out points inside the series are compared (a task that
    holds nothing out, ``Interpolation(fraction=1.0)``, calibrates on reconstructions: not
    comparable), per channel with at least ``CALIBRATION_MIN_POINTS`` points either way. The
    quick start's model, trained seeing 50 of each series' 100 points: 0.29 against 0.125
    (docs/results.md, *In-series noise: folds*); ``predict`` conditions on all of a series'
    points."""
    if on_folds.points != "heldout" or on_task.points != "heldout":
        return None
    ratios = [(a / b, c, a, b) for c, a, b, n, m in zip(
        channels, on_folds.std, on_task.std, on_folds.count or [], on_task.count or [],
        strict=False) if n >= CALIBRATION_MIN_POINTS and m >= CALIBRATION_MIN_POINTS and b > 0]
    if not ratios:
        return None
    ratio, channel, a, b = max(ratios)
    if ratio <= DENSITY_RATIO:
        return None
    part = interpolation_task(task)
    named = f"{task}" if part is task else f"{task}, its subsample {part}"
    said = (f"The model predicts points inside a series worse when its encoder sees "
            f"{folds - 1}/{folds} of the series than at its training task's density "
            f"({named}): in-series noise {a:.3g} against {b:.3g} for channel {channel!r} "
            f"(model units, {on_folds.split} split). predict and impute condition on all of "
            "a series' points, so their errors can exceed the run's test MSE (scored at the "
            "training density) and their intervals, calibrated on those errors, are wide. ")
    fraction, spread = getattr(part, "fraction", None), getattr(part, "fraction_spread", 0)
    if fraction is not None and spread and fraction + spread >= (folds - 1) / folds - 0.05:
        # the advice below is taken already: its densities reach what predict conditions on
        return said + ("It trained on a spread of densities already: longer training "
                       "usually closes the gap.")
    # ++ adds the key or overrides it, whichever the config holds
    spread = ("data.task.fraction=0.75 ++data.task.fraction_spread=0.25" if part is not task
              else "data.task.count=null data.task.fraction=0.75 "
                   "++data.task.fraction_spread=0.25")
    return (said + f"For forecasting, train on a spread of densities ({spread}"
            + (", or the Mixed task of conf/data/csv.yaml, LatentODEForecaster.fit's default"
               if part is task else "") +
            "); a paper protocol's benchmark keeps its own task.")


def calibration_warnings(part: Any, calibration: NoiseCalibration, channels: list[str],
                         advice: tuple[str, str] | None) -> list[str]:
    """What to say about a noise calibrated on ``part``: too few series (checked with
    ``advice``, what they are and how to give more) and channels on too few points."""
    texts = [few_series_warning(part, *advice) if advice else None,
             few_points_warning(calibration, channels)]
    return [text for text in texts if text]


def run_calibration_warnings(part: Any, calibration: NoiseCalibration, channels: list[str],
                             split: str) -> list[str]:
    """:func:`calibration_warnings` for a trained run's ``split`` (``from_run``,
    ``latentode-eval``), first of all a word when it is the training split: on series the
    model trained on the noise comes out narrow, as ``fit`` and ``from_model`` say too."""
    texts = calibration_warnings(part, calibration, channels, RUN_SPLITS.get(split))
    if split == "train":
        texts.insert(0, "The predictive noise is calibrated on the run's training series (it "
                        "has no validation split): on series the model trained on it comes out "
                        "narrow (0.85 coverage for 0.9 in a user pass). Train with "
                        "data.val_fraction > 0.")
    return texts


def model_obs_std(model: Any) -> float | list[float]:
    """The model's observation noise: a float (0 for a model without one), or a list when the
    model has one per channel."""
    value = getattr(model, "obs_std", 0.0)
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    if isinstance(value, (list, tuple, np.ndarray)):
        return [float(v) for v in np.ravel(np.asarray(value, dtype=np.float64))]
    return float(value or 0.0)


def obs_std_array(obs: float | list[float], channels: int) -> np.ndarray:
    """:func:`model_obs_std`'s value as ``(channels,)`` float64."""
    array = np.asarray(obs, dtype=np.float64)
    if array.ndim and array.shape != (channels,):
        raise ValueError(f"the model's obs_std has {array.size} channel(s), the data "
                         f"{channels}.")
    return np.broadcast_to(array, (channels,)).copy()


def format_obs_std(obs: float | list[float]) -> str:
    """``obs_std`` for a log line: ``0.01``, or ``[0.01, 0.05]`` per channel."""
    if isinstance(obs, list):
        return "[" + ", ".join(f"{v:.4g}" for v in obs) + "]"
    return f"{obs:g}"


@dataclass
class NoiseCalibration:
    """Per-channel predictive observation noise and how it was estimated (model units).

    Attributes:
        std: the predictive noise std per channel, ``max(obs_std, sigma_c, coverage_std)``.
        obs_std: the model's observation noise (the floor): one value, or one per channel.
        residual_rms: ``sqrt(mean r^2)`` per channel (residual of the posterior-mean prediction).
        path_std: ``sqrt(mean s^2)`` per channel (spread of the sampled paths).
        error_rms: ``sqrt(mean e^2)`` per channel: the points' known measurement uncertainty
            (``batch.errors``), left out of the noise (empty: none were given).
        count: points per channel behind the estimate.
        coverage_std: per channel, the least noise whose central ``COVERAGE_LEVEL`` intervals
            cover that share of those points (``std``'s floor; 0 where the moment-matched noise
            covers them already or a channel has fewer than ``CALIBRATION_MIN_POINTS``;
            empty: not computed, a calibration of an older latentode).
        points: ``"heldout"`` (targets the encoder did not see, inside the span of the
            channel's encoder points), ``"heldout_any_lead"`` (held-out points past that span
            too: none lay inside it), ``"targets"`` (all targets: no point was held out) or
            ``"none"`` (no target at all: ``std`` is ``obs_std``).
        split: the data split it was estimated on (``"val"``, ``"train"``, or None).
        n_samples, seed: posterior samples per series and the sampling seed.
        lead_times: mean lead time (model units) of each bin of the forecast curve (empty:
            no curve, every time gets ``std``).
        lead_std: the noise std per bin and channel ``(bins, D)``: non-decreasing, >= ``std``.
        lead_count: forecast points per bin.
        history_counts, history_factor: the forecast variance's factor by how many times a
            series' history holds (bins' mean counts; non-increasing; empty: none).
        series_kappa, series_mbar: the in-series variance's factor per series and channel
            (:meth:`series_factor`): its shrinkage in points and, per channel, the median over
            the calibration series of the mean squared residual at their seen points (model
            units); None / empty: no factor (one noise for every series, as before).
    """

    std: list[float]
    obs_std: float | list[float]
    residual_rms: list[float] = field(default_factory=list)
    path_std: list[float] = field(default_factory=list)
    error_rms: list[float] = field(default_factory=list)
    count: list[int] = field(default_factory=list)
    coverage_std: list[float] = field(default_factory=list)
    points: str = "heldout"
    split: str | None = None
    n_samples: int = 0
    seed: int = 0
    lead_times: list[float] = field(default_factory=list)
    lead_std: list[list[float]] = field(default_factory=list)
    lead_count: list[int] = field(default_factory=list)
    history_counts: list[float] = field(default_factory=list)
    history_factor: list[float] = field(default_factory=list)
    series_kappa: float | None = None
    series_mbar: list[float] = field(default_factory=list)

    def series_factor(self, m: np.ndarray, n: np.ndarray) -> np.ndarray:
        """The factor on the in-series noise variance of series whose posterior mean misses
        their own seen points by ``m`` (mean squared residual per channel, model units) over
        ``n`` points, ``(..., D)`` each: ``(n m + kappa mbar) / ((n + kappa) mbar)``, a
        series' own residual relative to the calibration series' median, shrunk toward 1 by
        ``kappa`` points. A series fitted worse than the calibration series were is predicted
        worse at its unseen points too (Spearman 0.75-0.93): one noise for all covered 0.80 of
        the sparse series of one seed for 0.9, the factor 0.89. 1 where there is no factor,
        where a channel has no seen point or the median is 0."""
        if self.series_kappa is None or not self.series_mbar:
            return np.ones(np.broadcast_shapes(np.shape(m), np.shape(n)))
        return shrunk_factor(m, n, np.asarray(self.series_mbar), float(self.series_kappa))

    @property
    def array(self) -> np.ndarray:
        """``std`` as a float64 array ``(D,)``."""
        return np.asarray(self.std, dtype=np.float64)

    def std_at(self, leads: np.ndarray, history: float | None = None,
               factor: np.ndarray | None = None) -> np.ndarray:
        """The noise std ``(m, D)`` at lead times ``leads`` ``(m,)`` (one per time) or ``(m, D)``
        (each channel's own: past that channel's last observation), in model units; 0 or less
        (inside the span): ``std``, its variance times the series' ``factor`` ``(D,)``
        (:meth:`series_factor`; None: 1); infinite (a channel never observed): the last bin's.
        ``history``: the number of times the series' history holds, for the forecast noise's
        factor (``history_factor``; None: 1)."""
        base = self.array
        leads = np.asarray(leads, dtype=np.float64)
        if leads.ndim == 1:
            leads = np.repeat(leads[:, None], len(base), axis=1)
        out = np.broadcast_to(base, leads.shape).copy()
        if factor is not None:
            inside = ~(leads > 0)
            out = np.where(inside, out * np.sqrt(np.broadcast_to(factor, out.shape)), out)
        if not self.lead_times:
            return out
        # between the bins' mean leads, linear in variance; before the first, the first bin's
        # (it holds the points just past the last observation: a ramp from the in-series noise
        # at 0 covered them 0.82 for 0.9 on the quick start), beyond the last, the last's
        knots = np.asarray(self.lead_times, dtype=np.float64)
        variances = np.asarray(self.lead_std, dtype=np.float64) ** 2
        by_history = 1.0
        if history is not None and self.history_counts:
            by_history = float(np.interp(history, self.history_counts, self.history_factor))
        for c in range(len(base)):
            ahead = leads[:, c] > 0
            far = np.minimum(leads[ahead, c], knots[-1])  # inf: held at the last bin
            var = np.interp(far, knots, variances[:, c]) * by_history
            out[ahead, c] = np.sqrt(np.maximum(var, base[c] ** 2))
        return out

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "version": CALIBRATION_VERSION}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NoiseCalibration:
        data = dict(data)
        if data.get("version") in (1, 2, 3):  # before the curve / factor / uncertainties
            data["version"] = CALIBRATION_VERSION
        return cls(**without_version(data, CALIBRATION_VERSION, "calibration"))

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> NoiseCalibration:
        return cls.from_json(json.loads(Path(path).read_text()))


def shrunk_factor(m: Any, n: Any, mbar: Any, kappa: float) -> np.ndarray:
    """``(n m + kappa mbar) / ((n + kappa) mbar)``, broadcast; 1 where ``mbar`` is 0 (see
    :meth:`NoiseCalibration.series_factor`)."""
    m = np.asarray(m, dtype=np.float64)
    n, mbar = np.asarray(n, dtype=np.float64), np.asarray(mbar, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        g = (n * m + kappa * mbar) / ((n + kappa) * mbar)
    # bounded as the history factor is: a median fitted to rounding, or a series far denser
    # than the calibration's, would otherwise scale the std by 1e150 or 0.09
    g = np.clip(g, *SERIES_FACTOR_RANGE)
    return np.where((mbar > 0) & np.isfinite(g), g, 1.0)


def calibration_batches(
    datamodule: Any, split: str | None = None, max_series: int | None = CALIBRATION_MAX_SERIES,
    task: Any = None, origin: str | None = None, dtype: torch.dtype = torch.float32,
    folds: int | None = None,
) -> tuple[Iterator[Any], str]:
    """``(batches, split)``: the batches to calibrate on and the split they come from.

    ``split`` None: ``"val"`` when the data module's validation split has series, else
    ``"train"``. The batches hold the split's first ``max_series`` series (None: all) in stored
    order, ``datamodule.batch_size`` at a time, with the data module's task masks drawn the fixed,
    seeded way validation and test draw theirs (``Collator(fixed=True, seed=datamodule.seed)``,
    on the data module's ``time_origin``, in ``dtype``: the model's), so they are the
    same on every call; for the validation split they are the validation batches. ``task``
    replaces the data module's (e.g. :func:`lead_task` for the forecast pass; None: the data
    module's, a ``Mixed`` task's interpolation part: :func:`interpolation_task`), ``origin``
    its clock (the forecaster's ``"series"``: how it answers every series). ``folds`` (with
    ``task`` None): ``folds`` batches per ``batch_size`` series instead, one per
    :class:`~latentode.data.Folds` fold, so every observed point is held out once while the
    encoder sees the rest of its series.
    """
    from latentode.data import Collator, Folds

    if not getattr(datamodule, "splits", None):
        datamodule.setup()
    splits = datamodule.splits
    if split is None:
        split = "val" if len(splits.get("val", ())) > 0 else "train"
    part = splits[split]
    n = len(part) if max_series is None else min(len(part), int(max_series))
    if task is not None or folds is None:
        tasks = [task if task is not None else interpolation_task(datamodule.task)]
    else:
        Folds(folds=folds)  # folds=0 or 2.5 refused here, not an empty or truncated loop
        tasks = [Folds(folds=folds, fold=k) for k in range(folds)]
    collators = [Collator(part, one, fixed=True, seed=datamodule.seed,
                          origin=origin or getattr(datamodule, "time_origin", None) or "batch",
                          dtype=dtype) for one in tasks]
    size = int(datamodule.batch_size)
    return (collator(list(range(s, min(s + size, n)))) for s in range(0, n, size)
            for collator in collators), split


def calibrate_split(
    model: torch.nn.Module, datamodule: Any, n_samples: int, seed: int, *,
    task: Any = None, folds: int | None = None, origin: str | None = None,
    dtype: torch.dtype = torch.float32, subsets: Subsets | None = None, lead: bool = True,
    per_series: bool = False,
) -> NoiseCalibration:
    """The predictive noise of ``model`` on ``datamodule``'s calibration split (its validation
    split, else its training split: ``calibration.split``): :func:`calibrate_noise` on
    :func:`calibration_batches` (``task``, ``folds``), then (``lead``) the forecast curve over
    lead time (:func:`with_lead_curve`), both on ``origin``'s clock in ``dtype``, predicting
    with ``subsets`` when given; ``per_series`` (on ``folds``, whose targets include the
    encoder's points): a factor per series (:func:`calibrate_noise`). What the forecaster and
    ``latentode-eval`` calibrate with."""
    batches, split = calibration_batches(datamodule, task=task, origin=origin, dtype=dtype,
                                         folds=folds)
    base = calibrate_noise(model, batches, n_samples, seed, split=split, subsets=subsets,
                           per_series=per_series and folds is not None)
    if not lead:
        return base
    return with_lead_curve(model, datamodule, base, n_samples, seed, origin=origin, dtype=dtype,
                           subsets=subsets)


def with_lead_curve(
    model: torch.nn.Module, datamodule: Any, base: NoiseCalibration, n_samples: int, seed: int,
    *, origin: str | None = None, dtype: torch.dtype = torch.float32,
    subsets: Subsets | None = None,
) -> NoiseCalibration:
    """``base`` (an in-series calibration on ``datamodule``'s split ``base.split``) with the
    forecast curve over lead time: :func:`calibrate_lead` on the same series cut by
    :func:`lead_task`."""
    batches, _ = calibration_batches(datamodule, base.split, task=lead_task(), origin=origin,
                                     dtype=dtype)
    return calibrate_lead(model, batches, base, n_samples, seed, subsets=subsets)


SUBSET_MODES = ("auto", "true", "false")


def subsets_mode(value: Any) -> Any:
    """``subsets=`` as ``"auto"``, True or False, or a :class:`Subsets` (one given, or made of
    an ``Interpolation`` given: the encoder's training subsample; Hydra's ``true``/``false``
    arrive as bools, a command line's may be strings)."""
    if isinstance(value, (Subsets, bool)):
        return value
    if isinstance(value, Interpolation):
        return Subsets(value)
    mode = str(value).strip().lower()
    if mode not in SUBSET_MODES:
        raise ValueError(f"subsets must be one of {list(SUBSET_MODES)} (auto: when the model "
                         f"predicts clearly worse from most of a series than at its training "
                         f"density and subsets help; true: always; false: never), got "
                         f"{value!r}.")
    return mode if mode == "auto" else mode == "true"


def subsets_candidate(model: Any, task: Any, subsets: Any, trained_task: bool = True
                      ) -> tuple[Any, Subsets | None]:
    """``(mode, candidate)``: ``subsets`` as :func:`subsets_mode` reads it and the subsets it
    could use (None: none; with ``mode`` False, for advice only). Refused with a ValueError,
    before any work where callers check early:
    subsets for a model that is not a latent ODE (True, or subsets given; ``"auto"`` simply
    has none), and True when ``task`` (the training task; ``trained_task`` False: not known)
    shows the encoder every point."""
    from latentode.models import LatentODE

    mode = subsets_mode(subsets)
    if not isinstance(model, LatentODE):
        if mode == "auto" or mode is False:
            return mode, None
        raise ValueError(f"subsets condition a LatentODE's posterior samples; "
                         f"{type(model).__name__} has none: use subsets=False.")
    if isinstance(mode, Subsets):
        return mode, mode
    candidate = Subsets.of_task(task) if trained_task else None
    if mode is True and candidate is None:
        raise ValueError(f"subsets=True conditions on subsets drawn as the encoder's training "
                         f"drew them, but its task ({task if trained_task else 'not known'}) "
                         "shows it every point of the history: use subsets='auto' or False"
                         + ("." if trained_task else ", or name the training subsample."))
    return mode, candidate


def _pooled_rms(calibration: NoiseCalibration) -> float:
    """The residual rms of the posterior-mean prediction at the in-series points, pooled over
    channels by their points."""
    rms = np.asarray(calibration.residual_rms or calibration.std, dtype=np.float64)
    weights = np.asarray(calibration.count or [1] * len(rms), dtype=np.float64)
    if weights.sum() <= 0:
        weights = np.ones_like(weights)
    return float(np.sqrt(np.average(np.square(rms), weights=weights)))


def calibrate_forecaster(
    model: torch.nn.Module, datamodule: Any, n_samples: int, seed: int, *,
    task: Any = None, subsets: Any = "auto", trained_task: bool = True,
    origin: str | None = "series", dtype: torch.dtype = torch.float32,
) -> tuple[NoiseCalibration, Subsets | None, list[str]]:
    """``(calibration, subsets or None, warnings)``: the forecaster's noise (:func:`calibrate_split`
    on ``CALIBRATION_FOLDS`` passes of ``Folds``, or on ``task``'s masks) and whether it
    predicts with subsets (:mod:`.subsets`).

    ``trained_task``: the data module's task is the model's training task; then, on folds, the
    in-series noise is compared with the one at that task's interpolation masks
    (:func:`density_warning`), and ``subsets``: ``"auto"`` conditions each posterior sample on
    a random subset drawn as in training when the model predicts clearly worse from four fifths
    of a series than at its training density and the subsets' predictions are better there
    (lower pooled residual rms at the held-out points; the quick start's model: 0.27 -> 0.10);
    True always (the training task must subsample); False never; a :class:`Subsets` (or an
    ``Interpolation``) always, those. A model that is not a latent ODE has none
    (:func:`subsets_candidate`).
    """
    mode, candidate = subsets_candidate(model, datamodule.task, subsets, trained_task)
    folds = None if task is not None else CALIBRATION_FOLDS
    use = candidate if mode is True or isinstance(mode, Subsets) else None

    def calibrate(with_subsets: Subsets | None, lead: bool = True) -> NoiseCalibration:
        return calibrate_split(model, datamodule, n_samples, seed, task=task, folds=folds,
                               origin=origin, dtype=dtype, subsets=with_subsets, lead=lead,
                               per_series=series_factor_applies(
                                   model, getattr(datamodule, "window", None)))

    def with_lead(base: NoiseCalibration, with_subsets: Subsets | None) -> NoiseCalibration:
        return with_lead_curve(model, datamodule, base, n_samples, seed, origin=origin,
                               dtype=dtype, subsets=with_subsets)

    trained = interpolation_task(datamodule.task)
    if use is not None or task is not None or not trained_task or not isinstance(
            trained, Interpolation):
        return calibrate(use), use, []
    # the lead curve waits for the choice below: with subsets taken, the plain one was wasted
    # (~8% of from_run's calibration)
    calibration = calibrate(None, lead=False)
    split = str(calibration.split)
    channels = [str(c) for c in datamodule.dataset.channels]
    batches, _ = calibration_batches(datamodule, split, origin=origin, dtype=dtype)
    on_task = calibrate_noise(model, batches, n_samples, seed, split=split)
    density = density_warning(on_task=on_task, on_folds=calibration, task=datamodule.task,
                              channels=channels)
    if density is None or mode != "auto" or candidate is None:
        if density and mode is False and candidate is not None:
            density += (" (subsets=True conditions each posterior sample on subsets drawn as in "
                        "training, without retraining.)")
        return with_lead(calibration, None), None, [density] if density else []
    trial = calibrate(candidate, lead=False)
    # the predictions' error decides, not the noise: wider paths lower the moment-matched
    # noise whether or not the predictions improve
    before, after = _pooled_rms(calibration), _pooled_rms(trial)
    if after < before:
        return with_lead(trial, candidate), candidate, [
            density.split(" predict and impute")[0] + f" predict and impute therefore "
            f"condition each posterior sample on one of {candidate} of a series' points, "
            f"drawn as the training task drew the encoder's: held-out rms {after:.3g} against "
            f"{before:.3g} from all of them (pooled over channels, model units), in-series "
            f"noise {np.sqrt(np.mean(np.square(trial.array))):.3g}. subsets=False conditions "
            "on all points."]
    return with_lead(calibration, None), None, [
        density + f" (Conditioning on {candidate} drawn as in training did not help: held-out "
                  f"rms {after:.3g} against {before:.3g}.)"]


def lead_task() -> Any:
    """The forecast pass's task: each series cut at 20-80% of its span (fixed per series)."""
    from latentode.data import Extrapolation

    return Extrapolation(fraction=0.5, fraction_spread=0.3)


@dataclass
class Scored:
    """Sampled predictions at the points of a batch that can be scored, with the batch's values
    and masks there: ``pred`` ``(S, B, K, D)``, the rest ``(B, K, D)``; ``leads`` ``(B, K, D)``:
    each point's lead time past what the encoder saw of that channel of its series (0 inside
    that span, infinite where the encoder saw none of the channel)."""

    pred: torch.Tensor
    values: torch.Tensor
    target: torch.Tensor
    encoder: torch.Tensor
    leads: torch.Tensor
    history: torch.Tensor  # (B,): times the encoder saw per series
    errors: torch.Tensor | None = None  # (B, K, D) measurement uncertainties, 0 where none

    def error_var(self) -> torch.Tensor | None:
        """Each point's measurement variance ``e^2`` ``(B, K, D)`` in float64 (None without
        uncertainties): the part of a value's distance from the truth that is known, so the
        predictive noise is calibrated on what is left and each point's own is added back
        where observations are scored."""
        if self.errors is None:
            return None
        # (NaN: none known, as the loaders give 0; a hand-made batch's NaN made the noise NaN)
        return torch.nan_to_num(self.errors.double(), nan=0.0).square()


def observation_std(noise: torch.Tensor | None, scored: Scored) -> torch.Tensor | None:
    """The std of an observation at the scored points: the predictive ``noise`` (``(B, K, D)``
    or broadcastable; None: none) and each point's measurement uncertainty together,
    ``sqrt(noise^2 + e^2)``; ``noise`` as it is without uncertainties."""
    var = scored.error_var()
    if var is None:
        return noise
    if noise is None:
        return var.sqrt()
    noise = torch.as_tensor(noise, dtype=torch.float64, device=var.device)
    return (noise.square() + var).sqrt()


def point_noise(calibration: NoiseCalibration, scored: Scored) -> torch.Tensor:
    """``calibration``'s noise std ``(B, K, D)`` at the scored points: each at its lead and
    its series' history length, and with its series' factor from the points the encoder saw
    (:func:`seen_residual`), as ``LatentODEForecaster.predict`` gives it."""
    leads = scored.leads.double().cpu().numpy()
    history = scored.history.cpu().numpy()
    factor = None
    if calibration.series_kappa is not None:
        # a calibration of an older latentode read the residuals with the noise in, as its
        # forecaster's predict still does
        m, n = seen_residual(scored if calibration.error_rms else
                             replace(scored, errors=None))
        factor = calibration.series_factor(m, n)
    return torch.as_tensor(np.stack([
        calibration.std_at(leads[b], history=int(history[b]),
                           factor=None if factor is None else factor[b])
        for b in range(len(leads))]))


def seen_residual(scored: Scored) -> tuple[np.ndarray, np.ndarray]:
    """``(m, n)`` ``(B, D)``: per series and channel the mean squared residual of the
    posterior mean (the paths' mean) at the scored points the encoder saw, and their count
    (0 where it saw none: ``m`` 0 there). With measurement uncertainties, how far the series
    is fitted beyond its known noise (:func:`beyond_known`)."""
    with torch.no_grad():
        seen = (scored.target & scored.encoder).double()
        sq = (scored.values.double() - scored.pred.double().mean(0)).square()
        count = seen.sum(1)
        mean = (sq * seen).sum(1) / count.clamp(min=1)
        var = scored.error_var()
    m, n = mean.cpu().numpy(), count.cpu().numpy()
    if var is None:
        return m, n
    return beyond_known(m, sq.cpu().numpy(), var.cpu().numpy(),
                        seen.bool().cpu().numpy(), axis=1), n


def beyond_known(m: np.ndarray, sq: np.ndarray, e2: np.ndarray, seen: np.ndarray,
                 axis: int) -> np.ndarray:
    """``m`` (a series' mean squared residual per channel) where none of its ``seen`` points
    carries a measurement uncertainty, else the likeliest variance beyond each point's
    ``e2`` (:func:`likely_extra`; ``sq`` the squared residuals, the points along ``axis``):
    a series' few noisy points otherwise decide its factor (a fifth of the points at e = 1
    over a misfit of 0.1 scattered the factors across their whole range, and the intervals
    inside series with them)."""
    sq, e2, seen = (np.moveaxis(np.asarray(x), axis, -1) for x in (sq, e2, seen))
    has = (seen & (e2 > 0)).any(-1)
    if not has.any():
        return m
    return np.where(has, likely_extra(np.where(seen, sq, 0.0), e2, seen=seen), m)


def series_factor_applies(model: Any, window: Any = None) -> bool:
    """Whether ``LatentODEForecaster`` can scale ``model``'s in-series noise per series: it
    needs the posterior mean at a history's own times, asked beside the requested ones, which
    must not change the answers (a latent ODE with ``z0`` at the history's start, on a solver
    whose steps do not follow the output times, not trained on windows: a history's other
    windows would be solved too, draw other z0 samples and pool their residuals)."""
    from latentode.models import LatentODE
    from latentode.solvers import FIXED_METHODS

    if window is not None:
        return False
    if not isinstance(model, LatentODE) or getattr(model, "z0_at", "start") != "start":
        return False
    solver = getattr(model, "solver", {}) or {}
    return not (solver.get("method") in FIXED_METHODS and solver.get("step_size") is None)


def _leads(point_times: torch.Tensor, times: torch.Tensor, encoder: torch.Tensor
           ) -> torch.Tensor:
    """Lead ``(B, K, D)`` of points at ``point_times`` ``(B, K)`` past the span of each
    series' encoder points per channel (``encoder`` ``(B, T, D)`` on ``times``): after its
    last, or before its first; 0 inside it; infinite for a channel the encoder saw none of."""
    seen = encoder  # (B, T, D)
    count = seen.shape[1]
    first = seen.to(torch.int8).argmax(1)  # (B, D)
    last = count - 1 - seen.flip(1).to(torch.int8).argmax(1)
    at = point_times.unsqueeze(-1)  # (B, K, 1)
    after = at - times[last].unsqueeze(1)
    before = times[first].unsqueeze(1) - at
    lead = torch.clamp(torch.maximum(after, before), min=0.0)
    never = ~seen.any(1, keepdim=True)  # (B, 1, D)
    return torch.where(never, torch.full_like(lead, float("inf")), lead)


def _paths(model: Any, batch: Any, n_samples: int, seed: int, index: int,
           device: torch.device, jitter: bool = False, subsets: Subsets | None = None
           ) -> tuple[Scored, torch.Tensor | None]:
    """Sampled predictions of one batch, seeded by ``seed`` and the batch index, and with
    ``jitter`` standard normal draws of their shape from the same stream (for noise); torch's
    global RNG is left as it was. ``subsets``: see :func:`_predicted`."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed * 1_000_003 + index)
        scored = _predicted(model, batch, n_samples, subsets)
        return scored, torch.randn_like(scored.pred) if jitter else None


def _predicted(model: Any, batch: Any, n_samples: int, subsets: Subsets | None = None
               ) -> Scored:
    """Sampled predictions where the batch has targets, ``z0`` where the model's training put
    it (a latent ODE's ``z0_at``: :meth:`LatentODE.predict`). ``subsets`` (a latent ODE
    only): each ``z0`` sample conditioned on a random subset of what the encoder mask shows,
    as the forecaster answers with them (:mod:`.subsets`); the masks drawn from torch's
    (seeded) stream.

    A latent ODE is asked at each series' own target times (``pred_times`` of shape
    ``(B, K)``, K the most targets of one series) rather than at the batch's union of times:
    for unaligned series the union is about ``B`` times longer than any one series, and so were
    the ``S`` decoded paths (1000 smart meters' calibration peaked at 1.6 GB against training's
    0.55 GB). The encoder, the ``z0`` draws and the solver's steps are the same as on the union.
    """
    from latentode.models import LatentODE
    from latentode.models.inputs import encoder_error_kwargs
    from latentode.models.latent_ode import first_target, target_rows

    if not isinstance(model, LatentODE):
        if subsets is not None:
            raise ValueError(f"subsets condition a LatentODE's posterior samples; "
                             f"{type(model).__name__} has none.")
        if hasattr(model, "predict"):
            out = model.predict(batch.times, batch.values, batch.encoder_mask,
                                batch.target_mask, n_samples=n_samples).pred
        else:
            out = model(batch.times, batch.values, batch.encoder_mask, n_samples=n_samples).pred
        grid = batch.times.expand(len(batch.values), -1)
        return Scored(out, batch.values, batch.target_mask, batch.encoder_mask,
                      _leads(grid, batch.times, batch.encoder_mask),
                      batch.encoder_mask.any(-1).sum(1), getattr(batch, "errors", None))
    times, target = batch.times, batch.target_mask
    first = first_target(target) if model.z0_at == "first_target" else 0
    rows = target_rows(times, target, first)
    # the uncertainties the encoder reads (model.encoder_error_scale), as in training
    extra = encoder_error_kwargs(model, getattr(batch, "errors", None))
    if subsets is None:
        pred = model(times, batch.values, batch.encoder_mask, n_samples,
                     pred_times=rows.rows, **extra).pred
    else:
        rng = np.random.default_rng(int(torch.randint(2**62, (1,))))
        masks = subsets.masks(batch.encoder_mask.any(-1).cpu().numpy(),
                              subsets.count(n_samples), rng)
        eps = torch.randn((n_samples, len(batch.values), model.latents),
                          dtype=batch.values.dtype, device=batch.values.device)
        pred, _ = subset_forward(model, masks, times, batch.values, batch.encoder_mask, eps,
                                 pred_times=rows.rows, **extra)
    idx, keep = rows.idx, rows.valid.unsqueeze(-1)
    errors = getattr(batch, "errors", None)
    return Scored(pred[:, :, 1:], rows.gather(batch.values), rows.gather(target) & keep,
                  rows.gather(batch.encoder_mask) & keep,
                  _leads(times[idx], times, batch.encoder_mask),
                  batch.encoder_mask.any(-1).sum(1),
                  None if errors is None else rows.gather(errors))


def _same_kind(before: bool | None, evar: torch.Tensor | None, what: str) -> bool:
    """Whether the batches carry measurement uncertainties, the same for each (refused
    otherwise: their points would be read two ways)."""
    now = evar is not None
    if before is not None and before != now:
        raise ValueError(f"{what}: some batches carry measurement uncertainties (batch.errors) "
                         f"and others do not; give them to all or none.")
    return now


@torch.no_grad()
def calibrate_noise(
    model: torch.nn.Module, batches: Iterable[Any], n_samples: int = 100, seed: int = 0,
    split: str | None = None, subsets: Subsets | None = None, per_series: bool = False,
) -> NoiseCalibration:
    """The per-channel predictive noise of ``model`` on ``batches`` (see the module docstring).

    Args:
        model: a model with the ``LatentODE`` forward interface (``model(times, values,
            encoder_mask, n_samples=S).pred`` of shape ``(S, B, T, D)``) and an ``obs_std``.
        batches: ``Batch``es (``times``, ``values``, ``encoder_mask``, ``target_mask``), e.g. a
            validation loader or :func:`calibration_batches`.
        n_samples: posterior samples per series.
        seed: sampling seed; batch ``k`` is sampled under seed ``seed * 1_000_003 + k``.
        split: recorded in the result (where the batches come from).
        subsets: each posterior sample conditioned on a random subset of what the encoder
            sees (:mod:`latentode.forecast.subsets`), as the forecaster predicts with them.
        per_series: the in-series noise with a factor per series and channel
            (:meth:`NoiseCalibration.series_factor`, ``SERIES_KAPPA``): the noise is then that
            of a series fitted as well as the median one, moment-matched on the held-out
            points' ``(r^2 - s^2) / g`` (with measurement uncertainties the likeliest on the
            points scaled by ``1 / sqrt(g)``) and floored the same way; the batches must show
            the encoder's points as targets too (``Folds`` does), else no factor.
    """
    if isinstance(n_samples, bool) or int(n_samples) < 2:
        raise ValueError(f"n_samples must be an integer >= 2 (the spread of the paths is "
                         f"estimated from them), got {n_samples!r}.")
    obs = model_obs_std(model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums: dict[str, np.ndarray] = {}  # name -> (4, D): sum r^2, sum s^2, count, sum e^2
    sample: _Reservoir | None = None  # held-out points' value minus each path, for the floor
    error_row: bool | None = None  # whether the sample's last row is each point's uncertainty
    # per_series: each in-series held-out point's r^2, s^2, channel and its series' seen-point
    # (m, n); and every (series, channel) pair's m where it has seen points, for the median
    points_ps: list[np.ndarray] = []
    pair_m: list[np.ndarray] = []
    pair_c: list[np.ndarray] = []
    try:
        for index, batch in enumerate(batches):
            batch = batch.to(device)
            scored, _ = _paths(model, batch, int(n_samples), seed, index, device,
                               subsets=subsets)
            pred = scored.pred.double()
            mean, var = pred.mean(0), pred.var(0, unbiased=False)  # (B, K, D)
            sq = (scored.values.double() - mean).square()
            evar = scored.error_var()  # known measurement variances (None: none)
            error_row = _same_kind(error_row, evar, "calibrate_noise")
            excess = sq if evar is None else sq - evar  # r^2 beyond the known noise
            target = scored.target
            heldout = target & ~scored.encoder
            aux = None
            if per_series:
                m, n = (torch.as_tensor(a) for a in seen_residual(scored))  # (B, D)
                has = (n > 0).numpy()
                pair_m.append(m.numpy()[has])
                pair_c.append(np.nonzero(has)[1])
                inside_b, inside_k, inside_c = (heldout & (scored.leads == 0)).nonzero(
                    as_tuple=True)
                points_ps.append(np.stack([
                    excess[inside_b, inside_k, inside_c].cpu().numpy(),
                    var[inside_b, inside_k, inside_c].cpu().numpy(),
                    inside_c.cpu().numpy().astype(np.float64),
                    m[inside_b.cpu(), inside_c.cpu()].numpy(),
                    n[inside_b.cpu(), inside_c.cpu()].numpy()]))
                aux = (m, n)
            # the in-series noise from held-out points inside each channel's span of encoder
            # points (lead 0), the only ones std_at answers with it: those past the span take
            # the lead curve, and counted here they inflated the noise (a sparse channel 0.58
            # against 0.09: 90% intervals inside the history covered 100%)
            for name, mask in (("heldout", heldout & (scored.leads == 0)),
                               ("heldout_any_lead", heldout), ("targets", target)):
                m = mask.double()
                known = torch.zeros_like(var) if evar is None else evar
                part = torch.stack([(sq * m).sum((0, 1)), (var * m).sum((0, 1)),
                                    m.sum((0, 1)), (known * m).sum((0, 1))]).cpu().numpy()
                sums[name] = part if name not in sums else sums[name] + part
            b, k, c = heldout.nonzero(as_tuple=True)
            dev = scored.values[b, k, c].unsqueeze(0) - scored.pred[:, b, k, c]
            if aux is not None:  # each point's series (m, n) rides along as two more rows
                bc, cc = b.cpu(), c.cpu()
                dev = torch.cat([dev.cpu().double(), aux[0][bc, cc].unsqueeze(0),
                                 aux[1][bc, cc].unsqueeze(0)])
            if evar is not None:  # and its uncertainty as the last
                dev = torch.cat([dev.cpu().double(), evar[b, k, c].sqrt().cpu().unsqueeze(0)])
            if sample is None:
                sample = _Reservoir(pred.shape[-1], dev.shape[0], seed)
            sample.add(dev, c.cpu().numpy(), (scored.leads[b, k, c] == 0).cpu().numpy())
    finally:
        model.train(was_training)
    if not sums:
        dims = getattr(model, "input_dim", None)
        if dims is None:
            raise ValueError("calibrate_noise got no batches to calibrate on.")
        log.warning("calibrate_noise: no batches; the predictive noise stays obs_std=%s",
                    format_obs_std(obs))
        return NoiseCalibration(std=obs_std_array(obs, int(dims)).tolist(), obs_std=obs,
                                points="none", split=split, n_samples=int(n_samples),
                                seed=int(seed))
    points = next((name for name in ("heldout", "heldout_any_lead") if sums[name][2].sum() > 0),
                  "targets")
    sq_sum, var_sum, count, known_sum = sums[points]
    dims = len(count)
    if count.sum() == 0:
        log.warning("calibrate_noise: no target points; the predictive noise stays obs_std=%s",
                    format_obs_std(obs))
        return NoiseCalibration(std=obs_std_array(obs, dims).tolist(), obs_std=obs,
                                points="none", split=split, n_samples=int(n_samples),
                                seed=int(seed), count=[0] * dims)
    pooled_sq, pooled_var = sq_sum.sum() / count.sum(), var_sum.sum() / count.sum()
    pooled_known = known_sum.sum() / count.sum()
    has = count > 0
    safe = np.maximum(count, 1)
    mean_sq = np.where(has, sq_sum / safe, pooled_sq)
    mean_var = np.where(has, var_sum / safe, pooled_var)
    mean_known = np.where(has, known_sum / safe, pooled_known)
    # the known measurement variance is not the model's to predict: what is left of r^2 is
    noise = np.sqrt(np.maximum(mean_sq - mean_var - mean_known, 0.0))
    mbar: np.ndarray | None = None  # per_series: the channels' median seen-point residual
    if per_series and points == "heldout" and points_ps:
        scaled = _series_scale(np.concatenate(points_ps, 1), np.concatenate(pair_m),
                               np.concatenate(pair_c), dims, noise)
        if scaled is not None:
            mbar, noise = scaled
    floor = np.zeros(dims)
    samples: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
    if sample is not None and points != "targets":
        for channel in range(dims):
            devs = sample.devs(channel, inside_only=points == "heldout")
            errors = None
            if error_row:
                devs, errors = devs[:-1], devs[-1]
            if mbar is not None:  # value minus path over sqrt(g): N(path, sigma^2 g + e^2)
                root = np.sqrt(shrunk_factor(devs[-2], devs[-1], mbar[channel],
                                             SERIES_KAPPA))
                devs = devs[:-2] / root
                errors = None if errors is None else errors / root
            elif per_series:
                devs = devs[:-2]
            if devs.shape[1] >= CALIBRATION_MIN_POINTS:
                samples[channel] = devs, errors
    for channel, (devs, errors) in samples.items():
        if errors is not None and bool((errors > 0).any()):  # noisy points weigh less
            noise[channel] = np.sqrt(likely_noise(devs, errors))
    std = np.maximum(noise, obs_std_array(obs, dims))
    for channel, (devs, errors) in samples.items():
        floor[channel] = coverage_std(devs, float(std[channel]), errors=errors)
    return NoiseCalibration(
        std=[float(v) for v in np.maximum(std, floor)], obs_std=obs,
        residual_rms=[float(v) for v in np.sqrt(mean_sq)],
        path_std=[float(v) for v in np.sqrt(mean_var)],
        error_rms=[float(v) for v in np.sqrt(mean_known)] if error_row else [],
        count=[int(v) for v in count], coverage_std=[float(v) for v in floor], points=points,
        split=split, n_samples=int(n_samples), seed=int(seed),
        series_kappa=None if mbar is None else SERIES_KAPPA,
        series_mbar=[] if mbar is None else [float(v) for v in mbar],
    )


def _series_scale(points: np.ndarray, pair_m: np.ndarray, pair_c: np.ndarray, dims: int,
                  noise: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``(mbar, noise)`` per channel for :func:`calibrate_noise`'s
    ``per_series``: ``points`` ``(5, P)`` (r^2, s^2, channel, m, n per held-out point),
    ``pair_m`` / ``pair_c`` every (series, channel) pair's seen-point m and channel. The noise
    of a channel is ``sqrt(max(0, mean((r^2 - s^2) / g)))`` over its points (``r^2`` less any
    known ``e^2``: :func:`calibrate_noise` replaces it by the likeliest where uncertainties
    are given); a channel without points keeps ``noise``'s (pooled) value. None without any
    seen point."""
    mbar = np.zeros(dims)
    for c in range(dims):
        values = pair_m[pair_c == c]
        if len(values):
            mbar[c] = float(np.median(values))
    if not (mbar > 0).any():
        return None
    r2, s2, chan, m, n = points
    chan = chan.astype(np.int64)
    out = noise.copy()
    for c in range(dims):
        at = chan == c
        if at.any():
            g = shrunk_factor(m[at], n[at], mbar[c], SERIES_KAPPA)
            out[c] = float(np.sqrt(max(0.0, float(np.mean((r2[at] - s2[at]) / g)))))
    return mbar, out


class _Reservoir:
    """A uniform sample of at most ``size`` held-out points per channel (those of the smallest
    random keys, drawn from ``seed``'s stream), each as its value minus every path ``(S,)``,
    in preallocated blocks (a batch writes only the points it adds). Points inside their
    channel's span of encoder points (lead 0, what the in-series noise is estimated on) are
    kept apart from the others, which are kept only until the first point inside a span turns
    up: they serve only a calibration that has none (``points="heldout_any_lead"``)."""

    def __init__(self, channels: int, samples: int, seed: int, size: int = COVERAGE_POINTS):
        self.rng = np.random.default_rng([int(seed), 90])
        # wide data: at most COVERAGE_BUDGET values in all (at least 200 points per channel)
        self.size = int(min(size, max(200, COVERAGE_BUDGET // max(1, channels * samples))))
        self.channels, self.samples = channels, samples
        self.parts: dict[bool, list[Any]] = {True: [None] * channels, False: [None] * channels}
        self.any_inside = False

    def add(self, dev: torch.Tensor, channel: np.ndarray, inside: np.ndarray) -> None:
        """Offer points: ``dev`` ``(S, n)``, their ``channel`` and ``inside`` ``(n,)``."""
        self.any_inside = self.any_inside or bool(inside.any())
        if self.any_inside:
            self.parts[False] = [None] * self.channels
        values = dev.detach().float().cpu().numpy()
        keys = self.rng.random(len(channel))
        for flag in (True, False) if not self.any_inside else (True,):
            for c in np.unique(channel[inside == flag]):
                at = np.flatnonzero((channel == c) & (inside == flag))
                self._offer(flag, int(c), keys[at], values[:, at])

    def _offer(self, flag: bool, c: int, keys: np.ndarray, values: np.ndarray) -> None:
        part = self.parts[flag][c]
        if part is None:
            part = self.parts[flag][c] = [np.full(self.size, np.inf),
                                         np.empty((self.samples, self.size), np.float32), 0]
        held, block, count = part
        merged = np.concatenate([held[:count], keys])
        if len(merged) <= self.size:  # room for all
            held[count:len(merged)] = keys
            block[:, count:len(merged)] = values
            part[2] = len(merged)
            return
        keep = np.zeros(len(merged), dtype=bool)
        keep[np.argpartition(merged, self.size - 1)[: self.size]] = True
        new = np.flatnonzero(keep[count:])  # offered points that stay
        free = np.concatenate([np.arange(count, self.size), np.flatnonzero(~keep[:count])])
        slots = free[: len(new)]  # empty slots first, then those of the points evicted
        held[slots], block[:, slots] = keys[new], values[:, new]
        part[2] = self.size

    def devs(self, channel: int, inside_only: bool) -> np.ndarray:
        """``(S, n)``: the channel's sampled points inside its span (``inside_only``) or, for a
        calibration with none inside any span, past it."""
        part = self.parts[bool(inside_only)][channel]
        if part is None:
            return np.empty((self.samples, 0))
        return part[1][:, : part[2]]


def likely_noise(dev: np.ndarray, errors: np.ndarray) -> float:
    """The noise variance ``sigma^2`` of points with known measurement uncertainties ``e``
    that is most likely under ``r ~ N(0, sigma^2 + s^2 + e^2)`` (``dev`` ``(S, n)``: each
    point's value minus each path, so ``r`` the value minus the paths' mean; ``s^2`` the
    paths' variance averaged over the points, not each point's own: where the paths' spread
    does not track the error it would steer the weights; ``errors`` ``(n,)``), by
    :func:`likely_extra`. The plain moment ``mean(r^2 - s^2 - e^2)`` weighs every point alike
    and is dominated by the noisiest: with a fifth of them at e = 1 over a noise of 0.087
    (beyond the paths) it came out 0.19 on one draw of 2000 points; the likeliest 0.083-0.093
    on four. With every ``e`` 0 the two are the same."""
    dev = np.asarray(dev, dtype=np.float64)
    r2 = np.square(dev.mean(0))
    known = float(dev.var(0).mean()) + np.square(np.asarray(errors, dtype=np.float64))
    return float(likely_extra(r2, known))


def likely_extra(r2: np.ndarray, known: np.ndarray, scale: np.ndarray | float = 1.0,
                 seen: np.ndarray | None = None, grid: int = 48, steps: int = 200
                 ) -> np.ndarray:
    """Per set of points (the last axis; ``seen`` picks them, default all) the ``v >= 0``
    that maximises the Gaussian log-likelihood of residuals ``r`` with variance
    ``known + v * scale`` (``r2 = r^2``; all broadcast to ``r2``'s shape): ``v`` the extra
    variance beyond what is known, ``scale`` its factor per point (1: a noise; the lead
    curve's variance: the history factor). Noisy points weigh less than in the plain moment
    ``mean((r^2 - known) / scale)``, which it equals where ``known`` and ``scale`` are the
    same for every point. The likelihood can have more than one maximum where ``known``
    spans orders of magnitude: the best of a grid of ``grid`` values (0 and up to the largest
    single point's ``(r^2 - known) / scale``, geometrically) is refined by ``steps``
    fixed-point steps, each kept only where it does not lower the likelihood. 0 where no
    point asks for more than its known variance; 0 for an empty set."""
    r2 = np.asarray(r2, dtype=np.float64)
    known = np.broadcast_to(np.asarray(known, dtype=np.float64), r2.shape)
    scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), r2.shape)
    seen = np.ones(r2.shape, dtype=bool) if seen is None else np.broadcast_to(seen, r2.shape)
    tiny = np.finfo(np.float64).tiny

    def loglik(v: np.ndarray) -> np.ndarray:
        var = np.maximum(known + v[..., None] * scale, tiny)
        with np.errstate(over="ignore"):
            return np.where(seen, -(np.log(var) + r2 / var), 0.0).sum(-1)

    with np.errstate(divide="ignore", invalid="ignore"):
        single = np.where(seen & (scale > 0), (r2 - known) / scale, 0.0)
    top = np.maximum(single.max(-1, initial=0.0), 0.0)  # (...,)
    best = np.zeros(top.shape)
    best_ll = loglik(best)
    for step in np.geomspace(1e-8, 1.0, grid - 1):
        v = top * step
        ll = loglik(v)
        better = ll > best_ll
        best, best_ll = np.where(better, v, best), np.where(better, ll, best_ll)
    for _ in range(steps):
        # (the variance floored where its square stays above 0: a point known exactly at
        # v = 0 weighs 1e300, not inf)
        w = np.where(seen, scale / np.maximum(known + best[..., None] * scale, 1e-150) ** 2,
                     0.0)
        num = (w * (r2 - known)).sum(-1)
        den = (w * scale).sum(-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            v = np.where(den > 0, np.maximum(num / den, 0.0), 0.0)
        ll = loglik(v)
        better = ll >= best_ll
        if not better.any() or np.allclose(v[better], best[better], rtol=1e-12, atol=0.0):
            best = np.where(better, v, best)
            break
        best, best_ll = np.where(better, v, best), np.where(better, ll, best_ll)
    return best


def coverage_std(dev: np.ndarray, start: float, level: float = COVERAGE_LEVEL,
                 errors: np.ndarray | None = None) -> float:
    """The least noise ``sigma >= start`` whose central ``level`` intervals of the mixture
    ``(1/S) sum_s N(path_s, sigma^2 + e^2)`` cover ``level`` of the points (``dev`` ``(S, n)``:
    each point's value minus each path; ``errors`` ``(n,)``: each point's known measurement
    uncertainty ``e``, None: 0; a value lies inside where the mixture's CDF there is within
    ``[(1 - level) / 2, (1 + level) / 2]``), to 0.1%; 0 when ``start`` covers them already."""
    values = torch.from_numpy(np.asarray(dev, dtype=np.float64))
    known = None if errors is None else torch.from_numpy(np.asarray(errors, dtype=np.float64))
    tail = (1 - level) / 2

    def covered(sigma: float) -> float:
        scale = sigma if known is None else torch.hypot(torch.tensor(sigma), known)
        cdf = torch.special.ndtr(values / scale).mean(0)
        return float(((cdf >= tail) & (cdf <= 1 - tail)).double().mean())

    lo = max(float(start), 1e-12 * max(float(values.abs().max()), 1.0), 1e-300)
    if covered(lo) >= level:
        return 0.0
    hi = 2 * lo
    while covered(hi) < level and hi < 1e300:
        lo, hi = hi, 2 * hi
    while hi / lo > 1.001:
        mid = float(np.sqrt(lo * hi))
        lo, hi = (lo, mid) if covered(mid) >= level else (mid, hi)
    return hi


@torch.no_grad()
def calibrate_lead(
    model: torch.nn.Module, batches: Iterable[Any], base: NoiseCalibration,
    n_samples: int = 100, seed: int = 0, bins: int = LEAD_BINS,
    subsets: Subsets | None = None,
) -> NoiseCalibration:
    """``base`` with the forecast noise curve over lead time estimated on ``batches`` (a task
    holding out each series' end, e.g. :func:`lead_task`; see the module docstring). With
    fewer than ``bins * LEAD_MIN_POINTS`` forecast points the curve has fewer bins (at least
    ``LEAD_MIN_POINTS`` points each; one bin: one forecast noise for every lead); with fewer
    than ``LEAD_MIN_POINTS`` ``base`` comes back as is, with a warning. ``subsets``: as for
    :func:`calibrate_noise`."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    taus, r2s, s2s, chans, hists, e2s = [], [], [], [], [], []
    error_row: bool | None = None
    try:
        for index, batch in enumerate(batches):
            batch = batch.to(device)
            seen = batch.encoder_mask.any(-1).sum(1)  # (B,): times the encoder saw per series
            scored, _ = _paths(model, batch, int(n_samples), seed, index, device,
                               subsets=subsets)
            pred = scored.pred.double()
            sq = (scored.values.double() - pred.mean(0)).square()
            evar = scored.error_var()  # each point's known measurement variance, or None
            error_row = _same_kind(error_row, evar, "calibrate_lead")
            var = pred.var(0, unbiased=False)
            leads = scored.leads
            mask = scored.target & ~scored.encoder & (leads > 0) & torch.isfinite(leads)
            b, k, c = mask.nonzero(as_tuple=True)
            if evar is not None:
                e2s.append(evar[b, k, c].cpu().numpy())
            taus.append(leads[b, k, c].double().cpu().numpy())
            r2s.append(sq[b, k, c].cpu().numpy())
            s2s.append(var[b, k, c].cpu().numpy())
            chans.append(c.cpu().numpy())
            hists.append(seen[b].double().cpu().numpy())
    finally:
        model.train(was_training)
    found = sum(len(t) for t in taus)
    advice = ("Calibrate on more series: LatentODEForecaster.fit(val_fraction=...) or val_df=, "
              "or a run with a larger data.val_fraction.")
    if found < LEAD_MIN_POINTS:
        # (a log line before: on sparse series, the very case the curve is for, forecasts
        # covered 0.75 of a nominal 0.9 with nothing to act on)
        warnings.warn(
            f"too few forecast points to calibrate on ({found}; a lead-time curve needs "
            f"{LEAD_MIN_POINTS}): forecast intervals keep the noise of points inside the "
            f"series, widening neither with lead time nor for short histories, and are likely "
            f"too narrow. {advice}", stacklevel=user_stacklevel())
        return base
    full = found >= bins * LEAD_MIN_POINTS
    if not full:  # fewer bins of LEAD_MIN_POINTS each (one: a level for every lead), not none
        log.info("calibrate_lead: %d forecast points, a lead-time curve of %d bin(s) instead "
                 "of %d. %s", found, found // LEAD_MIN_POINTS, bins, advice)
        bins = found // LEAD_MIN_POINTS
    tau, r2, s2, chan, hist = (np.concatenate(a) for a in (taus, r2s, s2s, chans, hists))
    e2 = np.concatenate(e2s) if e2s else np.zeros_like(r2)  # (0 where none is known)
    curve = _lead_curve(tau, r2, s2, e2, chan, base.array, bins)
    if curve is None:
        return base
    times, std, counts = curve
    out = NoiseCalibration(**{**asdict(base), "lead_times": times, "lead_std": std,
                              "lead_count": counts})
    # how much history: the curve's variance against the excess, per bin of history length
    expected = out.std_at(np.stack([tau] * len(base.std), 1))[np.arange(len(tau)), chan] ** 2
    # the history factor only from as many points as a full curve: from fewer, its bins
    # (some left out under LEAD_MIN_POINTS) put 0.36 on every history in a review's draw,
    # forecasts covering 0.66 for 0.9
    factors = _history_factors(hist, r2, s2, e2, expected) if full else None
    if factors is not None:
        out.history_counts, out.history_factor = factors
    return out


def _equal_count_bins(x: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Edges of ``bins`` bins of about equal counts over ``x`` (repeated edges merged) and each
    value's bin. On values on a grid a bin between two edges can still be empty."""
    edges = np.unique(np.quantile(x, np.linspace(0.0, 1.0, bins + 1)))
    which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, max(len(edges) - 2, 0))
    return edges, which


def _history_factors(hist: np.ndarray, r2: np.ndarray, s2: np.ndarray, e2: np.ndarray,
                     expected: np.ndarray, bins: int = HISTORY_BINS
                     ) -> tuple[list, list] | None:
    """Bins of equal counts over the number of times a series' history holds: mean count and
    ``mean(r^2 - s^2) / mean(expected)``, non-increasing in the count (more history, no more
    noise), within ``HISTORY_FACTOR_RANGE``. With measurement uncertainties (``e2`` not all
    0) the factor on ``expected`` that is likeliest beyond each point's ``e^2`` and the bin's
    mean ``s^2`` (:func:`likely_extra`). None when the histories hardly differ."""
    excess = r2 - s2
    edges, which = _equal_count_bins(hist, bins)
    if len(edges) < 3:
        return None
    counts, ratios, weights = [], [], []
    for k in range(len(edges) - 1):
        here = which == k
        if here.sum() < LEAD_MIN_POINTS:
            continue
        counts.append(float(hist[here].mean()))
        if (e2[here] > 0).any():
            ratios.append(float(likely_extra(r2[here], s2[here].mean() + e2[here],
                                             expected[here])))
        else:
            ratios.append(float(max(excess[here].mean(), 0.0)
                                / max(expected[here].mean(), 1e-300)))
        weights.append(float(here.sum()))
    if len(counts) < 2:
        return None
    falling = _increasing(-np.asarray(ratios), np.asarray(weights)) * -1
    low, high = HISTORY_FACTOR_RANGE
    return counts, np.clip(falling, low, high).tolist()


def _lead_curve(tau: np.ndarray, r2: np.ndarray, s2: np.ndarray, e2: np.ndarray,
                chan: np.ndarray, base: np.ndarray, bins: int
                ) -> tuple[list, list, list] | None:
    """Bins of equal counts over ``tau``: mean lead, the noise std per channel (excess
    variance ``mean(r^2 - s^2)``, pooled over channels where one has few points, floored at
    ``base``, made non-decreasing) and the count per bin. Where points carry measurement
    uncertainties (``e2`` > 0), the likeliest variance beyond each one's ``e^2`` and the
    mean ``s^2`` (:func:`likely_extra`) in place of the mean."""
    edges, which = _equal_count_bins(tau, bins)
    if len(edges) < 2:
        return None
    dims = len(base)
    # leads on a grid (daily data: 1, 2, 3...) can leave a bin between two edges empty: it is
    # left out (its NaN mean made the whole curve, and the history factors after it, NaN, and
    # forecasts then dropped the noise)
    filled = [k for k in range(len(edges) - 1) if (which == k).any()]

    def level(at: np.ndarray) -> float:
        if (e2[at] > 0).any():
            return float(likely_extra(r2[at], s2[at].mean() + e2[at]))
        return float((r2[at] - s2[at]).mean())

    var = np.empty((len(filled), dims))
    weights = np.zeros((len(filled), dims))
    times, counts = [], []
    for row, k in enumerate(filled):
        here = which == k
        times.append(float(tau[here].mean()))
        counts.append(int(here.sum()))
        pooled = level(here)
        for c in range(dims):
            mine = here & (chan == c)
            n = int(mine.sum())
            var[row, c] = level(mine) if n >= LEAD_MIN_POINTS else pooled
            weights[row, c] = max(n, 1)
    var = np.maximum(var, base[None] ** 2)
    for c in range(dims):
        var[:, c] = _increasing(var[:, c], weights[:, c])
    return times, np.sqrt(var).tolist(), counts


def _increasing(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The weighted least-squares non-decreasing fit of ``y`` (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [value, weight, length]
    for value, weight in zip(y.tolist(), w.tolist(), strict=True):
        blocks.append([value, weight, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            v2, w2, n2 = blocks.pop()
            v1, w1, n1 = blocks.pop()
            blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    return np.concatenate([np.full(n, v) for v, _, n in blocks])


@torch.no_grad()
def predictive_coverage(
    model: torch.nn.Module, batches: Iterable[Any], noise_stds: Mapping[str, Any],
    level: float = 0.9, n_samples: int = 100, seed: int = 0, subsets: Subsets | None = None,
) -> dict[str, float]:
    """Coverage of the central ``level`` posterior predictive interval on the held-out points
    (``target_mask & ~encoder_mask``) of ``batches``, pooled over batches, for each named noise:
    ``{name: std}`` with ``std`` a number, a per-channel sequence (model units) or None/0 (the
    paths alone). Every name is scored on the same sampled paths plus the same standard normal
    draws scaled by its std, so they differ by the noise only; batch ``k`` is sampled under seed
    ``seed * 1_000_003 + k``. A :class:`NoiseCalibration` as std gives each point the noise of
    its lead time (``std_at``). NaN when no point is held out. ``subsets``: the paths of a
    forecaster predicting with them (:func:`calibrate_noise`). Batches with measurement
    uncertainties (``batch.errors``): each value is covered by the interval of one
    measurement, its own ``e^2`` added to every noise named (None: the paths plus ``e``
    alone), except a calibration without ``error_rms`` (an older latentode's, whose noise
    counted them on average)."""
    level = check_level(level)
    device = next(model.parameters()).device
    scales = {name: std if isinstance(std, NoiseCalibration) or std is None
              else torch.as_tensor(np.asarray(std, dtype=np.float64))
              for name, std in noise_stds.items()}
    # a calibration of an older latentode counted the uncertainties in its noise on average:
    # each value's own is not added again
    counted = {name for name, std in noise_stds.items()
               if isinstance(std, NoiseCalibration) and not std.error_rms}
    any_noise = any(s is not None and (isinstance(s, NoiseCalibration) or bool((s > 0).any()))
                    for s in scales.values())
    was_training = model.training
    model.eval()
    hits = dict.fromkeys(noise_stds, 0)
    count = 0
    try:
        for index, batch in enumerate(batches):
            batch = batch.to(device)
            # (the draws come after the paths from the same stream: the paths are the same)
            scored, jitter = _paths(model, batch, n_samples, seed, index, device,
                                    any_noise or getattr(batch, "errors", None) is not None,
                                    subsets)
            pred = scored.pred
            mask = scored.target & ~scored.encoder
            c = 0
            for name, scale in scales.items():
                samples = pred
                if isinstance(scale, NoiseCalibration):
                    scale = point_noise(scale, scored)
                if name not in counted:  # a value's own uncertainty added
                    scale = observation_std(scale, scored)
                if jitter is not None and scale is not None and bool((scale > 0).any()):
                    samples = pred + scale.to(pred.device, pred.dtype) * jitter
                h, c = interval_hits(samples, scored.values, mask, level)
                hits[name] += h
            count += c
    finally:
        model.train(was_training)
    return {name: hits[name] / count if count else float("nan") for name in noise_stds}


def _observed(noise: torch.Tensor, scored: Scored, calibration: NoiseCalibration
              ) -> torch.Tensor:
    """:func:`observation_std` of a noise that is there, unless ``calibration`` (of an older
    latentode) counted the uncertainties in its noise already."""
    if not calibration.error_rms:
        return noise
    out = observation_std(noise, scored)
    assert out is not None
    return out


@torch.no_grad()
def _covered(pred: torch.Tensor, std: torch.Tensor, jitter: torch.Tensor, values: np.ndarray,
             level: float) -> np.ndarray:
    """Per point, whether ``values`` lie in the central ``level`` interval of the paths plus
    ``std`` times the draws ``jitter`` (summed in the paths' dtype, as ``predictive_coverage``
    does, so the numbers agree)."""
    samples = (pred + std.to(pred.device, pred.dtype) * jitter).double().cpu().numpy()
    lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return (values >= lo) & (values <= hi)


def forecast_coverage_breakdown(
    model: torch.nn.Module, batches: Iterable[Any], calibration: NoiseCalibration,
    channels: list[str], level: float = 0.9, n_samples: int = 100, seed: int = 0,
    subsets: Subsets | None = None,
) -> dict[str, Any]:
    """Coverage of the central ``level`` interval on the held-out points of ``batches`` (e.g.
    :func:`lead_task` batches: forecasts), with ``calibration``'s noise at each point's lead:
    pooled (``"all"``), per channel, per lead bin (edges: 0, the curve's mean leads, beyond;
    model units) and per third of the series by history length (``"history"``: the times
    the encoder saw; ``"<=12"``, ``"<=30"``, ``">30"``), and pooled with the
    in-series noise at every lead (``"all_constant"``), all from one pass with the draws of
    :func:`predictive_coverage` (the same numbers): ``{"all": c, "all_constant": c,
    "channel": {name: c}, "lead": {"<=0.23": c, ...}, "history": {"<=12": c, ...}}``. A
    pooled number can hide a channel, a horizon or a history length far off: the noise is
    calibrated over series cut at 20-80% of their spans, and how wrong a forecast is depends
    on how much of its series came before (damped oscillators, three models: 0.78-0.85 for 0.9
    on series cut at 25% of their spans, 0.86-0.95 at 75%; ``scripts/study_forecast_cut.py``,
    docs/results.md)."""
    level = check_level(level)
    device = next(model.parameters()).device
    edges = np.asarray([0.0, *calibration.lead_times, np.inf])
    covered, chans, bins, histories, series = [], [], [], [], []
    constant_hits = 0
    constant = torch.as_tensor(calibration.array)
    was_training = model.training
    model.eval()
    try:
        for index, batch in enumerate(batches):
            batch = batch.to(device)
            scored, jitter = _paths(model, batch, n_samples, seed, index, device, True,
                                    subsets)
            assert jitter is not None  # asked for
            pred, values = scored.pred, scored.values.double().cpu().numpy()
            mask = (scored.target & ~scored.encoder).cpu().numpy()

            constant_hits += int(np.count_nonzero(
                _covered(pred, _observed(constant, scored, calibration), jitter, values, level)
                & mask))
            inside = _covered(pred, _observed(point_noise(calibration, scored), scored,
                                              calibration), jitter, values, level)
            leads = scored.leads.double().cpu().numpy()
            which = np.clip(np.searchsorted(edges, leads, side="left") - 1, 0, len(edges) - 2)
            b, _, c = np.nonzero(mask)
            covered.append(inside[mask])
            chans.append(c)
            bins.append(which[mask])
            seen = scored.history.cpu().numpy()
            histories.append(seen[b])
            series.append(seen[mask.any((1, 2))])
    finally:
        model.train(was_training)
    hit, chan, lead_bin, history, lengths = (
        np.concatenate(a) if a else np.zeros(0, dtype=np.int64)
        for a in (covered, chans, bins, histories, series))

    def ratio(where: np.ndarray) -> float:
        return float(hit[where].mean()) if where.any() else float("nan")

    labels = [f"<={edges[k + 1]:.3g}" if np.isfinite(edges[k + 1]) else f">{edges[k]:.3g}"
              for k in range(len(edges) - 1)]
    return {
        "all": ratio(np.ones(len(hit), dtype=bool)),
        "all_constant": float(constant_hits / len(hit)) if len(hit) else float("nan"),
        "channel": {name: ratio(chan == c) for c, name in enumerate(channels)},
        "lead": {label: ratio(lead_bin == k) for k, label in enumerate(labels)},
        "history": _by_history(hit, history, lengths),
    }


def _by_history(hit: np.ndarray, history: np.ndarray, lengths: np.ndarray, groups: int = 3
                ) -> dict[str, float]:
    """Coverage of the points (``hit``, their series' ``history`` lengths) per group of about
    equal numbers of series by history length (``lengths``: one per series; whole numbers of
    times: a group ends at a length, ``"<=12"``, the last ``">12"``; thirds of the series, not
    of the points, so that a few short series are not lost among the points of long ones);
    fewer groups where the lengths hardly differ (one: ``"<=30"``, the longest)."""
    if not len(hit):
        return {}
    top = history.max()
    cuts = np.quantile(lengths, np.linspace(0, 1, groups + 1)[1:-1], method="lower")
    # a cut at the longest length would leave nothing above it: a short minority (one series
    # of 1 among five of 30) then ends its own group at the next length down
    below = lengths[lengths < top]
    cuts = np.where(cuts >= top, below.max() if len(below) else top, cuts)
    cuts = np.unique(cuts[cuts < top])
    which = np.searchsorted(cuts, history, side="left")
    labels = [f"<={int(c)}" for c in cuts] + [f">{int(cuts[-1])}" if len(cuts) else
                                              f"<={int(top)}"]
    return {label: float(hit[which == k].mean()) for k, label in enumerate(labels)
            if (which == k).any()}


__all__ = ["CALIBRATION_MAX_SERIES", "NoiseCalibration", "calibrate_lead", "calibrate_noise",
           "calibration_batches", "forecast_coverage_breakdown", "format_obs_std", "lead_task",
           "model_obs_std", "obs_std_array", "predictive_coverage"]
