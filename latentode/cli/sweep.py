"""Sweeps (``latentode-train -m``): the summary table, job records and job numbering.

    latentode-train -m model.latents=8,16 solver.method=dopri5,rk4      # a grid of 4 jobs
    latentode-train -m hparams_search=periodic_optuna                   # an Optuna search

Every job of a sweep runs in ``<sweep dir>/<job>/``. :class:`SweepSummary`, a Hydra callback
(``hydra.callbacks.sweep_summary`` in ``conf/hydra/default.yaml``), records each job as it ends in
``<sweep dir>/.sweep/jobs/<job>.json`` and rewrites ``<sweep dir>/summary.csv`` from all records,
so a sweep that is stopped still has its table. One row per job: job number, status
(``completed``/``failed``), wall time, one column per override, the validation and test metrics,
the error of a failed job, the overrides as typed and the run directory. A numbered job dir that
holds a finished run but no record (a job interrupted, then resumed in place with
``hydra.run.dir=<sweep dir>/<job>``) is listed too, with status ``unrecorded``, its metrics read
from the run dir and no wall time.

A sweep rerun into an existing sweep dir (``hydra.sweep.dir=...``, e.g. to resume an Optuna
search, or to add jobs) numbers its jobs on after every job already there: after the highest
job number among the records, the entries of the sweep dir named by a number (job dirs of
interrupted or resumed jobs, which have no record) and the trials of an Optuna study, so no run
directory is written twice. For an Optuna search job ``k`` is then trial ``k`` of the study, as
long as the sweep dir holds no other jobs than the study's.

An Optuna search resumed in its sweep dir also settles the trials its study still holds as
RUNNING (:func:`settle_running_trials`): a search that was killed (SIGKILL, a preempted or
timed-out job) never tells the trial it was running, so it stayed RUNNING for good. Each search
registers itself in ``<sweep dir>/.sweep/workers/`` with the number of trials the study held
then; a RUNNING trial numbered below that count for every other registered search that may
still run (so none of them can have asked it) is marked FAIL, with a warning naming it; one
that such a search may have asked is left RUNNING and named, with the ``optuna ... tell``
command that fails it.

Nothing here imports optuna at module level: the callback is loaded by every latentode-train run.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

SUMMARY = "summary.csv"
STATE = ".sweep"               # <sweep dir>/.sweep/: job records, job offset, lock
JOB_RECORD = "job_status.json"  # written by latentode-train into each job's run dir
RESOLVER = "latentode.job_num"  # hydra.sweep.subdir: ${latentode.job_num:${hydra.sweep.dir},...}
METRIC_PREFIXES = ("val/", "test/")
FIRST_COLUMNS = ["job", "status", "wall_time_s"]
LAST_COLUMNS = ["error", "overrides", "output_dir"]


# -- job numbering ------------------------------------------------------------------------------

def _offset_path(sweep_dir: str | Path) -> Path:
    return Path(sweep_dir) / STATE / "offset"


def job_offset(sweep_dir: str | Path) -> int:
    """The number the current sweep call adds to Hydra's job numbers (0 for a new sweep dir)."""
    try:
        return int(_offset_path(sweep_dir).read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def job_number(sweep_dir: str, num: Any) -> int:
    """Hydra's job number (0, 1, ... in every call) plus the sweep dir's offset."""
    return int(num) + job_offset(sweep_dir)


if not OmegaConf.has_resolver(RESOLVER):
    OmegaConf.register_new_resolver(RESOLVER, lambda d, n: str(job_number(d, n)))


def _job_of(name: str) -> int | None:
    """The job number a name stands for (``"3"``); None for other names (``"-1"``, ``".sweep"``)."""
    return int(name) if name.isascii() and name.isdigit() else None


def _recorded_jobs(sweep_dir: Path) -> list[int]:
    """Jobs with a record in ``<sweep dir>/.sweep/jobs/``."""
    jobs = [_job_of(path.stem) for path in (sweep_dir / STATE / "jobs").glob("*.json")]
    return [job for job in jobs if job is not None]


def _job_entries(sweep_dir: Path) -> dict[int, Path]:
    """Entries of the sweep dir named by a non-negative number (job dirs, or anything else that
    would stand in a job dir's way), recorded or not: an interrupted job and a job resumed in
    place (``hydra.run.dir=<sweep dir>/<job>``) leave a job dir but no record."""
    try:
        entries = list(sweep_dir.iterdir())
    except OSError:
        return {}
    return {job: path for path in entries if (job := _job_of(path.name)) is not None}


def next_job(sweep_dir: str | Path, study_trials: int = 0) -> int:
    """The first free job number of a sweep dir: after every recorded job, every numbered entry
    of the sweep dir and ``study_trials`` (the trials of an Optuna study stored there)."""
    sweep_dir = Path(sweep_dir)
    taken = [*_recorded_jobs(sweep_dir), *_job_entries(sweep_dir)]
    return max([*[job + 1 for job in taken], study_trials, 0])


@dataclass
class _Study:
    """The Optuna study of a search: its storage (None while the study does not exist yet) and
    its trials, read once at the search's start."""

    url: str
    name: str
    storage: Any = None
    trials: list[Any] = field(default_factory=list)


def _optuna_study(config: DictConfig) -> _Study | None:
    """The study of ``config.hydra.sweeper`` (None for a sweep that is no stored Optuna
    search; no trials for a study not created yet)."""
    sweeper = config.hydra.get("sweeper") or {}
    if "optuna" not in str(sweeper.get("_target_", "")).lower() or not sweeper.get("storage"):
        return None
    study = _Study(str(sweeper.get("storage")), str(sweeper.get("study_name")))
    if study.url.startswith("sqlite:///") and not Path(study.url[len("sqlite:///"):]).is_file():
        return study  # a new search: do not create the database here
    try:
        import optuna

        storage = optuna.storages.get_storage(study.url)
        study_id = storage.get_study_id_from_name(study.name)
        study.storage, study.trials = storage, storage.get_all_trials(study_id, deepcopy=False)
    except Exception:  # no such study yet (KeyError), no optuna, a database out of reach
        pass
    return study


def check_search_space(config: DictConfig) -> None:
    """Stop a search whose space (``hydra.sweeper.params``) names keys the composed config lacks,
    before any trial: ``hparams_search=periodic_optuna model=odernn`` searched
    ``model.gen_units``, which ODE-RNN does not have; every trial then died in Hydra's "use
    +model.gen_units" (advice that adds an unread key) and left its Optuna trial RUNNING. Keys
    under a searched config group (``model: choice(latent_ode, odernn)``) belong to each
    trial's own choice and are not checked, nor under a group swept on the command line
    (``model=odernn,latent_ode``); ``+``/``~`` keys are the user's."""
    from latentode.cli.typos import _has_key, closest_key

    params = config.hydra.get("sweeper", {}).get("params") or {}
    if not params:
        return
    choices = config.hydra.get("runtime", {}).get("choices") or {}
    searched = {str(k) for k in params if str(k) in choices}
    task = [str(o) for o in config.hydra.get("overrides", {}).get("task") or []]
    try:  # groups swept on the command line (model=odernn,latent_ode): each trial's own too
        from hydra.core.override_parser.overrides_parser import OverridesParser

        on_line = {o.key_or_group for o in OverridesParser.create().parse_overrides(task)
                   if o.is_sweep_override() and o.key_or_group in choices}
    except Exception:  # an override Hydra would refuse: Hydra says so
        on_line = set()
    if on_line:  # each option with the search space, composed as the trials would be
        from latentode.cli.typos import composition_hint

        space = [f"{k}={v}" for k, v in params.items() if str(k)[:1] not in "+~"]
        # the run's own config directories (hydra.searchpath: a user's search file or model)
        search = [str(o) for o in config.hydra.get("overrides", {}).get("hydra") or []
                  if str(o).lstrip("+").startswith("hydra.searchpath=")]
        hint = composition_hint("train", [*search, *task, *space])
        if hint and "is a key of the config with" not in hint and \
                "is not a key of the config" not in hint:
            hint = None  # (a config this composition could not find: the sweep will say)
        if hint:
            print(f"latentode-train: the search space (hydra.sweeper.params) does not fit every "
                  f"option swept on the command line, so some trials would fail before "
                  f"training (sweep those options in separate searches, or search only the "
                  f"keys they share):\n{hint}", file=sys.stderr, flush=True)
            raise SystemExit(1)
    searched_groups = [group.replace("/", ".") + "." for group in searched | on_line]
    missing = []
    for key in (str(k) for k in params):
        if (key[:1] in "+~" or key in choices or "/" in key
                or any(key.startswith(g) for g in searched_groups)):
            continue
        if not _has_key(config, key.split(".")):
            missing.append(key)
    if not missing:
        return
    job = OmegaConf.masked_copy(config, [str(k) for k in config if k != "hydra"])
    named = []
    for key in missing:
        close = closest_key(job, key)
        named.append(key + (f" (did you mean {close}?)" if close else ""))
    chosen = ", ".join(f"{group}={choices[group]}" for group in sorted(choices)
                       if not group.startswith("hydra") and "/" not in group
                       and any(key.startswith(group + ".") for key in missing))
    # SystemExit: Hydra turns a callback's exceptions into warnings and sweeps on
    print(
        f"latentode-train: the search space (hydra.sweeper.params) names {'; '.join(named)}, "
        f"which the composed config{f' ({chosen})' if chosen else ''} does not have: every "
        "trial would fail before training. Search the keys of the chosen options (a search "
        "file of your own in conf/hparams_search/, or a sweep on the command line: "
        "model.latents='choice(10,20)'), or choose the options the search was written for.",
        file=sys.stderr, flush=True)
    raise SystemExit(1)


# -- trials left RUNNING by a search that stopped ---------------------------------------------

WORKERS = "workers"     # <sweep dir>/.sweep/workers/<host>-<pid>.json: the searches running there


def _host() -> str:
    return socket.gethostname()


def _process_start(pid: int) -> str | None:
    """When process ``pid`` of this host started (clock ticks since boot from /proc; on Windows
    its creation time), to tell it from a later process given the same pid; None where neither
    can say."""
    if os.name == "nt":
        try:
            return _windows_process(int(pid))[1]
        except (OSError, AttributeError):  # no kernel32 to ask
            return None
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError, ValueError):
        return None


