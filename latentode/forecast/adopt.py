"""What ``LatentODEForecaster.from_model`` checks of a model trained outside ``latentode-train``
and of the data handed with it: that a ``model_config`` rebuilds the same model (so ``save`` /
``load`` are faithful), that calibration series sit on the training data's clock, and that data
given "in data units" were not scaled already."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from latentode.data import ChannelScaler, IrregularDataset
from latentode.models.inputs import weight_dtype

from .spec import DataSpec

SCALED_TWICE = 5.0  # |scaled mean| beyond which calibration data look scaled already


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of ``model``'s floating parameters (float32 for a model without any)."""
    return weight_dtype(model) or torch.float32


def checked_model_config(model_config: Mapping[str, Any], model: nn.Module,
                          input_dim: int) -> DictConfig:
    """``model_config`` (``input_dim`` filled in from ``model`` where it is missing) as the
    config ``load`` rebuilds the model from, refused unless it builds a model like ``model``:
    the same modules, options and weights (names, shapes, dtypes). A saved forecaster whose
    config built another model would load other weights into it, or fail to load."""
    from hydra.utils import instantiate

    if isinstance(model_config, DictConfig):
        config = OmegaConf.create(OmegaConf.to_container(model_config, resolve=True))
    elif isinstance(model_config, Mapping):
        config = OmegaConf.create(dict(model_config))
    else:
        raise TypeError(f"model_config must be a mapping with a _target_ (e.g. {{'_target_': "
                        f"'latentode.models.LatentODE', 'input_dim': 1, 'latents': 8}}), got "
                        f"{type(model_config).__name__}.")
    if not isinstance(config, DictConfig) or not config.get("_target_"):
        raise ValueError("model_config needs a _target_ naming the model's class, e.g. "
                         "{'_target_': 'latentode.models.LatentODE', 'input_dim': 1, "
                         "'latents': 8}, with the arguments the model was built with.")
    with open_dict(config):
        if config.get("input_dim") is None:
            config.input_dim = input_dim
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            built = instantiate(config)
    except Exception as err:  # Hydra wraps the model's own errors (a bad argument)
        raise ValueError(f"model_config does not build a model: {err}") from err
    if not isinstance(built, nn.Module):
        raise ValueError(f"model_config builds a {type(built).__name__}, not a torch module.")
    built = built.to(model_dtype(model))  # a float64 model: load() casts it the same way
    fix = ("; model_config must hold the arguments the model was built with (the same "
           "class, sizes and options), so that load() rebuilds it.")
    ours, theirs = built.state_dict(), model.state_dict()
    lacks = [k for k in theirs if k not in ours]
    extra = [k for k in ours if k not in theirs]
    if lacks or extra:
        parts = [f"the model has weights {lacks[:4]} that it lacks" if lacks else "",
                 f"it has weights {extra[:4]} that the model lacks" if extra else ""]
        raise ValueError(f"model_config builds {type(built).__name__} weights that differ "
                         f"from the model's ({type(model).__name__}): "
                         + " and ".join(p for p in parts if p) + fix)
    for key, value in theirs.items():
        mine = ours[key]
        if mine.shape != value.shape or mine.dtype != value.dtype:
            raise ValueError(
                f"model_config builds weight {key!r} of shape {tuple(mine.shape)} "
                f"({mine.dtype}), the model's is {tuple(value.shape)} ({value.dtype})" + fix)
    kinds = {name: type(m) for name, m in built.named_modules()}
    for name, module in model.named_modules():
        where = f"model.{name}" if name else "model"
        if kinds.get(name) is not type(module):
            found = kinds.get(name)
            raise ValueError(f"model_config builds {where} as "
                             f"{'nothing' if found is None else found.__name__}, the model has "
                             f"a {type(module).__name__}" + fix)
        twin = built.get_submodule(name)
        if module.extra_repr() != twin.extra_repr():  # settings a module shows (obs_std...)
            raise ValueError(f"model_config builds {where} as {type(twin).__name__}("
                             f"{twin.extra_repr()}), the model has {type(module).__name__}("
                             f"{module.extra_repr()})" + fix)
        given, rebuilt = _options(module), _options(twin)
        for key in sorted(set(given) | set(rebuilt)):
            if not _same(given.get(key), rebuilt.get(key)):
                raise ValueError(f"model_config builds {where}.{key} = {rebuilt.get(key)!r}, "
                                 f"the model has {given.get(key)!r}" + fix)
    return config


