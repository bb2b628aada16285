"""``latentode-train``: compose the config, train, test, and write everything into the run dir.

    latentode-train                                   # periodic interpolation, ODE-RNN encoder
    latentode-train experiment=periodic_extrap trainer.max_epochs=100
    latentode-train model/encoder=rnn model.latents=6 data.batch_size=100
    latentode-train ckpt_path=outputs/train/<run>/checkpoints/last.ckpt trainer.max_epochs=80
    latentode-train ckpt_path=last hydra.run.dir=DIR    # start, or resume DIR after preemption
    latentode-train -m model.latents=8,16 seed=1,2,3    # a sweep: one dir per job, summary.csv
    latentode-train hparams_search=periodic_optuna       # an Optuna search (conf/hparams_search)

The run directory (``outputs/<task_name>/<date>_<time>``, see ``conf/hydra``) receives the
config (``.hydra/config.yaml``), ``metrics.csv``, ``checkpoints/`` (best and ``last.ckpt``),
``test_metrics.json`` and ``plots/test_series.png``. A sweep job also writes ``job_status.json``
(status, metrics, error) for the sweep's ``summary.csv`` (:mod:`latentode.cli.sweep`).
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import json
import logging
import math
import shlex
import shutil
import signal
import sys
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import hydra
import lightning as L
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_object, instantiate
from lightning.pytorch.callbacks import ModelCheckpoint, WeightAveraging
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from latentode.cli import config_dir
from latentode.cli.checkpoints import (
    RunRecord,
    check_resume,
    keep_own_run_files,
    keep_run_settings,
    put_back_run_files,
    read_checkpoint,
    refuse_replacing_a_run,
    restored_on_failure,
    snapshot_run_files,
)
from latentode.cli.errors import input_errors
from latentode.cli.lock import RunDirInUseError, run_dir_lock
from latentode.cli.options import refuse_unread_settings
from latentode.cli.sweep import (
    failed_jobs,
    record_refused_job,
    refresh_enclosing_sweep,
    write_job_record,
)
from latentode.cli.typos import run_app
from latentode.data.labels import check_label_head, label_head_size
from latentode.lit.csv_logger import RunCSVLogger
from latentode.lit.plots import plot_test_series
from latentode.models import ODERNN, LatentODE
from latentode.utils.stack import format_warning_for_commands

log = logging.getLogger(__name__)


class _DropAdvert(logging.Filter):
    """Lightning's tip to install its cloud logger: an advertisement, not information."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "try installing [litlogger]" not in record.getMessage()


_ADVERT = _DropAdvert()


