"""``latentode-eval ckpt_path=...``: the test metrics of a checkpoint, from its run's config.

    latentode-eval ckpt_path=outputs/train/<run>/checkpoints/last.ckpt
    latentode-eval ckpt_path=... 'overrides=["data.batch_size=200"]'

The run's resolved-at-use config is read from the run directory (the nearest ``.hydra/config.yaml``
above the checkpoint); data, model and LightningModule are rebuilt from it and the checkpoint's
weights are tested. Validation/test posterior samples are seeded per series, so the numbers equal
the ones ``latentode-train`` printed for the same checkpoint. ``overrides`` change the run's
config (unknown keys are errors); results go to this evaluation's own output directory.

Beside the metrics of ``latentode-train``, the evaluation reports the coverage of posterior
predictive intervals: the fraction of held-out test points (targets the encoder did not see) whose
value lies in the central 90% interval (5th to 95th percentile) of the predictive distribution of
an observation, estimated from ``coverage.n_samples`` posterior samples per series plus Gaussian
observation noise. About 0.9 is calibrated; far less means over-confident intervals. Two numbers:

* ``test/coverage90``: with the noise ``coverage.noise`` names, by default ``calibrated``: per
  channel, the noise that makes residuals of held-out points of the run's validation split (the
  training split when there is none) match the predictive spread, floored at the model's
  ``obs_std`` (``latentode.forecast.calibration``; the same noise ``LatentODEForecaster.predict``
  uses). ``model``: the model's fixed ``obs_std`` (the likelihood it is trained with, typically
  far too small); ``none``: the sample paths alone.
* ``test/coverage90_model_noise``: always with the model's ``obs_std``, to compare.

Which points are held out (``coverage.held_out``), in the calibration and on the test series
alike: ``folds`` (default) five passes of ``latentode.data.Folds``, every observed point held
out once while the encoder sees the other four fifths of its series, each series on its own
clock and a held-out point past its channel's span (a series' first or last) with the lead
curve, as ``LatentODEForecaster.from_run`` calibrates and answers (its ``predict`` conditions
on all of a series' points); ``task`` the run's own task masks on the run's clock, every
held-out point with the in-series noise (an interpolation protocol's density, a ``Mixed``
task's interpolation part), as before 2026-12-06.

With the calibrated noise, forecasts are scored too: each test series cut at a random point
(20-80% of its span, ``latentode.forecast.calibration.lead_task``), the points after the cut
predicted from the points before it. ``test/coverage90_forecast`` uses the noise curve over lead
time that ``LatentODEForecaster.predict`` uses (calibrated the same way on the validation
split), ``test/coverage90_forecast_constant`` the noise of points inside the series at every
lead, to compare.

The numbers of one kind are scored on the same sampled paths and noise draws. They are printed
with the calibrated noise per channel and written to ``test_metrics.json`` under ``"coverage"``
(with the noise, its calibration and the options; ``"metrics"`` keeps exactly the keys
``latentode-train`` writes, so the two files compare key for key).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from latentode.cli import config_dir
from latentode.cli.errors import input_errors
from latentode.cli.options import refuse_foreign_options
from latentode.cli.runs import load_run
from latentode.cli.train import (
    build_group,
    build_module,
    format_metrics,
    output_dir,
    quiet_known_warnings,
    run_test,
    setup_runtime,
)
from latentode.cli.typos import run_app
from latentode.forecast.adopt import model_dtype
from latentode.forecast.calibration import (
    CALIBRATION_FOLDS,
    calibrate_forecaster,
    calibrate_split,
    calibration_batches,
    forecast_coverage_breakdown,
    format_obs_std,
    interpolation_task,
    lead_task,
    model_obs_std,
    predictive_coverage,
    run_calibration_warnings,
    subsets_candidate,
    subsets_mode,
)
from latentode.forecast.coverage import check_level

log = logging.getLogger(__name__)


def coverage_name(level: float) -> str:
    """``test/coverage90`` for level 0.9."""
    return f"test/coverage{100 * level:g}"


NOISE_MODES = ("calibrated", "model", "none")
HELD_OUT = ("folds", "task")  # coverage.held_out: which test points, and the calibration's


def noise_mode(value: Any) -> str:
    """``coverage.noise`` as one of ``NOISE_MODES`` (``true``: calibrated, ``false``: none)."""
    if value is None or value is False:
        return "none"
    if value is True:
        return "calibrated"
    mode = str(value).strip().lower()
    if mode not in NOISE_MODES:
        raise ValueError(f"coverage.noise must be one of {list(NOISE_MODES)}, got {value!r}.")
    return mode


def held_out_mode(value: Any) -> str:
    """``coverage.held_out`` as one of ``HELD_OUT``."""
    mode = str(value).strip().lower()
    if mode not in HELD_OUT:
        raise ValueError(f"coverage.held_out must be one of {list(HELD_OUT)} (folds: each point "
                         f"once, the encoder seeing the rest of its series; task: the run's "
                         f"task masks), got {value!r}.")
    return mode


def report_coverage(eval_cfg: DictConfig, cfg: DictConfig, module: Any, datamodule: Any,
                    metrics: dict[str, float]) -> dict[str, float]:
    """Compute ``test/coverage90`` (or the configured level) with the configured noise and
    ``test/coverage90_model_noise`` with the model's ``obs_std``, print them, add them to
    ``test_metrics.json`` under ``"coverage"``; returns ``metrics`` with them."""
    options = eval_cfg.get("coverage") or {}
    if not options.get("enabled", True):
        return metrics
    level = check_level(options.get("level", 0.9))
    samples = int(options.get("n_samples", 100))
    mode = noise_mode(options.get("noise", "calibrated"))
    seed = int(cfg.module.get("eval_seed", 0) or 0)
    model = module.model
    obs = model_obs_std(model)
    calibration = None
    breakdown: dict[str, Any] | None = None
    std: Any = {"model": obs, "none": None}.get(mode)
    held_out = held_out_mode(options.get("held_out", "folds"))
    folds = CALIBRATION_FOLDS if held_out == "folds" else None
    # folds: as from_run's forecaster calibrates and answers (each series on its own clock, in
    # the model's dtype; points past a channel's span, a series' first and last when held out,
    # with the lead curve); task: the run's clock and masks, as before
    origin = "series" if folds is not None else None
    dtype = model_dtype(model) if folds is not None else torch.float32
    channels = [str(c) for c in datamodule.dataset.channels]
    asked = subsets_mode(options.get("subsets", "auto"))
    subsets = None  # predicting as from_run's forecaster: with subsets or not
    texts: list[str] = []
    # from_run's calibration, and with it whether its forecaster answers with subsets (decided
    # so whatever noise is scored here; with the model's or none, only where there are
    # subsets to decide on)
    decide = asked is not False and subsets_candidate(model, datamodule.task, asked)[1] is not None
    if folds is not None and (mode == "calibrated" or decide):
        calibration, subsets, texts = calibrate_forecaster(
            model, datamodule, samples, seed, subsets=asked, origin=origin, dtype=dtype)
    elif mode == "calibrated":
        calibration = calibrate_split(model, datamodule, samples, seed)
    if calibration is not None and mode == "calibrated":  # about the noise scored
        split = str(calibration.split)
        texts = run_calibration_warnings(datamodule.splits[split], calibration, channels,
                                         split) + texts
    for text in texts:
        log.warning("coverage: %s", text)
    if mode != "calibrated":
        calibration = None  # the decision's; the noise scored is the model's or none
    else:
        assert calibration is not None
        std = calibration if folds is not None else calibration.std
    name = coverage_name(level)
    model_name = f"{name}_model_noise"
    # the held-out points inside the test series: every point once over the folds (as the
    # noise was calibrated: the density predict conditions on), or the run's task masks (a
    # Mixed task's cut series are forecasts, scored below with the lead curve)
    if folds is not None:
        inside = calibration_batches(datamodule, "test", max_series=None, folds=folds,
                                     origin=origin, dtype=dtype)[0]
    elif interpolation_task(datamodule.task) is datamodule.task:
        inside = datamodule.test_dataloader()
    else:
        inside = calibration_batches(datamodule, "test", max_series=None)[0]
    values = predictive_coverage(model, inside, {name: std, model_name: obs}, level, samples,
                                 seed, subsets)
    if calibration is not None:
        tests, _ = calibration_batches(datamodule, "test", max_series=None, task=lead_task(),
                                       origin=origin, dtype=dtype)
        breakdown = forecast_coverage_breakdown(model, tests, calibration, channels, level,
                                                samples, seed, subsets)
        values[f"{name}_forecast"] = breakdown["all"]
        values[f"{name}_forecast_constant"] = breakdown["all_constant"]
        table = {f"{name}_forecast/{c}": v for c, v in breakdown["channel"].items()}
        table.update({f"{name}_forecast/lead{k}": v for k, v in breakdown["lead"].items()})
        table.update({f"{name}_forecast/history{k}": v
                      for k, v in breakdown["history"].items()})
        print(format_metrics(table, "forecast coverage per channel, per lead (model time "
                                    "units past the channel's last observation) and per "
                                    "history length (times the encoder saw)"), flush=True)
    conditioned = "all seen points" if subsets is None else str(subsets)
    # a value with a measurement uncertainty is covered by the mixture with its own added
    known = ("; each value's own measurement uncertainty added"
             if getattr(datamodule.dataset, "errors", None) is not None else "")
    print(format_metrics(values, f"posterior predictive coverage ({samples} samples; held "
                                 f"out: {held_out}; conditioned on {conditioned}{known}; "
                                 f"noise: {mode}, and "
                                 f"obs_std={format_obs_std(obs)} for _model_noise; "
                                 "_forecast: "
                                 "test series cut at 20-80%, the rest forecast)"), flush=True)
    if calibration is not None:
        channels = list(datamodule.dataset.channels)
        scale = (np.ones(len(channels)) if datamodule.scaler is None
                 else np.asarray(datamodule.scaler.scale, dtype=np.float64).ravel())
        table = {}
        logged = getattr(datamodule.scaler, "log", None)  # channels standardised as log(value)
        for j, (c, model_std, data_std) in enumerate(zip(channels, calibration.std,
                                                         calibration.array * scale,
                                                         strict=True)):
            table[f"noise_std/{c}"] = model_std
            if datamodule.scaler is not None and not (logged is not None and logged[j]):
                table[f"noise_std_data/{c}"] = float(data_std)  # log channels: multiplicative
            if calibration.error_rms:  # the measurement noise the calibration left out
                table[f"measurement_rms/{c}"] = calibration.error_rms[j]
        print(format_metrics(table, f"calibrated noise std (model units; {calibration.points} "
                                    f"points of the {calibration.split} split, held out: "
                                    f"{held_out}"
                                    + ("; beyond the values' measurement uncertainties, "
                                       "measurement_rms" if calibration.error_rms else "")
                                    + ")"), flush=True)
    path = output_dir(cfg) / "test_metrics.json"
    if path.is_file():
        record = json.loads(path.read_text())
        record["coverage"] = {
            **values, "level": level, "n_samples": samples, "noise": mode, "obs_std": obs,
            "held_out": held_out,
            "subsets": None if subsets is None else subsets.to_json(),
            "forecast_breakdown": breakdown,
            "noise_std": None if std is None else np.broadcast_to(
                np.asarray(calibration.std if calibration is not None else std,
                           dtype=np.float64), (len(datamodule.dataset.channels),)).tolist(),
            "calibration": None if calibration is None else calibration.to_json(),
        }
        path.write_text(json.dumps(record, indent=2) + "\n")
    return {**metrics, **values}


def evaluate(eval_cfg: DictConfig) -> dict[str, float]:
    """Test ``eval_cfg.ckpt_path`` with the data and model of its run; returns the metrics."""
    refuse_foreign_options(eval_cfg, "eval", "latentode-eval")
    options = eval_cfg.get("coverage") or {}
    noise_mode(options.get("noise", "calibrated"))  # before the test pass: fail early
    held_out = held_out_mode(options.get("held_out", "folds"))
    asked = subsets_mode(options.get("subsets", "auto"))
    if held_out == "task" and asked is True:
        raise ValueError("coverage.subsets=true scores a forecaster that conditions on subsets "
                         "(held_out=folds); coverage.held_out=task scores the run's own task "
                         "masks: drop one of them.")

    def prepare(cfg: DictConfig, _config_path: object) -> None:
        with open_dict(cfg):
            cfg.paths = eval_cfg.paths  # outputs of this evaluation go to its own directory
            cfg.threads = eval_cfg.get("threads", cfg.get("threads"))
            if not eval_cfg.get("plot", True):
                cfg.plots = {"n_series": 0}
        setup_runtime(cfg)

    run = load_run(str(eval_cfg.ckpt_path), list(eval_cfg.get("overrides") or []),
                   use="the test metrics", prepare=prepare)
    cfg, datamodule, ckpt = run.cfg, run.datamodule, run.ckpt
    if held_out == "folds":  # subsets that cannot work refused before the test pass
        subsets_candidate(run.model, datamodule.task, asked)
    if len(datamodule.splits["test"]) == 0:
        raise ValueError(
            f"the run's test split has no series ({len(datamodule.dataset)} series in all, "
            f"data.test_fraction={cfg.data.get('test_fraction')}): nothing to evaluate. Point "
            "it at data with more series: 'overrides=[\"data.dataset.path=OTHER.csv\"]'.")
    module = build_module(cfg, run.model, datamodule)
    progress = [c for c in build_group(cfg.get("callbacks")) if "ProgressBar" in type(c).__name__]
    trainer = instantiate(cfg.trainer, callbacks=progress, logger=False,
                          enable_checkpointing=False,
                          default_root_dir=str(eval_cfg.paths.output_dir))
    metrics = run_test(cfg, trainer, module, datamodule, None, label=str(ckpt))
    return report_coverage(eval_cfg, cfg, module, datamodule, metrics)


_TASK_STARTED = [False]  # whether hydra_main's task ran (else Hydra failed to compose)


def main() -> None:
    """Entry point of ``latentode-eval``: Hydra's app; a misspelt key or option on the command line
    gets a line naming the closest one after Hydra's error (:mod:`latentode.cli.typos`)."""
    _TASK_STARTED[0] = False
    run_app(hydra_main, "eval", "latentode-eval", plus_refused=False,
            started=lambda: _TASK_STARTED[0])


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
def hydra_main(cfg: DictConfig) -> None:
    """The Hydra app of ``latentode-eval`` (Hydra parses the command line)."""
    _TASK_STARTED[0] = True
    quiet_known_warnings()
    with input_errors("latentode-eval"):
        evaluate(cfg)


if __name__ == "__main__":
    main()
