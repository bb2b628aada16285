"""The forecaster's Hydra side: overrides from Python values, composing ``conf/train.yaml``
outside a Hydra app, and pruning what a fit without a run directory cannot use."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


def _format_value(value: Any) -> str:
    """A Python value as a Hydra override value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return repr(value.item() if isinstance(value, np.generic) else value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_format_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{_format_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if re.fullmatch(r"[\w.\-/:+${}]*", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def override_list(config_overrides: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    """``{"model.latents": 8}`` or ``["model.latents=8"]`` as Hydra override strings."""
    if config_overrides is None:
        return []
    if isinstance(config_overrides, str):
        raise TypeError("config_overrides must be a dict or a list of 'key=value' strings, got "
                        f"the string {config_overrides!r}; wrap it in a list.")
    if isinstance(config_overrides, Mapping):
        return [f"{k}={_format_value(v)}" for k, v in config_overrides.items()]
    out = [str(item) for item in config_overrides]
    bad = [item for item in out if "=" not in item and not item.startswith("~")]
    if bad:
        raise ValueError(f"config overrides must look like key=value, got {bad}.")
    return out


def compose_train_config(overrides: Sequence[str]) -> DictConfig:
    """``conf/train.yaml`` composed with ``overrides`` through Hydra's compose API, outside any
    Hydra app (an app's own global Hydra state is restored afterwards)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import ConfigCompositionException

    from latentode.cli import config_dir

    state = GlobalHydra.instance()
    saved = state.hydra
    state.clear()
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            # output_dir refers to Hydra's runtime; the forecaster sets it in fit
            # a user's own series: the csv data config (its Mixed task holds points out of
            # every series, whatever its length) unless the overrides pick a data config
            data = [] if any(o.lstrip("+~").startswith("data=") for o in overrides) \
                else ["data=csv", *_own_data_recipe()]
            # the encoder walks each series through its own times in training, as prediction
            # (each series walked alone) does: the same model, and 2-5x faster on unaligned series
            # (README: Forecasting) -- unless the overrides choose the model, its encoder, the
            # walk or what it needs (one Euler step per gap, no CUDA graph)
            own = ("model=", "model/encoder", "model.encoder.schedule", "model.encoder.solver",
                   "model.encoder.cuda_graph")
            walk = [] if any(o.lstrip("+~").startswith(own) for o in overrides) \
                else ["model.encoder.schedule=series"]
            base = ["paths.output_dir=null", *data, *walk]
            try:
                return compose(config_name="train", overrides=[*base, *overrides])
            except ConfigCompositionException as error:
                hint = _closest_key(str(error), compose(config_name="train", overrides=base))
                if hint is None:  # a group's option (callbacks=ema: a piece of the default set)
                    from latentode.cli.typos import composition_hint

                    hint = composition_hint("train", [*base, *overrides],
                                            command="LatentODEForecaster", plus_refused=False)
                if hint is None:
                    raise
                raise ConfigCompositionException(f"{error}\n{hint}") from error
    finally:
        GlobalHydra.instance().hydra = saved


def _own_data_recipe() -> list[str]:
    """The batch size and epochs of ``experiment=csv`` (conf/experiment/csv.yaml), the command
    line's recipe for a user's own table, as overrides placed before the user's own (which win):
    the forecaster trains what that recipe trains."""
    from omegaconf import OmegaConf

    from latentode.cli import config_dir

    recipe = OmegaConf.load(f"{config_dir()}/experiment/csv.yaml")
    return [f"data.batch_size={recipe.data.batch_size}",
            f"trainer.max_epochs={recipe.trainer.max_epochs}"]


def prune_callbacks(cfg: DictConfig, on_disk: bool, has_val: bool) -> None:
    """Drop from ``cfg`` what a fit cannot use, so the saved config says what ran: without an
    output directory no loggers, checkpoints or LR monitor (it needs a logger); without
    validation data no callback that monitors a ``val/`` metric."""
    with open_dict(cfg):
        if not on_disk:
            cfg.logger = None
        group = cfg.get("callbacks") or {}
        for name in list(group):
            entry = group[name]
            target = str(entry.get("_target_", "")) if isinstance(entry, DictConfig) else ""
            writes = any(part in target for part in ("ModelCheckpoint", "LearningRateMonitor"))
            watches_val = str(entry.get("monitor", "") or "").startswith("val/") if isinstance(
                entry, DictConfig) else False
            if (writes and not on_disk) or (watches_val and not has_val):
                log.info("fit: not using callback %r (%s)", name, "no output_dir" if writes
                         and not on_disk else "no val_df")
                del group[name]


__all__ = ["compose_train_config", "override_list", "prune_callbacks"]


def _closest_key(message: str, cfg: DictConfig) -> str | None:
    """"Did you mean model.latents?" for Hydra's "Could not override 'model.latent'" (its own
    hint, appending with +, is rarely what a misspelt key needs)."""
    import difflib

    found = re.search(r"Could not override '([^']+)'", message)
    if found is None:
        return None
    keys: list[str] = []

    def walk(node: object, prefix: str) -> None:
        if isinstance(node, DictConfig):
            for key in node:
                path = f"{prefix}.{key!s}" if prefix else str(key)
                keys.append(path)
                walk(node._get_node(key), path)

    walk(cfg, "")
    close = difflib.get_close_matches(found.group(1), keys, n=1, cutoff=0.75)
    return f"Did you mean {close[0]}?" if close else None
