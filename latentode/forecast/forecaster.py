"""``LatentODEForecaster``: a DataFrame in, forecasts, imputations and sample paths out.

    from latentode import LatentODEForecaster
    model = LatentODEForecaster({"model.latents": 8, "trainer.max_epochs": 50})
    model.fit(train_df, id_col="series_id", time_col="time")      # wide, NaN = not observed
    pred = model.predict(df, horizon=2.0, n=20)                    # id, time, channel, mean, q..
    filled = model.impute(df)                                      # every NaN filled
    model.save("forecaster/"); model = LatentODEForecaster.load("forecaster/")

Training is the command line's: the config is ``conf/train.yaml`` composed with Hydra's compose
API plus ``config_overrides`` (an unknown key is an error), with the own-data recipe of
``experiment=csv`` unless they choose otherwise (batches of 16, 100 epochs, and the encoder
walking each series through its own times, ``model.encoder.schedule=series``, as prediction does),
and ``fit`` builds the same ``LatentODEDataModule``, model and ``LatentODELightning`` as
``latentode-train`` (the helpers of ``latentode.cli.train``) and trains them with a Lightning
``Trainer`` (progress bar included).
The data settings are ``conf/data/csv.yaml``'s (splits, scaling; batch size 16 as above), the
file itself aside; the task (what the encoder sees in training) is its ``data.task``,
:class:`latentode.data.Mixed`: per series and batch either a random 50-100% of its observed
times or its beginning cut at 20-80% of its span, so that short series hold points out too and
one model learns to fill gaps and to forecast (``{"data.task.extrapolation_share": 0}`` for
interpolation only).

How predictions are made:

* Each series is conditioned on its observed history in ``df`` (every row with any observed
  channel) as if it were alone: the encoder walks it through its own observations and its
  samples are seeded per series from ``seed`` and the series id, so the same call gives the
  same frame. Series are solved ``batch_size`` at a time (default 64; :mod:`.draw`), which
  shares only the decoder's adaptive steps: adding or removing other series moves an answer
  within the solver's tolerance (measured: at most 4e-4 of the median 90% interval width,
  7.5e-3 for a model trained on windows), and ``batch_size=1`` answers each series exactly
  alone (2-7x slower for forecasts on a CPU, ``scripts/bench_forecast.py``). A series the
  solver cannot answer is NaN, with a warning naming it.
* The latent state ``z0`` lives at the series' first observation, as in training with the csv
  data config's ``time_origin: series`` (each series' path starts at its own first time, so
  series on one absolute clock are fine). Times **before** a series' first observation are
  supported: a latent ODE integrates its paths backwards from ``z0`` there (the same ``z0``
  samples), so no answer depends on which other times are asked (before, asking an earlier
  time moved ``z0`` back to it and every answer of the series with it, by up to 2.6 interval
  widths). The baselines still start their grid at the earliest asked time (an unobserved
  point the encoder evolves back to). A latent ODE trained with
  ``z0_at="first_target"`` (the paper's hopper presets) places ``z0`` at the first requested
  time instead, as in its training.
* Any time can be asked for: predictions come from the ODE solution at those times (dense output
  of the adaptive solver; a fixed-step solver with ``step_size=null`` takes one step per output
  interval, so there the answer depends on which times are asked for).
* ``mean`` is the posterior mean of the decoded path; the quantile columns are quantiles of the
  posterior *predictive* distribution of an observation: each sampled path plus Gaussian noise,
  the mixture's quantiles computed exactly for the sampled paths (:mod:`.quantiles`).
  Values are in the data's units, times in the data's type (datetimes in, datetimes out), channels
  by their names.

The predictive noise (``noise=``) is by default the *calibrated* one: per channel, the noise std
that makes the residuals of held-out points match the predictive spread (epistemic: spread of
the sample paths, plus aleatoric: the noise), never below the model's ``obs_std``; see
``latentode.forecast.calibration``. Past a series' last observation (and before its first) the
noise grows with the lead time, along a curve calibrated on forecasts of cut validation series.
The model's own ``obs_std`` is a fixed training choice (0.01
in standardised units) and gives far too narrow intervals; ``noise="model"`` still uses it,
``noise=False`` gives quantiles of the paths alone. ``fit`` calibrates after training on
``val_df`` or the series ``val_fraction`` holds out (else on the training series), each point
held out once over five passes while the encoder sees the rest of its series
(``latentode.data.Folds``), ``from_run`` on the run's validation split (else its training split),
``from_model`` (a model trained in your own loop) on its ``calibration_data`` (else its training
series); ``save`` writes the result to ``calibration.json`` and ``load`` reads it back (a
directory saved without one, by an older latentode, falls back to ``obs_std``).
``forecaster.calibration`` holds it.

Trained with measurement uncertainties (``uncertainty_cols``), the noise is calibrated beyond
them (each held-out value's known ``err^2`` left out: it is the instrument's, not the
model's), so the quantiles are of the *quantity itself*; ``score`` holds each hidden value to
the interval of one measurement, the mixture with its own ``err^2`` added. For a new
measurement of known ``err``, widen by it the same way.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import tempfile
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from latentode.cli import load_settings
from latentode.data import ChannelScaler, Interpolation, IrregularDataset, from_dataframe
from latentode.data.frame import iso_separator, iso_times
from latentode.data.labels import check_label_head, label_head_size
from latentode.data.scaling import check_channels, check_representable
from latentode.data.windows import rescale_for_window, window_in_model_units
from latentode.models import LatentODE
from latentode.solvers import SolverError
from latentode.utils.stack import user_stacklevel

from .adopt import checked_model_config, model_dtype, on_spec_clock, scaled
from .calibration import (
    NoiseCalibration,
    beyond_known,
    calibrate_forecaster,
    calibration_warnings,
    format_obs_std,
    model_obs_std,
    obs_std_array,
    run_calibration_warnings,
    series_factor_applies,
    subsets_candidate,
    subsets_mode,
)
from .config import compose_train_config, override_list, prune_callbacks
from .draw import Job, WalkGrid, batch_mode, batches, make_jobs, solve
from .quantiles import mixture_quantiles
from .requests import Times, last_observed_row, last_window, requested_times
from .spec import (
    DataSpec,
    check_quantiles,
    concat_datasets,
    longest_span,
    quantile_name,
    value_range,
)
from .subsets import Subsets

log = logging.getLogger(__name__)

CONFIG_FILE, WEIGHTS_FILE, TRANSFORMS_FILE = "config.yaml", "weights.pt", "transforms.json"
CALIBRATION_FILE = "calibration.json"
CALIBRATION_SAMPLES, CALIBRATION_SEED = 100, 0  # posterior samples and seed of the calibration
CALIBRATION_HOLDOUT_MIN = 20  # series fit needs to hold some out for calibration
NOISE_OPTIONS = (True, False, "calibrated", "model", "none")

_QUIET = (r".*treespec, LeafSpec", r".*does not have many workers which may be a bottleneck")


def _history_chunks(t: np.ndarray, observed: np.ndarray, want: np.ndarray,
                    window: float | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(asked positions, history mask)`` pairs: which observations condition which asked
    times. Without training windows, all of them condition every time. A model trained on
    windows (``data.window``) is conditioned as it was trained: times after the last
    observation on the last window before them, times within the history on the window they
    fall in (windows of the training's span from the series' first time), each with its own
    ``z0``."""
    everything = [(np.arange(len(want)), observed)]
    if window is None or not observed.any():
        return everything
    t0, last = float(t[0]), float(t[observed][-1])
    future = want > last
    chunks = []
    if future.any():
        recent = last_window(t, observed, window)  # never empty: it holds the last one
        chunks.append((np.flatnonzero(future), recent))
    k = np.maximum(0, np.floor((want - t0) / window)).astype(np.int64)
    for w in np.unique(k[~future]):
        idx = np.flatnonzero(~future & (k == w))
        inside = observed & (t >= t0 + w * window) & (t < t0 + (w + 1) * window)
        if not inside.any():  # a window without observations: the nearest ones around it
            inside = observed & (t >= t0 + (w - 1) * window) & (t < t0 + (w + 2) * window)
        chunks.append((idx, inside if inside.any() else observed))
    return chunks


def _whole(name: str, value: Any, least: int) -> int:
    """``value`` as an int of at least ``least`` (2.0 is 2), else a ValueError naming it:
    1.5, True, "64" and None are refused rather than turned into 1 or a TypeError."""
    whole = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)) and float(value).is_integer() and value >= least
    if not whole:
        kind = "positive" if least == 1 else "non-negative"
        raise ValueError(f"{name} must be a {kind} integer, got {value!r}.")
    return int(value)


def _series_seed(seed: int, key: Any) -> int:
    """A per-series seed from ``seed`` and the series id (independent of the other series)."""
    plain = key.item() if isinstance(key, np.generic) else key
    entropy = [int(seed), zlib.crc32(repr(plain).encode())]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] % (2**63 - 1))


def _calibrated(noise: bool | str) -> bool:
    """Whether ``noise=`` names the calibrated noise (``True`` or ``"calibrated"``)."""
    return noise is True or str(noise).lower() == "calibrated"


@dataclass
class _Request:
    """One requested series while it waits for its jobs to be solved."""

    index: int  # the series' position in the dataset
    raw: Times  # the asked times, in the data's type
    chunks: list  # (asked positions, history mask) per job (_history_chunks)
    jobs: list[int]  # positions of its jobs in the pending job list
    gen: torch.Generator  # its own random stream (z0 draws, then noise)
    total: int = 0  # times answered: the asked ones, then the history's own (0: the asked)

    def paths(self, answers: list, std: np.ndarray | None, noisy: bool, draws: int = 1
              ) -> tuple[np.ndarray, np.ndarray | None]:
        """``(paths (S, m, D), noisy paths or None)`` in model units from its jobs' answers;
        ``noisy`` adds N(0, std^2) drawn from its stream, ``std`` ``(m, D)`` per asked time (the
        paths themselves when ``std`` is None: no noise to add). A deterministic model's one
        path gets ``draws`` noisy copies."""
        paths = out = None
        for (idx, _), j in zip(self.chunks, self.jobs, strict=True):
            pred = answers[j][0].double().numpy()  # (S, k, D)
            if paths is None:
                paths = np.empty((pred.shape[0], self.total or len(self.raw), pred.shape[2]))
            paths[:, idx] = pred
            if noisy:
                if std is not None and pred.shape[0] == 1 < draws:
                    pred = np.repeat(pred, draws, 0)
                if out is None:
                    out = np.empty((pred.shape[0], *paths.shape[1:]))
                out[:, idx] = pred if std is None else pred + std[idx] * torch.randn(
                    pred.shape, generator=self.gen, dtype=torch.float64).numpy()
        assert paths is not None
        return paths, out


def _answer(model: nn.Module, jobs: list[Job], pending: list[_Request], mode: str,
            num_samples: int, batch_size: int, failed: dict[int, SolverError],
            subsets: Subsets | None = None) -> list:
    """Each job's ``(paths (S, k, D), logits or None)``: in batches where the model allows
    (:func:`.draw.batch_mode`), else one at a time; a model drawing its own noise (the
    RNN-VAE) draws it from its series' stream, chunk after chunk. A job the solver cannot
    answer (asked absurdly far ahead, say) is None, its error in ``failed``; a batch that fails
    is answered job by job, so only the jobs that fail alone go unanswered. ``subsets``: see
    :func:`.draw.solve`."""
    answers: list = [None] * len(jobs)

    def alone(j: int) -> Any:
        try:
            return solve(model, [jobs[j]], num_samples, subsets)[0]
        except SolverError as error:
            failed[j] = error
            return None

    if mode == "batched" and batch_size > 1:
        copies = 1 if subsets is None else subsets.count(num_samples)
        for group in batches(jobs, batch_size, num_samples, copies):
            try:
                found = solve(model, [jobs[j] for j in group], num_samples, subsets)
            except SolverError:
                found = [alone(j) for j in group]
            for j, answer in zip(group, found, strict=True):
                answers[j] = answer
        return answers
    for request in pending:
        with torch.random.fork_rng(devices=[]):
            if mode == "alone":
                torch.manual_seed(int(torch.randint(2**62, (1,), generator=request.gen)))
            for j in request.jobs:
                answers[j] = alone(j)
    return answers


def _fill_unanswered(answers: list, jobs: list[Job], failed: dict[int, SolverError],
                     num_samples: int, model: nn.Module, want_logits: bool) -> None:
    """NaN answers for the failed jobs, shaped like the others (paths, or label logits)."""
    done = [a for a in answers if a is not None]
    samples = done[0][0].shape[0] if done else num_samples
    for j in failed:
        k, d = len(jobs[j].where), jobs[j].hist_v.shape[1]
        logits = None
        if want_logits:
            logits = torch.full((samples, max(1, int(getattr(model, "n_labels", 1)))), np.nan)
        answers[j] = (torch.full((samples, k, d), np.nan, dtype=torch.float64), logits)