def _kernel32() -> Any:
    """kernel32 with the process calls typed (a HANDLE is pointer-sized)."""
    import ctypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    handle, dword = ctypes.c_void_p, ctypes.c_ulong
    filetime = ctypes.POINTER(ctypes.c_ulonglong)  # FILETIME: two DWORDs, low first
    kernel32.OpenProcess.argtypes = [dword, ctypes.c_int, dword]
    kernel32.OpenProcess.restype = handle
    kernel32.GetExitCodeProcess.argtypes = [handle, ctypes.POINTER(dword)]
    kernel32.GetProcessTimes.argtypes = [handle, filetime, filetime, filetime, filetime]
    kernel32.CloseHandle.argtypes = [handle]
    return kernel32


_STILL_ACTIVE = 259                 # GetExitCodeProcess's code for a process that runs
_ERROR_INVALID_PARAMETER = 87       # OpenProcess of a pid no process has


def _windows_process(pid: int) -> tuple[bool | None, str | None]:
    """Windows: whether process ``pid`` runs (OpenProcess + GetExitCodeProcess; None when it
    cannot say, e.g. access denied) and its creation time (None when unknown). No signal is
    sent: ``os.kill(pid, 0)`` there is CTRL_C_EVENT, which would interrupt the search."""
    import ctypes

    kernel32 = _kernel32()
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        gone = ctypes.get_last_error() == _ERROR_INVALID_PARAMETER  # type: ignore[attr-defined]
        return (False if gone else None), None
    try:
        code = ctypes.c_ulong()
        running = (code.value == _STILL_ACTIVE
                   if kernel32.GetExitCodeProcess(handle, ctypes.byref(code)) else None)
        times = [ctypes.c_ulonglong() for _ in range(4)]  # creation, exit, kernel, user
        known = kernel32.GetProcessTimes(handle, *(ctypes.byref(t) for t in times))
        return running, (str(times[0].value) if known else None)
    finally:
        kernel32.CloseHandle(handle)


