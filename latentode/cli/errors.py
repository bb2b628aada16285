"""A bad input on the command line ends in its message, not a traceback.

latentode's checks raise ``ValueError`` (or ``TypeError``, ``FileNotFoundError``, an
``ImportError`` naming the extra to install) with a message that names the column, series or
value and what to do. Under Hydra that message came last
after "Error executing job" and ~20 lines of traceback through Hydra's and our frames. The
commands now print ``<command>: error: <message>`` alone and exit with status 1; the message also
goes into the run's log file. Only errors latentode raised on purpose (a ``raise`` statement in
the package, also when a constructor's check reaches us wrapped in Hydra's
``InstantiationException``) are shortened: anything else, a bug included, keeps its traceback,
as do the jobs of a sweep (``-m``: Hydra records the failure and runs the next job), and
``HYDRA_FULL_ERROR=1`` keeps every traceback.
"""

from __future__ import annotations

import linecache
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

PACKAGE = Path(__file__).resolve().parents[1]
SHORTENED = (ValueError, TypeError, FileNotFoundError, ImportError)


def raised_by_latentode(error: BaseException) -> bool:
    """Whether ``error`` came from a ``raise`` statement in latentode's own code (its innermost
    frame), rather than from a library or a slip such as a failed unpacking."""
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = tb.tb_frame.f_code.co_filename
    try:
        inside = Path(filename).resolve().is_relative_to(PACKAGE)
    except (OSError, ValueError):
        return False
    return inside and linecache.getline(filename, tb.tb_lineno).lstrip().startswith("raise")


def _input_error(error: BaseException) -> BaseException | None:
    """The error latentode raised on purpose behind ``error`` (itself, or the cause of Hydra's
    ``InstantiationException`` when a constructor's check refused a config value), else None."""
    from hydra.errors import InstantiationException

    if isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    return error if isinstance(error, SHORTENED) and raised_by_latentode(error) else None


def _in_a_sweep() -> bool:
    """A job of ``-m``: it must raise, so that Hydra records it failed and runs the next job
    (``SystemExit`` stopped the whole sweep and its summary)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@contextmanager
def input_errors(command: str) -> Iterator[None]:
    """Run the block; an error latentode raised on purpose exits with status 1 after one line
    on stderr (and an ERROR record in the run's log file) instead of propagating to Hydra."""
    try:
        yield
    except Exception as raised:
        error = _input_error(raised)
        if error is None or os.environ.get("HYDRA_FULL_ERROR") == "1" or _in_a_sweep():
            raise
        record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s: error: %s",
                                (command, error), None)
        for handler in logging.getLogger().handlers:  # the file only: stderr gets it below
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)
        print(f"{command}: error: {error}\n(the traceback: set HYDRA_FULL_ERROR=1)",
              file=sys.stderr)
        raise SystemExit(1) from error


__all__ = ["input_errors", "raised_by_latentode"]