def _warn_unanswered(ids: list, error: SolverError) -> None:
    reason = str(error).split(". ")[0]
    warnings.warn(
        f"{len(ids)} series could not be answered and are NaN: {ids[:10]}"
        f"{' ...' if len(ids) > 10 else ''} (the solver: {type(error).__name__}, {reason}). "
        "Times far beyond what the model was trained on are the usual cause: ask nearer "
        "times, or allow the solver more steps (forecaster.model.solver['max_steps'] = ...).",
        UserWarning, stacklevel=user_stacklevel())


class LatentODEForecaster:
    """Fit a latent ODE on a DataFrame of irregular series; forecast, impute, sample, plot.

    Args:
        config_overrides: Hydra overrides of ``conf/train.yaml``: a dict (``{"model.latents": 8,
            "trainer.max_epochs": 5}``) or ``key=value`` strings. Unknown keys are errors (Hydra's
            ``ConfigCompositionException``), raised here rather than in ``fit``, and so are
            settings nothing reads (``+sede``; a callback's settings without selecting it), as
            on the command line.
    """

    def __init__(self, config_overrides: Mapping[str, Any] | Sequence[str] | None = None):
        self.config_overrides = override_list(config_overrides)
        self._composed: DictConfig | None = compose_train_config(self.config_overrides)
        from latentode.cli.options import refuse_unread_settings

        # "+sede": 3 or "+callbacks.early_stopping.patience": 3 (not selected) trained without
        # a word here, where latentode-train refuses them
        refuse_unread_settings(self._composed)
        self.cfg: DictConfig = copy.deepcopy(self._composed)  # after fit: the config it ran
        self.model: nn.Module | None = None
        self.spec: DataSpec | None = None
        self.module: Any = None  # the LightningModule of the last fit
        self.trainer: Any = None  # and its Trainer (for metrics, callbacks)
        self.calibration: NoiseCalibration | None = None  # the predictive noise (model units)

    def __repr__(self) -> str:
        state = "unfitted" if self.spec is None else (
            f"channels={self.spec.channels}, time={self.spec.time.kind}")
        return f"LatentODEForecaster({state})"

    # ================================================================================== fit
    def fit(
        self,
        train_df: pd.DataFrame,
        id_col: str = "series_id",
        time_col: str = "time",
        value_cols: Sequence[str] | None = None,
        val_df: pd.DataFrame | None = None,
        *,
        channel_col: str | None = None,
        value_col: str | None = None,
        time_unit: str | None = None,
        time_scale: float | None = None,
        output_dir: str | Path | None = None,
        ignore_cols: Sequence[str] | None = None,
        label_col: str | None = None,
        log_channels: Sequence[str] | None = None,
        val_fraction: float = 0.1,
        subsets: bool | str = "auto",
        uncertainty_cols: Mapping[str, str] | None = None,
        uncertainty_col: str | None = None,
    ) -> LatentODEForecaster:
        """Train on ``train_df`` (every series; ``val_df``'s series, if given, for validation).

        The frames take the formats of ``latentode.data.from_dataframe``: wide (one column per
        channel, NaN = not observed, ``value_cols`` or every numeric column) or tidy
        (``channel_col=`` and ``value_col=``); times numbers or datetimes (``time_unit``, default
        hours, sets the model's time unit for datetimes; ``time_scale``, in those units, the
        model's unit of time, e.g. 48 for 48-hour stays: see ``from_dataframe``). ``val_df`` and
        every later frame are read with the training time scale and must have the same
        channels. ``output_dir`` (default: the config's ``paths.output_dir``, null) receives
        the config's checkpoints and logs (``metrics.csv``) as a ``latentode-train`` run dir
        would; without one nothing is written. The weights kept are those of the last epoch.
        ``ignore_cols``: columns that are not channels (per-series covariates such as age),
        left out of the inferred channels here and in later frames. ``label_col``: one label
        per series (e.g. in-hospital death, 0/1, NaN unknown) learnt by a classifier on ``z0``
        beside the series (``model.n_labels`` is set from the labels unless overridden);
        :meth:`predict_proba` then gives each series' probabilities. ``log_channels``: channels
        positive by nature, modelled as ``log(value)`` (answers, quantiles and noise positive
        and multiplicative there; the config's ``data.log_channels``).
        Without ``val_df``, ``val_fraction`` of the series (seeded; at least
        ``CALIBRATION_HOLDOUT_MIN`` series in all, else none, with a warning) are held out of
        training for validation and calibration: the noise calibrated on series the model
        trained on comes out narrow (0.85 coverage for 0.9 in a user pass); fewer than 10
        held out warn too (their coverage varied 0.45-0.98 for 0.9 in a measurement: raise
        ``val_fraction`` or pass ``val_df``). ``val_fraction=0`` trains on every series.
        After training the predictive noise is calibrated on the validation series (without
        any: on the training series) and kept in ``self.calibration`` (see the module
        docstring). ``subsets``: whether ``predict`` and ``impute`` condition each posterior
        sample on a random subset of a series' points drawn as the training task drew the
        encoder's (``"auto"``: when that predicts points inside a series clearly better than
        conditioning on all of them; True, False: always, never; :mod:`.subsets`).
        ``uncertainty_cols`` (wide: ``{channel: column}``) or ``uncertainty_col`` (tidy): each
        value's measurement uncertainty, one standard deviation in the channel's units
        (``from_dataframe``): training weighs each point by ``1 / (obs_std^2 + error^2)``
        relative to its series' others (``model.error_weighting``), so noisy points pull the
        fit less, and the encoder reads each value with confidence ``1 / (1 + (err /
        scale)^2)`` in model units relative to its series' best (``model.encoder_error_scale``,
        1.0; null: values alike);
        ``val_df``'s are read too, and so are those of histories given to :meth:`predict`,
        :meth:`impute`, :meth:`sample` and :meth:`score` (a history without the columns is
        read as exact, with a warning; with ``encoder_error_scale=null`` they are passed
        over).
        Returns ``self``.
        """
        from hydra.utils import instantiate

        from latentode.cli.train import (
            build_group,
            build_model,
            build_module,
            drop_adverts,
            learned_little_report,
            setup_runtime,
        )

        subsets_mode(subsets)  # a wrong value refused before training, not after
        frame_columns = [str(c) for c in train_df.columns]  # (ignore_cols included)
        if self._composed is None:  # loaded: compose afresh for a new fit
            self._composed = compose_train_config(self.config_overrides)
        cfg = copy.deepcopy(self._composed)
        if log_channels is not None:
            with open_dict(cfg):
                cfg.data.log_channels = [log_channels] if isinstance(log_channels, str) else [
                    str(c) for c in log_channels]
        if ignore_cols:
            if value_cols is not None or channel_col is not None:
                raise ValueError("ignore_cols= is for inferred wide channels; with value_cols= "
                                 "or tidy data name the channels instead.")
            missing = [c for c in ignore_cols if c not in train_df.columns]
            if missing:
                raise ValueError(f"ignore_cols {missing} are not columns of train_df.")
            # an uncertainty column listed too is read as one (an older warning advised
            # ignore_cols for them): not a channel either way, but not dropped
            kept = {str(c) for c in [*(uncertainty_cols or {}).values(), uncertainty_col]
                    if c is not None}
            train_df = train_df.drop(columns=[c for c in ignore_cols if str(c) not in kept])
        train = from_dataframe(train_df, id_col, time_col, value_cols, channel_col=channel_col,
                               value_col=value_col, time_unit=time_unit,
                               time_scale=time_scale, label_col=label_col,
                               label_per="series" if label_col is not None else "auto",
                               uncertainty_cols=uncertainty_cols,
                               uncertainty_col=uncertainty_col)
        window = cfg.data.get("window")
        window_span = np.inf
        if window is not None:  # the time unit for the window, as the data module chooses it;
            train = rescale_for_window(train, window)  # and the window is how far it saw
            window_span = window_in_model_units(train.time_transform, window)
        if label_col is not None:
            assert train.labels is not None  # from_dataframe's with label_col
            _set_label_head(cfg, train.labels, label_col)
        if (ignore_cols or label_col is not None) and channel_col is None:
            value_cols = list(train.channels)  # later frames keep those columns: name channels
        spec = DataSpec(
            id_col=id_col, time_col=time_col, channels=list(train.channels),
            time=train.time_transform,
            value_cols=None if value_cols is None or channel_col is not None
            else [str(c) for c in value_cols],
            channel_col=channel_col, value_col=value_col, time_unit=time_unit,
            train_span=min(longest_span(train), window_span), label_names=train.label_names,
            train_columns=None if channel_col is not None else frame_columns,
            uncertainty_cols=None if uncertainty_cols is None else {
                str(k): v for k, v in uncertainty_cols.items()},
            uncertainty_col=uncertainty_col,
        )
        spec.check_output_names()  # before training
        data, split = train, ["train"] * len(train)
        if val_df is not None:
            _warn_missing_uncertainties(spec, val_df, "val_df")
            val = spec.dataset(val_df, "val_df", errors=True)
            data, split = concat_datasets(train, val), split + ["val"] * len(val)
        elif val_fraction and len(train) >= CALIBRATION_HOLDOUT_MIN:
            # series the model never trains on, for validation and an honest calibration
            held = set(np.random.default_rng(0).permutation(len(train))[
                : max(2, round(val_fraction * len(train)))].tolist())
            split = ["val" if i in held else "train" for i in range(len(train))]
        elif val_fraction:  # too few series to hold some out (0: the caller's choice)
            warnings.warn(
                f"fit calibrates the predictive noise on the training series ({len(train)} "
                f"series, no val_df): its intervals come out narrow (a user pass measured 0.85 "
                f"coverage for 0.9). Pass val_df=, or val_fraction= with at least "
                f"{CALIBRATION_HOLDOUT_MIN} series.", stacklevel=2)
        has_val = "val" in split

        out_dir = output_dir if output_dir is not None else cfg.paths.get("output_dir")
        with open_dict(cfg):
            cfg.paths.output_dir = None if out_dir is None else str(Path(out_dir).resolve())
            cfg.data.dataset = None  # the frames, not a named source
        setup_runtime(cfg)
        datamodule = instantiate(cfg.data, _partial_=True)(dataset=data, split=split)
        datamodule.setup("fit")
        model = build_model(cfg, datamodule)
        subsets_candidate(model, datamodule.task, subsets)  # what cannot work, before training
        module = build_module(cfg, model, datamodule)

        drop_adverts()
        prune_callbacks(cfg, on_disk=out_dir is not None, has_val=has_val)
        callbacks = build_group(cfg.get("callbacks"))
        loggers = build_group(cfg.get("logger"))
        extra: dict[str, Any] = {}
        if not has_val:
            extra.update(limit_val_batches=0, num_sanity_val_steps=0)
        with tempfile.TemporaryDirectory(prefix="latentode-fit-") as scratch, \
                warnings.catch_warnings():
            for pattern in _QUIET:
                warnings.filterwarnings("ignore", message=pattern)
            trainer = instantiate(
                cfg.trainer, callbacks=callbacks, logger=loggers or False,
                enable_checkpointing=any("Checkpoint" in type(c).__name__ for c in callbacks),
                default_root_dir=cfg.paths.output_dir or scratch, **extra,
            )
            for logger in trainer.loggers:
                logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
            trainer.fit(module, datamodule=datamodule)
        report = learned_little_report(trainer, module, datamodule)
        if report is not None:
            said, epochs, asked = report
            todo = (f"training stopped after {epochs} of {asked} epochs (early stopping, "
                    "max_steps or max_time): fit again with another seed or a longer patience"
                    if epochs < asked else
                    f"fit longer (config_overrides trainer.max_epochs="
                    f"{max(2 * max(epochs, 1), asked)}) or with another seed")
            warnings.warn(f"{said}. After {epochs} epochs: {todo}.", stacklevel=user_stacklevel())

        scaler = datamodule.scaler
        if scaler is not None:
            spec.mean = [float(v) for v in scaler.mean]
            spec.scale = [float(v) for v in scaler.scale]
            spec.log = _log_flags(scaler)
        spec.value_range = value_range(datamodule.splits["train"])
        self.cfg, self.spec, self.module, self.trainer = cfg, spec, module, trainer
        self.model = model.cpu().eval()
        advice = ({"val": ("val_df", "Pass more series in val_df.")} if val_df is not None else
                  {"val": (f"held out of training by val_fraction={val_fraction}",
                           "Raise val_fraction, or pass val_df.")})
        self.calibration, chosen = _calibrate(self.model, datamodule, advice, subsets=subsets)
        spec.subsets = None if chosen is None else chosen.to_json()
        return self

    # ============================================================================ loading
    @classmethod
    def from_run(cls, ckpt_path: str | Path, overrides: Sequence[str] | None = None,
                 subsets: bool | str = "auto") -> LatentODEForecaster:
        """A forecaster from a ``latentode-train`` checkpoint (or its run directory: its
        ``checkpoints/last.ckpt``): the run's ``.hydra/config.yaml``
        rebuilds its data (for the time transform and the scaler fitted on its training split)
        and model; the checkpoint's weights are loaded with ``weights_only=True``. Frames given
        to it use the training data's id, time and channel columns. The predictive noise is
        calibrated on the run's validation split (its training split when it has none), as
        ``latentode-eval`` does by default (``coverage.held_out=folds``): ``CALIBRATION_FOLDS``
        passes of ``Folds`` over at most ``CALIBRATION_MAX_SERIES`` series, each with
        ``CALIBRATION_SAMPLES`` posterior samples, on each series' own clock; a model that
        predicts clearly worse from four fifths of a series than at its training task's
        density is warned about (``density_warning``). ``subsets``: whether ``predict`` and
        ``impute`` condition each posterior sample on a random subset of a series' points drawn
        as the run's training task drew the encoder's: ``"auto"`` when the model predicts
        clearly worse from four fifths of a series and subsets predict better there (the
        quick start's model: held-out rms 0.27 -> 0.105, model units), True always, False never
        (:mod:`latentode.forecast.subsets`)."""
        from latentode.cli.runs import load_run

        subsets_mode(subsets)  # refused before the run is rebuilt

        def prepare(cfg: DictConfig, config_path: Path) -> None:
            with open_dict(cfg):
                cfg.paths.output_dir = str(config_path.parent.parent)  # the run dir

        # the run's own data, rebuilt for its transforms: what it warns about (duplicates,
        # covariates...) was said at training time and is not about the frames to predict
        run = load_run(ckpt_path, list(overrides or []), prepare=prepare, quiet_rebuild=True,
                       use="its scaler, time transform and noise calibration")
        cfg, model, datamodule = run.cfg, run.model, run.datamodule
        walk = None
        if OmegaConf.select(cfg, "model.encoder.schedule", default=None) == "union":
            walk = _union_walk_grid(cfg, model, datamodule)
        ds: IrregularDataset = datamodule.dataset
        scaler = datamodule.scaler
        # a run trained on a tidy file (one row per observation) reads tidy frames
        channel_col = OmegaConf.select(cfg, "data.dataset.channel_col", default=None)
        value_col = OmegaConf.select(cfg, "data.dataset.value_col", default=None)
        tidy = channel_col is not None and value_col is not None
        spec = DataSpec(
            id_col=ds.id_col, time_col=ds.time_col, channels=list(ds.channels),
            time=ds.time_transform, value_cols=None if tidy else list(ds.channels),
            channel_col=channel_col if tidy else None, value_col=value_col if tidy else None,
            time_unit=ds.time_transform.unit,
            mean=None if scaler is None else [float(v) for v in scaler.mean],
            scale=None if scaler is None else [float(v) for v in scaler.scale],
            train_span=longest_span(datamodule.splits["train"]), label_names=ds.label_names,
            log=None if scaler is None else _log_flags(scaler),
            walk_grid=None if walk is None else [float(v) for v in walk.times],
            walk_origin="batch" if walk is None else walk.origin,
            value_range=value_range(datamodule.splits["train"]),
            uncertainty_cols=None if tidy else errors_read(ds),
            uncertainty_col=OmegaConf.select(cfg, "data.dataset.uncertainty_col", default=None)
            if tidy else None,
        )
        calibration, chosen = _calibrate(model.cpu().eval(), datamodule, run=True,
                                         subsets=subsets)
        spec.subsets = None if chosen is None else chosen.to_json()
        return cls._assemble(cfg, model, spec, calibration)

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        dataset: IrregularDataset,
        scaler: ChannelScaler | None = None,
        *,
        calibration_data: IrregularDataset | pd.DataFrame | None = None,
        task: Any = None,
        batch_size: int = 50,
        model_config: Mapping[str, Any] | None = None,
        time_origin: str = "batch",
        channel_col: str | None = None,
        value_col: str | None = None,
        subsets: Any = None,
        uncertainty_col: str | None = None,
    ) -> LatentODEForecaster:
        """A forecaster around a model trained in your own loop (``latentode.models``' models:
        README, Models), so that ``predict``, ``impute``, ``sample``, ``plot`` and calibrated
        intervals answer in your data's units, time type and channel names.

        Args:
            model: the trained model. The forecaster keeps a CPU copy in eval mode: your
                model stays where it is, in its mode, and later training of it does not reach
                the forecaster (whose noise was calibrated for these weights).
            dataset: the data the model was trained on, in your units, before any
                ``scaler.apply`` (what ``load_dataset``, ``from_dataframe`` and ``.subset``
                return): its id, time and channel names, its time transform (model times) and
                its longest series' span (forecasts asked further ahead warn). Frames given to
                the forecaster are wide, with these columns (``dataset.to_dataframe()``'s
                format), or tidy with ``channel_col`` and ``value_col``. A dataset cut into
                windows (``split_windows``) is not supported: the forecaster would condition
                on whole series, not on windows as in training (use
                ``LatentODEForecaster.fit`` with ``data.window``).
            scaler: the fitted ``ChannelScaler`` whose ``apply`` made the training values
                (``log_channels`` included); None when the model saw ``dataset``'s values as
                they are.
            calibration_data: series to calibrate the predictive noise on, in your units
                (an ``IrregularDataset`` with the training channels, or a DataFrame in the
                format above): held-out series, e.g. ``ds.subset(val_idx)``, give honest
                intervals. None: ``dataset`` itself, with a warning, as ``fit`` warns without
                held-out series (on training series the intervals come out narrow).
            task: which points of each calibration series the encoder sees
                (``calibrate_noise`` scores the others; a ``Mixed`` task counts by its
                interpolation part). Default: five passes of ``latentode.data.Folds``, each
                point held out once while the encoder sees the other four fifths of its
                series, as ``fit`` and ``from_run`` calibrate (``predict`` conditions on all
                of a series' points). The forecast curve over lead time is calibrated on the
                same series cut at random points, as for ``fit`` and ``from_run``.
            batch_size: calibration series per batch.
            model_config: how to rebuild the model, Hydra style (``{"_target_":
                "latentode.models.LatentODE", "input_dim": 1, "latents": 8}``; ``input_dim``
                may be left out), so that ``save`` and ``load`` work; checked here to build a
                model with the same modules, options and weight shapes. Without it the
                forecaster predicts but does not save.
            time_origin: the clock the model was trained on: ``"batch"`` (``Collator``'s and
                ``LatentODEDataModule``'s default) or ``"series"`` (each series from its own
                first time, ``fit``'s). For an encoder trained on the union walk
                (``schedule="union"``, the default) it places the training grid prediction
                walks, as ``from_run`` does. The calibration runs on each series' own clock
                whatever it is, as ``predict`` answers (a batch-clock calibration of a
                batch-trained model on unaligned series covered 0.76-0.83 for 0.9).
            channel_col, value_col: frames given to the forecaster (``calibration_data``,
                ``predict``'s, ``impute``'s) are tidy, one row per observation with the
                channel's name in ``channel_col`` and its value in ``value_col``
                (``from_dataframe(df, ..., channel_col=, value_col=)``'s format), and its
                answers are tidy too. Both or neither.
            uncertainty_col: with tidy frames, the column of each observation's measurement
                uncertainty (``from_dataframe(..., uncertainty_col=)``), read from
                ``calibration_data`` and from histories when the model's encoder reads them
                (``encoder_error_scale``); wide frames use the columns ``dataset`` was read
                with (its ``error_names``).
            subsets: the ``latentode.data.Interpolation`` task that chose the points the
                model's encoder saw in training (e.g. ``Interpolation(count=50)``), or a
                ``latentode.forecast.subsets.Subsets``: ``predict`` and ``impute`` then
                condition each posterior sample on a random subset of a series' points drawn
                that way, and the noise is calibrated so. None: on all of them. A model trained
                seeing a fixed share of each series can predict much worse from all of it
                (the quick start's: held-out rms 0.27 against 0.105 with subsets).

        ``fit`` on the result trains a new model from ``conf/train.yaml`` (as on a loaded
        forecaster), not the given one.
        """
        from latentode.data import LatentODEDataModule
        from latentode.data.batch import check_origin

        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch nn.Module (a latentode.models model), got "
                            f"{type(model).__name__}.")
        if not isinstance(dataset, IrregularDataset):
            raise TypeError(
                f"dataset must be an IrregularDataset (load_dataset, from_dataframe or .subset "
                f"give one; a DataFrame: from_dataframe(df, id_col=..., time_col=...)), got "
                f"{type(dataset).__name__}.")
        input_dim = getattr(model, "input_dim", None)
        if not isinstance(input_dim, int):
            raise TypeError(f"model ({type(model).__name__}) has no input_dim: from_model takes "
                            "the models of latentode.models (LatentODE, ODERNN, GRUDT, RNNVAE).")
        channels = [str(c) for c in dataset.channels]
        if input_dim != len(channels):
            raise ValueError(
                f"model.input_dim={input_dim} but dataset has {len(channels)} channel(s) "
                f"{channels}: pass the dataset the model was trained on (its channels in the "
                "model's order).")
        if len(dataset) == 0:
            raise ValueError("dataset holds no series: pass the data the model was trained on.")
        for part, name in ((dataset, "dataset"), (calibration_data, "calibration_data")):
            window = getattr(part, "window", None)
            if window is not None:
                raise ValueError(
                    f"{name} was cut into windows of {window!r} (split_windows): "
                    "from_model conditions forecasts on whole series, not on windows as the "
                    "model was trained; pass the whole series, or train with "
                    "LatentODEForecaster.fit(..., data.window) / latentode-train data.window.")
        devices = {p.device.type for p in model.parameters()}
        if "meta" in devices:
            raise ValueError("model's weights are on the meta device (no values): load its "
                             "trained weights (model.to_empty(device='cpu') then "
                             "load_state_dict) before from_model.")
        check_origin(time_origin)
        batch_size = _whole("batch_size", batch_size, 1)
        if (channel_col is None) != (value_col is None):
            raise ValueError(f"channel_col={channel_col!r} and value_col={value_col!r}: tidy "
                             "frames need both (the column naming each row's channel and the "
                             "one holding its value), wide frames neither.")
        if channel_col is not None and channel_col == value_col:
            raise ValueError(f"channel_col and value_col are both {channel_col!r}: a tidy frame "
                             "names each row's channel in one column and holds its value in "
                             "another.")
        for name, column in (("channel_col", channel_col), ("value_col", value_col)):
            if column is not None and column in (dataset.id_col, dataset.time_col):
                raise ValueError(f"{name}={column!r} is the dataset's "
                                 f"{'id' if column == dataset.id_col else 'time'} column: name "
                                 "the tidy frames' own channel and value columns.")
        if scaler is not None:
            if not isinstance(scaler, ChannelScaler):
                raise TypeError(f"scaler must be the latentode.data.ChannelScaler the model was "
                                f"trained with (or None), got {type(scaler).__name__}.")
            if scaler.log is None or not hasattr(scaler.scaler, "mean_"):
                raise ValueError("scaler is not fitted: pass the ChannelScaler the training "
                                 "values were scaled with (ChannelScaler().fit(train_data)), or "
                                 "scaler=None for a model trained on unscaled values.")
            if len(scaler.mean) != len(channels):
                raise ValueError(f"scaler was fitted on {len(scaler.mean)} channel(s), dataset "
                                 f"has {len(channels)} {channels}: pass the scaler fitted on "
                                 "the model's training data.")
            check_channels(scaler, channels, "dataset")  # the same names, in the same order
        config = None if model_config is None else checked_model_config(model_config, model,
                                                                           input_dim)
        spec = DataSpec(
            id_col=dataset.id_col, time_col=dataset.time_col, channels=channels,
            time=dataset.time_transform, value_cols=None if channel_col else list(channels),
            channel_col=channel_col, value_col=value_col, time_unit=dataset.time_transform.unit,
            mean=None if scaler is None else [float(v) for v in scaler.mean],
            scale=None if scaler is None else [float(v) for v in scaler.scale],
            train_span=longest_span(dataset), label_names=dataset.label_names,
            log=None if scaler is None else _log_flags(scaler),
            uncertainty_cols=None if channel_col else errors_read(dataset),
            uncertainty_col=uncertainty_col if channel_col else None,
        )
        if uncertainty_col is not None and not channel_col:
            raise ValueError("uncertainty_col= names the uncertainty column of tidy frames "
                             "(with channel_col= and value_col=); wide frames use the columns "
                             "the dataset was read with (from_dataframe(uncertainty_cols=)).")
        if uncertainty_col is not None and dataset.errors is None:
            raise ValueError(f"uncertainty_col={uncertainty_col!r} reads uncertainties from "
                             f"frames, but the dataset (the model's training data) carries "
                             f"none: the model was trained without them. Read it with "
                             f"from_dataframe(..., uncertainty_col={uncertainty_col!r}), or "
                             f"leave uncertainty_col out.")
        if (dataset.errors is not None and getattr(model, "encoder_error_scale", None)
                is not None and spec.uncertainty_cols is None and spec.uncertainty_col is None):
            warnings.warn(
                "the dataset carries measurement uncertainties and the model's encoder reads "
                "them (encoder_error_scale), but the forecaster has no column to read them "
                "from in a history (a dataset built without from_dataframe's uncertainty "
                "columns, or tidy frames without uncertainty_col=): histories' values will be "
                "read as exact. Give uncertainty_col= (tidy frames), or a dataset read with "
                "uncertainty_cols=.", stacklevel=2)
        spec.check_output_names()
        if calibration_data is None:
            warnings.warn(
                "from_model calibrates the predictive noise on the training series (no "
                "calibration_data): its intervals come out narrow (a user pass measured 0.85 "
                "coverage for 0.9). Pass held-out series, calibration_data=ds.subset(val_idx).",
                stacklevel=2)
            held = None
        else:
            if isinstance(calibration_data, pd.DataFrame):
                _warn_missing_uncertainties(spec, calibration_data, "calibration_data")
            held = on_spec_clock(spec, calibration_data, "calibration_data")

        train = dataset if scaler is None else scaled(scaler, dataset, "dataset", True)
        spec.value_range = value_range(train)
        splits = {"train": train, "val": dataset.subset([]), "test": dataset.subset([])}
        everything = dataset
        if held is not None:
            splits["val"] = held if scaler is None else scaled(scaler, held,
                                                                "calibration_data")
            everything = concat_datasets(dataset, held)
        for name, part in splits.items():
            check_representable(part, f"{name} split" + (", scaled" if scaler else ""))
        # a data module on these splits and this scaler, as setup() would have left it
        datamodule = LatentODEDataModule(
            everything, task=Interpolation(fraction=0.5) if task is None else task,
            batch_size=batch_size, scale=scaler is not None,
            log_channels=None if scaler is None else scaler.log_channels,
            time_origin=time_origin)
        datamodule.dataset, datamodule.scaler, datamodule.splits = everything, scaler, splits
        datamodule.split_index = {"train": np.arange(len(dataset)),
                                  "val": np.arange(len(dataset), len(everything)),
                                  "test": np.arange(0)}
        cfg = OmegaConf.create({"model": config, "data": {
            "time_origin": time_origin, "window": None, "batch_size": batch_size}})
        dtype = model_dtype(model)
        if dtype != torch.float32:  # load() casts the rebuilt model to it
            cfg.model_dtype = str(dtype).removeprefix("torch.")
        model = copy.deepcopy(model).cpu().eval()  # the user's model stays as it is
        encoder = getattr(model, "encoder", None)
        if getattr(encoder, "schedule", None) == "union":
            walk = _union_walk_grid(cfg, model, datamodule)
            if walk is not None:
                spec.walk_grid = [float(v) for v in walk.times]
                spec.walk_origin = walk.origin
        if subsets is not None and not isinstance(subsets, (Interpolation, Subsets)):
            raise TypeError(f"subsets must be a latentode.data.Interpolation (the encoder's "
                            f"training subsample) or a Subsets, got {type(subsets).__name__}.")
        calibration, chosen = _calibrate(model, datamodule, {"val": (
            "calibration_data", "Pass more held-out series as calibration_data.")}, task=task,
            trained_task=False, subsets=False if subsets is None else subsets)
        spec.subsets = None if chosen is None else chosen.to_json()
        _warn_if_worse_than_the_mean(calibration, splits, channels, scaler is None)
        return cls._assemble(cfg, model, spec, calibration)

    @classmethod
    def _assemble(cls, cfg: DictConfig, model: nn.Module, spec: DataSpec,
                  calibration: NoiseCalibration | None = None) -> LatentODEForecaster:
        self = cls.__new__(cls)
        self.config_overrides, self.cfg, self._composed = [], cfg, None
        self.model, self.spec, self.module, self.trainer = model.cpu().eval(), spec, None, None
        self.calibration = calibration
        return self

    def save(self, path: str | Path) -> Path:
        """Write the forecaster to directory ``path``: ``weights.pt`` (the model's state dict),
        ``config.yaml`` (the resolved config), ``transforms.json`` (columns, time transform,
        scaler) and ``calibration.json`` (the calibrated predictive noise, when there is one).
        The weights file holds tensors only, so ``load`` reads it with ``weights_only=True`` and
        nothing else is pickled. A ``from_model`` forecaster needs its ``model_config`` (how
        ``load`` rebuilds the model) and is refused without one. Returns the directory."""
        model, spec = self._fitted("save")
        if OmegaConf.select(self.cfg, "model._target_") is None:
            raise ValueError(
                "this forecaster cannot be saved: it has no config to rebuild its model from "
                "(made by from_model without model_config). Pass model_config= to "
                "LatentODEForecaster.from_model, the model's class and arguments, e.g. "
                "{'_target_': 'latentode.models.LatentODE', 'input_dim': 1, 'latents': 8}.")
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), out / WEIGHTS_FILE)
        (out / CONFIG_FILE).write_text(OmegaConf.to_yaml(self.cfg, resolve=True),
                                       encoding="utf-8")  # OmegaConf.load reads UTF-8
        spec.write(out / TRANSFORMS_FILE)
        calibration = out / CALIBRATION_FILE
        if self.calibration is not None:
            self.calibration.write(calibration)
        elif calibration.is_file():  # a stale one from an earlier save
            calibration.unlink()
        return out

    @classmethod
    def load(cls, path: str | Path) -> LatentODEForecaster:
        """A forecaster written by ``save``: the model rebuilt from ``config.yaml``, its weights
        read with ``torch.load(weights_only=True)``; it predicts exactly as the saved one did.
        (``fit`` on a loaded forecaster trains a new model from ``conf/train.yaml``.)"""
        from hydra.utils import instantiate

        root = Path(path)
        missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE, TRANSFORMS_FILE)
                   if not (root / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{str(root)!r} is not a saved forecaster: it lacks {missing} (expected "
                f"{[CONFIG_FILE, WEIGHTS_FILE, TRANSFORMS_FILE]}, written by save())."
            )
        cfg = load_settings(root / CONFIG_FILE)
        model = instantiate(cfg.model)
        if cfg.get("model_dtype"):  # a float64 model wrapped by from_model
            model = model.to(getattr(torch, str(cfg.model_dtype)))
        model.load_state_dict(torch.load(root / WEIGHTS_FILE, map_location="cpu",
                                         weights_only=True))
        calibration = None
        if (root / CALIBRATION_FILE).is_file():
            calibration = NoiseCalibration.read(root / CALIBRATION_FILE)
        else:
            log.warning("%s has no %s (saved by an older latentode): predictive intervals use "
                        "the model's obs_std, which is usually far too narrow.", root,
                        CALIBRATION_FILE)
        return cls._assemble(cfg, model, DataSpec.read(root / TRANSFORMS_FILE), calibration)

    # ============================================================================ helpers
    def _fitted(self, what: str) -> tuple[nn.Module, DataSpec]:
        if self.model is None or self.spec is None:
            raise RuntimeError(
                f"LatentODEForecaster.{what}() needs a trained model, but this forecaster is not "
                "fitted: call fit(train_df) first, or LatentODEForecaster.load(path)."
            )
        return self.model, self.spec

    def noise_std(self, noise: bool | str = True) -> np.ndarray | None:
        """The predictive noise std per channel in model units that ``noise`` names, or None
        for none: ``True``/``"calibrated"`` the calibrated noise (the model's ``obs_std`` when
        there is no calibration), ``"model"`` the model's ``obs_std``, ``False``/``"none"``
        None. Times ``spec.scale`` it is in data units."""
        model, spec = self._fitted("predict")
        if noise is None or noise is False or (isinstance(noise, str)
                                               and noise.lower() == "none"):
            return None
        mode = "calibrated" if noise is True else str(noise).lower()
        if mode not in ("calibrated", "model"):
            raise ValueError(f"noise must be one of {list(NOISE_OPTIONS)}, got {noise!r}.")
        if mode == "calibrated" and self.calibration is not None:
            std = self.calibration.array
            if std.shape != (spec.n_channels,):
                raise ValueError(f"the calibration has {std.size} channel(s), the model "
                                 f"{spec.n_channels}.")
            return std
        return obs_std_array(model_obs_std(model), spec.n_channels)

    def noise_curve(self) -> pd.DataFrame:
        """The calibrated predictive noise over lead time, in the data's units: one row per
        channel and lead (0: inside the channel's observed span, then each bin of the forecast
        curve at its mean lead past the channel's last observation).

        Columns: ``channel``, ``lead`` (time units of the data: a Timedelta for datetimes),
        ``std`` (data units; for a ``log_channels`` channel the std of ``log(value)``, whose
        ``factor = exp(std)`` is the multiplicative spread), ``factor`` (log channels, else
        NaN) and ``count`` (calibration points behind the bin: the channel's own at lead 0,
        all channels' in a lead bin, as calibration counts them). ``predict`` interpolates
        between the bins in variance and multiplies the variance past the span by
        ``calibration.history_factor`` at the series' history length.
        """
        _, spec = self._fitted("noise_curve")
        calibration = self.calibration
        if calibration is None:
            raise ValueError("this forecaster has no noise calibration (fit() and from_run() "
                             "make one; a forecaster saved without one has none).")
        leads = np.asarray([0.0, *calibration.lead_times], dtype=np.float64)
        std = np.vstack([calibration.array, *(np.asarray(calibration.lead_std) if
                                              calibration.lead_times else [])])
        lead_counts = list(calibration.lead_count)
        scale = np.ones(spec.n_channels) if spec.scale is None else np.asarray(spec.scale)
        log = np.zeros(spec.n_channels, dtype=bool) if spec.log is None else np.asarray(spec.log)
        span = leads * spec.time.scale  # the data's time units
        if spec.time.kind == "datetime":
            span = pd.to_timedelta(span, unit=spec.time.unit or "h")
        rows = []
        for i, lead in enumerate(span):
            for c, name in enumerate(spec.channels):
                value = std[i, c] * scale[c]
                rows.append({"channel": name, "lead": lead, "std": value,
                             "factor": float(np.exp(value)) if log[c] else np.nan,
                             "count": int(calibration.count[c]) if i == 0
                             else lead_counts[i - 1]})
        return pd.DataFrame(rows)

    @torch.no_grad()
    def _draw(
        self, ds: IrregularDataset, requests: list[tuple[int, Times]], num_samples: int,
        seed: int, noise: bool | str, want_logits: bool = False, batch_size: int = 64,
        draw_noise: bool = True,
    ) -> Iterator[tuple]:
        """Per requested series: ``(index, times, paths (S, m, D), noisy (S, m, D) or None,
        std (m, D) or None)``, in model units (``spec.to_user_values`` maps values and
        quantiles to the data's). ``std`` is the observation noise ``noise`` names
        at each asked time (``noise_std``, over lead time for a calibration with a curve) and
        ``noisy`` the paths plus a draw of it (``draw_noise``); both None when it names none.
        ``want_logits``: ``(index, times, logits)`` of the classifier instead. Series are solved
        ``batch_size`` at a time (:mod:`.draw`); each draws its ``z0`` samples and its noise
        from its own seed."""
        model, spec = self._fitted("predict")
        model_values = spec.to_model_values(ds.values)  # once: the check and every history
        model_errors = None if ds.errors is None else spec.to_model_errors(ds.errors, ds.values)
        # the errors reach the encoder, the series' factor, both or neither (a calibration of
        # an older latentode counted them in its residuals: its factor reads none)
        encoder_reads, factor_reads = self._error_readers()
        _warn_far_from_training(ds, spec, model_values)
        num_samples = _whole("num_samples", num_samples, 1)
        seed = _whole("seed", seed, 0)
        batch_size = _whole("batch_size", batch_size, 1)
        std = self.noise_std(noise)
        noisy_draws = std is not None and bool((std > 0).any())
        calibration = self.calibration
        # the in-series noise scaled per series (NoiseCalibration.series_factor): the posterior
        # mean at the history's own times is asked beside the requested ones, whatever noise
        # is asked for (the paths stay those of predict: more output times move them by the
        # solver's rounding, 1e-11)
        window = self._history_window()
        per_series = (not want_logits and calibration is not None
                      and calibration.series_kappa is not None
                      and series_factor_applies(model, window))
        dtype = next(model.parameters()).dtype
        np_dtype = np.float64 if dtype == torch.float64 else np.float32
        model.eval()
        mode = batch_mode(model)
        from_target = getattr(model, "z0_at", "start") == "first_target"
        subsets = Subsets.from_json(spec.subsets) if isinstance(model, LatentODE) else None
        walk = None  # the training grid a union-trained encoder walks (batched models only)
        if spec.walk_grid is not None and mode == "batched":
            walk = WalkGrid(np.asarray(spec.walk_grid, dtype=np.float64), spec.walk_origin)
            _warn_off_grid(ds, [i for i, _ in requests], walk)
        pending: list[_Request] = []  # requests awaiting a solve, and their jobs
        jobs: list[Job] = []
        unanswered: list = []  # ids of series the solver failed on
        last_error: SolverError | None = None
        for n_req, (i, raw) in enumerate(requests):
            lo, hi = ds.offsets[i], ds.offsets[i + 1]
            values, t = model_values[lo:hi], ds.times[lo:hi]  # model units (NaN unobserved)
            errors = None if model_errors is None or not encoder_reads else model_errors[lo:hi]
            want64 = spec.time.to_model(raw)
            seen_rows = ~np.isnan(values).all(1)
            if per_series:
                want64 = np.concatenate([want64, t[seen_rows]])
            chunks = _history_chunks(t, seen_rows, want64, window)
            if want_logits:  # one chunk: predict_proba asks at the last observation
                chunks = chunks[:1]
            # the series' own stream: z0's draws for each chunk, then the noise's
            request = _Request(i, raw, [], [], torch.Generator().manual_seed(
                _series_seed(seed, ds.ids[i])), total=len(want64))
            for idx, seen in chunks:
                # mode "alone" (any model but a latent ODE) draws its own noise
                eps = None if not isinstance(model, LatentODE) else torch.randn(
                    (num_samples, model.latents), generator=request.gen, dtype=dtype)
                # its subsets from the same stream (after eps: eps as without them)
                subset_seed = None if subsets is None else int(
                    torch.randint(2**62, (1,), generator=request.gen))
                for part, job in make_jobs(t[seen], values[seen],
                                           want64[idx], np_dtype, from_target,
                                           backwards=mode != "alone", walk=walk,
                                           hist_e=None if errors is None else errors[seen]):
                    job.eps = eps  # one z0 per history: its jobs answer the same paths
                    job.subset_seed = subset_seed  # and the same subsets
                    request.chunks.append((idx[part], seen))
                    request.jobs.append(len(jobs))
                    jobs.append(job)
            pending.append(request)
            if len(jobs) < 4 * batch_size and n_req < len(requests) - 1:
                continue
            failed: dict[int, SolverError] = {}
            answers = _answer(model, jobs, pending, mode, num_samples, batch_size, failed,
                              subsets)
            if failed:
                _fill_unanswered(answers, jobs, failed, num_samples, model, want_logits)
                last_error = next(iter(failed.values()))
            for request in pending:
                if any(j in failed for j in request.jobs):
                    unanswered.append(ds.ids[request.index])
                if want_logits:
                    yield request.index, request.raw, answers[request.jobs[0]][1]
                    continue
                point_std = None
                lo, hi = ds.offsets[request.index], ds.offsets[request.index + 1]
                if per_series:
                    yield request.index, request.raw, *self._per_series_draw(
                        request, answers, std, noise, ds.times[lo:hi], model_values[lo:hi],
                        draw_noise,
                        None if model_errors is None or not factor_reads
                        else model_errors[lo:hi])
                    continue
                if noisy_draws and std is not None:  # (noisy_draws: std is not None)
                    point_std = self._point_noise(std, noise, ds.times[lo:hi], ds.values[lo:hi],
                                                  spec.time.to_model(request.raw))
                paths, noisy = request.paths(answers, point_std,
                                             std is not None and draw_noise, num_samples)
                model_std = None
                if std is not None:
                    model_std = np.zeros((len(request.raw), spec.n_channels)) if (
                        point_std is None) else point_std
                yield request.index, request.raw, paths, noisy, model_std
            pending, jobs = [], []
        if unanswered and last_error is not None:
            _warn_unanswered(unanswered, last_error)

    def _per_series_draw(self, request: _Request, answers: list, std: np.ndarray | None,
                         noise: bool | str, t: np.ndarray, values: np.ndarray,
                         draw_noise: bool, errors: np.ndarray | None = None
                         ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """``(paths, noisy or None, std or None)`` as :meth:`_draw` yields them, of a request
        answered at its asked times and then at its history's own (``request.total``): the
        posterior mean's residual there gives the series' factor on the calibrated in-series
        noise (:meth:`NoiseCalibration.series_factor`; ``errors``: the history's measurement
        uncertainties, model units, NaN none, whose variance the residual leaves out as
        calibration did); the noise is drawn from the series' stream once the factor is
        known."""
        assert self.calibration is not None and self.spec is not None
        everything, _ = request.paths(answers, None, False)
        asked = len(request.raw)
        paths, at_history = everything[:, :asked], everything[:, asked:]
        if std is None:
            return paths, None, None
        factor = None
        if _calibrated(noise):
            # (one history: a model trained on windows has no factor, series_factor_applies)
            rows = ~np.isnan(values).all(1)
            seen = values[rows]  # (n, D) model units, NaN unobserved
            residual = seen - at_history.mean(0)
            n = (~np.isnan(residual)).sum(0)
            m = np.nansum(residual**2, 0) / np.maximum(n, 1)
            if errors is not None:  # as calibration read them (seen_residual)
                m = beyond_known(m, np.nan_to_num(residual) ** 2,
                                 np.nan_to_num(errors[rows], nan=0.0) ** 2,
                                 ~np.isnan(residual), axis=0)
            factor = self.calibration.series_factor(m, n)
        point_std = np.zeros((asked, len(std)))
        if bool((std > 0).any()):
            point_std = np.asarray(self._point_noise(
                std, noise, t, values, self.spec.time.to_model(request.raw), factor))
        noisy = None
        if draw_noise:
            noisy = paths + point_std * torch.randn(paths.shape, generator=request.gen,
                                                    dtype=torch.float64).numpy()
        return paths, noisy, point_std

    def _point_noise(self, std: np.ndarray, noise: bool | str, t: np.ndarray,
                     values: np.ndarray, want: np.ndarray, factor: np.ndarray | None = None
                     ) -> np.ndarray:
        """The noise std ``(m, D)`` at the asked model times ``want`` of a series observed at
        ``t``: the calibrated curve over lead time past each channel's observed span when
        ``noise`` is the calibration and it has one, else ``std`` at every time; inside the
        span (everywhere, without a curve) its variance times the series' ``factor``."""
        calibration = self.calibration
        if not (_calibrated(noise) and calibration is not None and calibration.lead_times):
            out = np.broadcast_to(std, (len(want), len(std)))
            return out if factor is None else out * np.sqrt(factor)
        want = np.asarray(want, dtype=np.float64)[:, None]  # (m, 1)
        observed = ~np.isnan(values)  # (n, D): each channel's own span
        big = np.finfo(np.float64).max
        first = np.where(observed, t[:, None], big).min(0)
        last = np.where(observed, t[:, None], -big).max(0)
        with np.errstate(over="ignore", invalid="ignore"):  # channels never observed: set below
            leads = np.maximum(np.maximum(want - last, first - want), 0.0)  # (m, D)
        leads[:, ~observed.any(0)] = np.inf  # never observed here: the last bin's noise
        return calibration.std_at(leads, history=int(observed.any(1).sum()), factor=factor)

    def _error_readers(self) -> tuple[bool, bool]:
        """``(encoder, factor)``: whether a history's measurement uncertainties reach the
        model's encoder (``model.encoder_error_scale``) and the series' factor on the
        in-series noise (a calibration with uncertainties and a factor: the factor reads the
        seen points' residual beyond their ``e``, as calibration did, :func:`beyond_known`);
        both False for a spec without uncertainty columns."""
        model, spec = self._fitted("predict")
        if spec.uncertainty_cols is None and spec.uncertainty_col is None:
            return False, False
        encoder = isinstance(model, LatentODE) and model.encoder_error_scale is not None
        calibration = self.calibration
        factor = (calibration is not None and bool(calibration.error_rms)
                  and calibration.series_kappa is not None
                  and series_factor_applies(model, self._history_window()))
        return encoder, factor

    def _history(self, df: pd.DataFrame) -> IrregularDataset:
        """A history to answer from, with its measurement uncertainties where they are read
        (:meth:`_error_readers`); otherwise they are passed over unread."""
        model, spec = self._fitted("predict")
        encoder, factor = self._error_readers()
        if (encoder or factor) and isinstance(df, pd.DataFrame):
            missing = spec.missing_uncertainties(df)
            if missing and encoder:
                warnings.warn(
                    f"the model's encoder reads measurement uncertainties (trained with them, "
                    f"model.encoder_error_scale={model.encoder_error_scale}), but this history "
                    f"has no column(s) {missing}: those values are read as exact (confidence 1),"
                    f" unlike in training. Pass the columns, or train with "
                    f"model.encoder_error_scale=null to forecast from histories without them.",
                    stacklevel=user_stacklevel())
            elif missing:
                warnings.warn(
                    f"this history has no column(s) {missing}: its values are read as exact, "
                    f"so the whole of each series' residual at its own points counts toward "
                    f"its noise factor and its intervals inside the series come out wider than "
                    f"calibrated (calibration left the known measurement noise out). Pass the "
                    f"columns.", stacklevel=user_stacklevel())
        return spec.dataset(df, errors=encoder or factor)

    def _history_window(self) -> float | None:
        """The training windows' span in model units (``data.window``), or None."""
        value = OmegaConf.select(self.cfg, "data.window")
        if value is None or self.spec is None:
            return None
        return window_in_model_units(self.spec.time, value)

    def _long(self, ds: IrregularDataset, i: int, raw: Times, columns: dict[str, np.ndarray],
              repeat: int = 1) -> dict[str, Any]:
        """The columns of rows (series i) x times x channels (``repeat`` blocks of them) with
        ``columns``: arrays, joined into one frame by :meth:`_finish` (a DataFrame per series
        was 16% of a forecast of 1500 series)."""
        spec = self.spec
        assert spec is not None
        spec.check_no_clash(list(columns), "this forecast")
        d = spec.n_channels
        m = len(raw)
        pick = np.tile(np.repeat(np.arange(m), d), repeat)
        frame = {
            spec.id_col: np.full(m * d * repeat, ds.ids[i], dtype=object),
            spec.time_col: raw[pick],
            spec.channel_col or "channel": np.tile(spec.channels, m * repeat),
        }
        frame.update(columns)
        return frame

    def _finish(self, frames: list[dict[str, Any]], ds: IrregularDataset,
                df: pd.DataFrame | None = None) -> pd.DataFrame:
        spec = self.spec
        assert spec is not None
        if not frames:
            raise ValueError("nothing to predict: no series were requested.")
        joined = {}
        for name in frames[0]:
            parts = [frame[name] for frame in frames]
            joined[name] = (parts[0].append(parts[1:]) if isinstance(parts[0], pd.Index)
                            else np.concatenate(parts))
        out = pd.DataFrame(joined)
        if ds.id_dtype is not None:
            with contextlib.suppress(TypeError, ValueError):  # keep object ids then
                out[spec.id_col] = out[spec.id_col].astype(ds.id_dtype)
        if spec.tidy and df is not None:  # channel codes back to df's own type (item numbers)
            out[spec.channel_col] = _as_given(out[spec.channel_col], df[spec.channel_col])
        return out

    # ============================================================================ predict
    def predict_proba(self, df: pd.DataFrame, num_samples: int = 100,
                      seed: int = 0, batch_size: int = 64) -> pd.DataFrame:
        """Each series' label probabilities from its history in ``df`` (a model fitted with
        ``label_col=``): one row per series, ``p`` for a binary label (the probability of 1),
        else ``p0``, ``p1``, ...; for labels given as names, ``p_<name>`` per class (both classes
        of a binary one); averaged over ``num_samples`` posterior samples of ``z0``."""
        model, spec = self._fitted("predict_proba")
        if getattr(model, "classifier", None) is None or model.label_type != "series":
            raise ValueError("predict_proba needs a model fitted with label_col= (a classifier "
                             "of one label per series; latentode-train: data.dataset.label_col="
                             " and model.n_labels=); this one has none.")
        ds = self._history(df)
        rows = []
        # asked at each series' last time: z0 from its whole history (a model trained on
        # windows: from its last window, as its labels were learnt per window)
        last = [(i, raw[-1:]) for i, raw in requested_times(ds, spec.time.kind)]
        for i, _raw, logits in self._draw(ds, last, num_samples, seed, False,
                                          want_logits=True, batch_size=batch_size):
            probs = (torch.sigmoid(logits) if logits.shape[-1] == 1
                     else torch.softmax(logits, -1)).mean(0).tolist()  # logits (S, C)
            names = ["p"] if len(probs) == 1 else [f"p{c}" for c in range(len(probs))]
            classes = spec.label_names
            if classes and len(probs) == 1 and len(classes) == 2:  # binary: both named
                names, probs = [f"p_{c}" for c in classes], [1.0 - probs[0], probs[0]]
            elif classes and len(classes) == len(probs):
                names = [f"p_{c}" for c in classes]
            rows.append({spec.id_col: ds.ids[i], **dict(zip(names, probs, strict=True))})
        return pd.DataFrame(rows)

    def predict(
        self,
        df: pd.DataFrame,
        times: Any = None,
        *,
        horizon: Any = None,
        freq: Any = None,
        n: int | None = None,
        num_samples: int = 100,
        quantiles: Sequence[float] | None = (0.05, 0.5, 0.95),
        seed: int = 0,
        noise: bool | str = True,
        batch_size: int = 64,
    ) -> pd.DataFrame:
        """Posterior predictions for the series in ``df``, conditioned on their history there.

        Args:
            df: the series' observations, in the training format (same channels).
            times: where to answer: an array of times shared by every series, or a mapping
                ``{series id: times}`` (only those series); None: each series' own times in
                ``df``. Times in the data's units (numbers, or datetimes / date strings); times
                before, between or after the observations all work.
            horizon, freq, n: instead of ``times``, a forecast grid after each series' last
                observation: ``horizon`` with ``n`` (n equal steps) or ``freq`` (steps of freq),
                or ``freq`` with ``n``. For datetimes, ``horizon`` is a duration ('7D') and
                ``freq`` a pandas frequency ('D', '6h', 'MS').
            num_samples: posterior samples behind the mean and the quantiles.
            quantiles: levels in (0, 1), one column each (``q0.05``...).
            seed: sampling seed (the same seed gives the same frame).
            noise: the quantiles are of observations, each path plus Gaussian noise (of the
                quantity beyond the measurement uncertainties, when trained with them):
                ``True`` or ``"calibrated"`` (default) the calibrated noise per channel (see
                the module docstring; the model's ``obs_std`` when the forecaster has no
                calibration), ``"model"`` the model's fixed ``obs_std`` (the quantiles of
                earlier versions' ``noise=True``: much too narrow in general); ``False`` or
                ``"none"``: quantiles of the paths alone.
            batch_size: series solved together (faster; see the module docstring): a series'
                answer then differs from its answer alone within the solver's tolerance.
                1 answers each series alone.

        Returns:
            A long frame: id, time, channel, ``mean``, one column per quantile; in the data's
            units, time type and channel names; series in the order of their ids, rows in the
            requested order per series.
        """
        return self._predict(df, times, horizon, freq, n, num_samples, quantiles, seed, noise,
                             batch_size)

    def _predict(self, df: pd.DataFrame, times: Any, horizon: Any, freq: Any, n: int | None,
                 num_samples: int, quantiles: Sequence[float] | None, seed: int,
                 noise: bool | str, batch_size: int,
                 each: Callable[[Any, Times, np.ndarray, np.ndarray | None], None] | None = None
                 ) -> pd.DataFrame:
        """:meth:`predict`; ``each(series id, times, paths (S, m, D), std (m, D) or None)``,
        model units, is called for every series answered (``score`` reads its held-out
        values' intervals from them)."""
        qs = check_quantiles(quantiles)
        _, spec = self._fitted("predict")
        ds = self._history(df)
        requests = requested_times(ds, spec.time.kind, times, horizon, freq, n)
        _warn_beyond_training(ds, requests, spec, windowed=self._history_window() is not None)
        frames = []
        self.noise_std(noise)  # an unknown noise is an error even without quantiles
        # the noise shapes the quantiles, and the mean of log channels (log-normal): without
        # quantiles it was dropped there, and the mean fell to the median (27% lower, measured)
        needs_noise = bool(qs) or (spec.log is not None and any(spec.log))
        for i, raw, paths, _, std in self._draw(ds, requests, num_samples, seed,
                                                noise if needs_noise else False,
                                                batch_size=batch_size, draw_noise=False):
            if each is not None:
                each(ds.ids[i], raw, paths, std)
            cols = {"mean": _predictive_mean(spec, paths, std).ravel()}
            if qs:
                levels = mixture_quantiles(paths, 0.0 if std is None else std, qs)
                for q, level in zip(qs, spec.to_user_values(levels), strict=True):
                    cols[quantile_name(q)] = level.ravel()
            frames.append(self._long(ds, i, raw, cols))
        return self._finish(frames, ds, df)

    def score(
        self,
        df: pd.DataFrame,
        holdout: str = "points",
        *,
        fraction: float = 0.2,
        level: float = 0.9,
        num_samples: int = 100,
        seed: int = 0,
        batch_size: int = 64,
    ) -> pd.DataFrame:
        """Held-out scores on the series of ``df`` (new series, or the training ones), in the
        data's units: part of each series is hidden and predicted from the rest by
        :meth:`predict`.

        Args:
            df: series in the training format.
            holdout: ``"points"`` hides a random ``fraction`` of each series' observation
                times (imputation), ``"end"`` the times in the last ``fraction`` of its span
                (forecasting). Each series keeps its first time; one observed at a single
                time is left out.
            level: the central predictive interval scored (0.9: 5th to 95th percentile).
            num_samples, seed, batch_size: as for :meth:`predict` (``seed`` also draws the
                hidden points).

        Returns:
            One row per channel: ``n`` hidden values, ``mse`` and ``mae`` of the posterior
            mean, ``coverage`` of the interval (about ``level`` when calibrated; trained with
            measurement uncertainties, each value's interval is that of one measurement, its
            own uncertainty added to the predictive noise) and its mean ``width``, and
            ``naive_mse`` of linear interpolation of the channel's own history (its last value
            held beyond it; over the ``naive_n`` values with a history of that channel).
            ``attrs`` hold the options and the number of series scored.
        """
        from .scoring import score

        return score(self, df, holdout, fraction, level, num_samples, seed, batch_size)

    def sample(
        self,
        df: pd.DataFrame,
        times: Any = None,
        *,
        horizon: Any = None,
        freq: Any = None,
        n: int | None = None,
        num_samples: int = 10,
        seed: int = 0,
        noise: bool | str = False,
        batch_size: int = 64,
    ) -> pd.DataFrame:
        """Posterior sample paths at the times ``predict`` would answer (same arguments): a long
        frame id, time, channel, ``sample`` (0..num_samples-1), ``value``. The paths are the
        decoded latent trajectories (``noise=True`` or ``"calibrated"`` adds the calibrated
        observation noise, ``"model"`` the model's ``obs_std``, as in ``predict``); with the same
        seed they are the paths behind ``predict``'s mean."""
        _, spec = self._fitted("sample")
        ds = self._history(df)
        requests = requested_times(ds, spec.time.kind, times, horizon, freq, n)
        _warn_beyond_training(ds, requests, spec, windowed=self._history_window() is not None)
        frames, one_path = [], False
        for i, raw, paths, noisy, _ in self._draw(ds, requests, num_samples, seed, noise,
                                                  batch_size=batch_size):
            draws = spec.to_user_values(noisy if noisy is not None else paths)
            s, m, d = draws.shape
            one_path |= paths.shape[0] == 1 < num_samples
            cols = {"sample": np.repeat(np.arange(s), m * d), "value": draws.ravel()}
            frames.append(self._long(ds, i, raw, cols, repeat=s))
        if one_path:
            warnings.warn(
                f"num_samples={num_samples}, but this model ({type(self.model).__name__}) is "
                "deterministic: one path per series. noise=True draws num_samples values "
                "around it with the calibrated observation noise.", stacklevel=2)
        return self._finish(frames, ds, df)

    def impute(
        self,
        df: pd.DataFrame,
        quantiles: Sequence[float] | None = None,
        *,
        num_samples: int = 100,
        seed: int = 0,
        complete: bool = True,
        batch_size: int = 64,
        indicator: bool = False,
    ) -> pd.DataFrame:
        """``df`` with every missing value of the channels filled by the posterior mean.

        Observed values, the other columns, the row order and the index are returned unchanged.
        With ``quantiles`` (levels in (0, 1)), extra columns ``<channel>_q0.05``... (tidy format:
        ``q0.05``...) hold the predictive quantiles of each filled value (NaN where observed),
        with the calibrated observation noise as in ``predict``.

        Tidy frames (one row per observation) seldom hold a row for what was not observed, so
        with ``complete`` (the default) rows are added after ``df``'s own for every channel a
        series lacks at one of its times (id, time, channel and the filled value; other columns
        NaN; an integer index numbered on from its largest label); ``complete=False`` fills
        NaN values only. Wide frames hold every channel at every time already. A gap on a row
        that repeats another row's (series, time) takes what that row measured (the
        duplicates' mean, as the model read them), not a prediction.

        ``indicator``: also say which values are filled: a boolean column ``imputed`` (tidy:
        True on filled and added rows) or ``<channel>_imputed`` per channel (wide).
        """
        qs = check_quantiles(quantiles)
        _, spec = self._fitted("impute")
        if not spec.tidy:  # (a channel x_q0.1 beside x: overwritten by x's quantile)
            spec.check_no_clash(spec.impute_columns(qs), "impute")
        if indicator:
            names = ["imputed"] if spec.tidy else [f"{c}_imputed" for c in spec.channels]
            taken = [n for n in names if n in map(str, df.columns)]
            if taken:
                raise ValueError(f"indicator=True adds column(s) {names}, but df has "
                                 f"{taken} already: rename it, or leave indicator out.")
        ds = self._history(df)
        requests = requested_times(ds, spec.time.kind)
        frames = []
        for i, raw, paths, _, std in self._draw(ds, requests, num_samples, seed, True,
                                                batch_size=batch_size, draw_noise=False):
            cols = {"mean": _predictive_mean(spec, paths, std).ravel()}
            levels: np.ndarray | list[np.ndarray] = (
                spec.to_user_values(mixture_quantiles(paths, std, qs)) if qs else [])
            for q, level in zip(qs, levels, strict=True):
                cols[quantile_name(q)] = level.ravel()
            frames.append(self._long(ds, i, raw, cols))
        pred = self._finish(frames, ds)
        return self._fill(df, pred, qs, complete, ds, indicator)

    def _fill(self, df: pd.DataFrame, pred: pd.DataFrame, qs: list[float],
              complete: bool = False, ds: IrregularDataset | None = None,
              indicator: bool = False) -> pd.DataFrame:
        spec = self.spec
        assert spec is not None
        keys = [spec.id_col, spec.time_col]
        out = df.copy()
        # the times as the predictions hold them (ISO text read as datetimes, as in predict)
        df = iso_times(df[[*keys, *([spec.channel_col] if spec.tidy else [])]], spec.time_col)
        pred = _observed_first(pred, ds, df, spec, qs)
        if spec.tidy:
            looked = df[[*keys, spec.channel_col]].astype({spec.channel_col: str}).merge(
                pred, how="left", on=[*keys, spec.channel_col])
            missing = out[spec.value_col].isna().to_numpy()
            out[spec.value_col] = _filled(out[spec.value_col], missing, looked["mean"])
            for q in qs:
                name = quantile_name(q)
                out[name] = np.where(missing, looked[name].to_numpy(), np.nan)
            if indicator:
                out["imputed"] = missing
            return (_with_absent_rows(out, df, pred, spec, qs, indicator) if complete
                    else out)
        # one row per (id, time) asked: pivot_table(dropna=False) built every id x every time
        # (1000 unaligned meters: 22 GB)
        wide = pred.set_index([*keys, "channel"])[["mean", *map(quantile_name, qs)]].unstack(
            "channel")
        looked = df[keys].merge(wide.set_axis(
            [f"{a}\0{b}" for a, b in wide.columns], axis=1).reset_index(), how="left", on=keys)
        by_name = {str(c): c for c in out.columns}
        for name in spec.channels:
            col = by_name[name]
            missing = out[col].isna().to_numpy()
            out[col] = _filled(out[col], missing, looked[f"mean\0{name}"])
            for q in qs:
                out[f"{name}_{quantile_name(q)}"] = np.where(
                    missing, looked[f"{quantile_name(q)}\0{name}"].to_numpy(), np.nan)
            if indicator:
                out[f"{name}_imputed"] = missing
        return out

    # =============================================================================== plot
    def plot(
        self,
        df: pd.DataFrame,
        pred: pd.DataFrame,
        series: Sequence[Any] | None = None,
        *,
        channels: Sequence[str] | None = None,
        max_series: int = 4,
        channel_labels: Mapping[Any, str] | None = None,
    ) -> Any:
        """A matplotlib ``Figure``: one axes per series (rows) and channel (columns).

        Observations of ``df`` are points, ``pred``'s mean a line, the band spans its lowest to
        highest quantile column, and a dashed vertical line marks each series' last observation
        (the boundary between history and forecast). For a model trained on windows
        (``data.window``) a grey span marks the last window, the observations its forecasts are
        conditioned on. ``series`` defaults to the first ``max_series`` series of ``pred``.
        ``channel_labels`` titles channels by name instead of their codes (``{220045: "heart
        rate"}``). Observations with a measurement uncertainty (a forecaster trained with
        ``uncertainty_cols``, a ``df`` carrying them) get +-1 std error bars: the band is of
        the quantity, each measurement scatters around it by its own. Save it with
        ``fig.savefig("forecast.png")``.
        """
        from .plotting import plot_forecast

        _, spec = self._fitted("plot")
        given = spec.uncertainty_cols is not None or spec.uncertainty_col is not None
        return plot_forecast(spec, spec.dataset(df, errors=given), pred, series=series,
                             channels=channels,
                             max_series=max_series, window=self._history_window(),
                             channel_labels=channel_labels)


def _predictive_mean(spec: DataSpec, paths: np.ndarray, std: np.ndarray | None) -> np.ndarray:
    """The mean ``(m, D)`` of the predictive distribution in data units: the paths' mean, on
    log channels times ``exp((scale std)^2 / 2)`` (the mean of a log-normal noise: without it
    the column would be the median there)."""
    mean = spec.to_user_values(paths).mean(0)
    if spec.log is None or std is None or spec.scale is None:
        return mean
    log = np.asarray(spec.log, dtype=bool)
    spread = np.asarray(std) * np.asarray(spec.scale)
    mean[..., log] *= np.exp(0.5 * spread[..., log] ** 2)
    return mean


def _warn_missing_uncertainties(spec: DataSpec, df: pd.DataFrame, what: str) -> None:
    """Warn when a frame validated or calibrated on lacks uncertainty columns training read:
    its values would be weighed and encoded as exact, unlike training's."""
    missing = spec.missing_uncertainties(df) if isinstance(df, pd.DataFrame) else []
    if missing:
        warnings.warn(f"{what} has no column(s) {missing} of the measurement uncertainties "
                      f"training read: its values are read as exact (weighed and encoded as "
                      f"each series' most precise), so its scores and the noise calibrated on "
                      f"it are not those of the training's data. Pass the columns.",
                      stacklevel=user_stacklevel())


def errors_read(ds: IrregularDataset) -> dict[str, Any] | None:
    """``{channel: column}`` of the uncertainty columns ``ds`` was read with (None: none)."""
    names = ds.error_names or []
    found = {c: n for c, n in zip(ds.channels, names, strict=False) if n is not None}
    return found or None


def _log_flags(scaler: Any) -> list[bool] | None:
    """The scaler's log channels as flags (None: no channel is on a log scale)."""
    log = getattr(scaler, "log", None)
    return None if log is None or not log.any() else [bool(b) for b in log]


def _calibrate(model: nn.Module, datamodule: Any,
               advice: Mapping[str, tuple[str, str]] | None = None,
               run: bool = False, task: Any = None,
               trained_task: bool = True, subsets: Any = "auto"
               ) -> tuple[NoiseCalibration, Subsets | None]:
    """``(calibration, subsets or None)``: the predictive noise of ``model`` on
    ``datamodule``'s validation split (its training split when it has none) and whether the
    forecaster predicts with subsets (``calibrate_forecaster``): ``calibrate_noise`` on
    ``calibration_batches`` (``task``'s masks; None: ``CALIBRATION_FOLDS`` passes of
    ``Folds``, every point held out once while the encoder sees the rest of its series, near
    the density ``predict`` conditions on), then the forecast curve over lead time
    (``calibrate_lead`` on the same series cut at random points).
    ``advice``: per split, what its series are and how to give more (``few_series_warning``);
    a split without an entry is not warned about (its caller has said what there is to say).
    ``run``: the data module is a trained run's (``from_run``): its splits' own words
    (``run_calibration_warnings``) instead of ``advice``. ``trained_task``: the data module's
    task is the one the model trained on (``fit``, ``from_run``; not ``from_model``'s): on
    folds, the noise is compared with its interpolation masks' (``density_warning``), and
    ``subsets="auto"`` may choose subsets."""
    # on each series' own clock, as predict answers every series (a model trained with
    # time_origin=batch on unaligned series, calibrated on its batch clock: 0.76-0.83 coverage
    # for 0.9, four seeds; on the series clock 0.87-0.89; docs/results.md)
    dtype = model_dtype(model)  # batches in the model's dtype (a float64 model: float64)
    # the in-series noise from points held out of series the encoder sees the rest of: the
    # training task's subsample (50-100% seen) left imputation intervals too wide on dense
    # damped oscillators (0.95 for 0.9), Folds 0.90 (docs/results.md, *In-series noise: folds*)
    calibration, chosen, density = calibrate_forecaster(
        model, datamodule, CALIBRATION_SAMPLES, CALIBRATION_SEED, task=task, subsets=subsets,
        trained_task=trained_task, origin="series", dtype=dtype)
    split = str(calibration.split)
    channels = [str(c) for c in datamodule.dataset.channels]
    part = datamodule.splits[split]
    texts = (run_calibration_warnings(part, calibration, channels, split) if run else
             calibration_warnings(part, calibration, channels, (advice or {}).get(split)))
    texts += density
    for text in texts:
        warnings.warn(text, stacklevel=3)
    log.info("predictive noise calibrated on %s points of the %s split: std %s (model units; "
             "obs_std %s)", calibration.points, split, ", ".join(
                 f"{name} {v:.4g}" for name, v in zip(channels, calibration.std, strict=False)),
             format_obs_std(calibration.obs_std))
    if calibration.lead_times:
        log.info("forecast noise over lead time (model units; channels %s): %s",
                 ", ".join(channels),
                 "; ".join(f"{t:.3g}: " + ", ".join(f"{v:.3g}" for v in row) for t, row in
                           zip(calibration.lead_times, calibration.lead_std, strict=True)))
    return calibration, chosen


def _with_absent_rows(out: pd.DataFrame, keys_df: pd.DataFrame, pred: pd.DataFrame,
                      spec: DataSpec, qs: list[float], indicator: bool = False
                      ) -> pd.DataFrame:
    """``out`` (a filled tidy frame) followed by rows for the (id, time, channel) combinations
    ``pred`` holds and the frame does not: each series' channels absent at one of its times.
    ``keys_df`` holds the frame's keys with times as the predictions hold them."""
    keys = [spec.id_col, spec.time_col, spec.channel_col]
    present = keys_df[keys].astype({spec.channel_col: str}).drop_duplicates()
    merged = pred.merge(present, how="left", on=keys, indicator=True)
    absent = merged[merged["_merge"] == "left_only"]
    if absent.empty:
        return out
    added = pd.DataFrame({c: absent[c].to_numpy() for c in keys})
    # back to the frame's own types: channel codes (lab item numbers), ISO text times
    added[spec.channel_col] = _as_given(added[spec.channel_col], out[spec.channel_col])
    sep = iso_separator(out[spec.time_col])  # '2150-03-04 13:22:00' stays in that style
    if sep is not None and not out[spec.time_col].equals(keys_df[spec.time_col]):
        added[spec.time_col] = added[spec.time_col].map(lambda t: t.isoformat(sep=sep))
    # what is constant within each series (an outcome, a ward) is the series' own value
    for col in out.columns:
        if col in (*keys, spec.value_col) or col in {quantile_name(q) for q in qs} or (
                indicator and col == "imputed"):
            continue
        per = out.groupby(spec.id_col, sort=False)[col]
        if (per.nunique(dropna=False) <= 1).all():
            added[col] = added[spec.id_col].map(per.first())
            with contextlib.suppress(TypeError, ValueError):
                added[col] = added[col].astype(out[col].dtype)
    added[spec.value_col] = absent["mean"].to_numpy()
    for q in qs:
        added[quantile_name(q)] = absent[quantile_name(q)].to_numpy()
    if indicator:
        added["imputed"] = True
    ranged = isinstance(out.index, pd.RangeIndex) and out.index.start == 0 and \
        out.index.step == 1
    if pd.api.types.is_integer_dtype(out.index.dtype) and not ranged:  # numbered on from the max
        start = int(out.index.max()) + 1 if len(out) else 0
        added.index = pd.RangeIndex(start, start + len(added))
    elif not ranged:  # labels of other kinds (text, dates): none to number on from
        added.index = pd.Index([None] * len(added), dtype=object)
    with contextlib.suppress(TypeError, ValueError):  # the frame's id type (integer ids)
        added[spec.id_col] = added[spec.id_col].astype(out[spec.id_col].dtype)
    return pd.concat([out, added], ignore_index=ranged)


def _as_given(names: pd.Series, given: pd.Series) -> pd.Series:
    """Channel names (text) as ``given`` spells them: ``'220045'`` as the integer item code
    220045 when the frame holds codes, with the frame's dtype where every name maps."""
    original = {str(v): v for v in pd.unique(given.dropna())}
    mapped = names.map(lambda c: original.get(c, c))
    # numeric codes: also those of channels this frame has no row of (a patient without that
    # lab), which stayed text ('202' beside 101: filtering on 202 found nothing)
    if names.isin(list(original)).all() or pd.api.types.is_numeric_dtype(given.dtype):
        with contextlib.suppress(TypeError, ValueError):
            return mapped.astype(given.dtype)
    return mapped


def _observed_first(pred: pd.DataFrame, ds: IrregularDataset | None, df: pd.DataFrame,
                    spec: DataSpec, qs: list[float]) -> pd.DataFrame:
    """``pred`` (long: id, time, channel, mean, quantiles) where a channel was observed at that
    (series, time) on another row of ``df``: the observation (the duplicates' mean, as the model
    read them), quantiles NaN. Without this a row repeating its (series, time) was filled with
    the posterior mean though the value had been measured then (temp 36.8 beside 38.5)."""
    keys = [spec.id_col, spec.time_col]
    if ds is None or not df.duplicated(
            [*keys, *([spec.channel_col] if spec.tidy else [])]).any():
        return pred
    channel = spec.channel_col if spec.tidy else "channel"  # as predict names it
    seen = ds.to_dataframe()[[*keys, *ds.channels]].melt(
        id_vars=keys, var_name=channel, value_name="\0seen").dropna(subset=["\0seen"])
    merged = pred.merge(seen.astype({channel: str}), how="left", on=[*keys, channel])
    known = merged["\0seen"].notna().to_numpy()
    if not known.any():
        return pred
    pred = pred.copy()
    pred.loc[known, "mean"] = merged.loc[known, "\0seen"].to_numpy()
    for q in qs:
        pred.loc[known, quantile_name(q)] = np.nan
    return pred


def _filled(column: pd.Series, missing: np.ndarray, means: pd.Series) -> pd.Series:
    """``column`` with the ``missing`` entries replaced (observed entries untouched)."""
    fill = means.to_numpy()
    if not pd.api.types.is_float_dtype(column.dtype):  # a nullable integer (Int64) column
        # with gaps could not take the float fill (TypeError): it becomes a float one
        extension = not isinstance(column.dtype, np.dtype)
        column = column.astype("Float64" if extension else np.float64)
    if pd.api.types.is_float_dtype(column.dtype) and isinstance(column.dtype, np.dtype):
        fill = fill.astype(column.dtype)
    return column.where(~missing, pd.Series(fill, index=column.index))


__all__ = ["LatentODEForecaster"]


OFF_GRID_GAP = 0.1
"""A time further than this share of the grid's local gap from its nearest grid time is off the
grid (rounded or jittered times are on it: 4 decimals scored alike, a review measured)."""


def grid_misses(grid: np.ndarray, t: np.ndarray) -> tuple[int, int]:
    """``(off, n)``: how many of the times ``t`` within the grid's span lie off
    ``grid``, of ``n`` there. Times past the span are walked on their own steps; they are
    compared as a stretch starting at the grid's start (a later stretch of the training clock,
    next year's dates of daily data, is on the grid so; another grid shifted past it is not)."""
    t = np.sort(t)
    inside = (t >= grid[0]) & (t <= grid[-1])
    parts = [t[inside]]
    past = t[t > grid[-1]]
    if len(past):
        parts.append(past - past[0] + grid[0])
    before = t[t < grid[0]]
    if len(before):
        parts.append(before - before[0] + grid[0])
    u = np.concatenate(parts)
    u = u[u <= grid[-1]]
    if not len(u) or len(grid) < 2:
        return 0, len(u)
    where = np.clip(np.searchsorted(grid, u), 1, len(grid) - 1)
    gap = grid[where] - grid[where - 1]
    nearest = np.minimum(np.abs(grid[where - 1] - u), np.abs(grid[where] - u))
    return int((nearest > OFF_GRID_GAP * gap).sum()), len(u)


def _warn_off_grid(ds: IrregularDataset, rows: list[int], walk: WalkGrid) -> None:
    """Warn when series are observed off the one time grid the model was trained on (a tenth
    of a series' times or more, each further than a tenth of the grid's gap from it).

    A union-trained encoder on a shared grid took the same Euler steps in every training batch
    and can learn that grid's gaps: the quick start's periodic model scored new sines on its
    grid at MSE 0.019-0.023 (a fifth of each series' times hidden) and on another grid at
    0.13-0.22, whichever walk; a model trained with each series on its own times 0.026 on that
    other grid (docs/results.md)."""
    grid = walk.times
    off_series, example, example_off, example_n = 0, None, 0, 0
    for i in rows:
        lo, hi = ds.offsets[i], ds.offsets[i + 1]
        seen = ~np.isnan(ds.values[lo:hi]).all(1)
        t = np.sort(ds.times[lo:hi][seen])
        if not len(t):
            continue
        if walk.origin == "series":
            t = t - t[0] + grid[0]
        off, n = grid_misses(grid, t)
        if off and off >= 0.1 * n:
            off_series += 1
            if example is None:
                example, example_off, example_n = ds.ids[i], off, n
    if off_series:
        warnings.warn(
            f"{off_series} of {len(rows)} series are observed at times off the one time grid "
            f"this model was trained on (series {example!r}: {example_off} of the {example_n} "
            "times compared): its encoder walked that grid's steps in every training batch and "
            "may have learned them (the periodic quick start's model: MSE 0.13-0.22 off its "
            "grid, 0.02 on it; trained on series each on its own times, 0.026 off that grid). "
            "For series on their own times, train on such data with "
            "model.encoder.schedule=series (data.dataset.own_grids=true for the periodic "
            "source; experiment=csv and LatentODEForecaster.fit do so).",
            stacklevel=user_stacklevel())


def _warn_beyond_training(ds: IrregularDataset, requests: list[tuple[int, Times]],
                          spec: DataSpec, windowed: bool = False) -> None:
    """Warn when a series is asked for further past its last observation than any training
    series (or, for a model trained on windows, a window) ever ran, or further before its first
    than a training series lasts (a backward solve; it answered one year back with -9.8 degC and
    narrow quantiles without a word): the model has never been trained that far, and its paths
    diverge there. A windowed model's path starts at the start of
    the window it is conditioned on, so every forecast of one runs past what a training path
    covered; the warning is for horizons longer than a whole window."""
    if not spec.train_span or not requests:
        return
    worst, worst_i, back, back_i = 0.0, -1, 0.0, -1
    for i, raw in requests:
        # from the last observation, not the last row (an all-NaN row at the asked time hid
        # the warning)
        row = last_observed_row(ds, i)
        if row is None:
            continue
        lo = ds.offsets[i]
        first_row = int(np.argmax(~np.isnan(ds.values[lo:ds.offsets[i + 1]]).all(1)))
        asked = spec.time.to_model(raw)
        ahead = float(np.max(asked)) - ds.times[lo + row]
        before = ds.times[lo + first_row] - float(np.min(asked))
        if ahead > worst:
            worst, worst_i = ahead, i
        if before > back:
            back, back_i = before, i
    if back > spec.train_span:  # a solve backwards from z0, which no training path ran
        warnings.warn(
            f"asked for times up to {back / spec.train_span:.1f}x the longest training series' "
            f"span before the first observation (series {ds.ids[back_i]!r}): the model was "
            "never trained to answer that far before a history (a latent ODE with z0 at the "
            "start solves backwards there), so expect errors well beyond the quantiles.",
            stacklevel=user_stacklevel(),
        )
    if worst > spec.train_span:
        what = "training windows' span" if windowed else "longest training series' span"
        warnings.warn(
            f"asked for times up to {worst / spec.train_span:.1f}x the {what} past the last "
            f"observation (series {ds.ids[worst_i]!r}): the model was never trained that far "
            "ahead, so expect errors well beyond the quantiles.",
            stacklevel=user_stacklevel(),
        )


FAR_MARGIN = 0.5  # history values beyond the training range by this share of it are warned about
FAR_FACTOR = 4.0  # and, on a channel trained on positive values, below its smallest / this


def _warn_far_from_training(ds: IrregularDataset, spec: DataSpec,
                            model_values: np.ndarray) -> None:
    """Warn when a history holds a value outside its channel's training range by more than
    ``FAR_MARGIN`` of that range (``model_values``, ``ds``'s values in model units: on a log
    channel, on its log scale) and, for a standardised channel, more than 3 training SDs from
    its mean: most often a unit mix-up
    (mg/dL for mmol/L, Pa for kPa), which gave ordinary-looking forecasts without a word (a
    history at 1e6x the training scale moved a test forecast's mean by 0.5%). Values the model
    was trained on never warn (rare spikes included). A linear channel given values 18x too
    small mostly stays inside that margin (glucose in mmol/L, 5.5, to a model of mg/dL trained
    on 40 to 400): see :func:`_far_below`. Nothing is checked for a forecaster saved without
    the range."""
    if spec.value_range is None or not len(ds.values):
        return
    known = [j for j, r in enumerate(spec.value_range) if r is not None]
    if not known:
        return
    with np.errstate(invalid="ignore"):
        model = model_values[:, known]
        lo, hi = np.array([spec.value_range[j] for j in known]).T
        margin = FAR_MARGIN * (hi - lo)
        far = (model < lo - margin) | (model > hi + margin)
        if spec.scale is not None:  # a near-constant channel: not for a hair's difference
            far &= np.abs(model) > 3.0
        far |= _far_below(ds, spec, known, lo, hi)
    if not far.any():
        return
    row, k = np.argwhere(far)[0]
    j = known[k]
    series = int(np.searchsorted(ds.offsets, row, side="right") - 1)
    ends = np.zeros((2, spec.n_channels))
    ends[:, j] = spec.value_range[j]
    low, high = spec.to_user_values(ends)[:, j]  # the training range in data units
    channels = sorted({spec.channels[known[c]] for c in np.nonzero(far.any(0))[0]})
    warnings.warn(
        f"channel {spec.channels[j]!r} of series {ds.ids[series]!r} holds "
        f"{ds.values[row, j]:.4g}, far outside the training values ({low:.4g} to {high:.4g}); "
        f"{int(far.sum())} such value(s) in channel(s) {channels}. The model was not trained "
        "on values like these, so its answers there are guesses: are they in the training "
        "data's units?",
        stacklevel=user_stacklevel(),  # the user's call (of predict, sample, impute, score)
    )


def _far_below(ds: IrregularDataset, spec: DataSpec, known: list[int], lo: np.ndarray,
               hi: np.ndarray) -> np.ndarray:
    """``(rows, len(known))``: the values below ``1 / FAR_FACTOR`` of a linear channel's smallest
    training value, where that channel was trained on positive values only and the series'
    median of it lies there too (above 0): a unit mix-up shifts a whole series by a factor. One
    low reading among ordinary ones, zeros and negative values (a temperature in degC near 0)
    are left to the range margin."""
    ends = np.zeros((2, spec.n_channels))
    ends[:, known] = np.array([lo, hi])
    low, high = spec.to_user_values(ends)[:, known]  # the training extremes in data units
    linear = np.array([not (spec.log and spec.log[j]) for j in known])
    positive = linear & (low > 1e-9 * np.abs(high))  # (a 0 comes back as ~1e-14)
    values = ds.values[:, known]
    if not positive.any():  # (the median per series costs ~1 s on a 1e6-row history)
        return np.zeros(values.shape, dtype=bool)
    lengths = np.diff(ds.offsets)
    series = np.repeat(np.arange(len(lengths)), lengths)
    median = pd.DataFrame(values).groupby(series).median().to_numpy()  # (series, k); NaN: unseen
    tiny = positive & (values > 0) & (values < low / FAR_FACTOR)
    shifted = positive & (median > 0) & (median < low / FAR_FACTOR)
    return tiny & shifted[series]


def _set_label_head(cfg: DictConfig, labels: np.ndarray, label_col: str) -> None:
    """``model.n_labels`` from the labels (1 for 0/1, else the number of classes 0..C-1),
    unless the overrides set it (then checked against the labels)."""
    n_labels = label_head_size(labels, label_col)
    with open_dict(cfg):
        if not cfg.model.get("n_labels"):
            cfg.model.n_labels = n_labels
        else:
            check_label_head(int(cfg.model.n_labels), labels, label_col)


WALK_GRID_MAX = 10_000  # at most this many distinct training times count as a shared grid


def distinct_within(times: np.ndarray, rel: float = 1e-9) -> np.ndarray:
    """The distinct values of ``times`` where values within ``rel`` of the span (or of one time
    unit) are one: times moved to each series' start differ by float rounding (0.3 - 0.0 and
    0.7 - 0.4), which must not make one grid time several."""
    values = np.sort(np.asarray(times, dtype=np.float64))
    if values.size == 0:
        return values
    tol = rel * max(float(values[-1] - values[0]), 1.0)
    keep = np.concatenate([[True], np.diff(values) > tol])
    return values[keep]


def _warn_if_worse_than_the_mean(calibration: NoiseCalibration, splits: dict[str, Any],
                                 channels: list[str], unscaled: bool) -> None:
    """Warn where the calibrated noise exceeds twice a channel's own spread on the series it
    was calibrated on: the model answers far worse than that channel's mean would, as a model
    given values in other units than it trained on does (a scaled model with scaler=None)."""
    if calibration.split not in splits:
        return
    values = splits[calibration.split].values
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a channel never observed there
        spread = np.nanstd(values, axis=0)
    ratio = np.asarray(calibration.std, dtype=np.float64) / np.where(spread > 0, spread, np.nan)
    bad = np.nan_to_num(ratio) > 2.0
    if bad.any():
        j = int(np.argmax(np.nan_to_num(ratio)))
        hint = ("scaler=None, but was the model trained on scaled values? Pass its "
                "ChannelScaler." if unscaled else "is this the scaler the model was trained "
                "with, and the data it was trained on?")
        warnings.warn(
            f"channel {channels[j]!r}: the calibrated noise is {ratio[j]:.3g}x the channel's "
            f"own spread on the {calibration.split} series, i.e. the model answers far worse "
            f"than the channel's mean would. {hint}", stacklevel=3)


def _union_walk_grid(cfg: DictConfig, model: nn.Module, datamodule: Any) -> WalkGrid | None:
    """The grid a union-trained encoder walked in training, for prediction to walk each series
    through (``DataSpec.walk_grid``), or None, with a warning, where there is none to follow.

    The union walk steps every series through every time its batch mates were observed at;
    a model trained so learns the Euler steps of that grid, and walked through its own
    observations alone it predicts far worse (the quick start's periodic model: test MSE 1.02
    against 0.021; a full-size hopper run 0.0044 against 0.0022). On a shared grid (distinct
    training times at most twice the longest series' count) the union is that grid, so each
    series walked alone through it takes the training steps, independent of its batch."""
    from latentode.nn import RNNEncoder

    if isinstance(getattr(model, "encoder", None), RNNEncoder):
        return None  # it steps at a series' own observations only: union and series walks agree
    train = datamodule.splits["train"]
    origin = OmegaConf.select(cfg, "data.time_origin", default="batch") or "batch"
    grid = None
    if getattr(model, "encoder", None) is not None and getattr(
            model.encoder, "walks_series", False) and getattr(datamodule, "window", None) is None:
        starts, ends = train.offsets[:-1], train.offsets[1:]
        times = np.asarray(train.times, dtype=np.float64)
        if origin == "series" and len(starts):
            times = times - np.repeat(times[starts], ends - starts)
        distinct = distinct_within(times)
        longest = int((ends - starts).max()) if len(starts) else 0
        if 0 < len(distinct) <= min(WALK_GRID_MAX, 2 * longest):
            grid = WalkGrid(distinct, origin)
    if grid is None:
        warnings.warn(
            "this model's encoder was trained walking each batch's union of time points "
            "(model.encoder.schedule=union, the paper code's walk) on data without a shared "
            "time grid; the forecaster walks each series through its own observations, so that "
            "an answer does not depend on the batch, which this model was not trained for. For "
            "forecasting, train with model.encoder.schedule=series (experiment=csv and "
            "LatentODEForecaster.fit do; in Python ODERNNEncoder(..., schedule='series')).",
            stacklevel=user_stacklevel())
    else:
        log.info("this run's encoder was trained on the union walk of a shared grid (%d "
                 "times): each series is walked alone through its observations and that grid, "
                 "the steps it took in training", len(grid.times))
    return grid