def _worker_path(sweep_dir: str | Path, host: str, pid: int) -> Path:
    return Path(sweep_dir) / STATE / WORKERS / f"{host}-{pid}.json"


def register_worker(sweep_dir: str | Path, trials: int, pid: int | None = None,
                    host: str | None = None) -> Path:
    """Note in the sweep dir that an Optuna search (this process, by default) runs on its study
    from now on, which held ``trials`` trials: the trials it asks are numbered from there on, so
    a later search on the study leaves those alone. Removed when the search ends
    (:meth:`SweepSummary.on_multirun_end`, or at the process's exit)."""
    pid = os.getpid() if pid is None else int(pid)
    host = _host() if host is None else str(host)
    entry = {"host": host, "pid": pid, "started": time.time(), "trials": int(trials),
             "process_start": _process_start(pid) if host == _host() else None}
    path = _worker_path(sweep_dir, host, pid)
    _write_atomic(path, json.dumps(entry) + "\n")
    return path


def _alive(entry: dict[str, Any]) -> bool:
    """Whether a registered search may still run: False only for a process of this host that
    is gone (or whose pid a later process took); a search on another host cannot be checked."""
    if entry.get("host") != _host():
        return True
    pid = int(entry["pid"])
    if os.name == "nt":  # no signal there (signal 0 is CTRL_C_EVENT: it would interrupt it)
        try:
            running, started = _windows_process(pid)
        except (OSError, AttributeError):  # no kernel32 to ask: it may run
            return True
        if running is False:
            return False
        recorded = entry.get("process_start")
        return not (running and recorded and started and recorded != started)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process of that pid
        pass
    recorded, now = entry.get("process_start"), _process_start(pid)
    return not (recorded and now and recorded != now)


