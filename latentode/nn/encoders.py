"""Recognition encoders: read a batch's observations backwards in time, give q(z0) = N(mean, std).

Both take ``times (T,)`` (the batch's union of time points, increasing), ``values (B, T, D)`` and
``mask (B, T, D)`` (the observations the encoder may see; unobserved values are ignored; a float
mask in [0, 1] is each value's confidence, read as ``[values * mask, mask]``). A
series' hidden state is updated only at time points where it has an observation, so a value under
a zero mask can change nothing. ``q(z0)`` is for ``times[0]``: the ODE-RNN's state flows there;
the RNN encoder's map to ``q(z0)`` also reads the gap from there to the series' first observation.

* :class:`RNNEncoder`: a GRU whose input is ``[values, mask, time gap]``.
* :class:`ODERNNEncoder`: ODE-RNN (Rubanova et al. 2019): between observations the hidden state
  follows an ODE solved with ``latentode.solvers``; at an observation, a GRU update.

``schedule`` says how a batch is walked: ``"union"`` (default, the paper code's walk) steps every
series through the batch's union of time points; ``"series"`` steps each series through its own
observations only (:mod:`latentode.nn.schedule`), which is the union walk of each series alone
and is much shorter when series are sparse and unaligned (ICU records).

``cuda_graph=True`` (union walk only) records the training forward and backward on a GPU as CUDA
graphs, one per batch shape, and replays them (:mod:`latentode.nn.graphs`): the same numbers,
without launching thousands of small kernels from Python at every step. Without autograd
(evaluation under ``no_grad`` / ``inference_mode``) the forward alone is recorded and replayed.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from latentode.solvers import odeint
from latentode.solvers.odeint import check_options

from .euler_gru import euler_gru_scan
from .graphs import Graphable, check_graph_solver
from .layers import ODEFunc, check_sizes, is_single_euler_step, is_tanh_mlp, linear_pairs, mlp
from .mean_std_walk import mean_std_walk, supports
from .schedule import check_max_step, series_plan

SCHEDULES = ("union", "series")


class MLPGRUCell(nn.Module):
    """The paper code's GRU unit: update and reset gates and the new state are MLPs.

    Its gates see ``[h, x]`` through a hidden layer of ``units`` (a plain ``nn.GRUCell`` is
    linear there). Encoders use it with ``gru_units=<units>``; the default ``None`` is a plain
    ``nn.GRUCell``, about 3x cheaper per step. Which learns the paper's tasks faster is not
    measured yet.
    """

    def __init__(self, input_dim: int, hidden: int, units: int = 100):
        super().__init__()
        self.update = nn.Sequential(mlp(hidden + input_dim, hidden, units, 1), nn.Sigmoid())
        self.reset = nn.Sequential(mlp(hidden + input_dim, hidden, units, 1), nn.Sigmoid())
        self.new = mlp(hidden + input_dim, hidden, units, 1)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        both = torch.cat([h, x], -1)
        update, reset = self.update(both), self.reset(both)
        new = self.new(torch.cat([h * reset, x], -1))
        return (1 - update) * new + update * h


class MeanStdGRUCell(nn.Module):
    """The paper code's GRU unit over a state of a mean and a std (``h = [mean, std]``).

    Gates and the new state see ``[mean, std, x]`` through MLPs of ``units``; both halves are
    updated with the same gate and the std kept non-negative. The encoder's ODE moves only the
    mean; ``q(z0)`` is read from both (``std_state=True`` of the encoders).
    """

    def __init__(self, input_dim: int, hidden: int, units: int = 100):
        super().__init__()
        self.hidden = hidden
        self.update = nn.Sequential(mlp(2 * hidden + input_dim, hidden, units, 1), nn.Sigmoid())
        self.reset = nn.Sequential(mlp(2 * hidden + input_dim, hidden, units, 1), nn.Sigmoid())
        self.new = mlp(2 * hidden + input_dim, 2 * hidden, units, 1)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        mean, std = h.split(self.hidden, -1)
        both = torch.cat([mean, std, x], -1)
        update, reset = self.update(both), self.reset(both)
        new_mean, new_std = self.new(torch.cat([mean * reset, std * reset, x], -1)).chunk(2, -1)
        mean = (1 - update) * new_mean + update * mean
        std = ((1 - update) * new_std.abs() + update * std).abs()
        return torch.cat([mean, std], -1)


def gru_cell(n_in: int, hidden: int, units: int | None = None, std_state: bool = False
             ) -> nn.Module:
    """The recurrent update: a plain ``nn.GRUCell``; the paper code's MLP-gated cell when
    ``units`` is given; its mean-and-std cell (state ``2 * hidden``, ``units`` default 100)
    with ``std_state``."""
    if std_state:
        return MeanStdGRUCell(n_in, hidden, units or 100)
    return nn.GRUCell(n_in, hidden) if units is None else MLPGRUCell(n_in, hidden, units)


def start_at_last_observation(times: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """``times`` with every point after the batch's last observation moved onto it.

    The backward walk then starts at the last point any series observes, with its zero state,
    as the paper's code does (its encoder is given the observed part only); otherwise, e.g.
    when the batch's times include extrapolation targets, the state would drift from zero
    through the unobserved tail (one Euler step per point) and the first gap would span it.
    On the device, no host synchronisation (the CUDA-graph walk records it); the points moved
    are skipped by the eager walks (zero gaps, nothing observed). Unchanged when nothing is
    observed at all.
    """
    observed = seen.any(0)  # (T,)
    last = torch.where(observed, times, times.amin()).amax()  # device ops only, no copies
    last = torch.where(observed.any(), last, times.amax())
    return torch.minimum(times, last)


class _BackwardGRU(Graphable, nn.Module):
    """Shared machinery: masked GRU updates walking the times from last to first (the batch's
    union, or each series' own with ``schedule="series"``)."""

    reads_soft_mask = True
    """A float mask in [0, 1] is read as each value's confidence (``[values * mask, mask]``
    in every walk): a latent ODE's ``encoder_error_scale`` may hand it one."""

    def __init__(self, input_dim: int, latent_dim: int, hidden: int, gru_input: int,
                 z0_units: int, gru_units: int | None = None, std_state: bool = False,
                 schedule: str = "union", max_step: float | None = None,
                 cuda_graph: bool = False, z0_extra: int = 0):
        super().__init__()
        if cuda_graph and schedule != "union":
            raise ValueError("cuda_graph records the union walk (schedule='union'); the series "
                             "walk's steps change with every batch. Set cuda_graph=false or "
                             "schedule='union'.")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}.")
        if max_step is not None and schedule != "series":
            raise ValueError("max_step splits the gaps of schedule='series'; the union walk "
                             "takes one step per gap of the batch's time points. Set "
                             "schedule='series' or max_step=None.")
        check_max_step(max_step)
        check_sizes(type(self).__name__, input_dim=input_dim, latent_dim=latent_dim,
                    hidden=hidden, z0_units=z0_units, gru_units=gru_units)
        self.input_dim, self.latent_dim = input_dim, latent_dim  # checked by the latent ODE
        self.schedule, self.max_step = schedule, max_step
        self.hidden, self.std_state = hidden, std_state
        self.state_dim = 2 * hidden if std_state else hidden
        self.cell = gru_cell(gru_input, hidden, gru_units, std_state)
        # the map to q(z0) reads the state and z0_extra more inputs (lead_in)
        self.to_z0 = mlp(self.state_dim + z0_extra, 2 * latent_dim, z0_units, 1)
        self.cuda_graph = cuda_graph

    def evolve(self, h: torch.Tensor, t_from: torch.Tensor, t_to: torch.Tensor) -> torch.Tensor:
        return h

    def move(self, h: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        """Each series' state moved by its own ``dt (B,)`` (the series walk)."""
        return h

    def step_input(
        self, values: torch.Tensor, mask: torch.Tensor, gap: torch.Tensor
    ) -> torch.Tensor:
        return torch.cat([values * mask, mask], -1)

    def lead_in(self, h: torch.Tensor, lead: torch.Tensor, observed: torch.Tensor
                ) -> torch.Tensor:
        """What the map to ``q(z0)`` reads at the end of a walk, which left each series at its
        first observation, ``lead (B,)`` after ``times[0]`` (``observed (B,)``: the series has
        one). Here the state alone: the ODE-RNN's walks already carried it to ``times[0]``."""
        return h

    @property
    def walks_series(self) -> bool:
        """Whether ``schedule="series"`` is available (for the ODE-RNN: one Euler step per
        gap, the default solver)."""
        return True

    def forward(
        self, times: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
        schedule: str | None = None, visit: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, std)`` of ``q(z0)`` at ``times[0]`` from the observations under ``mask``.

        ``schedule`` overrides the encoder's walk for this call: ``"series"`` makes each series'
        result independent of the others in the batch (e.g. to answer series in batches as
        if each were alone); None keeps the encoder's own ``schedule``. ``visit (B, T)`` bool,
        series walk only: points each series also steps to without an update (a grid, see
        :func:`~latentode.nn.schedule.series_plan`).
        """
        if schedule is not None and schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES} or None, got {schedule!r}.")
        if visit is not None and (schedule or self.schedule) != "series":
            raise ValueError("visit= lays out the series walk; pass schedule='series' with it.")
        if schedule == "series" and not self.walks_series:  # the ODE-RNN's, with its solver
            raise ValueError(f"schedule='series' takes one Euler step per gap; this encoder's "
                             f"solver is {getattr(self, 'solver', None)}.")
        walk = self.schedule if schedule is None else schedule
        mask = mask.to(values.dtype)
        # what is not observed is never read: NaN there would spread through values * mask
        values = torch.where(mask > 0, values, torch.zeros((), dtype=values.dtype,
                                                           device=values.device))
        seen = mask.amax(-1) > 0  # (B, T): a series has an observation at this time
        times = start_at_last_observation(times, seen)
        if (self.cuda_graph and walk == "union" and values.is_cuda
                and (self.training or not torch.is_grad_enabled())):
            mean, std = self._graphs(times, values, mask)
            return mean, std
        if walk == "series":
            return self._z0(self._walk_series(times, values, mask, seen, visit))
        if self._fused_euler_gru:
            return self._z0(self._fused(times, values, mask, seen))
        if self._mean_std_walk:
            return self._z0(self._walk_mean_std(times, values, mask, static=False))
        return self._z0(self._walk_union(times, values, mask, seen))

    def _walk_union(self, times: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                    seen: torch.Tensor, static: bool = False) -> torch.Tensor:
        """Every series through the batch's union of time points, last to first.

        Time points no series observes are skipped, and gaps of zero length; the test is one
        host synchronisation for the whole walk (one per time point stalls a GPU). ``static``
        visits every point and gap instead, with the same result (an update no series takes
        is masked out, a zero-length Euler step adds ``0 * f``): a walk whose kernels depend on
        the shapes only, which a CUDA graph can record.
        """
        batch, length, _ = values.shape
        if static:
            moving = updating = [True] * length
        else:
            flags = torch.cat([times[1:] != times[:-1], seen.any(0)]).tolist()
            moving, updating = flags[: length - 1], flags[length - 1 :]
        h = values.new_zeros(batch, self.state_dim)
        last = times[-1].expand(batch)  # time of each series' previous (later) observation
        for i in range(length - 1, -1, -1):
            if i < length - 1 and moving[i]:
                h = self.evolve(h, times[i + 1], times[i])
            if not updating[i]:
                continue
            update = seen[:, i]
            gap = (last - times[i]).unsqueeze(-1)
            h_new = self.cell(self.step_input(values[:, i], mask[:, i], gap), h)
            h = torch.where(update.unsqueeze(-1), h_new, h)
            last = torch.where(update, times[i].expand(batch), last)
        return self.lead_in(h, last - times[0], seen.any(1))

    def _static_z0(self, times: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """``q(z0)`` by the static union walk (what ``cuda_graph`` records)."""
        return self._z0(self._walk_union(times, values, mask, mask.amax(-1) > 0, static=True))

    def _graph_fn(self, times: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._static_z0(times, values, mask)

    def _walk_series(self, times: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                     seen: torch.Tensor, visit: torch.Tensor | None = None) -> torch.Tensor:
        """Every series through its own observations (and ``visit``'s points), last to first
        (``schedule="series"``)."""
        plan = series_plan(times, seen, self.max_step, visit)
        batch = values.shape[0]
        rows = torch.arange(batch, device=values.device)
        h = values.new_zeros(batch, self.state_dim)
        for e in range(plan.length):
            if plan.moves[e]:
                h = self.move(h, plan.dt[e])
            if plan.updates[e]:
                index = plan.index[e]
                at = index.clamp_min(0)
                # (step_input multiplies by the mask: once, as the union walk does; a soft
                # mask, encoder_errors, multiplied twice read its confidence squared)
                x = self.step_input(values[rows, at], mask[rows, at], plan.gap[e].unsqueeze(-1))
                h = torch.where((index >= 0).unsqueeze(-1), self.cell(x, h), h)
        first = torch.where(seen, times, times[-1]).amin(1)  # each series' first observation
        return self.lead_in(h, first - times[0], seen.any(1))

    def _z0(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, raw_std = self.to_z0(h).chunk(2, dim=-1)
        # |.| as in the paper code: with small initial weights q(z0) starts nearly deterministic
        return mean, raw_std.abs() + 1e-6

    _fused_euler_gru = False
    """Whether :meth:`_fused` may replace the generic loop (set by subclasses that qualify)."""
    _mean_std_walk = False
    """Whether :meth:`_walk_mean_std` may replace it (idem)."""

    def _walk_mean_std(self, times: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                       static: bool) -> torch.Tensor:
        raise NotImplementedError  # where _mean_std_walk is set

    def _fused(self, times: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
               seen: torch.Tensor) -> torch.Tensor:
        """The same recurrence for an ``nn.GRUCell`` with one Euler step per gap, as one autograd
        node (:mod:`latentode.nn.euler_gru`): the GRU's input projections for all time points in
        one matmul, the loop without per-op autograd records, the weight gradients in one
        product each. Equal to the generic loop up to rounding (tested, values and gradients)."""
        cell, ode = self.cell, self.ode
        assert isinstance(cell, nn.GRUCell) and isinstance(ode, ODEFunc)  # _fused_euler_gru's
        # (torch's stubs leave a GRUCell's biases undeclared: here they are, and not None)
        bias_ih, bias_hh = cast(torch.Tensor, cell.bias_ih), cast(torch.Tensor, cell.bias_hh)
        steps = seen.any(0).tolist()  # one sync for the whole sequence
        projected = nn.functional.linear(torch.cat([values * mask, mask], -1), cell.weight_ih,
                                         bias_ih)  # (B, T, 3H)
        gaps = (times[:-1] - times[1:]).tolist()  # t_i - t_{i+1}: negative, backwards in time
        return euler_gru_scan(projected, seen, gaps, steps, cell.weight_hh, bias_hh,
                              linear_pairs(ode.net))


class RNNEncoder(_BackwardGRU):
    """GRU over ``[values, mask, gap since the series' next observation]``, backwards in time.

    The GRU steps only at a series' own observations, so a walk ends at the series' first one.
    With ``lead_gap`` (default) the map to ``q(z0)`` reads, beside the GRU state, the series'
    lead: the gap from ``times[0]``, where ``z0`` sits, to that first observation (0 for a
    series never seen). Without it ``q(z0)`` could not tell a series seen at 0.1-0.3 from one
    seen at 0.7-0.9 with the same values (the paper code's RNN steps through every point of
    the batch, unobserved ones too, and so knows). On the reduced hopper protocol this input
    lowered the interpolation test MSE by ~7%, while one more GRU step over the gap raised it by
    ~10% (docs/results.md). State dicts without it (encoders from before it, or built with
    ``lead_gap=False``) load with a zero weight on the lead, which is exactly the model they
    were trained as (:meth:`upgrade_state`).
    """

    def __init__(self, input_dim: int, latent_dim: int, hidden: int = 40, z0_units: int = 100,
                 gru_units: int | None = None, schedule: str = "union",
                 cuda_graph: bool = False, lead_gap: bool = True):
        super().__init__(input_dim, latent_dim, hidden, 2 * input_dim + 1, z0_units, gru_units,
                         schedule=schedule, cuda_graph=cuda_graph, z0_extra=int(lead_gap))
        self.lead_gap = lead_gap

    def lead_in(self, h: torch.Tensor, lead: torch.Tensor, observed: torch.Tensor
                ) -> torch.Tensor:
        if not self.lead_gap:
            return h
        lead = torch.where(observed, lead, torch.zeros_like(lead))
        return torch.cat([h, lead.unsqueeze(-1).to(h)], -1)

    def upgrade_state(self, state_dict: dict, prefix: str) -> str | None:
        """Bring a state dict without the lead input to this layout in place: a zero column
        for the lead in the first layer of the map to ``q(z0)``, so it predicts as trained.
        Judged by that layer's width, not by metadata (Lightning's weight averaging writes
        checkpoints without it). Returns what was done (None: nothing)."""
        key = f"{prefix}to_z0.0.weight"
        weight = state_dict.get(key)
        if not self.lead_gap or weight is None or weight.shape[-1] != self.state_dim:
            return None
        state_dict[key] = torch.cat([weight, weight.new_zeros(weight.shape[0], 1)], -1)
        return ("an RNN encoder without the lead input (an earlier latentode's, or "
                "lead_gap=false), given a zero weight on it")

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict,
                              *args: Any) -> None:
        self.upgrade_state(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)

    def step_input(
        self, values: torch.Tensor, mask: torch.Tensor, gap: torch.Tensor
    ) -> torch.Tensor:
        return torch.cat([values * mask, mask, gap], -1)


class ODERNNEncoder(_BackwardGRU):
    """ODE-RNN: the hidden state flows by ``dh/dt = MLP(h)`` between observations.

    ``solver`` holds ``odeint`` options; the default, one Euler step per gap, is the paper code's
    choice for its encoder (cheap, and the GRU corrects the state at every observation).
    ``std_state=True`` is the paper code's encoder state: a mean (moved by the ODE) and a std
    (kept between observations), both updated by :class:`MeanStdGRUCell` and both read by the
    map to ``q(z0)``. ``schedule="series"`` walks each series through its own observations
    with one Euler step per gap (``max_step``: gaps longer than it take equal steps no longer
    than it), the encoder's default solver only.
    """

    def __init__(
        self, input_dim: int, latent_dim: int, hidden: int = 40, ode_units: int = 100,
        ode_layers: int = 1, z0_units: int = 100, solver: dict[str, Any] | None = None,
        gru_units: int | None = None, std_state: bool = False, schedule: str = "union",
        max_step: float | None = None, cuda_graph: bool = False,
    ):
        super().__init__(input_dim, latent_dim, hidden, 2 * input_dim, z0_units, gru_units,
                         std_state, schedule, max_step, cuda_graph)
        check_sizes("ODERNNEncoder", ode_units=ode_units, ode_layers=ode_layers)
        self.ode = ODEFunc(hidden, ode_units, ode_layers)
        check_options(solver or {}, "ODERNNEncoder")
        self.solver = {"method": "euler", **(solver or {})}
        if cuda_graph:
            check_graph_solver(self.solver)
        if schedule == "series" and not self.walks_series:
            raise ValueError(
                f"schedule='series' takes Euler steps of each series' own length; it cannot use "
                f"the solver options {dict(self.solver)}. Use solver={{'method': 'euler'}} "
                f"(max_step= to split long gaps) or schedule='union'.")

    @property
    def walks_series(self) -> bool:
        return self._single_euler_step

    def move(self, h: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        if self.std_state:
            mean, std = h.split(self.hidden, -1)
            return torch.cat([mean + dt.unsqueeze(-1) * self.ode(dt, mean), std], -1)  # t unused
        return h + dt.unsqueeze(-1) * self.ode(dt, h)

    def evolve(self, h: torch.Tensor, t_from: torch.Tensor, t_to: torch.Tensor) -> torch.Tensor:
        if self.std_state:  # the ODE moves the mean; the std waits for the next observation
            mean, std = h.split(self.hidden, -1)
            return torch.cat([self._flow(mean, t_from, t_to), std], -1)
        return self._flow(h, t_from, t_to)

    def _flow(self, h: torch.Tensor, t_from: torch.Tensor, t_to: torch.Tensor) -> torch.Tensor:
        if self._single_euler_step:  # what odeint would do, without its per-call set-up
            return h + (t_to - t_from) * self.ode(t_from, h)
        return odeint(self.ode, h, torch.stack([t_from, t_to]), **self.solver)[-1]

    def _static_z0(self, times: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """``q(z0)`` by the static union walk; for the paper's cell (``std_state``) the one
        written with fewest kernels per point (:mod:`latentode.nn.mean_std_walk`)."""
        if not self._mean_std_walk:
            return super()._static_z0(times, values, mask)
        return self._z0(self._walk_mean_std(times, values, mask, static=True))

    def _walk_mean_std(self, times: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                       static: bool) -> torch.Tensor:
        """The union walk of the paper's cell as one autograd node with a hand-written backward
        (:mod:`latentode.nn.mean_std_walk`): about half the kernels of the generic loop, the
        same numbers up to rounding (tested, values and gradients)."""
        x = torch.cat([values * mask, mask], -1)
        return mean_std_walk(times, x, mask.amax(-1) > 0, self.cell, self.ode.net,
                             self.hidden, static)

    @property
    def _mean_std_walk(self) -> bool:  # type: ignore[override]
        return self._single_euler_step and supports(self.cell, self.ode.net)

    @property
    def _fused_euler_gru(self) -> bool:  # type: ignore[override]
        return self._single_euler_step and type(self.cell) is nn.GRUCell and (
            self.cell.bias_ih is not None) and is_tanh_mlp(self.ode.net)

    @property
    def _single_euler_step(self) -> bool:
        return is_single_euler_step(self.solver)
