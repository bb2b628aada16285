"""Where a warning should point: the first frame outside latentode and the libraries it runs
under (torch, Lightning, Hydra), so that a warning raised deep in a fit or a calibration names
the user's line, not ``calibration.py:464`` or torch's decorator."""

from __future__ import annotations

import os
import sys

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_LIBRARIES = tuple(f"{os.sep}{name}{os.sep}" for name in (
    "torch", "lightning", "lightning_fabric", "pytorch_lightning", "hydra", "omegaconf"))


def _internal(filename: str) -> bool:
    return (filename.startswith(_PACKAGE) or filename.startswith("<frozen")
            or any(lib in filename for lib in _LIBRARIES))


def user_stacklevel() -> int:
    """The ``stacklevel`` for ``warnings.warn`` called by this function's caller that points at
    the first frame outside latentode and its libraries (the outermost one when all are)."""
    frame = sys._getframe(1)  # the caller, which calls warnings.warn: stacklevel 1
    level = 1
    while frame.f_back is not None and _internal(frame.f_code.co_filename):
        frame = frame.f_back
        level += 1
    return level
