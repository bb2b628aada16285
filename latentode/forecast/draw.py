"""Answering many series at once: each history a job, jobs solved in batches.

A *job* is one history (a series, or for a model trained on windows one window of it) and the
times it is asked at, on the series' own clock (model times from its own first time, so series
far apart on one absolute clock keep their resolution). One job alone is what the forecaster
answered before batching; a batch stacks jobs on the union of their (shifted) times:

* the encoder walks each series through its own observations (``schedule="series"``), so a
  series' posterior ``q(z0)`` does not depend on the others in its batch;
* ``z0``'s standard normal draws come from each series' own seed (``z0_noise``);
* the decoder solves all rows in one adaptive integration, each row answered at its own times
  by dense output (``pred_times`` of shape ``(B, T)``). What a batch shares is the solver's
  step sequence: a series' answer differs from its lone answer within the solver's tolerance
  (``rtol``), far below the posterior's spread. ``batch_size=1`` answers each series alone.

Models that cannot do this (the baselines; an ODE-RNN encoder with another solver than one
Euler step per gap) are answered one job at a time, as before.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import torch
from torch import nn

from latentode.data.batch import distinct_in
from latentode.models import LatentODE

from .subsets import Subsets, subset_forward

# a batch holds at most this many (sample, series, time) points in its decoded paths and
# (series, time, channel) entries in its encoder input: about 100 MB of float32 per tensor
# at 20 latents, whatever the batch size asked for
MAX_PATH_POINTS = 1_000_000
MAX_INPUT_ENTRIES = 4_000_000


@dataclass
class Job:
    """One history and the times it is asked at, on its own clock (model units)."""

    hist_t: np.ndarray  # (n,) distinct times from the job's zero, the first 0
    hist_v: np.ndarray  # (n, D) values in model units, NaN where not observed
    grid: np.ndarray  # (m,) sorted distinct prediction times; z0 lives at grid[0]
    where: np.ndarray  # (k,) position in ``grid`` of each asked time
    eps: torch.Tensor | None = None  # (S, L) z0's standard normal draws (latent ODE)
    visit: np.ndarray | None = None  # (n,) bool: hist_t points the encoder only steps through
    subset_seed: int | None = None  # seeds the history's subsets (``solve``'s ``subsets``)
    hist_e: np.ndarray | None = None  # (n, D) measurement uncertainties, model units, NaN none


@dataclass(frozen=True)
class WalkGrid:
    """The training grid a union-trained encoder walked (``DataSpec.walk_grid``): model times
    as stored (``origin="batch"``) or from each series' first time (``"series"``)."""

    times: np.ndarray
    origin: str = "batch"

    def anchor(self, first: float) -> float | None:
        """Where training put ``z0`` for a history starting at model time ``first``: the
        grid's start, for batch-origin data whose history lies on the grid's span (there every
        training batch began at it, whatever its series' first observations); else None."""
        if self.origin != "batch" or not self.times[0] <= first <= self.times[-1]:
            return None
        return float(self.times[0])

    def on_job_clock(self, first: float, zero: float) -> np.ndarray:
        """The grid on the clock of a job whose history starts at model time ``first`` and
        whose clock starts at ``zero``."""
        return self.times - zero if self.origin == "batch" else self.times + (first - zero)


@overload
def _blank_rows(rows: np.ndarray, n: int, at_start: bool = True) -> np.ndarray: ...
@overload
def _blank_rows(rows: None, n: int, at_start: bool = True) -> None: ...
def _blank_rows(rows: np.ndarray | None, n: int, at_start: bool = True) -> np.ndarray | None:
    """``rows`` (values or uncertainties, ``(k, D)``) with ``n`` rows of NaN before (or
    after) them; None stays None."""
    if rows is None:
        return None
    blank = np.full((n, rows.shape[1]), np.nan)
    return np.concatenate([blank, rows] if at_start else [rows, blank])


