"""Where a warning should point: the first frame outside latentode and the libraries it runs
under (torch, Lightning, Hydra), so that a warning raised deep in a fit or a calibration names
the user's line, not ``calibration.py:464`` or torch's decorator."""

from __future__ import annotations

import os
import sys
import warnings

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


_DEFAULT_FORMAT = warnings.formatwarning


def format_warning_for_commands(message: Warning | str, category: type[Warning],
                                filename: str, lineno: int, line: str | None = None) -> str:
    """``warnings.formatwarning`` for latentode's commands: a warning whose location is inside
    latentode, its libraries or the command itself (every frame is: no user code runs there)
    is shown as ``Category: message`` alone; the location was ``<frozen runpy>:198`` under
    ``python -m`` and the source line one of ours, read as where the problem was. Warnings
    from elsewhere (a user's own module named by ``_target_``) keep the location."""
    name = os.path.basename(filename)
    if _internal(filename) or name.startswith("latentode-"):
        return f"{category.__name__}: {message}\n"
    return _DEFAULT_FORMAT(message, category, filename, lineno, line)
