"""A ``latentode-train`` run rebuilt from its directory: config, data, model and weights.

``latentode-eval``, ``LatentODEForecaster.from_run`` (and so ``latentode-predict``) and the
study scripts read a finished run the same way: the checkpoint (a file, or the run directory's
``checkpoints/last.ckpt``), the run's ``.hydra/config.yaml`` above it, a data file named
relative to where the run was started made absolute, the caller's ``overrides`` (unknown keys
refused), the data module (its scaler and time transform fitted on the training split again),
the model, and the checkpoint's weights, checked against the model by name before loading.
:func:`load_run` is that sequence; each caller adds only its own steps.
"""

from __future__ import annotations

import copy
import logging
import pickle
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from latentode.cli import load_settings
from latentode.cli.checkpoints import (
    RUN_RECORD,
    config_differences,
    load_fitting,
    read_checkpoint,
    resolve_checkpoint,
    warn_if_data_changed,
)
from latentode.cli.options import suggest_key
from latentode.cli.train import build_datamodule, build_model

log = logging.getLogger(__name__)


@dataclass
class LoadedRun:
    """What :func:`load_run` rebuilt: the checkpoint's path and contents, the run's config
    file and config (with the caller's overrides), its data module and its model, holding the
    checkpoint's weights."""

    ckpt: Path
    config_path: Path
    cfg: DictConfig
    datamodule: Any
    model: torch.nn.Module
    checkpoint: dict[str, Any]


def find_run_config(ckpt_path: Path) -> Path:
    """The ``.hydra/config.yaml`` of the run that wrote ``ckpt_path`` (searched upwards)."""
    for parent in ckpt_path.parents:
        candidate = parent / ".hydra" / "config.yaml"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no .hydra/config.yaml in any directory above {ckpt_path}; latentode-eval needs the "
        "checkpoint inside the output directory of the latentode-train run that wrote it."
    )


def anchor_data_path(cfg: DictConfig, config_path: Path) -> None:
    """A data file given relative to where the run was started (``data.dataset.path=x.csv``)
    made absolute from that directory (Hydra's ``.hydra/hydra.yaml``), so that evaluating or
    predicting from any other directory reads the same file."""
    path = OmegaConf.select(cfg, "data.dataset.path", default=None)
    hydra_file = config_path.parent / "hydra.yaml"
    if not isinstance(path, str) or Path(path).is_absolute() or not hydra_file.is_file():
        return
    cwd = OmegaConf.select(OmegaConf.load(hydra_file), "hydra.runtime.cwd", default=None)
    if cwd:
        with open_dict(cfg):
            cfg.data.dataset.path = str(Path(cwd) / path)


def build_run_datamodule(cfg: DictConfig, config_path: Path) -> Any:
    """The run's data module, rebuilt from its config (its scaler and time transform come from
    the training split); a data file that is gone says how to point the run at its new place."""
    try:
        return build_datamodule(cfg)
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"{error} The run's data is rebuilt from its config ({config_path}): its scaler "
            "and time transform are fitted on the training split. If the data moved, point "
            "the run at it: latentode-eval/-predict ... 'overrides=[\"data.dataset.path=NEW\"]' "
            "(Python: from_run(ckpt, overrides=[\"data.dataset.path=NEW\"]); data.dataset.root "
            "for a directory source)."
        ) from error


def apply_overrides(cfg: DictConfig, overrides: list[str]) -> None:
    """``key=value`` overrides on ``cfg`` in struct mode: an unknown key is an error."""
    OmegaConf.set_struct(cfg, True)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value.")
        key, raw = item.split("=", 1)
        if OmegaConf.select(cfg, key, throw_on_missing=False, default=KeyError) is KeyError:
            raise ValueError(f"override {item!r}: the run's config has no key {key!r}."
                             + suggest_key(cfg, key))
        OmegaConf.update(cfg, key, yaml.safe_load(raw), merge=False)


ANCHORED = ("data.dataset.path",)
"""Settings :func:`anchor_data_path` rewrites (a relative data file made absolute)."""

NOT_THE_MODEL = ("data.batch_size", "data.num_workers")
"""Settings that change how a run's data are served, not what the model or its scores are."""


