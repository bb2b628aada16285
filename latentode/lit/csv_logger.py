"""A CSV logger that keeps a run dir's ``metrics.csv`` history when the run is resumed there.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it opens its directory, so a
run resumed into its own dir (a preempted cluster job, a long run trained in chunks) lost every
epoch logged before the checkpoint. :class:`RunCSVLogger` instead

- on resume (:meth:`RunCSVLogger.continue_from` with the checkpoint's global step) keeps the
  rows logged before that step, drops the ones a stopped run logged after its last checkpoint
  (the resumed run logs those steps again), keeps earlier test rows, and appends; a test row
  logged at a step that already holds an earlier run's test row replaces it (a chunk rerun
  whose checkpoint already reached ``max_epochs`` trains nothing and tests the same weights
  again at the same step: one test row per step, as ``test_metrics.json`` holds the last);
- on a test-only run (``continue_from(None)``) keeps every row and appends (Lightning logs a
  test-only run at step 0, whatever the checkpoint's step: such rows cannot be matched);
- on a fresh run into a dir that already holds a ``metrics.csv`` moves that file aside to
  ``metrics.N.csv`` (never deletes it) and starts a new one.
"""

from __future__ import annotations

import csv
import logging
import os
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

log = logging.getLogger(__name__)

_FRESH = object()  # continue_from was not called: a new run


def _is_test_row(row: dict[str, Any]) -> bool:
    """Whether a row holds test results (``test/...`` values)."""
    return any(str(key).startswith("test/") and value not in ("", None)
               for key, value in row.items())


def _step_of(row: dict[str, Any]) -> int | None:
    try:
        return int(float(row.get("step") or ""))
    except (TypeError, ValueError):
        return None


def _kept(row: dict[str, str], before_step: int | None) -> bool:
    """Whether a row of an earlier run stays: logged before the resumed step, or a test result
    (a row without a step cannot be placed: kept rather than lost)."""
    if before_step is None or _is_test_row(row):
        return True
    step = _step_of(row)
    return step is None or step < before_step


class _Utf8Files:
    """A filesystem whose text files are UTF-8 whatever the platform's default: Windows' ANSI
    code page cannot hold a channel named ``SpO₂`` (``test/mse_data/SpO₂``), and every reader
    of ``metrics.csv`` reads UTF-8."""

    def __init__(self, fs: Any) -> None:
        self._inner = fs

    def open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if "b" not in mode:
            kwargs.setdefault("encoding", "utf-8")
        return self._inner.open(path, mode, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _RunDirWriter(ExperimentWriter):
    """Lightning's writer, except that an existing ``metrics.csv`` is continued or moved aside."""

    def __init__(self, log_dir: str, continue_from: Any) -> None:
        self._continue_from = continue_from
        self._earlier_tests: set[int] = set()  # steps of an earlier run's test rows (on resume)
        super().__init__(log_dir=log_dir)

    def log_metrics(self, metrics_dict: dict[str, float], step: int | None = None) -> None:
        if step is not None and step in self._earlier_tests and _is_test_row(metrics_dict):
            self._drop_earlier_tests(step)
        super().log_metrics(metrics_dict, step)

    def _drop_earlier_tests(self, step: int) -> None:
        """Take an earlier run's test rows at ``step`` out of the file: tested again there."""
        self._earlier_tests.discard(step)  # this run's own later test rows at the step append
        path = self.metrics_file_path
        with self._fs.open(path, "r", newline="") as f:
            reader = csv.DictReader(f)
            fields = list(reader.fieldnames or [])
            rows = list(reader)
        kept = [row for row in rows if not (_is_test_row(row) and _step_of(row) == step)]
        with self._fs.open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(kept)
        log.info("%s: tested again at step %d; its earlier test row replaced", path, step)

    def _check_log_dir_exists(self) -> None:  # called by the base __init__ instead of deleting
        if not isinstance(self._fs, _Utf8Files):  # the base __init__ has just set it
            self._fs = _Utf8Files(self._fs)
        path = self.metrics_file_path
        if not self._fs.isfile(path):
            return
        if self._continue_from is _FRESH:
            n = 1
            while self._fs.exists(os.path.join(self.log_dir, f"metrics.{n}.csv")):
                n += 1
            aside = os.path.join(self.log_dir, f"metrics.{n}.csv")
            self._fs.mv(path, aside)
            log.warning("%s held an earlier run's metrics: moved to %s; this run starts a new "
                        "metrics.csv (pass ckpt_path=... to continue that run instead)",
                        path, aside)
            return
        with self._fs.open(path, "r", newline="") as f:
            reader = csv.DictReader(f)
            fields = list(reader.fieldnames or [])
            rows = list(reader)
        kept = [row for row in rows if _kept(row, self._continue_from)]
        if self._continue_from is not None:  # a resume: its steps are the run's global steps
            # (a test-only run logs at step 0 whatever it tests: its rows are only appended)
            self._earlier_tests = {step for row in kept
                                   if _is_test_row(row) and (step := _step_of(row)) is not None}
        self.metrics_keys = sorted(fields)
        with self._fs.open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(kept)
        if len(kept) < len(rows):
            log.info("continuing %s from step %s: kept %d rows, dropped %d logged after the "
                     "checkpoint (logged again as the run resumes)",
                     path, self._continue_from, len(kept), len(rows) - len(kept))


class RunCSVLogger(CSVLogger):
    """``CSVLogger`` that continues ``metrics.csv`` on resume instead of deleting it.

    Call :meth:`continue_from` before anything is logged (the training CLI does); without it
    the logger behaves as a new run's, except that an earlier file is moved aside, not deleted.
    """

    _experiment: ExperimentWriter | None  # only experiment below sets it: a _RunDirWriter

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._continue_from: Any = _FRESH

    def continue_from(self, step: int | None) -> None:
        """Keep the existing ``metrics.csv``: its rows before global ``step`` (all when None)."""
        if self._experiment is not None:
            raise RuntimeError("RunCSVLogger.continue_from must be called before the first log")
        if step is not None and (not isinstance(step, int) or step < 0):
            raise ValueError(f"step must be a non-negative int or None, got {step!r}")
        self._continue_from = step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _RunDirWriter(self.log_dir, self._continue_from)
        return self._experiment