_PLAIN = (bool, int, float, str, type(None), tuple, list, dict)


def _options(module: nn.Module) -> dict[str, Any]:
    """A module's own plain settings (``schedule``, ``solver``, ``z0_at``...): what a config
    sets beside the weights."""
    return {k: v for k, v in vars(module).items()
            if not k.startswith("_") and k != "training" and isinstance(v, _PLAIN)}


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except (TypeError, ValueError, RuntimeError):  # values that do not compare plainly
        return a is b


def on_spec_clock(spec: DataSpec, data: Any, what: str) -> IrregularDataset:
    """``data`` (an ``IrregularDataset`` or a frame in the spec's format) with the spec's
    channels, on its time transform (another dataset's model times may be on another
    scale); values stay in data units."""
    if isinstance(data, pd.DataFrame):
        if data.empty:
            raise ValueError(f"{what} (a DataFrame) has no rows: give it held-out series, or "
                             "leave it out to calibrate on the training series.")
        out = spec.dataset(data, what, errors=True)  # held-out series, read as training was
    elif isinstance(data, IrregularDataset):
        names = [str(c) for c in data.channels]
        if names != spec.channels:
            raise ValueError(f"{what} has channels {names}, the model's dataset {spec.channels}:"
                             f" give {what} the same channels in the same order.")
        if data.time_transform.kind != spec.time.kind:
            raise ValueError(f"{what} holds {data.time_transform.kind} times, the dataset "
                             f"{spec.time.kind} ones: give {what} times of the same type.")
        out = replace(data, channels=list(spec.channels), time_transform=spec.time,
                      times=spec.time.to_model(data.raw_times))
    else:
        raise TypeError(f"{what} must be an IrregularDataset or a DataFrame, got "
                        f"{type(data).__name__}.")
    if len(out) == 0:
        raise ValueError(f"{what} holds no series.")
    return out


def scaled(scaler: ChannelScaler, data: IrregularDataset, what: str,
            fitted_on: bool = False) -> IrregularDataset:
    """``data`` (data units) through ``scaler``, with a warning where it looks scaled already
    (the README's loop calls the scaled training data ``train``): on some channel its scaled
    mean lies beyond ``SCALED_TWICE`` scaler stds, or, for the data the scaler was fitted on
    (``fitted_on``: scaled mean 0 and std 1 there), beyond 1 std, or its std is off by 3x."""
    hint = (f"from_model takes {what} in the data's units, before scaler.apply (e.g. "
            "ds.subset(train_idx), not the scaled training data).")
    try:
        out = scaler.apply(data)
    except ValueError as err:  # a log channel's values <= 0: already scaled?
        raise ValueError(f"{what}: {err} {hint}") from err
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a channel never observed
        mean = np.nan_to_num(np.nanmean(out.values, axis=0))
        std = np.nan_to_num(np.nanstd(out.values, axis=0), nan=1.0)
    off = np.abs(mean) > (1.0 if fitted_on else SCALED_TWICE)
    if fitted_on:
        off |= (std > 0) & ((std < 1 / 3) | (std > 3))
    if off.any():
        j = int(np.argmax(off))
        warnings.warn(
            f"{what}'s channel {data.channels[j]!r}, scaled by the scaler, has mean {mean[j]:.3g}"
            f" and std {std[j]:.3g}" + (" (0 and 1 on the data it was fitted on)" if fitted_on
                                        else "") + f": is it scaled already? {hint}",
            stacklevel=3)
    return out