def warn_if_config_changed(saved: dict[str, Any] | None, written: DictConfig, cfg: DictConfig,
                           ckpt: Path, config_path: Path) -> None:
    """Warn when the run's config file (``written``) builds a model or data other than those
    the checkpoint was trained with (its run record, ``saved``), and the caller's overrides
    (``cfg``: the file's config with them) do not put them back: the weights of a model of the
    same shapes load without a word (an ``obs_std``, a solver or a time scale changed by a
    resume with other options, which rewrites the config file, or by hand), and an earlier
    checkpoint of that run would then be used as another model. What the overrides change
    themselves (``solver.rtol=...``, also where it reaches the model through an
    interpolation) is the caller's choice, not said."""
    if not saved:
        return

    def keys(config: DictConfig) -> dict[str, str]:
        lines = config_differences(saved, config, ("model", "data"), set())
        out = {line.split(":", 1)[0]: line for line in lines}
        return {k: v for k, v in out.items() if not k.startswith((*ANCHORED, *NOT_THE_MODEL))}

    in_file = keys(written)
    lines = [line for key, line in keys(cfg).items() if key in in_file]
    if lines:
        shown = "\n".join(f"  {line}" for line in lines[:8]) + (
            f"\n  ... and {len(lines) - 8} more" if len(lines) > 8 else "")
        warnings.warn(
            f"{ckpt} was trained with settings other than its run's config {config_path} "
            f"gives (the run was resumed with other options, or the file edited):\n{shown}\n"
            "The model and data are built from the config file; to use the checkpoint as it "
            "was trained, pass its values with overrides=[...].", stacklevel=3)


def load_run(ckpt_path: str | Path, overrides: Sequence[str] = (), *, use: str,
             prepare: Callable[[DictConfig, Path], None] | None = None,
             quiet_rebuild: bool = False) -> LoadedRun:
    """Rebuild the run that wrote ``ckpt_path`` (a checkpoint or a run directory) and load its
    weights into its model.

    Args:
        overrides: ``key=value`` changes to the run's config (an unknown key is refused).
        use: what the rebuilt run serves, for the warning when its data, rebuilt from the
            config, differ from what it was trained on (e.g. ``"the test metrics"``).
        prepare: called with the config and its file before anything is built (the caller's
            output paths, threads, seeds).
        quiet_rebuild: the warnings that rebuilding the training data repeats (they were given
            at training time) are logged as one line instead of shown again.

    The checkpoint is read with ``weights_only=True``: it holds tensors and plain containers
    only, so loading a run never runs code from the file.
    """
    ckpt = resolve_checkpoint(ckpt_path)
    config_path = find_run_config(ckpt)
    log.info("run config: %s", config_path)
    cfg = load_settings(config_path)
    anchor_data_path(cfg, config_path)
    written = copy.deepcopy(cfg)  # the file's settings, for warn_if_config_changed
    apply_overrides(cfg, list(overrides))
    if prepare is not None:
        prepare(cfg, config_path)
    with warnings.catch_warnings(record=quiet_rebuild) as repeated:
        if quiet_rebuild:
            warnings.simplefilter("always")
        datamodule = build_run_datamodule(cfg, config_path)
        model = build_model(cfg, datamodule)
    if repeated:
        log.info("rebuilding the run's training data repeated %d warning(s) from training "
                 "(see the run's log file), e.g.: %s", len(repeated), repeated[0].message)
    try:
        checkpoint = read_checkpoint(ckpt, weights_only=True, mmap=False, what="")
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{ckpt} holds objects other than tensors and plain containers, which latentode "
            "does not unpickle (weights_only=True: loading a run never runs code from the "
            "file; latentode-train's own checkpoints hold none). If you wrote or trust it, "
            "load it with torch.load(..., weights_only=False), keep 'state_dict', "
            "'latentode_run', 'epoch' and 'global_step', and torch.save that instead. "
            f"torch said: {str(error).splitlines()[0]}") from error
    record = checkpoint.get(RUN_RECORD) or {}
    warn_if_data_changed(record.get("data"), datamodule, use)
    warn_if_config_changed(record.get("config"), written, cfg, ckpt, config_path)
    weights = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()
               if k.startswith("model.")}
    load_fitting(model, weights, ckpt, config_path)
    log.info("weights of epoch %s (global step %s) loaded", checkpoint.get("epoch"),
             checkpoint.get("global_step"))
    return LoadedRun(ckpt, config_path, cfg, datamodule, model, checkpoint)
