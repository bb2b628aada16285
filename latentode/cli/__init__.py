"""Command line of latentode, built on Hydra: ``latentode-train`` and ``latentode-eval``.

Only this package knows Hydra. The configs live in the repository's ``conf/`` directory, found
next to the installed package (``pip install -e .`` or a checkout on ``PYTHONPATH``); set
``LATENTODE_CONF`` to use another config directory.
"""

from __future__ import annotations

import os
from pathlib import Path


def config_dir() -> str:
    """Absolute path of the Hydra config directory (``conf/`` beside the ``latentode`` package)."""
    override = os.environ.get("LATENTODE_CONF")
    path = Path(override) if override else Path(__file__).resolve().parents[2] / "conf"
    if not (path / "train.yaml").is_file():
        raise FileNotFoundError(
            f"no Hydra configs at {path}: latentode's CLI reads the repository's conf/ directory, "
            "so install the package from a checkout with `pip install -e .`, or point "
            "LATENTODE_CONF at a copy of conf/."
        )
    return str(path)


__all__ = ["config_dir"]
