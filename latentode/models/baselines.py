"""The latent ODE paper's baselines, behind :class:`LatentODE`'s interface.

* :class:`ODERNN`: autoregressive ODE-RNN. The hidden state flows by an ODE between time points
  and takes a GRU update at each observation; it predicts each point before seeing it.
* :class:`GRUDT`: the "RNN dt" baseline, a GRU over ``[values, mask, time gap]`` whose state is
  constant between points.
* :class:`RNNVAE`: a VAE with a GRU recognition network (backwards in time) and a GRU decoder
  that steps from ``z0`` through the requested times feeding back its own predictions.

All three give ``forward(times, values, encoder_mask, n_samples, pred_times) -> LatentODEOutput``
and ``loss(...)`` with the same terms and normalisation as :meth:`LatentODE.loss`, so the
Lightning module, the plots and the CLI take them unchanged. The deterministic models give one
"sample" (``S = 1``), a zero KL, and as ``z0_mean``/``z0_std`` the last hidden state and zeros
(a point mass, like the paper code's ``first_point``).

Prediction times (the same walk for all three, :meth:`_Recurrent.walk`): the state is stepped
through the data ``times``; a requested time between two data times is a branch from the state
after the earlier one (so adding plotting times never changes the predictions at the data
times); requested times after ``times[-1]`` are stepped through in order, with no more data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

from latentode.nn import ObservationNoise, RNNEncoder, WithObservationNoise, mlp
from latentode.nn.encoders import gru_cell
from latentode.nn.graphs import Graphable, check_graph_solver
from latentode.nn.layers import ODEFunc, check_sizes, is_single_euler_step, start_output_bias
from latentode.nn.mean_std_walk import mean_std_walk, supports
from latentode.solvers import odeint
from latentode.solvers.odeint import check_options

from .inputs import (
    check_error_weighting,
    check_increasing,
    checked_batch,
    checked_pred_times,
    point_noise,
    weight_dtype,
)
from .latent_ode import (
    Z0_AT,
    LatentODEOutput,
    gaussian_kl,
    iwae_terms,
    predict_at_targets,
    sample_bound,
    sample_kl,
)
from .posterior import posterior_noise


def decoder(hidden: int, out: int, units: int, layers: int) -> nn.Module:
    """Hidden state to data space: linear when ``layers == 0``, else an MLP (paper: 1 x 100)."""
    return nn.Linear(hidden, out) if layers == 0 else mlp(hidden, out, units, layers)


@dataclass
class _Series:
    """Per-batch observations seen by a recurrent model, and its running bookkeeping."""

    times: torch.Tensor  # (T,)
    values: torch.Tensor  # (B, T, D), zero where not visible
    mask: torch.Tensor  # (B, T, D) float
    seen: torch.Tensor  # (B, T) bool: any visible channel
    last_seen: torch.Tensor  # (B,) index of the last visible time point (-1: none)
    last: torch.Tensor  # (B,) time of each series' latest state update
    steps: list[bool]  # (T,) whether any series sees a point there (one host sync per batch)

    @classmethod
    def of(cls, times: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
           static: bool = False) -> _Series:
        """``static``: every point counts as seen by some series (no host sync; updates where
        nobody sees are masked out, the same result)."""
        seen = mask.any(-1)
        index = torch.arange(len(times), device=times.device).expand_as(seen)
        last_seen = torch.where(seen, index, -1).amax(-1)
        maskf = mask.to(values.dtype)
        return cls(times, torch.where(mask, values, 0.0), maskf, seen, last_seen,
                   times[0].expand(values.shape[0]),
                   [True] * len(times) if static else seen.any(0).tolist())


class _Recurrent(WithObservationNoise, nn.Module):
    """Walk the data times and the requested times; subclasses say how the state moves.

    ``advance(h, t_from, t_to)`` gives the states at the times ``t_to (P,)`` before any update
    there, from the state ``h`` right after ``t_from``; ``update`` applies the data at a data
    time, ``coast`` what happens at a requested time after the last data time.
    """

    noise: ObservationNoise
    out: nn.Module
    input_dim: int

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        """Data-space prediction from a state."""
        return self.out(h)

    def advance(self, h: torch.Tensor, t_from: torch.Tensor, t_to: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def update(self, h: torch.Tensor, pred: torch.Tensor, k: int, data: _Series | None
               ) -> torch.Tensor:
        return h

    def coast(self, h: torch.Tensor, pred: torch.Tensor, t: torch.Tensor, data: _Series | None
              ) -> torch.Tensor:
        return h

    def walk(self, h: torch.Tensor, times: torch.Tensor, pred_times: torch.Tensor,
             data: _Series | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictions ``(N, P, D)`` at ``pred_times`` from the state ``h`` at ``times[0]``
        (before its update), and the final state."""
        pred_times = pred_times.to(times)
        n_times, grid, wanted = len(times), times.tolist(), pred_times.tolist()
        check_increasing(wanted)
        if wanted[0] < grid[0]:
            raise ValueError(f"pred_times start at {wanted[0]}, before times[0] = {grid[0]}.")
        exact: dict[int, list[int]] = {}
        between: dict[int, list[int]] = {}
        beyond: list[int] = []
        for j, k in enumerate(torch.searchsorted(times, pred_times).tolist()):
            if k < n_times and grid[k] == wanted[j]:
                exact.setdefault(k, []).append(j)
            elif k == n_times:
                beyond.append(j)
            else:
                between.setdefault(k - 1, []).append(j)
        outs: list[torch.Tensor | None] = [None] * len(wanted)
        for k in range(n_times):
            if k:
                h = self.advance(h, times[k - 1], times[k : k + 1])[0]
            pred = self.readout(h)
            for j in exact.get(k, ()):
                outs[j] = pred
            h = self.update(h, pred, k, data)
            if k in between:
                index = between[k]
                branch = self.readout(self.advance(h, times[k], pred_times[index]))
                for m, j in enumerate(index):
                    outs[j] = branch[m]
        t_prev = times[-1]
        for j in beyond:
            h = self.advance(h, t_prev, pred_times[j : j + 1])[0]
            outs[j] = pred = self.readout(h)
            h = self.coast(h, pred, pred_times[j], data)
            t_prev = pred_times[j]
        return torch.stack(outs, 1), h  # type: ignore[arg-type]

    def loss(
        self, times: torch.Tensor, values: torch.Tensor, encoder_mask: torch.Tensor,
        target_mask: torch.Tensor, kl_weight: float = 1.0, n_samples: int | None = None,
        errors: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Negative IWAE bound (the log-likelihood for deterministic models) and its terms;
        ``errors`` ``(B, T, D)``: measurement uncertainties added to ``obs_std`` in quadrature
        (:func:`~latentode.models.inputs.point_noise`)."""
        values = checked_batch(self.input_dim, times, values, encoder_mask, target_mask,
                               dtype=weight_dtype(self))
        noise = point_noise(self.noise(values), errors, values, target_mask,
                            getattr(self, "error_weighting", "relative"))
        out = self.predict(times, values, encoder_mask, target_mask, n_samples)
        samples = (None if out.z0 is None
                   else sample_kl(out.z0, out.z0_mean, out.z0_std))
        return iwae_terms(values, out.pred, target_mask, noise, self.kl(out),
                          kl_weight, getattr(self, "objective", "iwae"), samples)

    def predict(
        self, times: torch.Tensor, values: torch.Tensor, encoder_mask: torch.Tensor,
        target_mask: torch.Tensor, n_samples: int | None = None,
    ) -> LatentODEOutput:
        """The forward pass at ``times`` for these targets (a model placing its state by the
        targets, :class:`RNNVAE` with ``z0_at``, overrides it)."""
        return self(times, values, encoder_mask, n_samples)

    def kl(self, out: LatentODEOutput) -> torch.Tensor:
        """Per-series KL term; zero for deterministic models."""
        return out.z0_mean.new_zeros(out.z0_mean.shape[0])


class _Deterministic(_Recurrent):
    """A one-step-ahead recurrent model over ``data``: the forward pass shared by ODERNN/GRUDT."""

    latents: int
    state_dim: int

    def forward(
        self, times: torch.Tensor, values: torch.Tensor, encoder_mask: torch.Tensor,
        n_samples: int | None = None, pred_times: torch.Tensor | None = None,
    ) -> LatentODEOutput:
        """Predictions ``(1, B, T', D)`` at ``pred_times`` (default ``times``); ``n_samples``
        is ignored (deterministic)."""
        values = checked_batch(self.input_dim, times, values, encoder_mask,
                               dtype=weight_dtype(self))
        checked_pred_times(pred_times, times, values.shape[0], per_series=False)
        data = _Series.of(times, values, encoder_mask)
        h = values.new_zeros(values.shape[0], self.state_dim)
        pred, h = self.walk(h, times, times if pred_times is None else pred_times, data)
        return self._output(pred, h)

    def _output(self, pred: torch.Tensor, h: torch.Tensor) -> LatentODEOutput:
        h = h[..., : self.latents]
        return LatentODEOutput(pred.unsqueeze(0), h, torch.zeros_like(h))


class ODERNN(Graphable, _Deterministic):
    """Autoregressive ODE-RNN (Rubanova et al. 2019, the "ODE-RNN" baseline).

    Forward in time: ``dh/dt = MLP(h)`` between time points, a masked GRU update on
    ``[values, mask]`` at points with a visible observation. The prediction at ``t_i`` decodes
    the state evolved to ``t_i`` before the update there, so a point never sees its own value;
    after the last data time the state keeps flowing with no updates (extrapolation).
    With ``std_state`` the state is the paper code's ``[mean, std]`` (its ``ODE_RNN`` runs the
    ODE-RNN encoder's ``GRU_unit``): the ODE moves the mean, the MLP-gated update sees and
    updates both, the decoder reads the mean.

    Args:
        input_dim: channels ``D``.
        latents: hidden state size (the paper's ``--latents``).
        ode_units, ode_layers: the vector field's MLP.
        gru_units: MLP-gated GRU with this many units (paper code: 100); None: ``nn.GRUCell``.
        dec_units, dec_layers: decoder (paper code: one hidden layer of 100; 0: linear).
        obs_std: fixed observation noise std of the Gaussian likelihood: one, or one per
            channel (:class:`~latentode.nn.ObservationNoise`).
        error_weighting: how measurement uncertainties (``loss(errors=...)``) enter the
            likelihood: ``relative`` (they share each series' weight among its points, the
            mean weight staying ``1 / obs_std^2``) or ``absolute`` (variance
            ``obs_std^2 + err^2``); :func:`~latentode.models.inputs.point_noise`.
        n_samples: unused (deterministic); kept for the common interface.
        solver: ``odeint`` options between time points; default one Euler step per gap, as
            the paper code and :class:`~latentode.nn.ODERNNEncoder`.
        output_bias: start the decoder's output bias here: one value or one per channel
            (``latentode-train``'s default: the training data's channel means when they are
            fed unscaled); None or ``"auto"`` (the configs' word, resolved there): as
            initialised. Channels far from zero otherwise stall training at the mean
            (docs/results.md, *Unscaled data*).
        std_state: carry ``[mean, std]`` updated by :class:`~latentode.nn.encoders.
            MeanStdGRUCell` (``gru_units``, default 100), as the paper code's ODE_RNN.
        cuda_graph: on a GPU, replay the pass that predicts at the data times (training, and
            evaluation without autograd) from CUDA graphs, one per batch shape
            (:mod:`latentode.nn.graphs`); one Euler step per gap only.
        With ``std_state`` and one Euler step per gap, the pass at the data times is
        :mod:`latentode.nn.mean_std_walk`'s (one autograd node, about half the kernels).
    """

    def __init__(
        self, input_dim: int, latents: int = 20, ode_units: int = 100, ode_layers: int = 1,
        gru_units: int | None = None, dec_units: int = 100, dec_layers: int = 1,
        obs_std: float | Sequence[float] = 0.01, n_samples: int = 1,
        solver: dict[str, Any] | None = None, std_state: bool = False, cuda_graph: bool = False,
        output_bias: ArrayLike | str | None = None, error_weighting: str = "relative",
    ):
        super().__init__()
        check_sizes("ODERNN", input_dim=input_dim, latents=latents, ode_units=ode_units,
                    ode_layers=ode_layers, gru_units=gru_units, dec_units=dec_units,
                    dec_layers=dec_layers, n_samples=n_samples)
        self.input_dim, self.latents, self.std_state = input_dim, latents, std_state
        self.state_dim = 2 * latents if std_state else latents
        self.ode = ODEFunc(latents, ode_units, ode_layers)
        self.cell = gru_cell(2 * input_dim, latents, gru_units, std_state)
        self.out = decoder(latents, input_dim, dec_units, dec_layers)
        start_output_bias(self.out, output_bias, input_dim)
        self.noise = ObservationNoise(input_dim, obs_std)
        self.error_weighting = check_error_weighting(error_weighting)
        self.n_samples = n_samples
        check_options(solver or {}, "ODERNN")
        self.solver = {"method": "euler", **(solver or {})}
        if cuda_graph:
            check_graph_solver(self.solver)
        self.cuda_graph = cuda_graph

    def forward(
        self, times: torch.Tensor, values: torch.Tensor, encoder_mask: torch.Tensor,
        n_samples: int | None = None, pred_times: torch.Tensor | None = None,
    ) -> LatentODEOutput:
        values = checked_batch(self.input_dim, times, values, encoder_mask,
                               dtype=weight_dtype(self))
        if (self.cuda_graph and pred_times is None and values.is_cuda
                and (self.training or not torch.is_grad_enabled())):
            return self._output(*self._graphs(times, values, encoder_mask))
        if pred_times is None and self._mean_std_walk:
            return self._output(*self._walk_mean_std(times, values, encoder_mask, static=False))
        return super().forward(times, values, encoder_mask, n_samples, pred_times)

    @property
    def _mean_std_walk(self) -> bool:
        """Whether the walk at the data times can be :mod:`latentode.nn.mean_std_walk`'s (the
        paper code's cell, ``std_state``): about half the kernels of the generic walk."""
        return self.std_state and self._single_euler_step and supports(self.cell, self.ode.net)

    def _walk_mean_std(self, times: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                       static: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictions at every data time (each from the state before that point's update) and
        the final state, by one autograd node with a hand-written backward; the same numbers
        as the generic walk up to rounding (tested, values and gradients)."""
        x = torch.cat([torch.where(mask, values, 0.0), mask.to(values.dtype)], -1)
        h, states = mean_std_walk(times, x, mask.any(-1), self.cell, self.ode.net, self.latents,
                                  static, forward=True, emit=True)
        return self.readout(states), h

    def _graph_fn(self, times: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictions at every data time and the final state, by a walk whose kernels depend
        on the shapes only (every point visited): what ``cuda_graph`` records."""
        if self._mean_std_walk:
            return self._walk_mean_std(times, values, mask, static=True)
        data = _Series.of(times, values, mask, static=True)
        h = values.new_zeros(values.shape[0], self.state_dim)
        outs = []
        for k in range(len(times)):
            if k:
                h = self.advance(h, times[k - 1], times[k : k + 1])[0]
            pred = self.readout(h)
            outs.append(pred)
            h = self.update(h, pred, k, data)
        return torch.stack(outs, 1), h

    @property
    def _single_euler_step(self) -> bool:
        return is_single_euler_step(self.solver)

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(h[..., : self.latents])

    def advance(self, h: torch.Tensor, t_from: torch.Tensor, t_to: torch.Tensor) -> torch.Tensor:
        """Solve the ODE from ``t_from`` to each of ``t_to`` separately: ``(P, N, H)``; with
        ``std_state`` only the mean moves."""
        mean, rest = h[..., : self.latents], h[..., self.latents :]
        if self._single_euler_step:  # odeint's result, without its per-call set-up
            moved = mean + (t_to - t_from)[:, None, None] * self.ode(t_from, mean)
        else:
            moved = torch.stack([
                mean if bool(t == t_from) else odeint(self.ode, mean, torch.stack([t_from, t]),
                                                      **self.solver)[-1]
                for t in t_to
            ])
        if not self.std_state:
            return moved
        return torch.cat([moved, rest.expand(len(t_to), *rest.shape)], -1)

    def update(self, h: torch.Tensor, pred: torch.Tensor, k: int, data: _Series | None
               ) -> torch.Tensor:
        assert data is not None
        if not data.steps[k]:
            return h
        seen = data.seen[:, k]
        x = torch.cat([data.values[:, k], data.mask[:, k]], -1)
        return torch.where(seen.unsqueeze(-1), self.cell(x, h), h)


class GRUDT(_Deterministic):
    """The "RNN dt" baseline: a GRU over ``[values, mask, gap since the last update]``.

    The state is constant between points and is updated where a series has a visible
    observation; the prediction at ``t_i`` decodes the state before the update at ``t_i``. After
    a series' last visible point the model feeds its own prediction back as an observation
    (mask ones) at every later step (the paper code's ``feed_previous``), so forecasts move; the
    steps are the data times, then the requested times beyond the last data time.

    Args:
        input_dim: channels ``D``.
        latents: GRU state size (the paper's ``--latents``).
        gru_units: MLP-gated GRU with this many units; None: ``nn.GRUCell`` (paper code).
        dec_units, dec_layers: decoder (paper code: one hidden layer of 100; 0: linear).
        obs_std: fixed observation noise std of the Gaussian likelihood: one, or one per
            channel (:class:`~latentode.nn.ObservationNoise`).
        error_weighting: how measurement uncertainties (``loss(errors=...)``) enter the
            likelihood: ``relative`` (they share each series' weight among its points, the
            mean weight staying ``1 / obs_std^2``) or ``absolute`` (variance
            ``obs_std^2 + err^2``); :func:`~latentode.models.inputs.point_noise`.
        n_samples: unused (deterministic); kept for the common interface.
        solver: unused (no ODE); kept for the common interface.
        output_bias: start the decoder's output bias here: one value or one per channel
            (``latentode-train``'s default: the training data's channel means when they are
            fed unscaled); None or ``"auto"`` (the configs' word, resolved there): as
            initialised. Channels far from zero otherwise stall training at the mean
            (docs/results.md, *Unscaled data*).
    """

    def __init__(
        self, input_dim: int, latents: int = 20, gru_units: int | None = None,
        dec_units: int = 100, dec_layers: int = 1, obs_std: float | Sequence[float] = 0.01,
        n_samples: int = 1, solver: dict[str, Any] | None = None,
        output_bias: ArrayLike | str | None = None, error_weighting: str = "relative",
    ):
        super().__init__()
        check_sizes("GRUDT", input_dim=input_dim, latents=latents, gru_units=gru_units,
                    dec_units=dec_units, dec_layers=dec_layers, n_samples=n_samples)
        self.input_dim, self.latents, self.state_dim = input_dim, latents, latents
        self.cell = gru_cell(2 * input_dim + 1, latents, gru_units)
        self.out = decoder(latents, input_dim, dec_units, dec_layers)
        start_output_bias(self.out, output_bias, input_dim)
        self.noise = ObservationNoise(input_dim, obs_std)
        self.error_weighting = check_error_weighting(error_weighting)
        self.n_samples = n_samples

    def advance(self, h: torch.Tensor, t_from: torch.Tensor, t_to: torch.Tensor) -> torch.Tensor:
        return h.expand(len(t_to), *h.shape)

    def _step(self, h: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, active: torch.Tensor,
              t: torch.Tensor, data: _Series) -> torch.Tensor:
        gap = (t - data.last).unsqueeze(-1)
        h_new = self.cell(torch.cat([x, mask, gap], -1), h)
        data.last = torch.where(active, t, data.last)
        return torch.where(active.unsqueeze(-1), h_new, h)

    def update(self, h: torch.Tensor, pred: torch.Tensor, k: int, data: _Series | None
               ) -> torch.Tensor:
        assert data is not None
        seen = data.seen[:, k]
        feed = (k > data.last_seen).unsqueeze(-1)  # past the series' last visible point
        x = torch.where(feed, pred, data.values[:, k])
        mask = torch.where(feed, torch.ones_like(pred), data.mask[:, k])
        return self._step(h, x, mask, seen | feed.squeeze(-1), data.times[k], data)

    def coast(self, h: torch.Tensor, pred: torch.Tensor, t: torch.Tensor, data: _Series | None
              ) -> torch.Tensor:
        assert data is not None
        active = torch.ones_like(data.seen[:, 0])
        return self._step(h, pred, torch.ones_like(pred), active, t, data)


def _after_all_seen(t: torch.Tensor, times: torch.Tensor, encoder_mask: torch.Tensor) -> bool:
    """Whether ``t`` comes after every time point the encoder sees (False if it sees none)."""
    seen = encoder_mask.reshape(*encoder_mask.shape[:2], -1).any(-1).any(0)
    return bool(seen.any()) and bool(t > times[seen].max())


class RNNVAE(_Recurrent):
    """The "RNN-VAE" baseline: GRU recognition network, ``z0`` sampled, GRU decoder.

    ``q(z0)`` comes from :class:`~latentode.nn.RNNEncoder` (backwards in time); the decoder's
    state starts at ``Linear(z0)`` and steps through the requested times with input
    ``[previous prediction, time gap]``, emitting ``decode(h)`` at each (the first from the
    initial state). Loss: the same IWAE bound and KL as :class:`LatentODE`.

    Args:
        input_dim: channels ``D``.
        latents: size of ``z0``.
        enc_hidden, z0_units: recognition GRU state and its MLP to ``(mean, std)``.
        hidden: decoder GRU state size.
        gru_units: MLP-gated GRUs with this many units; None: ``nn.GRUCell`` (paper code).
        dec_units, dec_layers: output map (paper code: one hidden layer of 100; 0: linear).
        obs_std: fixed observation noise std of the Gaussian likelihood: one, or one per
            channel (:class:`~latentode.nn.ObservationNoise`).
        error_weighting: how measurement uncertainties (``loss(errors=...)``) enter the
            likelihood: ``relative`` (they share each series' weight among its points, the
            mean weight staying ``1 / obs_std^2``) or ``absolute`` (variance
            ``obs_std^2 + err^2``); :func:`~latentode.models.inputs.point_noise`.
        n_samples: posterior samples for the bound.
        solver: unused (no ODE); kept for the common interface.
        objective: ``elbo``, ``iwae`` or ``batch_iwae``, as for :class:`LatentODE`.
        z0_at: ``"start"``: the decoder starts at the batch's first time; ``"first_target"``:
            at the first time with a target, and when that lies after everything the encoder
            sees (extrapolation) the encoder reads the data forwards, as the paper's code does
            (its ``run_backwards`` is false when predicting after the observed part).
        lead_gap: ``q(z0)`` also reads the gap from where ``z0`` sits to a series' first
            observation (:class:`~latentode.nn.RNNEncoder`).
        output_bias: start the decoder's output bias here: one value or one per channel
            (``latentode-train``'s default: the training data's channel means when they are
            fed unscaled); None or ``"auto"`` (the configs' word, resolved there): as
            initialised. Channels far from zero otherwise stall training at the mean
            (docs/results.md, *Unscaled data*).
    """

    def __init__(
        self, input_dim: int, latents: int = 10, enc_hidden: int = 20, z0_units: int = 100,
        hidden: int = 20, gru_units: int | None = None, dec_units: int = 100,
        dec_layers: int = 1, obs_std: float | Sequence[float] = 0.01, n_samples: int = 3,
        solver: dict[str, Any] | None = None, objective: str = "iwae", z0_at: str = "start",
        lead_gap: bool = True, output_bias: ArrayLike | str | None = None,
        error_weighting: str = "relative",
    ):
        super().__init__()
        check_sizes("RNNVAE", input_dim=input_dim, latents=latents, enc_hidden=enc_hidden,
                    z0_units=z0_units, hidden=hidden, gru_units=gru_units, dec_units=dec_units,
                    dec_layers=dec_layers, n_samples=n_samples)
        sample_bound(torch.zeros(1, 1), objective)  # an unknown objective fails here
        if z0_at not in Z0_AT:
            raise ValueError(f"z0_at must be one of {Z0_AT}, got {z0_at!r}.")
        self.z0_at = z0_at
        self.input_dim, self.latents, self.objective = input_dim, latents, objective
        self.encoder = RNNEncoder(input_dim, latents, enc_hidden, z0_units, gru_units,
                                  lead_gap=lead_gap)
        self.init = nn.Linear(latents, hidden)
        self.cell = gru_cell(input_dim + 1, hidden, gru_units)
        self.out = decoder(hidden, input_dim, dec_units, dec_layers)
        start_output_bias(self.out, output_bias, input_dim)
        self.noise = ObservationNoise(input_dim, obs_std)
        self.error_weighting = check_error_weighting(error_weighting)
        self.n_samples = n_samples

    def advance(self, h: torch.Tensor, t_from: torch.Tensor, t_to: torch.Tensor) -> torch.Tensor:
        """One GRU step from ``h`` to each of ``t_to`` with the prediction at ``t_from``."""
        steps, (batch, size) = len(t_to), h.shape
        x = self.out(h).expand(steps, batch, -1)
        gap = (t_to - t_from)[:, None, None].expand(steps, batch, 1).to(x)
        h_new = self.cell(torch.cat([x, gap], -1).reshape(steps * batch, -1),
                          h.expand(steps, batch, size).reshape(steps * batch, size))
        return h_new.reshape(steps, batch, size)

    def forward(
        self, times: torch.Tensor, values: torch.Tensor, encoder_mask: torch.Tensor,
        n_samples: int | None = None, pred_times: torch.Tensor | None = None,
    ) -> LatentODEOutput:
        """Encode, sample ``z0 (S, B, L)``, decode at ``pred_times`` (default ``times``): from
        ``times[0]``, or with ``z0_at="first_target"`` from ``pred_times[0]``."""
        values = checked_batch(self.input_dim, times, values, encoder_mask,
                               dtype=weight_dtype(self))
        checked_pred_times(pred_times, times, values.shape[0], per_series=False)
        values = torch.where(encoder_mask, values, 0.0)  # NaN-proof: the encoder multiplies
        wanted = times if pred_times is None else pred_times.to(times)
        from_target = self.z0_at == "first_target"
        if from_target and _after_all_seen(wanted[0], times, encoder_mask):
            # predicting after all the encoder sees: read it forwards (the backward walk of the
            # time-reversed series; its gaps are then the times since the previous point), to
            # where z0 sits: the lead is the gap from a series' last observation to it
            until_z0 = torch.minimum(times, wanted[0])
            mean, std = self.encoder(-until_z0.flip(0), values.flip(1), encoder_mask.flip(1))
        else:
            mean, std = self.encoder(times, values, encoder_mask)
        n = n_samples or self.n_samples
        z0 = mean + std * posterior_noise(n, mean)
        h = self.init(z0.reshape(-1, self.latents))
        pred, _ = self.walk(h, wanted if from_target else times, wanted)
        return LatentODEOutput(pred.reshape(n, *mean.shape[:1], *pred.shape[1:]), mean, std,
                               z0=z0)

    def predict(
        self, times: torch.Tensor, values: torch.Tensor, encoder_mask: torch.Tensor,
        target_mask: torch.Tensor, n_samples: int | None = None,
    ) -> LatentODEOutput:
        """The forward pass with the decoder starting where ``z0_at`` says for these targets
        (:func:`~latentode.models.latent_ode.predict_at_targets`)."""
        return predict_at_targets(self, times, values, encoder_mask, target_mask, n_samples)

    def kl(self, out: LatentODEOutput) -> torch.Tensor:
        return gaussian_kl(out.z0_mean, out.z0_std)
