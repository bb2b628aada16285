"""Command line of latentode, built on Hydra: ``latentode-train`` and ``latentode-eval``.

Only this package knows Hydra. The configs live in the repository's ``conf/`` directory, found
next to the package in a checkout or an editable install, and shipped inside the wheel as
``latentode/_conf``; set ``LATENTODE_CONF`` to use another config directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omegaconf import DictConfig


def config_dir() -> str:
    """Absolute path of the Hydra config directory: ``LATENTODE_CONF`` if set, else the
    repository's ``conf/`` beside the package (a checkout, an editable install), else the copy a
    wheel ships as ``latentode/_conf``."""
    override = os.environ.get("LATENTODE_CONF")
    if override:
        candidates = [Path(override)]
    else:
        here = Path(__file__).resolve().parents[1]
        candidates = [here.parent / "conf", here / "_conf"]
    for path in candidates:
        if (path / "train.yaml").is_file():
            return str(path)
    raise FileNotFoundError(
        f"no Hydra configs at {' or '.join(map(str, candidates))}: reinstall latentode (the "
        "wheel ships them), install it from a checkout with `pip install -e .`, or point "
        "LATENTODE_CONF at a copy of conf/."
    )


def load_settings(path: str | Path) -> DictConfig:
    """A YAML file of settings (a mapping, as Hydra writes a run's ``config.yaml``); a file
    that holds a list or a single value is refused, naming it."""
    from omegaconf import DictConfig, OmegaConf

    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig):
        raise ValueError(f"{path} holds a list, not a mapping of settings: not a config file "
                         "that latentode wrote.")
    return cfg


__all__ = ["config_dir", "load_settings"]