def with_visits(hist_t: np.ndarray, hist_v: np.ndarray, points: np.ndarray, np_dtype: Any,
                hist_e: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``hist_t`` with the ``points`` between its start and last observation added as rows
    observing nothing, and which rows those are (and ``hist_e``, the uncertainties, with
    the same rows added, NaN). A point within a millionth of the history's span (or of one
    time unit) of an existing time is that time."""
    observed = ~np.isnan(hist_v).all(1)
    if not observed.any():
        return hist_t, hist_v, None, hist_e
    lo, hi = float(hist_t[0]), float(hist_t[observed][-1])
    points = np.unique(points[(points > lo) & (points < hi)].astype(np_dtype))
    existing = np.zeros(len(hist_t), dtype=bool)  # rows of the history that are grid points
    if points.size:
        tol = 1e-6 * max(hi - lo, 1.0)
        right = np.clip(np.searchsorted(hist_t, points), 0, len(hist_t) - 1)
        left = np.clip(right - 1, 0, len(hist_t) - 1)
        nearest = np.where(np.abs(points - hist_t[left]) < np.abs(points - hist_t[right]),
                           left, right)
        matched = np.abs(points - hist_t[nearest]) <= tol
        existing[nearest[matched]] = True
        points = points[~matched]
    visit = existing & ~observed  # a row observing nothing, at a grid point: stepped through
    if not points.size:
        return hist_t, hist_v, visit, hist_e
    times = np.concatenate([hist_t, points])
    order = np.argsort(times, kind="stable")
    values = _blank_rows(hist_v, len(points), at_start=False)[order]
    errors = _blank_rows(hist_e, len(points), at_start=False)
    visit = np.concatenate([visit, np.ones(len(points), bool)])[order]
    return (times[order].astype(np_dtype), values, visit,
            None if errors is None else errors[order])


def make_job(hist64: np.ndarray, hist_v: np.ndarray, want64: np.ndarray, np_dtype: Any,
             from_target: bool, walk: WalkGrid | None = None,
             hist_e: np.ndarray | None = None) -> Job:
    """The job of a history at model times ``hist64`` asked at ``want64`` (float64), ``z0``
    at the earliest of the history and the asked times (the encoder evolves back to an asked
    time before the history: the answer at every time then depends on that earliest time).
    ``walk``: the grid the encoder steps through as well (:class:`WalkGrid`); ``hist_e``:
    the history's uncertainties (model units, NaN where none), kept row for row."""
    # each series on its own clock from its first time (float64 first): the dynamics are
    # autonomous, and a series far from the training data's zero keeps its resolution
    zero = min(float(hist64[0]), float(want64.min()))
    hist_t = distinct_in(hist64 - zero, np_dtype)
    want = (want64 - zero).astype(np_dtype)
    start = min(hist_t[0], want.min())
    if start < hist_t[0]:  # z0 at the earliest requested time
        hist_t = np.concatenate([[start], hist_t]).astype(np_dtype)
        hist_v = _blank_rows(hist_v, 1)
        hist_e = _blank_rows(hist_e, 1)
    # z0 at the grid's first time: the encoder's (default) or, for a latent ODE trained
    # with z0_at="first_target", the first requested time, as its training did
    grid = np.unique(want if from_target else np.concatenate([hist_t[:1], want]))
    visit = None
    if walk is not None:
        hist_t, hist_v, visit, hist_e = with_visits(
            hist_t, hist_v, walk.on_job_clock(float(hist64[0]), zero), np_dtype, hist_e)
    return Job(hist_t, hist_v, grid, np.searchsorted(grid, want), visit=visit, hist_e=hist_e)


def make_jobs(hist64: np.ndarray, hist_v: np.ndarray, want64: np.ndarray, np_dtype: Any,
              from_target: bool, backwards: bool, walk: WalkGrid | None = None,
              hist_e: np.ndarray | None = None) -> list[tuple[np.ndarray, Job]]:
    """``(asked positions, job)`` pairs answering ``want64`` from one history.

    ``backwards`` (a latent ODE with ``z0`` at the history's start): ``z0`` stays at the
    history's first time whatever is asked, and times before it are a second job integrated
    backwards from there with the same ``z0`` (the same ``eps``): every answer is then
    independent of the other times asked, and each sample path one path through all of them.
    Otherwise one job (:func:`make_job`). ``walk``: see :func:`make_job`; its anchor, where
    it has one, is the history's start (``z0`` there, as in training). ``hist_e``: the
    history's uncertainties (model units, NaN where none), for an encoder that reads them."""
    # (z0_at="first_target" too: its encoder walked to the batch's first time all the same)
    anchor = None if walk is None else walk.anchor(float(hist64[0]))
    if anchor is not None and anchor < hist64[0]:
        hist64 = np.concatenate([[anchor], hist64])
        hist_v = _blank_rows(hist_v, 1)
        hist_e = _blank_rows(hist_e, 1)
    everything = np.arange(len(want64))
    if not backwards or from_target or not (want64 < hist64[0]).any():
        return [(everything, make_job(hist64, hist_v, want64, np_dtype, from_target, walk,
                                      hist_e))]
    zero = float(hist64[0])
    hist_t = distinct_in(hist64 - zero, np_dtype)
    want = (want64 - zero).astype(np_dtype)
    earlier = want < hist_t[0]
    later = everything[~earlier]
    jobs = []
    if len(later):  # the times from the history's start on: the plain job of those
        jobs.append((later, make_job(hist64, hist_v, want64[later], np_dtype, from_target,
                                     walk, hist_e)))
    before = everything[earlier]
    ahead = np.unique(np.concatenate([hist_t[:1], want[before]]))  # ascending
    grid = ahead[::-1].copy()  # from the history's start back in time
    where = len(ahead) - 1 - np.searchsorted(ahead, want[before])
    visit = None
    if walk is not None:
        hist_t, hist_v, visit, hist_e = with_visits(
            hist_t, hist_v, walk.on_job_clock(zero, zero), np_dtype, hist_e)
    jobs.append((before, Job(hist_t, hist_v, grid, where, visit=visit, hist_e=hist_e)))
    return jobs


