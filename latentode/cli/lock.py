"""One ``latentode-train`` at a time in a run directory.

Two commands training into one directory (the same ``hydra.run.dir`` given twice, a resume
started while the run still trains, a job scheduler that restarts a job it thinks lost) both
wrote ``checkpoints/last.ckpt``, ``metrics.csv`` and ``test_metrics.json``: each overwrote the
other's, and a resume then went on from whichever wrote last. Neither said a word.
:func:`run_dir_lock` holds an advisory lock (``flock``) on ``<run dir>/.latentode.lock`` for
the whole command; a second one is refused with the first one's process, host and start time.
The operating system drops the lock when its process ends, however it ends (killed, out of
memory, node lost): a stale lock file never blocks a later run.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

try:
    import fcntl as _fcntl
except ImportError:  # (Windows)
    _fcntl: Any = None  # type: ignore[no-redef]

log = logging.getLogger(__name__)

LOCK_FILE = ".latentode.lock"

_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")
"""Environment variables by which data-parallel launchers (Lightning's, torchrun, SLURM) give
a process its place: the processes other than the first re-run the same command in the same
directory, and only the first one holds the lock."""


class RunDirInUseError(ValueError):
    """Another process is training into the run directory (a ``ValueError``: the command
    names a directory it cannot use, and ends in its message alone)."""


_KEPT_OUT: dict[str, str] = {}  # run dir -> its holder, found in use before Hydra wrote to it


def keep_out_if_in_use(run_dir: str | Path) -> bool:
    """Whether another process holds ``run_dir``'s lock now (a probe: the lock is taken and
    dropped at once, the file never created). Called before Hydra writes this command's
    ``.hydra`` files and opens its log file there; a directory found in use is remembered,
    and :func:`run_dir_lock` then refuses it even if the other run has ended since (this
    command kept its files and log lines out of that directory, so it cannot train there)."""
    if _fcntl is None or not first_process():
        return False
    path = Path(run_dir) / LOCK_FILE
    try:
        handle = open(path, encoding="utf-8")  # noqa: SIM115 (closed below)
    except OSError:
        return False
    with handle:
        try:
            _fcntl.flock(handle.fileno(), _fcntl.LOCK_EX | _fcntl.LOCK_NB)
        except BlockingIOError:
            _KEPT_OUT[str(Path(run_dir).resolve())] = handle.read().strip() or "another process"
            return True
        except OSError:
            return False
        _fcntl.flock(handle.fileno(), _fcntl.LOCK_UN)
    return False


def _in_use(directory: Path, holder: str, option: str) -> RunDirInUseError:
    return RunDirInUseError(
        f"{directory} is in use by another latentode-train ({holder}): two runs in one "
        "directory overwrite each other's checkpoints and metrics. Wait for it to end (a "
        "resume then goes on from its last.ckpt), stop it, or train into another directory "
        f"({option}=...).")


def first_process() -> bool:
    """Whether this process is the first of its data-parallel group (or the only one)."""
    return all(os.environ.get(name, "0") in ("", "0") for name in _RANK_VARIABLES)


@contextlib.contextmanager
def run_dir_lock(run_dir: str | Path, option: str = "hydra.run.dir") -> Iterator[None]:
    """Hold ``run_dir``'s lock while the block runs; :class:`RunDirInUseError` when another
    process holds it (``option``: the setting that names another directory). Where locks are
    not available (no ``fcntl``: Windows; a file system without ``flock``) the block runs
    unlocked, with a line in the log."""
    if _fcntl is None:
        log.info("%s is not locked against a second run (no fcntl on this system)", run_dir)
    if _fcntl is None or not first_process():
        yield
        return
    kept_out = _KEPT_OUT.pop(str(Path(run_dir).resolve()), None)
    if kept_out is not None:
        raise _in_use(Path(run_dir), kept_out, option)
    path = Path(run_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = _locked_handle(path, option)
    if handle is None:
        yield
        return
    try:
        yield
    finally:
        # unlink while still holding the lock: a process waiting on the old file finds it gone
        # (_locked_handle checks) and locks a fresh one
        with contextlib.suppress(OSError):
            path.unlink()
        handle.close()


def _locked_handle(path: Path, option: str) -> IO[str] | None:
    """An open, exclusively locked handle of ``path`` with this process's description written
    in it; None when the file system refuses locks."""
    for _ in range(10):  # the file unlinked between open and lock: try the new one
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held for the run)
        try:
            _fcntl.flock(handle.fileno(), _fcntl.LOCK_EX | _fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise _in_use(path.parent, holder, option) from None
        except OSError as error:  # (ENOLCK, EOPNOTSUPP: some network file systems)
            handle.close()
            log.info("%s cannot be locked (%s): a second run into it would not be refused",
                     path.parent, error.strerror or error)
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            handle.close()
            continue
        handle.seek(0)
        handle.truncate()
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}: "
                     f"{' '.join(sys.argv)}\n")
        handle.flush()
        return handle
    log.info("%s: its lock file kept changing; not locked", path.parent)
    return None