def _other_workers(sweep_dir: Path) -> list[dict[str, Any]]:
    """The other searches registered in the sweep dir that may still run (the entries of those
    known to be gone are removed)."""
    others = []
    for path in sorted((sweep_dir / STATE / WORKERS).glob("*.json")):
        try:
            entry = json.loads(path.read_text())
            if entry["host"] == _host() and int(entry["pid"]) == os.getpid():
                continue  # this process's own entry (an earlier search of this process)
            alive = _alive(entry)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if alive:
            others.append(entry)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
    return others


def _trials(numbers: list[int], singular: str, plural: str) -> str:
    if len(numbers) == 1:
        return f"trial {numbers[0]} {singular}"
    return f"trials {', '.join(map(str, numbers))} {plural}"


def _fail_command(url: str, study: str, numbers: list[int]) -> str:
    return "\n".join(f"optuna --storage {url} tell --study-name {study} --trial-number {n} "
                     "--state fail" for n in numbers)


def _fail_trial(storage: Any, trial: Any, why: str = "") -> bool:
    """Mark a RUNNING trial FAIL (False if it finished meanwhile)."""
    import optuna

    note = (f"{why} at {time.ctime()}" if why else
            f"left RUNNING by a search that stopped; marked FAIL on resume at {time.ctime()}")
    try:
        storage.set_trial_user_attr(trial._trial_id, "latentode_failed" if why else
                                    "latentode_failed_on_resume", note)
        if hasattr(storage, "set_trial_state_values"):  # optuna 3
            return bool(storage.set_trial_state_values(trial._trial_id,
                                                       optuna.trial.TrialState.FAIL))
        return bool(storage.set_trial_state(trial._trial_id, optuna.trial.TrialState.FAIL))
    except RuntimeError:  # "has already finished": its search told it after all
        return False
    except Exception as error:  # a database busy or out of reach: said, the search goes on
        log.warning("could not mark trial %d FAIL: %s", trial.number, error_message(error))
        return False


def settle_running_trials(study: _Study | None, sweep_dir: Path) -> Path | None:
    """On an Optuna search's start, the trials of its study still RUNNING: in the Hydra Optuna
    sweeper only the search that asked a trial tells its outcome, so a trial whose search was
    killed (SIGKILL, a preempted job, a crash) stays RUNNING for good.

    Each search registers itself in ``<sweep dir>/.sweep/workers/`` with the study's trial
    count at that moment (:func:`register_worker`); the trials it asks are numbered from that
    count on. A RUNNING trial is stale, and marked FAIL with a warning, when its number is
    below the count of every other registered search that may still run (a search of this host
    whose process is gone no longer counts; one on another host always does), as searches only
    tell the trials they asked. Trial numbers, not start times, decide: Optuna stores start
    times in local time without its zone, and two searches may run in different zones. An
    entry without a count (written by an older latentode) protects every trial. The others are
    named in a warning with the ``optuna ... tell`` commands that fail them once no search runs.
    Storage outside the sweep dir (a shared database, where searches of other sweep dirs may
    run unseen) is never changed: its RUNNING trials are only named. Returns the search's
    entry (None for a sweep that is no Optuna search: ``study`` None)."""
    if study is None:
        return None
    url, name, storage = study.url, study.name, study.storage
    own = url.startswith("sqlite:///") and \
        Path(url[len("sqlite:///"):]).resolve().parent == sweep_dir.resolve()
    count = len(study.trials)  # Optuna numbers a study's trials 0, 1, ...
    running = [t for t in study.trials if t.state.name == "RUNNING"]
    with _locked(sweep_dir / STATE / "lock"):  # one search's look and entry before the next's
        others = _other_workers(sweep_dir)
        path = register_worker(sweep_dir, count)
    atexit.register(_unregister, path)
    if not running:
        return path
    cutoff = min([int(o.get("trials", 0)) for o in others], default=math.inf) if own else -1
    stale = [t for t in running if t.number < cutoff]
    failed = [t.number for t in stale if _fail_trial(storage, t)]
    if failed:
        log.warning("optuna study %r (%s): %s left RUNNING by a search that stopped (killed, or "
                    "preempted), and no search that could still tell %s runs on this sweep dir: "
                    "marked FAIL", name, url,
                    _trials(failed, "was", "were"), "it" if len(failed) == 1 else "them")
    left = [t.number for t in running if t not in stale]
    if left:
        where = "; ".join(f"pid {o['pid']} on {o['host']} since {time.ctime(o['started'])}"
                          for o in others) if own else \
            "storage outside the sweep dir, where searches of other sweep dirs may run unseen"
        log.warning("optuna study %r (%s): %s RUNNING and may belong to a search still running "
                    "(%s): left as %s. Once no search runs on the study, fail %s with (one "
                    "command a line):\n%s",
                    name, url, _trials(left, "is", "are"), where,
                    "it is" if len(left) == 1 else "they are",
                    "it" if len(left) == 1 else "them", _fail_command(url, name, left))
    return path