def drop_adverts() -> None:
    """Keep Lightning's cloud-logger tip out of the output (also for library use: fit)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_ADVERT)  # the same filter once: adding is idempotent


def quiet_known_warnings() -> None:
    """Silence warnings that say nothing here: a deprecation Lightning 2.6 itself triggers under
    recent torch, and the notice that the EMA callback is missing when a checkpoint is tested or
    evaluated (left out on purpose: the checkpoint's state_dict is the averaged weights, see
    run_test). Other warnings (about the data, say) are logged, so the run's log file keeps them."""
    # the rest go through logging, into the run's <task>.log too; off first, so that a second
    # run in one process (tests, notebooks) installs it again if something restored showwarning
    logging.captureWarnings(False)
    logging.captureWarnings(True)
    warnings.formatwarning = format_warning_for_commands  # (no "<frozen runpy>:198:")
    drop_adverts()
    warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec")
    warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`, callbacks")


def setup_runtime(cfg: DictConfig) -> None:
    """Torch threads and seeds from the config."""
    for key in ("threads", "seed"):  # int("abc") raised from here with a traceback
        value = cfg.get(key)
        if value is not None and not _whole_number(value):
            raise ValueError(f"{key}={value!r} must be a whole number (or null).")
    threads = cfg.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True, verbose=False)


def _whole_number(value: Any) -> bool:
    """An int, or text of one (``${oc.env:SLURM_ARRAY_TASK_ID}`` gives text); not a bool or a
    float."""
    if isinstance(value, (bool, float)):
        return False
    try:
        int(value)
    except (TypeError, ValueError):
        return False
    return True


def build_datamodule(cfg: DictConfig) -> Any:
    """Instantiate ``cfg.data`` and set it up (split, scaler), so the data's shape is known."""
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    return datamodule


def build_model(cfg: DictConfig, datamodule: Any) -> torch.nn.Module:
    """Instantiate ``cfg.model``, taking ``input_dim`` from the data when it is null."""
    channels = datamodule.dataset.n_channels
    with open_dict(cfg):
        if cfg.model.get("input_dim") is None:
            cfg.model.input_dim = channels
        elif int(cfg.model.input_dim) != channels:
            raise ValueError(f"model.input_dim={cfg.model.input_dim} but the data have "
                             f"{channels} channels; leave it null to take it from the data.")
    check_arguments(cfg.model, "model")
    _warn_unused_solver(cfg)
    _resolve_output_bias(cfg, datamodule)
    data = datamodule.dataset
    _check_labels(cfg.model, data)
    model = instantiate(cfg.model)
    # warnings (not log records) about the data, so that callers rebuilding a trained run's
    # model (LatentODEForecaster.from_run, latentode-predict) can keep them to themselves
    if data.static is not None:
        warnings.warn(f"static covariates {data.static_names} are loaded and batched, but the "
                      "models read the time series only: they do not inform the predictions",
                      stacklevel=2)
    return model


OUTPUT_BIAS = ("auto", "data_mean")
"""Words ``model.output_bias`` takes besides numbers and null (the models' own option)."""


def _resolve_output_bias(cfg: DictConfig, datamodule: Any) -> None:
    """``model.output_bias``: ``data_mean`` starts the decoder's bias at the training series'
    channel means (in the model's units); ``auto`` does so when the data are fed unscaled
    (``data.scale=false``) and the decoder is the model's own, and keeps the start as
    initialised when standardised (means ~0) or for a decoder of the user's
    (``+model.decoder=...``: what its output is, after its last layer, is its own business).
    The values replace the word in the config, so the run's record (``hparams.yaml``, the
    checkpoint) holds what its model started from."""
    bias = cfg.model.get("output_bias")
    if not isinstance(bias, str):
        return
    if bias not in OUTPUT_BIAS:
        raise ValueError(f"model.output_bias must be a number, one per channel, null or one of "
                         f"{OUTPUT_BIAS}, got {bias!r}.")
    unscaled = not getattr(datamodule, "scale", True)
    splits = getattr(datamodule, "splits", None)
    if splits is None and bias == "data_mean":
        raise ValueError(f"model.output_bias=data_mean reads the training split, which "
                         f"{type(datamodule).__name__} does not have (no .splits): give the "
                         "values, one per channel.")
    with open_dict(cfg):
        users_decoder = cfg.model.get("decoder") is not None
        if splits is None or (bias == "auto" and (not unscaled or users_decoder)):
            cfg.model.output_bias = None
        else:
            cfg.model.output_bias = channel_means(splits["train"].values)


def channel_means(values: np.ndarray) -> list[float]:
    """Mean of each channel's observed (non-NaN) values; 0 for a channel never observed."""
    seen = ~np.isnan(values)
    count = seen.sum(axis=0)
    total = np.where(seen, values, 0.0).sum(axis=0)
    return [float(t / c) if c else 0.0 for t, c in zip(total, count, strict=True)]


def _check_labels(model_cfg: DictConfig, data: Any) -> None:
    """Before training (not in its loss or metrics): a classifier head that fits the labels,
    labels for a classifier, and a word on labels that no part of the model reads."""
    n_labels = int(model_cfg.get("n_labels") or 0)
    if n_labels and data.labels is None:
        raise ValueError(
            f"model.n_labels={n_labels} asks for a classifier, but the data have no labels: name "
            "the label column (data.dataset.label_col=... for data=csv; "
            "data.dataset.labels=true for data=physionet) or set model.n_labels=0."
        )
    if data.labels is None:
        return
    if n_labels:
        check_label_head(n_labels, data.labels, data.label_col)
        if model_cfg.get("label_type", "series") == "series" and data.label_kind == "time":
            raise ValueError(_per_time_labels_message(data))
    elif "n_labels" in model_cfg:
        need = label_head_size(data.labels, data.label_col)
        warnings.warn(f"labels of column {data.label_col!r} are loaded, but model.n_labels=0: no "
                      f"part of the model reads them. Add model.n_labels={need} to train a "
                      "classifier beside the reconstruction.", stacklevel=3)
    else:
        warnings.warn(f"labels of column {data.label_col!r} are loaded, but {model_cfg._target_} "
                      "has no classifier: they are not used (the latent ODE, model=latent_ode, "
                      "classifies with model.n_labels).", stacklevel=3)


def _warn_unused_solver(cfg: DictConfig) -> None:
    """``solver=...`` on the command line reaches models that read ``${solver}`` (the latent
    ODE); the baselines have their own (``model.solver``) or none, so say it changes nothing."""
    if not HydraConfig.initialized():
        return
    touched = [o for o in HydraConfig.get().overrides.task
               if o.lstrip("+~").split("=")[0].split(".")[0] == "solver"]
    node = cfg.model._get_node("solver") if "solver" in cfg.model else None
    reads = node is not None and OmegaConf.is_interpolation(cfg.model, "solver") and \
        str(node._value()).strip() == "${solver}"
    if touched and not reads:
        own = ("its own ODE solver between observations is model.solver (e.g. "
               "model.solver.method=rk4)" if "solver" in cfg.model else "it solves no ODE")
        warnings.warn(f"{' '.join(touched)} does not reach {cfg.model._target_}: {own}.",
                      stacklevel=2)


def _per_time_labels_message(data: Any) -> str:
    """Why a per-series classifier cannot take these labels: the series where one changes."""
    for i in range(len(data)):
        own = data.labels[data.offsets[i]:data.offsets[i + 1]]
        known = own[~np.isnan(own)]
        if len(np.unique(known)) > 1:
            return (f"label column {data.label_col!r} changes within series {data.ids[i]!r} "
                    f"(values {sorted(set(known.tolist()))[:5]}), so it was read as a label per "
                    "time point, but model.label_type=series needs one label per series: make "
                    "it constant within each series, or set model.label_type=time.")
    return (f"label column {data.label_col!r} holds a label per time point, but "
            "model.label_type=series needs one per series (data.dataset.label_per=series).")


def check_arguments(node: Any, where: str) -> None:
    """Refuse a key of a ``_target_`` config that its class does not take, naming the key, the
    class, its options and the closest one, before ``instantiate`` would raise a bare TypeError
    (a misspelt ``+model.latent=8``, or ``experiment=csv``'s encoder walk under a baseline)."""
    if not isinstance(node, DictConfig):
        return
    target = node.get("_target_")
    if isinstance(target, str):
        try:
            params: Mapping[str, inspect.Parameter] = inspect.signature(
                get_object(target)).parameters
        except (ValueError, TypeError, ImportError):  # not a class, or no signature: let it be
            params = {}
        if params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            options = [n for n, p in params.items() if p.kind is not p.VAR_POSITIONAL]
            for key in node:
                if str(key).startswith("_") or key in params:
                    continue
                close = difflib.get_close_matches(str(key), options, n=1)
                hint = f" Did you mean {where}.{close[0]}?" if close else ""
                other = _other_encoders_option(target, str(key))
                if other:  # not a typo: a setting for another encoder (was "did you mean")
                    hint = other.replace("WHERE", where)
                if key == "encoder":
                    hint += (" An experiment made for the latent ODE sets it (experiment=csv: "
                             "with a model without an encoder, use data=csv instead).")
                raise ValueError(
                    f"{where}.{key!s} is not an option of {target} (its options: "
                    f"{', '.join(options)}).{hint}")
            for key, param in params.items():
                if key in node:
                    check_value_type(node, str(key), param.annotation, where)
    for key in node:
        if not str(key).startswith("_"):
            child = node._get_node(key)
            if isinstance(child, DictConfig):
                check_arguments(child, f"{where}.{key!s}")


def _other_encoders_option(target: str, key: str) -> str:
    """For ``model.encoder.ode_units`` under the RNN encoder: whose option it is, and the
    presets made for the chosen encoder (``experiment=hopper_interp model/encoder=rnn``: the
    hopper latent ODE's preset sets the ODE-RNN encoder's sizes; its RNN twin is
    ``model=hopper_latent_ode_rnn``); '' when no other encoder config has ``key``."""
    import re

    encoders = Path(config_dir()) / "model" / "encoder"
    texts = {p.stem: p.read_text() for p in sorted(encoders.glob("*.yaml"))}
    chosen = [name for name, text in texts.items()
              if re.search(rf"^_target_:\s*{re.escape(target)}\s*$", text, re.M)]
    owners = [name for name, text in texts.items()
              if name not in chosen and re.search(rf"^{re.escape(key)}:", text, re.M)]
    if not chosen or not owners:
        return ""
    presets = sorted(p.stem for p in encoders.parent.glob("*.yaml")
                     if re.search(rf"override encoder:\s*{chosen[0]}\b", p.read_text()))
    return (f" {key} is an option of model/encoder={owners[0]} (a model preset made for that "
            f"encoder sets it); with model/encoder={chosen[0]} remove it "
            f"(~WHERE.{key})" + (f" or choose the preset made for {chosen[0]}: "
                                  f"{', '.join('model=' + p for p in presets)}" if presets
                                  else "") + ".")


_SIMPLE_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "None": (type(None),)}


def check_value_type(node: DictConfig, key: str, annotation: Any, where: str) -> None:
    """Refuse a value whose type a simple annotation (``int``, ``float | None``, ``bool``...)
    rules out, naming the key (``model.latents=4.5``, ``data.batch_size=abc``: a TypeError
    from deep inside torch or a comparison before). Annotations of other kinds are not
    checked; a value Hydra cannot resolve yet is left to ``instantiate``, and the configs' word
    ``auto`` to the code that resolves it before (``refresh_rate: auto``: :func:`build_group`)."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    parts = [part.strip() for part in str(text).split("|")]
    if not parts or not all(part in _SIMPLE_TYPES for part in parts):
        return
    try:
        value = node[key]
    except Exception:  # a missing or unresolvable value: instantiate says what is wrong
        return
    if value is None or value == "auto":  # (null: filled in from the data, e.g. input_dim)
        return
    allowed = tuple(t for part in parts for t in _SIMPLE_TYPES[part])
    if (int in allowed and isinstance(value, float)
            and (value.is_integer() or math.isinf(value))):
        return  # a count given as 1e3 or .inf (EarlyStopping's patience): Lightning takes it
    # (True is an int to Python: not a whole number here)
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        wanted = " or ".join("null" if p == "None" else
                             {"int": "a whole number", "float": "a number", "bool": "true/false",
                              "str": "text"}[p] for p in parts)
        raise ValueError(f"{where}.{key}={value!r} must be {wanted} ({text}).")


def build_module(cfg: DictConfig, model: torch.nn.Module, datamodule: Any) -> L.LightningModule:
    """The LightningModule around ``model``, with the data scaler's per-channel scale."""
    scaler = getattr(datamodule, "scaler", None)
    scale = None if scaler is None else [float(s) for s in scaler.scale]
    log = None if scaler is None else getattr(scaler, "log", None)
    log_scale = None if scaler is None or log is None or not log.any() else (
        [float(m) for m in scaler.mean], [bool(b) for b in log])
    return instantiate(cfg.module, model=model, scale=scale, log_scale=log_scale)


def build_group(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a group such as ``callbacks`` or ``logger`` that has a target.
    ``refresh_rate: auto`` (the progress bar) is 1 where someone watches (a terminal, a
    notebook) and 0 where output goes to a file (batch jobs: a line per batch floods logs)."""
    if not cfg:
        return []
    out = []
    for c in cfg.values():
        if not (isinstance(c, DictConfig) and "_target_" in c):
            continue
        if c.get("refresh_rate") == "auto":
            out.append(instantiate(c, refresh_rate=1 if interactive() else 0))
        else:
            out.append(instantiate(c))
    return out


def interactive() -> bool:
    """Whether progress output is watched: stderr is a terminal, or a Jupyter kernel runs."""
    return sys.stderr.isatty() or "ipykernel" in sys.modules


def output_dir(cfg: DictConfig) -> Path:
    """The run's output directory."""
    return Path(cfg.paths.output_dir)


def format_metrics(metrics: dict[str, float], title: str = "test metrics") -> str:
    """A small two-column table."""
    width = max([len(k) for k in metrics], default=0)
    lines = [title, "-" * max(width + 16, len(title))]
    lines += [f"{k:<{width}}  {v:>14.6g}" for k, v in sorted(metrics.items())]
    return "\n".join(lines)


def _scalars(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if k.startswith(prefix)}


def run_test(cfg: DictConfig, trainer: L.Trainer, module: L.LightningModule, datamodule: Any,
             ckpt_path: str | None, label: str | None = None) -> dict[str, float]:
    """Test ``ckpt_path`` (or the module's weights), print the table, write json and plots.

    ``label`` names the weights in the table and in ``test_metrics.json`` (default: the path).
    """
    if not getattr(datamodule, "splits", None):
        datamodule.setup("test")
    if len(datamodule.splits.get("test", ())) == 0:
        log.warning("no test series (data.test_fraction=%s, %d series in all): test metrics and "
                    "plots skipped", cfg.get("data", {}).get("test_fraction"),
                    len(datamodule.dataset))
        return {}
    # a checkpoint's state_dict holds the averaged weights of a WeightAveraging (EMA) callback;
    # with the callback attached, loading it would restore the raw weights for the test instead
    # (Trainer.callbacks and .fast_dev_run are set by its __init__, not declared in the class)
    trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, WeightAveraging)]  # type: ignore[attr-defined]
    results = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    if not trainer.is_global_zero:  # under DDP the metrics are reduced; one process writes them
        return metrics
    out = output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    label = label or ckpt_path
    record: dict[str, Any] = {"ckpt_path": label, "metrics": metrics}
    source = ckpt_path or (label if label and Path(label).is_file() else None)
    try:  # how long the tested weights were trained (tables tell partial runs from whole ones)
        record.update(checkpoint_progress(source) if source else
                      {"epochs": int(trainer.current_epoch),
                       "global_step": int(trainer.global_step)})
    except (OSError, ValueError, RuntimeError) as err:
        log.warning("test_metrics.json without epochs: %s", err)
    (out / "test_metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    print(format_metrics(metrics, f"test metrics ({label or 'final weights'})"), flush=True)
    if "test/mse_data" in metrics:
        scaled = getattr(datamodule, "scaler", None) is not None
        units = ("standardised units, as the model sees the data" if scaled
                 else "the model's units, here the data's own (data.scale=false)")
        print(f"(mse: {units}; mse_data: the data's own units, mse_data/<channel> each "
              "channel's; mse_seen/mse_unseen: points the encoder saw / did not see)",
              flush=True)
    plots = cfg.get("plots") or {}
    n_series = int(plots.get("n_series", 4)) if isinstance(plots, DictConfig) else 0
    if n_series > 0:
        model = module.model
        assert isinstance(model, torch.nn.Module)  # LatentODELightning's (a Module attribute)
        path = plot_test_series(model, datamodule, out / "plots" / "test_series.png",
                                n_series=n_series, n_samples=int(plots.get("n_samples", 30)),
                                seed=int(cfg.get("seed") or 0))
        log.info("plot written to %s", path)
    return metrics


def cuda_graph_hint(device_type: str, model: torch.nn.Module) -> str | None:
    """A line suggesting the ``cuda_graph`` option when training on a GPU without it, for a
    latent ODE or ODE-RNN whose walk can be recorded (union walk, one Euler step per gap)."""
    if device_type != "cuda":
        return None
    if isinstance(model, LatentODE):
        part, key, what = model.encoder, "model.encoder.cuda_graph", "encoder"
    elif isinstance(model, ODERNN):
        part, key, what = model, "model.cuda_graph", "walk"
    else:
        return None
    if getattr(part, "cuda_graph", True) or getattr(part, "schedule", "union") != "union":
        return None
    if not getattr(part, "_single_euler_step", True):
        return None
    return (f"training on a GPU: {key}=true replays the {what}'s training pass from CUDA graphs "
            f"(same numbers, ~3x shorter hopper epochs on an H200; for batches of fixed shapes; "
            f"README: Training, On a GPU)")


def checkpoint_progress(path: str) -> dict[str, int]:
    """How far training had got when a Lightning checkpoint was saved: ``epochs`` trained (our
    checkpoints are written at epoch ends) and ``global_step``; read without building the model."""
    saved = read_checkpoint(path)
    if not isinstance(saved, dict) or "global_step" not in saved or "epoch" not in saved:
        raise ValueError(f"ckpt_path={path} is not a Lightning training checkpoint (no "
                         "epoch/global_step); pass a checkpoint written by latentode-train")
    return {"epochs": int(saved["epoch"]) + 1, "global_step": int(saved["global_step"])}


def checkpoint_step(path: str) -> int:
    """The global step a Lightning checkpoint was saved at."""
    return checkpoint_progress(path)["global_step"]


def check_epochs_left(cfg: DictConfig, saved: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint that trained more epochs than ``trainer.max_epochs`` (Lightning
    raised deep inside ``fit``, after the run's ``.hydra`` files were rewritten); equal counts
    only test again."""
    max_epochs = (cfg.get("trainer") or {}).get("max_epochs")
    if not cfg.get("train", True) or max_epochs is None or max_epochs < 0 or "epoch" not in saved:
        return
    trained = int(saved["epoch"]) + 1
    if trained > max_epochs:
        raise ValueError(
            f"ckpt_path={cfg.ckpt_path} has trained {trained} epochs, more than "
            f"trainer.max_epochs={max_epochs}: training cannot go back. To test it again, "
            f"use trainer.max_epochs={trained} (or train=false); to train on, a larger "
            "trainer.max_epochs.")


def resolve_last_checkpoint(cfg: DictConfig) -> None:
    """``ckpt_path=last``: resume from this run dir's ``checkpoints/last.ckpt`` if it exists, else
    start afresh, so that one command line both starts a job and resumes it after preemption
    (a requeued SLURM job, a run in chunks: ``ckpt_path=last hydra.run.dir=DIR``)."""
    if cfg.get("ckpt_path") != "last":
        return
    callback = (cfg.get("callbacks") or {}).get("last_checkpoint")
    if not callback or not callback.get("dirpath"):
        raise ValueError(
            "ckpt_path=last resumes from the last_checkpoint callback's file, but "
            "callbacks.last_checkpoint is switched off in this config; keep it (as "
            "callbacks=default does) or pass the checkpoint's path: ckpt_path=PATH/last.ckpt"
        )
    path = Path(callback.dirpath) / f"{callback.get('filename') or 'last'}.ckpt"
    if not cfg.get("train", True) and not path.is_file():
        raise FileNotFoundError(f"ckpt_path=last with train=false: no checkpoint at {path} to test")
    with open_dict(cfg):
        cfg.ckpt_path = str(path) if path.is_file() else None
    if cfg.ckpt_path:
        progress = checkpoint_progress(cfg.ckpt_path)
        log.info("ckpt_path=last: resuming from %s (%d epochs trained)", path, progress["epochs"])
    else:
        log.info("ckpt_path=last: no %s yet, training from the start", path)


def continue_metrics(cfg: DictConfig, trainer: L.Trainer) -> None:
    """Resumed or test-only runs continue the run dir's metrics.csv rather than replace it."""
    loggers = [lg for lg in trainer.loggers if isinstance(lg, RunCSVLogger)]
    if not loggers:
        return
    if not cfg.get("train", True):
        step: int | None = None  # test only: keep every row, append the test rows
    elif cfg.get("ckpt_path"):
        step = checkpoint_step(str(cfg.ckpt_path))
    else:
        return
    for logger in loggers:
        logger.continue_from(step)


_TRAINER_COUNTS = ("max_epochs", "min_epochs", "max_steps", "log_every_n_steps",
                   "check_val_every_n_epoch", "accumulate_grad_batches")


def check_trainer_counts(cfg: DictConfig) -> None:
    """Counts Lightning asserts on deep inside ``fit`` (``trainer.max_epochs=ten``), refused up
    front with their name."""
    for key in _TRAINER_COUNTS:
        value = (cfg.get("trainer") or {}).get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"trainer.{key} must be a whole number, got {value!r}.")


def train(cfg: DictConfig) -> dict[str, float]:
    """Train and test as ``cfg`` says; returns the metrics (validation of the last epoch, test).
    Another command training into the same directory is refused (:mod:`latentode.cli.lock`)."""
    check_trainer_counts(cfg)
    refuse_unread_settings(cfg)
    for group in ("data", "module", "trainer", "callbacks", "logger"):  # model: build_model
        check_arguments(cfg.get(group), group)
    run_dir = output_dir(cfg)
    own = HydraConfig.initialized() and Path(
        HydraConfig.get().runtime.output_dir).resolve() != run_dir.resolve()
    sweep = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    option = "paths.output_dir" if own else "hydra.sweep.dir" if sweep else "hydra.run.dir"
    record: dict[str, Any] = {}  # this run's RunRecord, once made
    try:
        with run_dir_lock(run_dir, option):
            try:
                return _train(cfg, run_dir, record)
            finally:
                keep_own_run_files(record, run_dir)
    except RunDirInUseError:  # Hydra has written this command's .hydra files over the other's
        put_back_run_files(run_dir)
        raise


def _train(cfg: DictConfig, run_dir: Path, record: dict[str, Any]) -> dict[str, float]:
    asked_last = cfg.get("ckpt_path") == "last"
    try:
        resolve_last_checkpoint(cfg)
    except BaseException:  # a damaged last.ckpt: the run's .hydra files as they were
        if asked_last and put_back_run_files(run_dir):
            log.error("this resume failed before training: the run's %s files were put back",
                      run_dir / ".hydra")
        raise
    if cfg.get("train", True) and not cfg.get("ckpt_path"):
        own = HydraConfig.initialized() and Path(
            HydraConfig.get().runtime.output_dir).resolve() != run_dir.resolve()
        refuse_replacing_a_run(run_dir, asked_last=asked_last, own_output_dir=own)
    with restored_on_failure(cfg.get("ckpt_path"), run_dir) as saved:
        setup_runtime(cfg)
        datamodule = build_datamodule(cfg)
        model = build_model(cfg, datamodule)
        if saved is not None:  # a default changed since the run started: kept as it trained
            keep_run_settings(cfg, saved, run_dir)
        module = build_module(cfg, model, datamodule)
        if saved is not None:  # a model that does not fit the checkpoint: said before training
            check_resume(cfg, module, saved, str(cfg.ckpt_path), run_dir)
            check_epochs_left(cfg, saved)
    callbacks = build_group(cfg.get("callbacks"))
    no_validation = _without_validation(cfg, datamodule)
    if no_validation:
        callbacks = drop_validation_monitors(callbacks, no_validation)
    task, search = run_overrides()
    run_record = RunRecord(cfg, task, run_dir, search)
    record.update(run_record.record)
    callbacks.append(run_record)
    loggers = build_group(cfg.get("logger"))
    skip = {"limit_val_batches": 0} if no_validation and (cfg.trainer or {}).get(
        "limit_val_batches") is None else {}  # (Lightning: "Total length ... is zero")
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                     **skip)
    continue_metrics(cfg, trainer)
    for logger in trainer.loggers:
        logger.log_hyperparams(cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True)))
    try:
        device_type = trainer.strategy.root_device.type
    except (AttributeError, IndexError, TypeError, RuntimeError):  # no device chosen yet
        device_type = "cpu"
    hint = cuda_graph_hint(device_type, model)
    if hint:
        log.info(hint)
    with stopped_by_signal(trainer, run_dir):
        return _fit_and_test(cfg, trainer, module, datamodule)


def _fit_and_test(cfg: DictConfig, trainer: L.Trainer, module: L.LightningModule,
                  datamodule: Any) -> dict[str, float]:
    metrics: dict[str, float] = {}
    if cfg.get("train", True):
        if cfg.get("ckpt_path"):  # resuming in place finds its own checkpoints there, as it should
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* is not empty")
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics.update(_scalars(trainer.callback_metrics, "val/"))
        metrics.update(_scalars(trainer.callback_metrics, "train/"))
        if not trainer.fast_dev_run:  # type: ignore[attr-defined]  # a smoke test learns nothing
            check_learned(trainer, module, datamodule, output_dir(cfg))
    if cfg.get("test", True):
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
        if best is None and not cfg.get("train", True):
            best = cfg.get("ckpt_path")
        if trainer.fast_dev_run:  # type: ignore[attr-defined]  # see run_test
            best = None
        metrics.update(run_test(cfg, trainer, module, datamodule, best))
    return metrics


LEARNED_LITTLE = 0.7
"""A run whose validation MSE is at least this share of the channel-mean predictor's learned
little: latent ODEs can sit near that level for a while before they learn. On the default
recipe without ``module.grad_clip`` (40 seeds) the two runs that never left it ended at 0.77
and 0.88 (normalised, about the same share); the others below 0.05, a late one at 0.26."""


def learned_little(val: float | None, datamodule: Any, model: Any = None) -> str | None:
    """What to say when the validation MSE ``val`` is at least :data:`LEARNED_LITTLE` of what
    predicting each channel's mean scores on the validation split (else None): such a run
    printed its metrics like any other. Not for a model trained without reconstructing
    (``reconstruct=False``: labels alone, its MSE means nothing) or a non-finite ``val`` (a
    diverged run, said elsewhere)."""
    split = getattr(datamodule, "splits", {}).get("val")
    if val is None or not math.isfinite(val) or split is None or not len(split):
        return None
    if getattr(model, "reconstruct", True) is False:
        return None
    baseline = split.channel_mean_mse()
    if not baseline > 0 or val < LEARNED_LITTLE * baseline:
        return None
    return (f"the model has learned little beyond the channel means: val/mse {val:.4g} is "
            f"{val / baseline:.2f} of what predicting each channel's mean scores on the "
            f"validation split ({baseline:.4g}). These models can stay near that level for "
            "tens of epochs before they learn (README: Results, Training)")


def learned_little_report(trainer: L.Trainer, module: L.LightningModule, datamodule: Any
                          ) -> tuple[str, int, int] | None:
    """:func:`learned_little` on the fit's best validation MSE (the last epoch's, and the
    checkpoint's best where it monitors ``val/mse``), with the epochs run and asked; None
    when it learned, or logged no ``val/mse``."""
    last = trainer.callback_metrics.get("val/mse")
    if last is None:
        return None
    scores = [float(last)]
    callback = trainer.checkpoint_callback
    best = getattr(callback, "best_model_score", None)
    if getattr(callback, "monitor", None) == "val/mse" and best is not None:
        scores.append(float(best))
    said = learned_little(min(scores), datamodule, getattr(module, "model", None))
    if not said:
        return None
    epochs = trainer.current_epoch
    asked = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 \
        else epochs
    return said, epochs, asked


def check_learned(trainer: L.Trainer, module: L.LightningModule, datamodule: Any,
                  run_dir: Path) -> None:
    """Log :func:`learned_little`'s warning with what to do: the command that trains the run
    longer where it keeps a last checkpoint and ran all its epochs (resuming an early-stopped
    run stops it again), else a new run."""
    report = learned_little_report(trainer, module, datamodule)
    if report is None:
        return
    said, epochs, asked = report
    longer = max(2 * max(epochs, 1), asked)
    if epochs < asked:
        todo = (f"training stopped after {epochs} of {asked} epochs (early stopping, max_steps "
                "or max_time): train again with another seed or a longer patience.")
    elif not (run_dir / "checkpoints" / "last.ckpt").is_file():
        todo = (f"train again with another seed or trainer.max_epochs={longer} (this run "
                "keeps no last.ckpt to resume).")
    else:
        todo = f"train longer or with another seed. {_going_on(run_dir, longer)}."
    log.warning("%s. After %d epochs: %s", said, epochs, todo)


def _going_on(run_dir: Path, epochs: int | None = None) -> str:
    """How to continue a stopped run (or, given ``epochs``, to train a finished one to that
    many): the same command in place, or for a sweep's job (where the same command starts the
    sweep afresh in a new directory) the job's own command."""
    more = [] if epochs is None else [f"trainer.max_epochs={epochs}"]
    if not (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN):
        return ("To go on, run the same command with "
                + " ".join(["ckpt_path=last", f"hydra.run.dir={run_dir}", *more]))
    task, search = run_overrides()
    given = [o for o in [*search, *task] if not o.startswith(
        ("ckpt_path=", "hydra.run.dir=", *(("trainer.max_epochs=",) if more else ())))]
    # hydra.mode=RUN: a search's config (hparams_search=...) sets MULTIRUN itself
    command = " ".join(shlex.quote(o) for o in [*given, "hydra.mode=RUN", "ckpt_path=last",
                                                 f"hydra.run.dir={run_dir}", *more])
    return f"To go on with this job: latentode-train {command} (without -m" + (
        "; the sweep's later jobs did not run)" if epochs is None else ")")


class TrainingInterrupted(SystemExit):
    """A run stopped by SIGTERM (a scheduler's preemption) or SIGINT (Ctrl+C): exit status
    128 + the signal's number, as a shell reports a process the signal ended."""

    def __init__(self, signal_name: str, message: str):
        super().__init__(128 + int(getattr(signal, signal_name)))
        self.signal_name, self.message = signal_name, message

    def __str__(self) -> str:
        return self.message


@contextlib.contextmanager
def stopped_by_signal(trainer: L.Trainer, run_dir: Path) -> Iterator[None]:
    """Turn Lightning's ends of a run stopped by a signal into :class:`TrainingInterrupted`,
    logged with where the run stands: Lightning raised SystemExit with no code for SIGTERM (exit
    status 0, nothing in the log: a preempted job looked finished) and exited 1 for Ctrl+C."""
    try:
        yield
    except SystemExit as stop:
        if isinstance(stop, TrainingInterrupted):
            raise
        if isinstance(stop, SIGTERMException):
            name = "SIGTERM"
        elif isinstance(stop.__context__, KeyboardInterrupt):
            name = "SIGINT"
        else:
            raise
        last = next((Path(c.dirpath) / f"{c.filename}.ckpt" for c in trainer.checkpoint_callbacks
                     if isinstance(c, ModelCheckpoint) and c.monitor is None and c.dirpath
                     and c.filename), run_dir / "checkpoints" / "last.ckpt")
        try:
            kept = f"{last} holds {checkpoint_progress(str(last))['epochs']} epochs"
        except (OSError, ValueError):
            kept = f"no {last} to resume from"
        where = ("while testing" if trainer.testing
                 else f"during epoch {trainer.current_epoch + 1}, not tested")
        message = f"training stopped by {name} {where}: {kept}. {_going_on(run_dir)}"
        log.error(message)
        raise TrainingInterrupted(name, message) from None


def _without_validation(cfg: DictConfig, datamodule: Any) -> str:
    """Why this run validates nothing ('' when it does): no validation series (too few series
    to hold any out, ``data.val_fraction=0``, a source's fixed split without one) or
    ``trainer.limit_val_batches=0``."""
    splits = getattr(datamodule, "splits", None)
    if isinstance(splits, dict) and "val" in splits and len(splits["val"]) == 0:
        return "no validation series"
    limit = (cfg.get("trainer") or {}).get("limit_val_batches")
    if limit is not None and limit == 0:  # (False too: Lightning reads it as 0)
        return f"trainer.limit_val_batches={limit}"
    return ""


def drop_validation_monitors(callbacks: list[Any], why: str) -> list[Any]:
    """Callbacks watching a ``val/`` metric in a run that validates nothing: early stopping is
    refused by name (Lightning raised "Early stopping conditioned on metric val/mse which is
    not available" after the first epoch), a best-checkpoint callback is left out with a line
    in the log (Lightning warned every epoch that it found no val/mse): the test then uses the
    last weights."""
    from lightning.pytorch.callbacks import EarlyStopping

    kept = []
    for callback in callbacks:
        monitor = getattr(callback, "monitor", None)
        if not (isinstance(monitor, str) and monitor.startswith("val/")):
            kept.append(callback)
            continue
        if isinstance(callback, EarlyStopping):
            fix = ("set trainer.limit_val_batches=null (an experiment may set it to 0)"
                   if why.startswith("trainer.") else
                   "hold out validation series (data.val_fraction > 0, with 3 or more series; "
                   "for a source's fixed split without them, as the hopper's, carve some "
                   "from the training series with data.split, as hparams_search=hopper_optuna "
                   "does)")
            raise ValueError(
                f"early stopping watches {monitor}, but this run validates nothing ({why}): "
                f"{fix}, or train without it (callbacks=default).")
        log.info("%s: the checkpoint of the best %s is not kept (%s); the test uses the last "
                 "weights", type(callback).__name__, monitor, why)
    return kept


def run_overrides() -> tuple[list[str], list[str]]:
    """The command line's overrides that rebuild this run's config: the task's, and its
    ``hydra.searchpath`` ones (a user's own config directory), without which a resume hint
    naming the user's configs (``model=my_model``) could not be composed."""
    if not HydraConfig.initialized():
        return [], []
    overrides = HydraConfig.get().overrides
    search = [str(o) for o in overrides.hydra
              if str(o).lstrip("+").startswith("hydra.searchpath=")]
    return list(overrides.task), search


def metric_value(metrics: dict[str, float], name: str | None) -> float | None:
    """The metric a sweep optimises (None when none is configured)."""
    if not name:
        return None
    if name not in metrics:
        log.warning("optimized_metric %r was not logged (logged: %s)", name, sorted(metrics))
        return None
    value = metrics[name]
    return value if math.isfinite(value) else float("inf")


_TASK_STARTED = [False]  # whether hydra_main's task ran in this command (else Hydra failed first)


def main() -> None:
    """Entry point of ``latentode-train``: Hydra's app; exit status 1 when jobs of a sweep
    failed (they are recorded in its summary.csv and the other jobs still run). When Hydra
    cannot compose the command line (a misspelt key or group option), a line after its error
    names the closest existing one (:mod:`latentode.cli.typos`); a run that failed is not
    composed again."""
    failed_jobs(reset=True)
    _TASK_STARTED[0] = False
    run_app(hydra_main, "train", "latentode-train", started=lambda: _TASK_STARTED[0])
    if failed_jobs():
        raise SystemExit(1)


def keep_config_with_outputs(cfg: DictConfig, hydra_cfg: Any) -> Path:
    """The run's output directory, with Hydra's record of the run (``.hydra/``) copied into it
    when ``paths.output_dir`` was set apart from Hydra's run dir: ``latentode-eval``,
    ``latentode-predict`` and ``from_run`` find a run's config above its checkpoint, and a
    run trained with ``paths.output_dir=runs/a`` had its checkpoints there and its config in
    ``outputs/train/<date>``, so none of them could use it."""
    out = Path(cfg.paths.output_dir)
    run_dir, subdir = Path(hydra_cfg.runtime.output_dir), hydra_cfg.output_subdir
    if subdir is None or out.resolve() == run_dir.resolve():
        return out
    record = run_dir / str(subdir)
    if record.is_dir():
        snapshot_run_files(out)  # a run there already: its files, if the run is refused
        shutil.copytree(record, out / ".hydra", dirs_exist_ok=True)
        log.info("paths.output_dir is not Hydra's run dir (%s): its record copied to %s",
                 run_dir, out / ".hydra")
    return out


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    """The Hydra app (Hydra parses the command line): one run, or one job of a sweep."""
    _TASK_STARTED[0] = True
    quiet_known_warnings()
    hydra_cfg = HydraConfig.get()
    log.info("output directory: %s", keep_config_with_outputs(cfg, hydra_cfg))
    if hydra_cfg.mode != RunMode.MULTIRUN:  # errors propagate; no sweep reads the metric
        with input_errors("latentode-train"):
            metrics = train(cfg)
        refresh_enclosing_sweep(Path(hydra_cfg.runtime.output_dir))
        name = cfg.get("optimized_metric")
        # (a test-only run, or one whose checkpoint already reached max_epochs, logs no val/
        # metric: nothing to warn about outside a sweep)
        return metric_value(metrics, name) if name in metrics else None
    return sweep_job(cfg, Path(hydra_cfg.runtime.output_dir))


def sweep_job(cfg: DictConfig, run_dir: Path) -> float | None:
    """One job of a sweep (``latentode-train -m``): train, record the outcome in
    ``run_dir/job_status.json`` for the sweep's ``summary.csv``, return the optimised metric.

    A job that raises is logged with its traceback and recorded as failed, and returns None, so
    that the sweep goes on: a grid sweep runs its other jobs, and the Optuna sweeper records the
    trial as failed (it cannot cast None to float) and asks for the next one. A NaN or infinite
    metric is returned as ``inf`` (see :func:`metric_value`).
    """
    try:
        metrics = train(cfg)
    except RunDirInUseError as refused:  # the directory is another run's: nothing written there
        log.error("job refused: %s", refused)
        record_refused_job(run_dir, refused)
        return None
    except TrainingInterrupted as stop:  # the sweep stops too: recorded, its table written
        write_job_record(run_dir, "interrupted", error=stop)
        record_stopped_job(run_dir, stop, recorded=True)
        log.error("the sweep stops with this job (%s): the jobs after it did not run",
                  stop.signal_name)
        raise
    except Exception as error:
        log.exception("job failed (%s); recorded in the sweep's summary.csv, the sweep goes on",
                      type(error).__name__)
        write_job_record(run_dir, "failed", error=error)
        return None
    value = metric_value(metrics, cfg.get("optimized_metric"))
    name = cfg.get("optimized_metric")
    validated = sorted(k for k in metrics if k.startswith("val/"))
    if value is None and name and name not in metrics and validated and _searching():
        # the trial validated but under other names: a misspelt metric, which every trial
        # would miss (each trained for nothing, then Optuna's "Record does not exist"). A
        # trial that did not validate at all fails alone, as before.
        close = difflib.get_close_matches(str(name), list(metrics), n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        message = (f"optimized_metric={name} was not logged by this trial, so the search has "
                   f"nothing to optimise; it stops here rather than train the other trials for "
                   f"nothing.{hint} Validation metrics logged: {', '.join(validated)}.")
        stopped = ValueError(message)
        write_job_record(run_dir, "failed", metrics=metrics, error=stopped)
        record_stopped_job(run_dir, stopped)  # the table, as Hydra's job end would have
        log.error("stopping the search: %s", message)
        raise SystemExit(f"latentode-train: error: {message}")
    write_job_record(run_dir, "completed", metrics=metrics, objective=value)
    return value


def record_stopped_job(run_dir: Path, error: BaseException, recorded: bool = False) -> None:
    """The sweep's record and ``summary.csv`` row of a job that stops the search (SystemExit
    passes by Hydra's job end, which writes them), and its Optuna trial marked FAIL;
    ``recorded``: the row's status and error from the job's ``job_status.json``."""
    from hydra.core.utils import JobReturn, JobStatus

    from latentode.cli.sweep import SweepSummary, fail_trial_of_job

    hydra_cfg = HydraConfig.get()
    config = OmegaConf.create({"hydra": {
        "mode": hydra_cfg.mode, "runtime": {"output_dir": str(run_dir)},
        "sweep": {"dir": str(hydra_cfg.sweep.dir)}, "job": {"num": hydra_cfg.job.num},
        "sweeper": OmegaConf.to_container(hydra_cfg.sweeper, resolve=True)}})
    done = JobReturn(overrides=list(hydra_cfg.overrides.task),
                     status=JobStatus.COMPLETED if recorded else JobStatus.FAILED,
                     _return_value=None if recorded else error)
    with contextlib.suppress(Exception):  # the table must not hide the error itself
        SweepSummary().on_job_end(config, done)
    with contextlib.suppress(Exception):  # its trial: FAIL now, not RUNNING until a resume
        fail_trial_of_job(config, list(hydra_cfg.overrides.task))


def _searching() -> bool:
    """Whether this job is a trial of a search that optimises the returned metric (a sweeper
    other than Hydra's grid: Optuna's, say)."""
    if not HydraConfig.initialized():
        return False
    sweeper = cast(Any, HydraConfig.get()).sweeper
    target = str(sweeper.get("_target_", "") if sweeper is not None else "")
    return bool(target) and not target.endswith("BasicSweeper")


if __name__ == "__main__":
    main()