def batch_mode(model: nn.Module) -> str:
    """How ``model`` answers jobs: ``"batched"`` (a latent ODE whose encoder walks series
    independently), ``"noise"`` (a latent ODE, one job at a time, ``z0_noise`` given) or
    ``"alone"`` (any other model, one job at a time, drawing its own noise)."""
    if not isinstance(model, LatentODE):
        return "alone"
    return "batched" if getattr(model.encoder, "walks_series", False) else "noise"


def _span_class(job: Job) -> tuple[bool, int]:
    """The direction and binary order of magnitude of the time a job's decoder integrates
    over (rows of one batch must all run the same way)."""
    span = float(job.grid[-1]) - float(job.grid[0])
    return span < 0, math.frexp(abs(span))[1] if span != 0 else -1075


def batches(jobs: list[Job], batch_size: int, num_samples: int, copies: int = 1
            ) -> Iterator[list[int]]:
    """Groups of job positions to solve together: jobs whose decoder spans are within a factor
    of two of each other (a batch integrates to its longest row: one series asked far ahead
    would hold up the rest), within those of similar history length (short histories do not
    wait on long ones), at most ``batch_size`` per group and within the memory bounds above (a
    job too large for them alone is a group of one). ``copies``: encoder rows per job (its
    subsets, :func:`solve`)."""
    spans = [_span_class(job) for job in jobs]
    order = sorted(range(len(jobs)), key=lambda j: (
        spans[j], len(jobs[j].hist_t), len(jobs[j].grid)))
    group: list[int] = []
    union = longest = 0
    for j in order:
        job = jobs[j]
        n_union, n_grid = union + len(job.hist_t), max(longest, len(job.grid))
        size = len(group) + 1
        if group and (size > batch_size or num_samples * size * n_grid > MAX_PATH_POINTS
                      or copies * size * n_union * job.hist_v.shape[1] > MAX_INPUT_ENTRIES
                      or spans[j] != spans[group[0]]):
            yield group
            group, n_union, n_grid = [], len(job.hist_t), len(job.grid)
        group.append(j)
        union, longest = n_union, n_grid
    if group:
        yield group


def _subset_masks(jobs: list[Job], subsets: Subsets, num_samples: int, at: list[np.ndarray],
                  length: int) -> np.ndarray:
    """``(K, B, length)``: each job's subsets of its observed history rows, drawn from its
    ``subset_seed`` (so from its series' stream, whatever batch it is in), laid on the
    positions ``at[b]`` of its rows."""
    k = subsets.count(num_samples)
    out = np.zeros((k, len(jobs), length), dtype=bool)
    for b, job in enumerate(jobs):
        if job.subset_seed is None:
            raise ValueError("solve with subsets needs each job's subset_seed.")
        seen = ~np.isnan(job.hist_v).all(1)
        drawn = subsets.masks(seen[None], k, np.random.default_rng(job.subset_seed))[:, 0]
        out[:, b, at[b]] = drawn
    return out


def _model_errors(hist_e: np.ndarray, np_dtype: Any) -> np.ndarray:
    """A job's uncertainties as the model takes them: 0 where none (NaN); one beyond the
    dtype's range at its largest value, not inf (an absolute confidence of 0; relative to
    its series' best, see ``encoder_confidence``)."""
    big = np.finfo(np_dtype).max
    return np.clip(np.nan_to_num(hist_e, nan=0.0), 0.0, big).astype(np_dtype)