def fail_trial_of_job(config: DictConfig, overrides: list[str]) -> list[int]:
    """Mark FAIL the RUNNING trial(s) of the study whose parameters are this job's
    ``overrides`` (the Optuna sweeper writes each as ``name=value``), when the job stops the
    search: the sweeper never tells a trial whose job raised SystemExit, so it stayed RUNNING
    until a later resume failed it. Storage outside the sweep dir is left alone (as in
    :func:`settle_running_trials`). Returns the trial numbers failed."""
    study = _optuna_study(config)
    if study is None or study.storage is None:
        return []
    sweep_dir = Path(str(config.hydra.sweep.dir))
    url = study.url
    if not (url.startswith("sqlite:///") and
            Path(url[len("sqlite:///"):]).resolve().parent == sweep_dir.resolve()):
        return []
    given = set(overrides)
    mine = [t for t in study.trials if t.state.name == "RUNNING" and t.params
            and all(f"{name}={value}" in given for name, value in t.params.items())]
    return [t.number for t in mine if _fail_trial(study.storage, t, "stopped the search")]


def _unregister(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


# -- records and the summary --------------------------------------------------------------------

def _umask() -> int:
    """The process umask, read without changing it where the OS says it (Linux 4.7+): setting
    it to read it would let another thread create a file meanwhile with mode 0666."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_atomic(path: Path, text: str) -> None:
    """``text`` into ``path`` whole (a temporary file moved over it), with the permissions an
    ordinary file gets (``mkstemp``'s are 0600: a shared cluster's group could not read the
    sweep's table)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            f.write(text)
        with contextlib.suppress(OSError):
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` where the OS has ``flock`` (jobs of a joblib or submitit
    sweep end in other processes); without one, the atomic writes still keep the file whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a") as f:
        with contextlib.suppress(OSError):  # a file system without locks: go on unlocked
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(f, fcntl.LOCK_UN)


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: write them as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def write_job_record(run_dir: str | Path, status: str, metrics: dict[str, float] | None = None,
                     objective: float | None = None, error: BaseException | None = None) -> Path:
    """``<run dir>/job_status.json``: what a sweep job reports to :class:`SweepSummary`."""
    record: dict[str, Any] = {
        "status": status,
        "objective": _finite(objective),
        "metrics": {k: _finite(float(v)) for k, v in (metrics or {}).items()},
        "error": error_message(error) if error is not None else "",
    }
    path = Path(run_dir) / JOB_RECORD
    _write_atomic(path, json.dumps(record, indent=2) + "\n")
    return path


def error_message(error: BaseException, limit: int = 500) -> str:
    """``Type: message`` on one line, cut to ``limit`` characters."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _override_columns(overrides: list[str]) -> dict[str, str]:
    columns = {}
    for override in overrides:
        key, sep, value = override.partition("=")
        if sep:
            columns[key.lstrip("+~")] = value
    return columns


def _last_values(metrics_csv: Path, prefix: str) -> dict[str, float]:
    """The last value logged of each ``prefix`` column of a run's ``metrics.csv``."""
    values: dict[str, float] = {}
    with contextlib.suppress(OSError), open(metrics_csv, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key and key.startswith(prefix) and value not in ("", None):
                    with contextlib.suppress(ValueError):
                        values[key] = float(value)
    return values


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _digest(path: Path) -> str | None:
    """A short hash of a small file's bytes (None: no such file)."""
    try:
        return hashlib.sha1(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return None


def _rerun_in_place(record: Path, run_dir: Path, row: dict[str, Any]) -> bool:
    """Whether a recorded job's dir holds a run finished after its record was written: the
    job resumed or run again there (``ckpt_path=last hydra.run.dir=<job dir>``, a failed job
    fixed and rerun). Its record, and its ``job_status.json``, describe the earlier run. The
    record keeps a hash of the job's ``test_metrics.json`` (copies of a sweep dir change
    every file's time, not its bytes); records without one compare times."""
    tested = run_dir / "test_metrics.json"
    if "tested" in row:
        now = _digest(tested)
        return now is not None and now != row["tested"]
    at, written = _mtime(tested), _mtime(record)
    return at is not None and written is not None and at > written


def _unrecorded_row(job: int, run_dir: Path, status: str = "unrecorded"
                    ) -> dict[str, Any] | None:
    """A summary row for a job dir without a record that holds a finished run (its
    ``test_metrics.json`` or ``job_status.json``), e.g. a job interrupted and then resumed in
    place, or (``status="rerun"``) one whose record an in-place rerun outdated; None for any
    other dir (a job still running, one interrupted and left so). A ``job_status.json``
    older than ``test_metrics.json`` is the earlier run's and is not read."""
    tested, status_file = run_dir / "test_metrics.json", run_dir / JOB_RECORD
    if not (tested.is_file() or status_file.is_file()):
        return None
    metrics: dict[str, Any] = _last_values(run_dir / "metrics.csv", "val/")
    error = ""
    tested_at, status_at = _mtime(tested), _mtime(status_file)
    stale = tested_at is not None and status_at is not None and status_at < tested_at
    if not stale:
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            record = json.loads(status_file.read_text())
            metrics.update(record.get("metrics") or {})
            error = str(record.get("error") or "")
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        metrics.update(json.loads(tested.read_text()).get("metrics") or {})
    overrides: list[str] = []
    with contextlib.suppress(Exception):  # the run's own command line, as Hydra saved it
        overrides = [str(o) for o in OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")]
    return {
        "job": job,
        "status": status,
        "wall_time_s": "",
        "override_columns": _override_columns(overrides),
        "metrics": {k: v for k, v in metrics.items() if k.startswith(METRIC_PREFIXES)},
        "error": error,
        "overrides": " ".join(overrides),
        "output_dir": str(run_dir),
    }


def refresh_summary(sweep_dir: str | Path) -> Path:
    """Rewrite ``<sweep dir>/summary.csv`` from the job records (one row per job, by number),
    with a row (status ``unrecorded``) for each job dir that holds a finished run but no
    record."""
    sweep_dir = Path(sweep_dir)
    path = sweep_dir / SUMMARY
    with _locked(sweep_dir / STATE / "lock"):
        rows = []
        for record in (sweep_dir / STATE / "jobs").glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                row = json.loads(record.read_text())
                run_dir = Path(str(row.get("output_dir", "")))
                if row.get("output_dir") and _rerun_in_place(record, run_dir, row):
                    row = _unrecorded_row(int(row["job"]), run_dir, "rerun") or row
                rows.append(row)
        recorded = {str(row.get("job")) for row in rows}
        for job, run_dir in _job_entries(sweep_dir).items():
            if str(job) not in recorded and run_dir.is_dir():
                row = _unrecorded_row(job, run_dir)
                if row is not None:
                    rows.append(row)
        rows.sort(key=lambda r: int(r.get("job", 0)))
        overrides: list[str] = []
        metrics: list[str] = []
        for row in rows:
            overrides += [k for k in row.get("override_columns", {}) if k not in overrides]
            metrics += [k for k in row.get("metrics", {}) if k not in metrics]
        metrics.sort(key=lambda k: (METRIC_PREFIXES.index(k.split("/")[0] + "/"), k))
        header = [*FIRST_COLUMNS, *overrides, *metrics, *LAST_COLUMNS]
        lines = []
        for row in rows:
            values = {**row, **row.get("override_columns", {}), **row.get("metrics", {})}
            lines.append({k: values.get(k, "") for k in header})
        with tempfile.SpooledTemporaryFile(mode="w+", newline="") as buffer:
            writer = csv.DictWriter(buffer, fieldnames=header)
            writer.writeheader()
            writer.writerows(lines)
            buffer.seek(0)
            _write_atomic(path, buffer.read())
    return path


def refresh_enclosing_sweep(run_dir: str | Path) -> Path | None:
    """After a single run in a sweep's job dir (a job resumed or rerun in place), rewrite that
    sweep's ``summary.csv`` so that its row says what the dir holds now; None outside one."""
    sweep_dir = Path(run_dir).resolve().parent
    if _job_of(Path(run_dir).name) is None or not (sweep_dir / STATE / "jobs").is_dir():
        return None
    try:  # a finished run must not fail over the table (as a sweep's job end)
        return refresh_summary(sweep_dir)
    except Exception:
        log.exception("could not update the sweep summary of %s", sweep_dir)
        return None


_REFUSED: dict[str, BaseException] = {}  # job dir -> why the job was refused there


def record_refused_job(run_dir: str | Path, error: BaseException) -> None:
    """A job refused before it wrote anything in ``run_dir`` (another run trains there): its
    row in the summary says so, and no ``job_status.json`` is written into the other's dir."""
    _REFUSED[str(Path(run_dir))] = error


_FAILED = [0]  # failed jobs of the last sweep in this process, for the command's exit status


def failed_jobs(reset: bool = False) -> int:
    """How many jobs of the last sweep failed (``reset``: forget it, before a new command)."""
    count = _FAILED[0]
    if reset:
        _FAILED[0] = 0
    return count


def _write_nothing_into(config: DictConfig) -> None:
    """``config`` (the one Hydra runs the job with) changed so that Hydra writes no ``.hydra``
    files and opens no log file in the job's directory: the console alone."""
    from omegaconf import open_dict, read_write

    hydra_cfg = config.hydra
    with read_write(hydra_cfg), open_dict(hydra_cfg):
        hydra_cfg.output_subdir = None
        logging_cfg = hydra_cfg.job_logging
        handlers = logging_cfg.get("handlers") or {}
        files = [name for name, spec in handlers.items() if "filename" in (spec or {})]
        for name in files:
            del handlers[name]
        root = logging_cfg.get("root")
        if root is not None and "handlers" in root:
            root["handlers"] = [h for h in root["handlers"] if h not in files]


class SweepSummary(Callback):
    """Hydra callback: ``summary.csv`` in the sweep dir, refreshed as each job ends.

    Does nothing in a single run. The job's status, metrics and error come from the
    ``job_status.json`` that latentode-train writes into the run dir; a job that raised (another
    task function, or an error outside training) is recorded from Hydra's job return.
    """

    def __init__(self, filename: str = SUMMARY) -> None:
        self.filename = filename
        self._started: dict[str, float] = {}
        self._first_job = 0  # this call's jobs are numbered from here (a resumed sweep dir)

    @staticmethod
    def _multirun(config: DictConfig) -> bool:
        return config.hydra.get("mode") == RunMode.MULTIRUN

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_search_space(config)
        sweep_dir = Path(str(config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)  # before the sweeper opens optuna.db in it
        self._worker: Path | None = None
        study = _optuna_study(config)
        try:  # an Optuna search: trials a killed search left RUNNING (never stops the sweep)
            self._worker = settle_running_trials(study, sweep_dir)
        except Exception:
            log.exception("could not check the Optuna study for trials left RUNNING")
        # after every job dir, record and trial
        offset = next_job(sweep_dir, len(study.trials) if study else 0)
        self._first_job = offset
        path = _offset_path(sweep_dir)
        if offset or path.exists():
            _write_atomic(path, f"{offset}\n")
        if offset:
            log.info("sweep dir %s already holds jobs up to %d: new jobs are numbered from %d",
                     sweep_dir, offset - 1, offset)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Before Hydra writes a single run's ``.hydra`` files and opens its log file: keep
        those of a run already in its directory, put back if the new run is refused there;
        and where another command trains there now, write neither (the refusal follows):
        its ``.hydra`` files and its log would get this command's."""
        from latentode.cli.checkpoints import snapshot_run_files
        from latentode.cli.lock import keep_out_if_in_use

        with contextlib.suppress(Exception):  # (an unresolvable dir: nothing to keep)
            snapshot_run_files(str(config.hydra.run.dir))
            if keep_out_if_in_use(str(config.hydra.run.dir)):
                _write_nothing_into(config)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._started[str(config.hydra.runtime.output_dir)] = time.perf_counter()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if not self._multirun(config):
            return
        try:
            self._record(config, job_return)
        except Exception:  # the table must never stop a sweep
            log.exception("could not update the sweep summary")

    def _record(self, config: DictConfig, job_return: JobReturn) -> None:
        run_dir = Path(str(config.hydra.runtime.output_dir))
        sweep_dir = Path(str(config.hydra.sweep.dir))
        started = self._started.pop(str(run_dir), None)
        wall = time.perf_counter() - started if started is not None else float("nan")
        job = job_number(str(sweep_dir), config.hydra.job.num)
        record_path = run_dir / JOB_RECORD
        refused = _REFUSED.pop(str(run_dir), None)
        metrics: dict[str, Any]
        if refused is not None:
            status, metrics, error = "failed", {}, error_message(refused)
        elif job_return.status == JobStatus.FAILED:
            status, metrics = "failed", {}
            error = error_message(job_return._return_value)
        elif record_path.is_file():
            record = json.loads(record_path.read_text())
            status, metrics, error = record["status"], record["metrics"], record["error"]
        else:
            value = job_return._return_value
            status, error = "completed", ""
            metrics = dict(value) if isinstance(value, dict) else {}
        overrides = [str(o) for o in (job_return.overrides or [])]
        row = {
            "job": job,
            "status": status,
            "wall_time_s": round(wall, 3),
            "override_columns": _override_columns(overrides),
            "metrics": {k: v for k, v in metrics.items() if k.startswith(METRIC_PREFIXES)},
            "error": error,
            "overrides": " ".join(overrides),
            "output_dir": str(run_dir),
            "tested": _digest(run_dir / "test_metrics.json"),  # what _rerun_in_place compares
        }
        _write_atomic(sweep_dir / STATE / "jobs" / f"{job}.json", json.dumps(row, indent=1))
        refresh_summary(sweep_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        worker = getattr(self, "_worker", None)
        if worker is not None:  # this search no longer runs
            _unregister(worker)
        if not (sweep_dir / STATE / "jobs").is_dir():
            return
        path = refresh_summary(sweep_dir)
        # this call's jobs: a resumed sweep's earlier failures are in the table but not this
        # call's outcome (it exited 1 for them)
        with open(path, newline="", encoding="utf-8") as f:
            statuses = [row["status"] for row in csv.DictReader(f)
                        if int(row["job"]) >= self._first_job]
        failed = statuses.count("failed")
        _FAILED[0] = failed
        if failed:
            log.warning("%d of %d jobs failed; see %s (exit status 1)", failed, len(statuses),
                        path)
        else:
            log.info("%d jobs completed; summary: %s", len(statuses), path)
        metric = config.get("optimized_metric")
        direction = OmegaConf.select(config, "hydra.sweeper.direction", default=None)
        direction = direction or metric_direction(metric)
        best = best_job(path, metric, direction)
        if best is not None:
            log.info("best job by %s (%s): %s (%s) in %s", metric,
                     "highest" if str(direction).startswith("max") else "lowest", best[0],
                     best[1], sweep_dir / best[0])


def metric_direction(metric: Any) -> str:
    """``maximize`` for a metric named like a score (``auc``, ``acc``...), else ``minimize`` (a
    grid sweep has no sweeper direction to read)."""
    name = str(metric or "").lower().rsplit("/", 1)[-1]
    return "maximize" if name.startswith(("auc", "acc")) else "minimize"


def best_job(summary: Path, metric: Any, direction: Any = "minimize") -> tuple[str, str] | None:
    """``(job, value)`` of the summary's best completed, unrecorded or rerun row by ``metric``
    (None without such a column, a value, or one direction)."""
    if not metric or not isinstance(direction, str):
        return None
    with open(summary, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f)
                if r.get("status") in ("completed", "unrecorded", "rerun")
                and r.get(str(metric))]
    scored = []
    for row in rows:
        try:
            scored.append((float(row[str(metric)]), row))
        except ValueError:
            continue
    scored = [(v, r) for v, r in scored if v == v]  # NaN never wins
    if not scored:
        return None
    pick = max if direction.lower().startswith("max") else min
    _, row = pick(scored, key=lambda item: item[0])
    return row["job"], row[str(metric)]


# -- a validation split for sources that fix theirs ---------------------------------------------

def carve_validation(n_series: int, train_fraction: float, val_fraction: float) -> np.ndarray:
    """Split labels (``train``/``val``/``test`` per series, in stored order) for a source whose
    own split is "first ``int(n * train_fraction)`` train, the rest test" (hopper): the last
    ``val_fraction`` of those training series become validation, the test series stay as they
    are. Pass it as the data module's ``split`` (see ``conf/hparams_search/hopper_optuna.yaml``).
    """
    n_train = int(n_series * train_fraction)
    n_val = max(1, round(n_train * val_fraction)) if val_fraction > 0 else 0
    if not 0 <= n_val < n_train:
        raise ValueError(f"val_fraction={val_fraction} leaves no training series "
                         f"({n_train} of {n_series} are the source's training series).")
    labels = np.full(n_series, "test", dtype=object)
    labels[: n_train - n_val] = "train"
    labels[n_train - n_val : n_train] = "val"
    return labels.astype(str)


__all__ = ["SweepSummary", "carve_validation", "job_number", "refresh_summary",
           "register_worker", "settle_running_trials", "write_job_record"]
