"""Per-series walks for the backward encoders: each series steps through its own observations.

The encoders' default walk visits the batch's *union* of time points: every series takes a step
at every time any series was observed. For aligned data (a shared grid, as the periodic and
hopper benchmarks) that is what each series needs anyway. For sparse, unaligned series (ICU
records: each patient measured at its own minutes) the union is many times longer than any one
series, and so is the sequential loop. :func:`series_plan` lays out, for every series, only its
own observation times, backwards from its last: an event is "move by ``dt`` (<= 0), then maybe
update with the observation at time index ``index``". A gap longer than ``max_step`` is split
into equal moves no longer than ``max_step`` (the paper code takes extra Euler steps over long
gaps too). Each walk ends with a move from the series' first observation back to the batch's
first time, where the decoder starts the latent path (``z0``), as the union walk does (the
same split by ``max_step``). All series walk their event lists side by side; a series that has
finished its list stands still (``dt = 0``, no update) while the others go on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class SeriesPlan:
    """Events ``(E, B)`` of a batch: event ``e`` moves series ``b`` by ``dt[e, b]`` and then,
    where ``index[e, b] >= 0``, updates it with the observation at time index ``index[e, b]``;
    ``gap[e, b]`` is the time from that observation to the series' next (later) one (0 for
    its last). ``moves[e]``/``updates[e]``: whether any series moves/updates at event ``e``."""

    dt: torch.Tensor  # (E, B), <= 0: backwards in time
    index: torch.Tensor  # (E, B) long, -1: no update
    gap: torch.Tensor  # (E, B)
    moves: list[bool]
    updates: list[bool]

    @property
    def length(self) -> int:
        return len(self.moves)


def check_max_step(max_step: float | None) -> None:
    """Raise unless ``max_step`` is None or a positive finite number."""
    if max_step is not None and not (math.isfinite(max_step) and max_step > 0):
        raise ValueError(f"max_step must be a positive number of time units or None, "
                         f"got {max_step!r}.")


def series_plan(times: torch.Tensor, seen: torch.Tensor, max_step: float | None = None,
                visit: torch.Tensor | None = None) -> SeriesPlan:
    """The events of each series of ``seen (B, T)`` over ``times (T,)`` (increasing), down to
    ``times[0]``.

    ``max_step``: longest move; a longer gap is split into ``ceil(gap / max_step)`` equal
    moves (None: one move per gap). ``visit (B, T)``: more points a series' moves end at
    before its last observation, without an update there: a series walked alone on a grid
    takes the Euler steps a union walk over that grid gives it (what a model trained on the
    union walk of gridded data was trained with). A series without observations has no events.
    """
    check_max_step(max_step)
    t = times.detach().cpu().double().numpy()
    observed = seen.detach().cpu().numpy()
    stops = observed if visit is None else observed | visit.detach().cpu().numpy()
    batch = observed.shape[0]
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for b in range(batch):
        own = np.flatnonzero(observed[b])
        if own.size == 0:
            rows.append((np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0)))
            continue
        idx = np.flatnonzero(stops[b, : own[-1] + 1])[::-1]  # from the last observation back
        gaps = t[idx[:-1]] - t[idx[1:]]  # > 0, between consecutive stops
        lead = t[idx[-1]] - t[0]  # the earliest stop back to the batch's first time
        moves = np.append(gaps, lead) if lead > 0 else gaps
        if max_step is None:
            n = np.ones(moves.size, dtype=np.int64)
        else:
            n = np.maximum(1, np.ceil(moves / max_step - 1e-9).astype(np.int64))
        dt = np.concatenate([[0.0], np.repeat(-moves / n, n)])
        index = np.full(dt.size, -1, dtype=np.int64)
        ends = np.concatenate([[0], np.cumsum(n)])[: idx.size]  # each stop's event
        updates = observed[b, idx]
        index[ends[updates]] = idx[updates]
        gap = np.zeros(dt.size)  # from each observation to the series' next (later) one
        gap[ends[updates][1:]] = t[own[::-1][:-1]] - t[own[::-1][1:]]
        rows.append((dt, index, gap))
    length = max((r[0].size for r in rows), default=0)
    dt = np.zeros((length, batch))
    index = np.full((length, batch), -1, dtype=np.int64)
    gap = np.zeros((length, batch))
    for b, (d, i, g) in enumerate(rows):
        dt[: d.size, b], index[: i.size, b], gap[: g.size, b] = d, i, g
    return SeriesPlan(
        dt=torch.from_numpy(dt).to(device=times.device, dtype=times.dtype),
        index=torch.from_numpy(index).to(times.device),
        gap=torch.from_numpy(gap).to(device=times.device, dtype=times.dtype),
        moves=np.any(dt != 0, axis=1).tolist(),
        updates=np.any(index >= 0, axis=1).tolist(),
    )