def solve(model: nn.Module, jobs: list[Job], num_samples: int,
          subsets: Subsets | None = None) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Each job's ``(paths at its asked times (S, k, D), label logits (S, C) or None)``.

    More than one job: one batched pass (``batch_mode`` "batched"). One job: the model on that
    history alone, with the job's ``eps`` as ``z0_noise`` when it has one. ``subsets`` (a
    latent ODE, jobs with ``eps`` and ``subset_seed``): each ``z0`` sample conditioned on a
    random subset of its history (:mod:`.subsets`).
    """
    dtype = next(model.parameters()).dtype
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    if len(jobs) == 1:
        (job,) = jobs
        walk: dict[str, Any] = {}
        if job.visit is not None:
            walk.update(encoder_schedule="series",
                        encoder_visit=torch.from_numpy(job.visit)[None])
        if job.hist_e is not None:
            walk["encoder_errors"] = torch.from_numpy(_model_errors(job.hist_e, np_dtype))[None]
        seen = ~np.isnan(job.hist_v)
        args = (torch.from_numpy(job.hist_t),
                torch.from_numpy(np.nan_to_num(job.hist_v).astype(np_dtype))[None],
                torch.from_numpy(seen)[None])
        if subsets is not None:
            assert job.eps is not None  # a latent ODE's job
            masks = _subset_masks(jobs, subsets, num_samples, [np.arange(len(job.hist_t))],
                                  len(job.hist_t))
            pred, logits = subset_forward(model, masks, *args, job.eps[:, None],
                                          pred_times=torch.from_numpy(job.grid), **walk)
        else:
            noise = {} if job.eps is None else {"z0_noise": job.eps[:, None]}
            out = model(*args, n_samples=int(num_samples), pred_times=torch.from_numpy(job.grid),
                        **noise, **walk)
            pred, logits = out.pred, out.logits
        return [(pred[:, 0][:, job.where], None if logits is None else logits[:, 0])]
    times = np.unique(np.concatenate([job.hist_t for job in jobs]))
    # rows from 0 at each job's z0, all forwards or (times before the histories) all backwards
    channels = jobs[0].hist_v.shape[1]
    values = np.zeros((len(jobs), len(times), channels), dtype=np_dtype)
    mask = np.zeros(values.shape, dtype=bool)
    visit = np.zeros(values.shape[:2], dtype=bool)
    reads_errors = any(job.hist_e is not None for job in jobs)
    errors = np.zeros(values.shape, dtype=np_dtype) if reads_errors else None
    longest = max(len(job.grid) for job in jobs)
    rows = np.empty((len(jobs), longest), dtype=np_dtype)
    for b, job in enumerate(jobs):
        at = np.searchsorted(times, job.hist_t)
        seen = ~np.isnan(job.hist_v)
        values[b, at] = np.where(seen, job.hist_v, 0.0)
        mask[b, at] = seen
        if job.visit is not None:
            visit[b, at] = job.visit
        if errors is not None and job.hist_e is not None:
            errors[b, at] = _model_errors(job.hist_e, np_dtype)
        # every row from 0: z0 at each job's grid[0] (0 unless z0_at="first_target"; the
        # dynamics are autonomous), shorter rows padded by repeating their last time
        row = (job.grid.astype(np.float64) - float(job.grid[0])).astype(np_dtype)
        rows[b, : len(row)], rows[b, len(row):] = row, row[-1]
    eps = torch.stack([job.eps for job in jobs], 1)  # type: ignore[misc]
    extra: dict[str, Any] = {"encoder_visit": torch.from_numpy(visit)} if visit.any() else {}
    if errors is not None:
        extra["encoder_errors"] = torch.from_numpy(errors)
    if subsets is not None:
        masks = _subset_masks(jobs, subsets, num_samples,
                              [np.searchsorted(times, job.hist_t) for job in jobs], len(times))
        pred, logits = subset_forward(
            model, masks, torch.from_numpy(times), torch.from_numpy(values),
            torch.from_numpy(mask), eps, pred_times=torch.from_numpy(rows),
            encoder_schedule="series", **extra)
    else:
        out = model(torch.from_numpy(times), torch.from_numpy(values), torch.from_numpy(mask),
                    pred_times=torch.from_numpy(rows), z0_noise=eps,
                    encoder_schedule="series", **extra)
        pred, logits = out.pred, out.logits
    return [(pred[:, b][:, job.where], None if logits is None else logits[:, b])
            for b, job in enumerate(jobs)]
