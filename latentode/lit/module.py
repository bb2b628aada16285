"""``LatentODELightning``: training, validation and test of any model with the LatentODE loss.

The wrapped model is a plain ``nn.Module`` with

    loss(times, values, encoder_mask, target_mask, kl_weight, n_samples)
        -> {"loss", "loglik", "kl", "mse", "pred" (S, B, T, D)}

Metrics: :class:`LatentODELightning`'s docstring lists every logged name.

Validation, test and predict draw each series' posterior samples from a seed of ``eval_seed``
and the series' position in its split (:func:`latentode.models.posterior.series_noise`; a
model's own draws, outside latentode's models, from a generator seeded per batch), so evaluating
a checkpoint gives the same numbers every time, under any batch size or process count.
Checkpoints keep the data units (``scale``, ``log_scale``, ``channels``: ``DATA_UNITS``), so a
module loaded from one reports ``mse_data`` as the run did; the run's random stream is restored
only when a ``fit`` resumes from it.

Several processes (DDP): every epoch value (``train/*_epoch``, ``val/*``, ``test/*``) is
reduced over all processes from sums and counts, so it is the value over the whole epoch's
data, as one process would compute it; values logged per step (``train/*_step``) are the
local batch's. Each process draws its own posterior samples (the rank enters their seeds).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, cast

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from latentode.data import Batch
from latentode.data.batch import stream_seed
from latentode.models.inputs import encoder_error_kwargs
from latentode.models.posterior import series_noise
from latentode.solvers import NonFiniteInitialStateError, SolverError

TERMS = ("loss", "loglik", "kl")
"""Loss terms every model returns, checked for NaN/inf at every step."""
OPTIONAL_TERMS = ("poisson", "ce")
"""Terms of optional likelihoods (Poisson process, labels), checked and logged when present."""
DATA_UNITS = "latentode_data_units"
"""Checkpoint key of what turns model units into data units (``scale``, ``log_scale``,
``channels``), so that a module loaded from it reports ``mse_data`` as the run did."""
SOLVER_COUNTS = ("nfe_forward", "nfe_backward", "steps_accepted", "steps_rejected",
                 "backward_checkpointed")
"""The model's ``solver_stats`` fields logged per batch as ``{stage}/solver_{name}``."""


def kl_weight_schedule(epoch: int, wait_epochs: int = 10, rate: float = 0.99) -> float:
    """The paper's KL annealing: 0 before ``wait_epochs``, then ``1 - rate**(epoch - wait)``."""
    if epoch < wait_epochs:
        return 0.0
    return 1.0 - rate ** (epoch - wait_epochs)


def _decay_factor(step: int, gamma: float, min_factor: float, warmup_steps: int = 0) -> float:
    warmup = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    return warmup * max(gamma**step, min_factor)


def exponential_decay(
    optimizer: torch.optim.Optimizer, gamma: float = 0.999, min_factor: float = 0.1,
    warmup_steps: int = 0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """``lr * max(gamma**step, min_factor)``: ExponentialLR with the paper code's floor (lr/10),
    times a linear warm-up ``(step + 1) / warmup_steps`` over the first ``warmup_steps``.
    A step is one call of the scheduler: an optimiser step with the module's
    ``scheduler_interval="step"`` (the configs'), an epoch with ``"epoch"``."""
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0 (0: no warm-up), got {warmup_steps}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(_decay_factor, gamma=gamma, min_factor=min_factor,
                                     warmup_steps=warmup_steps)
    )


def _plain(value: Any) -> Any:
    """``value`` with every mapping a dict and every non-string sequence a list."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(v) for v in value]
    return value



class _Sums:
    """Running sums and counts of one stage's metrics, reduced across processes at epoch end.

    Sums and counts stay what they are given, tensors (on the model's device) or Python
    numbers, until :meth:`means`: turning a Python number into a GPU tensor at every step is a
    blocking copy that would make the host wait for the GPU's queued work.
    """

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor | float] = {}
        self.counts: dict[str, torch.Tensor | float] = {}

    def add(self, name: str, total: torch.Tensor | float, count: torch.Tensor | float) -> None:
        total = total.detach().double() if isinstance(total, torch.Tensor) else float(total)
        count = count.detach().double() if isinstance(count, torch.Tensor) else float(count)
        if name in self.sums:
            self.sums[name] = self.sums[name] + total
            self.counts[name] = self.counts[name] + count
        else:
            self.sums[name], self.counts[name] = total, count

    def means(self, reduce: Callable[[torch.Tensor], torch.Tensor],
              device: torch.device | str = "cpu") -> dict[str, float]:
        """Means over every process: one reduction of all sums and counts together (every
        process must call it, with the same names); ``device``: where Python numbers go."""
        names = sorted(self.sums)
        if not names:
            return {}

        def tensor(x: torch.Tensor | float) -> torch.Tensor:
            return torch.as_tensor(x, dtype=torch.float64, device=device)

        stacked = torch.stack([torch.stack([tensor(self.sums[n]), tensor(self.counts[n])])
                               for n in names])
        totals = reduce(stacked)
        return {name: float(total / count) for name, (total, count) in zip(names, totals.unbind(0),
                                                                           strict=True)
                if float(count) > 0}


def _known_predictions(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(N, 1 + C)``: each known label beside its posterior-averaged class probabilities
    (one column, ``P(label = 1)``, for binary logits)."""
    logits = logits.detach()
    probs = torch.sigmoid(logits) if logits.shape[-1] == 1 else torch.softmax(logits, -1)
    probs = probs.mean(0)  # over posterior samples: (B, C) or (B, T, C)
    known = ~torch.isnan(labels)
    return torch.cat([labels[known].unsqueeze(-1).to(probs), probs[known]], -1).double()


def label_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """``accuracy`` and, for binary labels with both classes present, ROC ``auc``."""
    if labels.numel() == 0:
        return {}
    probs, labels = probs.cpu(), labels.cpu()
    if probs.shape[-1] == 1:
        p = probs[:, 0]
        out = {"accuracy": float(((p > 0.5).double() == labels).double().mean())}
        if 0 < int(labels.sum()) < labels.numel():
            from sklearn.metrics import roc_auc_score

            out["auc"] = float(roc_auc_score(labels.numpy(), p.numpy()))
        return out
    return {"accuracy": float((probs.argmax(-1).double() == labels).double().mean())}


def _plain_torch_optimizer(factory: Any) -> bool:
    """Whether ``factory`` is one of ``torch.optim``'s optimisers (or a partial of one), which
    can be built once up front to check its options; another (ZeroRedundancyOptimizer needs
    DDP's process group, a user's own function) is left to ``configure_optimizers``."""
    target = factory.func if isinstance(factory, functools.partial) else factory
    return (isinstance(target, type) and issubclass(target, torch.optim.Optimizer)
            and target.__module__.startswith("torch.optim"))


def _check_kl(wait: object, rate: object, weight: object) -> None:
    """The KL weight's schedule, ``1 - kl_rate ** (epoch - kl_wait_epochs)`` after the wait,
    or ``kl_weight`` fixed: a rate above 1 or a negative weight rewarded the KL term
    (weight -0.5 from kl_rate=1.5), silently."""
    if isinstance(wait, bool) or not isinstance(wait, numbers.Integral) or wait < 0:
        raise ValueError(f"module.kl_wait_epochs must be a whole number >= 0, got {wait!r}.")
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0 <= float(rate) <= 1:
        raise ValueError(f"module.kl_rate must be in [0, 1] (the KL weight after the wait is "
                         f"1 - kl_rate ** epochs: 0.99 rises over ~100 epochs, 0 at once), "
                         f"got {rate!r}.")
    if weight is not None and (isinstance(weight, bool) or not isinstance(weight, numbers.Real)
                               or not 0 <= float(weight) < math.inf):
        raise ValueError(f"module.kl_weight (a fixed KL weight) must be a number >= 0, or null "
                         f"for the schedule, got {weight!r}.")


class LatentODELightning(L.LightningModule):
    """Lightning wrapper around a latent ODE (or any model with the same ``loss`` interface).

    Args:
        model: the ``nn.Module`` to train.
        optimizer: a partial optimizer (Hydra ``_partial_: true``) taking ``params``; default
            Adamax with lr 1e-2, as in the paper.
        scheduler: a partial LR scheduler taking the optimizer, or None; default
            :func:`exponential_decay` (0.999 per step, floored at lr/10, as in the paper);
            None for a constant learning rate.
        scheduler_interval: ``"step"`` or ``"epoch"``.
        scheduler_monitor: metric for schedulers that need one (ReduceLROnPlateau).
        kl_wait_epochs, kl_rate: KL annealing (:func:`kl_weight_schedule`): a whole number of
            epochs >= 0, a rate in [0, 1] (the weight after the wait, ``1 - kl_rate **
            epochs``, stays in [0, 1]).
        kl_weight: a fixed training KL weight (>= 0) instead of the schedule.
        train_samples, eval_samples: posterior samples per series (None: the model's default).
        scale: per-channel scale of the data's scaler (data = model * scale + mean), for
            ``mse_data``; None when the data are not scaled.
        log_scale: the scaler's mean and log-channel mask ``(mean, log)`` when some channels
            are standardised as ``log(value)`` (``data.log_channels``): ``mse_data`` is then of
            ``exp(model * scale + mean)`` there; None: none are (the datamodule's, by default).
        channels: channel names, for the test's ``mse_data/<channel>`` (each channel's MSE in
            its own units: ``mse_data`` itself mixes them); None: the datamodule's dataset's.
        eval_seed: seed of the posterior samples drawn in validation and test.
        param_groups: optimiser options per part of the model, by the name of its submodule
            (``{"encoder": {"lr": 1e-3}}``; a dotted prefix such as ``"encoder.cell"`` works
            too, the longest match wins); the remaining parameters take the optimiser's own.
            A schedule scales each group's learning rate alike.
        grad_clip: clip each step's gradient norm at ``grad_clip / obs_std**2`` (None: no
            clip; see :meth:`configure_gradient_clipping`); the configs' default is 10.

    Metrics (logged as ``{stage}/{name}``, stage one of ``train``, ``val``, ``test``):

    - ``loss``, ``loglik``, ``kl``: the model's terms (per-series means). Training uses the
      annealed KL weight of the paper (0 for ``kl_wait_epochs`` epochs, then
      ``1 - kl_rate**(epoch - wait)``); validation and test always use weight 1, so their
      ``loss`` is the negative IWAE bound itself and does not depend on the epoch (with
      measurement uncertainties, ``Batch.errors``, the likelihood weighs each point by them:
      ``latentode.models.inputs.point_noise``).
    - ``mse``: squared error of the posterior-mean prediction on the target points, in the model's
      (normalised) units, pooled over all target points of the epoch (unweighted, uncertainties
      or not).
    - ``mse_data``: the same in data units (errors times the scaler's per-channel ``scale**2``).
    - ``mse_sample`` (validation and test): the squared error of each posterior sample, averaged
      over the samples, in the model's units: the paper code's test MSE (slightly above ``mse``, by
      the spread of the samples).
    - ``mse_seen`` / ``mse_unseen``: on targets the encoder saw / did not see (interpolated or,
      under a ``Mixed`` or extrapolation task, forecast); a key is logged only when the epoch
      had such points.
    - ``solver_nfe_forward``, ``solver_nfe_backward``, ``solver_steps_accepted``,
      ``solver_steps_rejected``: per batch, the generative ODE solver's function evaluations and
      steps (models with a ``solver_stats``, e.g. ``LatentODE``; backward counts in the adjoint and
      checkpoint modes only). How much a learnt vector field costs to integrate grows as it
      stiffens during training, which these show epoch by epoch. ``solver_backward_checkpointed``:
      the share of batches whose adjoint gradient was recomputed by checkpointing (its backward
      reconstruction strayed from the forward solution; the solver warns once).
    - ``poisson`` (Poisson-process log-likelihood) and ``ce`` (label cross-entropy) when the model
      has them; with labels, ``auc`` (binary labels, when both classes occur) and ``accuracy`` on
      validation and test, from the posterior-averaged class probabilities of the epoch's known
      labels, gathered across processes.

    Several evaluation dataloaders (``trainer.validate(module, dataloaders=[a, b])``, the same
    for ``test`` and ``predict``) are scored apart, each as it would be alone: the first's
    metrics under the names above (what monitors and ``latentode-train`` read), the others'
    with Lightning's suffix, ``val/mse/dataloader_idx_1``.

    In a ``ModelCheckpoint`` file name, ``auto_insert_metric_name=False`` keeps the slash of
    ``val/mse`` out of the path (``filename="{epoch}-{val/mse:.4f}"`` makes a directory).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = exponential_decay,
        scheduler_interval: str = "step",
        scheduler_monitor: str = "val/loss",
        kl_wait_epochs: int = 10,
        kl_rate: float = 0.99,
        kl_weight: float | None = None,
        train_samples: int | None = None,
        eval_samples: int | None = None,
        scale: Sequence[float] | torch.Tensor | None = None,
        eval_seed: int = 0,
        channels: Sequence[str] | None = None,
        log_scale: tuple[Sequence[float], Sequence[bool]] | None = None,
        param_groups: dict[str, dict[str, Any]] | None = None,
        grad_clip: float | None = None,
    ):
        super().__init__()
        if grad_clip is not None and (isinstance(grad_clip, bool) or not isinstance(
                grad_clip, (int, float)) or not grad_clip > 0):
            raise ValueError(f"grad_clip must be a positive number (in units of 1/obs_std^2) "
                             f"or None, got {grad_clip!r}.")
        # plain containers (a config's mapping would make checkpoints need more than
        # weights_only=True to load: hyperparameters are saved with them)
        param_groups = None if param_groups is None else _plain(param_groups)
        _check_kl(kl_wait_epochs, kl_rate, kl_weight)
        if scheduler_interval not in ("step", "epoch"):
            raise ValueError(f"scheduler_interval must be 'step' or 'epoch', got "
                             f"{scheduler_interval!r}.")
        if isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer= takes a factory of the optimiser, not a built "
                f"{type(optimizer).__name__} (the module builds it over its own parameters "
                f"and param_groups): functools.partial(torch.optim.{type(optimizer).__name__}, "
                "lr=...) or the class itself.")
        if isinstance(scheduler, (torch.optim.lr_scheduler.LRScheduler,
                                  torch.optim.lr_scheduler.ReduceLROnPlateau)):
            raise TypeError(
                f"scheduler= takes a factory called with the optimiser, not a built "
                f"{type(scheduler).__name__}: functools.partial("
                f"torch.optim.lr_scheduler.{type(scheduler).__name__}, ...).")
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler", "scale", "channels",
                                          "log_scale"], logger=False)
        self.log_scale = None
        if log_scale is not None and any(log_scale[1]):
            self.log_scale = (torch.as_tensor(list(log_scale[0]), dtype=torch.float32),
                              torch.as_tensor(list(log_scale[1]), dtype=torch.bool))
        self.channels = None if channels is None else [str(c) for c in channels]
        # the optimiser's and scheduler's classes: built (configure_optimizers), and those of a
        # checkpoint being loaded (on_load_checkpoint), compared when a fit resumes
        self._optimization: dict[str, str | None] | None = None
        self._saved_optimization: dict[str, str | None] | None = None
        self.model = model
        self.optimizer_factory = optimizer or functools.partial(torch.optim.Adamax, lr=1e-2)
        self.scheduler_factory = scheduler
        self.scheduler_interval, self.scheduler_monitor = scheduler_interval, scheduler_monitor
        self.kl_wait_epochs, self.kl_rate, self.fixed_kl_weight = kl_wait_epochs, kl_rate, kl_weight
        self.train_samples, self.eval_samples = train_samples, eval_samples
        self.eval_seed = eval_seed
        self.param_groups = {str(k): dict(v) for k, v in (param_groups or {}).items()}
        # the optimiser built once on its parameters and dropped: a prefix that names no
        # parameter, lr=-1 or a value of the wrong type refused now, not inside fit
        if _plain_torch_optimizer(self.optimizer_factory):
            try:  # as configure_optimizers calls it
                self.optimizer_factory(params=self._optimizer_params())
            except (ValueError, TypeError) as error:
                raise ValueError(f"module.optimizer: {error}") from error
        else:
            self._optimizer_params()  # a prefix that names no parameter is refused now
        self.scale: torch.Tensor | None
        if scale is not None:
            scale = torch.as_tensor(list(scale) if not isinstance(scale, torch.Tensor) else scale,
                                    dtype=torch.float32)
        self.register_buffer("scale", None if scale is None else scale.reshape(-1),
                             persistent=False)
        self._scale_from_data = scale is None
        self._sums: dict[str, _Sums] = {}
        self._labels: dict[str, list[torch.Tensor]] = {}
        self._solver_mark: dict[str, int] | None = None

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: Any, map_location: Any = None, hparams_file: Any = None,
        strict: bool | None = None, **kwargs: Any,
    ) -> LatentODELightning:
        """Lightning's loader; ``model=`` is required: the checkpoint holds the weights, the
        data units (scale, channels) and the module's settings, not the model's architecture,
        nor the optimiser and scheduler (pass ``optimizer=`` / ``scheduler=`` again to train
        on; resuming with others than the run's is refused by name). (A ``latentode-train``
        run's model is rebuilt from its config by ``latentode.cli.runs.load_run``.)"""
        if "model" not in kwargs:
            raise TypeError(
                "LatentODELightning.load_from_checkpoint(path, model=...): build the same model "
                "as was trained (the checkpoint holds its weights, not its architecture) and "
                "pass it; for a latentode-train run, latentode.cli.runs.load_run(run_dir, "
                "use=...) rebuilds it from the run's config.")
        try:
            return super().load_from_checkpoint(checkpoint_path, map_location, hparams_file,
                                                strict, **kwargs)
        except RuntimeError as error:
            if "size mismatch" not in str(error):
                raise
            lines = [line.strip() for line in str(error).splitlines() if "size mismatch" in line]
            raise ValueError(
                f"the model passed does not have the checkpoint's architecture ({len(lines)} "
                f"tensor(s) of other shapes; first: {lines[0]}): build it with the sizes it was "
                "trained with (latents, units, layers, the encoder's); for a latentode-train "
                "run, latentode.cli.runs.load_run(ckpt, use=...) rebuilds it from the run's "
                "config.") from None

    def setup(self, stage: str) -> None:
        """Without ``scale=``, take it from the datamodule's scaler (``LatentODEDataModule``),
        so that ``mse_data`` is in data units under any Trainer, not only the CLI's."""
        if self.trainer is None:
            return
        # (Trainer.datamodule: set by the Trainer's data connector, not declared in the class)
        if self.channels is None:
            dataset = getattr(self.trainer.datamodule, "dataset", None)  # type: ignore[attr-defined]
            names = getattr(dataset, "channels", None)
            self.channels = None if names is None else [str(c) for c in names]
        if not self._scale_from_data or self.scale is not None:  # given, or from a checkpoint
            return
        datamodule = self.trainer.datamodule  # type: ignore[attr-defined]
        if not hasattr(datamodule, "scaler") and stage in ("fit", "validate", "test"):
            rank_zero_warn(
                "LatentODELightning: no data scale is known (scale= not given, no "
                "LatentODEDataModule with a scaler), so mse_data is logged in the model's "
                "units, the same as mse. If your loaders' values are standardised, pass "
                "scale=scaler.scale (and channels=) to report errors in data units.")
        scaler = getattr(datamodule, "scaler", None)
        if scaler is not None:
            self.scale = torch.as_tensor(scaler.scale, dtype=torch.float32).reshape(-1)
            log = getattr(scaler, "log", None)
            if self.log_scale is None and log is not None and log.any():
                self.log_scale = (torch.as_tensor(scaler.mean, dtype=torch.float32),
                                  torch.as_tensor(log, dtype=torch.bool))

    # ----------------------------------------------------------------------------- schedule
    @property
    def kl_weight(self) -> float:
        """The training KL weight at the current epoch."""
        if self.fixed_kl_weight is not None:
            return float(self.fixed_kl_weight)
        return kl_weight_schedule(self.current_epoch, self.kl_wait_epochs, self.kl_rate)

    # ----------------------------------------------------------------------------- steps
    def _terms(self, stage: str, batch: Batch, batch_idx: int, kl_weight: float,
               n_samples: int | None) -> dict[str, torch.Tensor]:
        """The model's loss terms; a solver failure or a NaN/inf term stops the run, saying
        where (stage, epoch, batch index) and which term."""
        extra = {}
        if batch.labels is not None and getattr(self.model, "classifier", None) is not None:
            extra["labels"] = batch.labels
        if batch.errors is not None:
            check_reads_errors(self.model)
            extra["errors"] = batch.errors
        try:
            loss = cast(Callable[..., Any], self.model.loss)  # nn.Module's stubs: Tensor | Module
            out = loss(batch.times, batch.values, batch.encoder_mask, batch.target_mask,
                       kl_weight=kl_weight, n_samples=n_samples, **extra)
        except SolverError as err:
            hint = ""
            if isinstance(err, NonFiniteInitialStateError):
                hint = (" The posterior q(z0) (or the state the ODE starts from) came out "
                        "non-finite: the weights have diverged (lower the learning rate, "
                        "module.optimizer.lr) or the data holds extreme values.")
            raise RuntimeError(
                f"the ODE solver failed at epoch {self.current_epoch}, batch_idx {batch_idx} "
                f"({stage}): {err}{hint}"
            ) from err
        bad = [t for t in TERMS + OPTIONAL_TERMS
               if t in out and not bool(torch.isfinite(out[t]).all())]
        if bad:
            values = ", ".join(f"{t}={out[t].detach().cpu().tolist()}" for t in bad)
            raise RuntimeError(
                f"non-finite {'/'.join(bad)} at epoch {self.current_epoch}, batch_idx "
                f"{batch_idx} ({stage}: {values}); lower the learning rate, loosen the solver "
                f"or check the data for extreme values."
            )
        return out

    def _errors(self, batch: Batch, pred: torch.Tensor, per_sample: bool = False,
                per_channel: bool = False) -> dict[str, tuple[torch.Tensor, Any]]:
        """Sums of squared errors and counts: normalised, data units, seen and unseen targets
        (and, with ``per_sample``, averaged over the posterior samples' own errors; with
        ``per_channel``, each channel's in its data units, ``mse_data/<channel>``)."""
        mean = pred.detach().mean(0)
        sq = (mean - batch.values).square()
        target = batch.target_mask
        out: dict[str, tuple[torch.Tensor, Any]] = {}
        tf = target.to(sq.dtype)
        out["mse"] = ((sq * tf).sum(), tf.sum())
        if per_sample:
            each = (pred.detach() - batch.values).square() * tf
            out["mse_sample"] = (each.sum() / pred.shape[0], tf.sum())
        data_sq = None if self.scale is None else sq * tf * self.scale.to(sq).square()
        if self.log_scale is not None and self.scale is not None:
            data_sq = self._data_errors(pred.detach(), batch.values) * tf
        out["mse_data"] = out["mse"] if data_sq is None else (data_sq.sum(), tf.sum())
        if per_channel and self.channels is not None and len(self.channels) == sq.shape[-1]:
            data_sq = sq * tf if data_sq is None else data_sq
            totals, counts = data_sq.sum(dim=(0, 1)), tf.sum(dim=(0, 1))
            for d, name in enumerate(self.channels):  # every process adds every name
                out[f"mse_data/{name}"] = (totals[d], counts[d])
        for name, part in (("mse_seen", target & batch.encoder_mask),
                           ("mse_unseen", target & ~batch.encoder_mask)):
            pf = part.to(sq.dtype)
            out[name] = ((sq * pf).sum(), pf.sum())
        return out

    def _data_errors(self, pred: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Squared errors in data units with log channels: the mean of the samples' ``exp``
        against ``exp`` of the value there, the affine inverse elsewhere."""
        assert self.log_scale is not None and self.scale is not None
        mean, log = (x.to(pred.device) for x in self.log_scale)
        scale = self.scale.to(pred)

        def data(x: torch.Tensor) -> torch.Tensor:
            y = x * scale + mean.to(x)
            return torch.where(log, torch.exp(y.clamp(max=80.0)), y)

        return (data(pred).mean(0) - data(values)).square()

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        kl_weight = self.kl_weight
        out = self._terms("train", batch, batch_idx, kl_weight, self.train_samples)
        size = batch.batch_size
        sums = self._sums.setdefault("train", _Sums())
        # this process's batch; the epoch values (on_train_epoch_end) cover every process.
        # Each self.log costs ~1 ms at these sizes (Lightning moves its result objects), so
        # step values are made and logged only on the steps the logger writes, the loss also
        # when a progress bar shows it
        writes = self._writes_logs()
        log = {}
        for t in TERMS + OPTIONAL_TERMS:
            if t in out:
                value = out[t].detach()
                sums.add(t, value * size, size)
                if writes and t != "loss":
                    log[f"train/{t}_step"] = value
        for name, (total, count) in self._errors(batch, out["pred"]).items():
            sums.add(name, total, count)
            if writes and float(count) > 0:
                log[f"train/{name}_step"] = total / count
        if writes:
            self.log_dict(log, on_step=True, on_epoch=False, batch_size=size)
        if batch_idx == 0:  # constant over the epoch: its epoch value from one step
            self.log("train/kl_weight", kl_weight, on_step=False, on_epoch=True,
                     batch_size=size, sync_dist=True)
        if writes or self._shows_progress():
            self.log("train/loss_step", out["loss"].detach(), on_step=True, on_epoch=False,
                     prog_bar=True, batch_size=size)
        return out["loss"]

    def _writes_logs(self) -> bool:
        """Whether the logger writes this step's values (Lightning's own ``log_every_n_steps``
        rule); True when that cannot be told, e.g. outside a Trainer."""
        connector = getattr(self._trainer, "_logger_connector", None)
        return bool(getattr(connector, "should_update_logs", True))

    def _shows_progress(self) -> bool:
        trainer = self._trainer
        return trainer is None or trainer.progress_bar_callback is not None

    def _solver_counts(self) -> dict[str, int] | None:
        stats = getattr(self.model, "solver_stats", None)
        return None if stats is None else stats.as_dict()

    def _mark_solver(self) -> None:
        self._solver_mark = self._solver_counts()

    def _add_solver(self, stage: str) -> None:
        """The solver's counts since :meth:`_mark_solver` (a batch, its backward included)."""
        now, before = self._solver_counts(), self._solver_mark
        if now is None or before is None:
            return
        sums = self._sums.setdefault(stage, _Sums())
        for name in SOLVER_COUNTS:  # host numbers: no copy to the device per batch
            sums.add(f"solver_{name}", now[name] - before[name], 1.0)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._mark_solver()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._add_solver("train")  # after the backward and the optimiser step

    def on_validation_batch_start(self, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        self._mark_solver()

    def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        self._add_solver(_loader_key("val", dataloader_idx))
        self._log_if_last("val", batch_idx, dataloader_idx)

    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._mark_solver()

    def on_test_batch_end(self, outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        self._add_solver(_loader_key("test", dataloader_idx))
        self._log_if_last("test", batch_idx, dataloader_idx)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the random stream of the posterior samples, so that a resumed run draws what the
        # run would have drawn had it gone on (Lightning keeps no random state: a resume re-ran
        # seed_everything, and 2 + 2 epochs differed from 4 from the third on). Every process
        # draws its own stream: under DDP each one's is kept (Lightning saves checkpoints on
        # every process together, rank 0 writing), rank 0's also at the top for other sizes
        state: dict[str, Any] = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        world = self._trainer.world_size if self._trainer is not None else 1
        if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            ranks: list[Any] = [None] * world
            torch.distributed.all_gather_object(ranks, state)
            state = {**ranks[0], "ranks": ranks}
        checkpoint["latentode_rng"] = state
        if self._optimization:  # what built the state Lightning saves
            checkpoint["latentode_optimization"] = dict(self._optimization)
        checkpoint[DATA_UNITS] = {  # plain lists: weights_only=True reads them
            "scale": None if self.scale is None else self.scale.tolist(),
            "log_scale": None if self.log_scale is None else [t.tolist() for t in self.log_scale],
            "channels": self.channels,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._saved_optimization = checkpoint.get("latentode_optimization")
        units = checkpoint.get(DATA_UNITS) or {}
        if self.scale is None and units.get("scale") is not None:  # scale= given wins
            self.scale = torch.tensor(units["scale"], dtype=torch.float32, device=self.device)
            self._scale_from_data = False
            if self.log_scale is None and units.get("log_scale") is not None:
                mean, log = units["log_scale"]
                self.log_scale = (torch.tensor(mean, dtype=torch.float32),
                                  torch.tensor(log, dtype=torch.bool))
        if self.channels is None and units.get("channels") is not None:
            self.channels = [str(c) for c in units["channels"]]
        state = checkpoint.get("latentode_rng")
        trainer = self._trainer
        # only a resumed fit goes on with the run's random stream: loading weights to
        # evaluate or predict (load_from_checkpoint, test(ckpt_path=...)) leaves the caller's
        if state is None or trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return
        ranks = state.get("ranks")
        if ranks is not None and len(ranks) == trainer.world_size:
            state = ranks[trainer.global_rank]  # this process's own stream
            self._own_rng = True  # on_train_start keeps it
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            self._cuda_rng = state["cuda"]  # set on the device once the module is on it

    def on_fit_start(self) -> None:
        state = getattr(self, "_cuda_rng", None)
        if state is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state, self.device)
        self._cuda_rng = None

    def on_train_start(self) -> None:
        # seed_everything gives every process the same seed (and DDP the same weights): fold
        # the rank in, so that the processes draw independent posterior samples (not when each
        # process got its own stream back from a checkpoint of as many processes)
        own, self._own_rng = getattr(self, "_own_rng", False), False
        if self.trainer.world_size > 1 and not own:
            seed = int(torch.randint(0, 2**62, ()).item())
            torch.manual_seed(stream_seed(seed, self.trainer.global_rank))

    def on_train_epoch_start(self) -> None:
        self._sums.pop("train", None)

    def on_train_epoch_end(self) -> None:
        sums = self._sums.pop("train", None)
        if sums is None:
            return
        means = sums.means(lambda x: self.trainer.strategy.reduce(x, reduce_op="sum"),
                           self.device)
        for name, value in means.items():
            # as Lightning names values logged on step and epoch: ``_epoch`` in the logger,
            # the bare name among the callback metrics; the values are already the same on
            # every process (sync_dist averages equal numbers, and tells Lightning so)
            self.log(f"train/{name}_epoch", value, sync_dist=True)
            self.log(f"train/{name}", value, logger=False, sync_dist=True)

    @contextlib.contextmanager
    def _eval_rng(self, batch: Batch, batch_idx: int) -> Iterator[None]:
        """Posterior samples of an evaluation batch: each series' from its own seed
        (``eval_seed`` and its place in the split, :func:`series_noise`: a series scores alike
        in any batch, batch size or process count; the key leaves the stage and loader out, so
        a loader scores alike as validation or test, first or second), a model's own draws from
        a stream seeded per batch; the caller's random state left as it was."""
        devices = [self.device] if self.device.type == "cuda" else []
        seed = self.eval_seed * 1_000_003 + batch_idx
        rank = self._trainer.global_rank if self._trainer is not None else 0
        if rank > 0:  # other processes draw other samples than rank 0
            seed = stream_seed(seed, rank)
        with torch.random.fork_rng(devices=devices), series_noise(batch.index.tolist(),
                                                                   (self.eval_seed,)):
            torch.manual_seed(seed)
            yield

    def _eval_step(self, stage: str, batch: Batch, batch_idx: int, dataloader_idx: int = 0
                   ) -> None:
        with self._eval_rng(batch, batch_idx):
            out = self._terms(stage, batch, batch_idx, 1.0, self.eval_samples)
        key = _loader_key(stage, dataloader_idx)
        sums = self._sums.setdefault(key, _Sums())
        size = batch.batch_size
        for t in TERMS + OPTIONAL_TERMS:
            if t in out:
                sums.add(t, out[t] * size, size)
        if "logits" in out and batch.labels is not None:
            self._labels.setdefault(key, []).append(_known_predictions(out["logits"],
                                                                        batch.labels))
        for name, (total, count) in self._errors(batch, out["pred"], per_sample=True,
                                                 per_channel=stage == "test").items():
            sums.add(name, total, count)

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0
                     ) -> dict[str, torch.Tensor]:
        """``trainer.predict(module, dataloaders=dm.test_dataloader())``: per batch the series'
        positions in their split (``index``), the batch's model ``times`` and the posterior
        predictions ``pred`` ``(S, B, T, D)`` in model units (the data module's
        ``inverse_values`` turns them into data units), with ``z0`` where the model's loss puts
        it; with a classifier also its ``logits`` (per series ``(S, B, C)``, per time point
        ``(S, B, T, C)``; a sigmoid of a binary one is the risk). With ``time_origin="series"``
        each row sits on its own clock: ``origin`` ``(B,)`` is what its times were moved back
        by (row ``b``'s model times are ``times + origin[b]`` on the data's clock)."""
        with self._eval_rng(batch, batch_idx):  # the samples test draws for these series
            if hasattr(self.model, "predict"):
                predict = cast(Callable[..., Any], self.model.predict)  # (see _terms)
                out = predict(batch.times, batch.values, batch.encoder_mask, batch.target_mask,
                              self.eval_samples,
                              **encoder_error_kwargs(self.model, batch.errors))
            else:  # a model with only the loss/forward interface: its forward at the times
                out = self.model(batch.times, batch.values, batch.encoder_mask,
                                 n_samples=self.eval_samples)
        result = {"index": batch.index, "times": batch.times, "pred": out.pred}
        if batch.origin is not None:
            result["origin"] = batch.origin
        if getattr(out, "logits", None) is not None:  # a classifier: e.g. mortality risk
            result["logits"] = out.logits
        return result

    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("val", batch, batch_idx, dataloader_idx)

    def test_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("test", batch, batch_idx, dataloader_idx)

    def _log_if_last(self, stage: str, batch_idx: int, dataloader_idx: int) -> None:
        """After a dataloader's last batch, log its metrics (:meth:`_log_loader`): logged
        while Lightning knows which dataloader they belong to, each loader's numbers land in
        its own entry of ``trainer.validate``'s / ``test``'s results and printed table (logged
        at the epoch's end, every entry held every loader's and the table showed the last
        loader's under each). Loaders of unknown length are logged at the epoch's end."""
        trainer = self._trainer
        if trainer is None:
            return
        counts = (trainer.num_test_batches if stage == "test" else
                  trainer.num_sanity_val_batches if trainer.sanity_checking else
                  trainer.num_val_batches)
        if dataloader_idx < len(counts) and batch_idx + 1 == counts[dataloader_idx]:
            self._log_loader(stage, _loader_key(stage, dataloader_idx))

    def _log_loader(self, stage: str, key: str) -> None:
        """Reduce and log the sums of ``stage``'s dataloader ``key``: the first loader's
        metrics keep their names (what monitors and the CLI read), the others' end in
        ``/dataloader_idx_<k>``, Lightning's suffix."""
        sums = self._sums.pop(key, None)
        if sums is None:
            return
        means = sums.means(lambda x: self.trainer.strategy.reduce(x, reduce_op="sum"),
                           self.device)
        means.update(self._label_metrics(key))
        suffix = key[len(stage):].replace("#", "/dataloader_idx_")
        for name, value in means.items():
            # reduced already, the same on every process (see on_train_epoch_end)
            self.log(f"{stage}/{name}{suffix}", value, prog_bar=name == "mse" and not suffix,
                     on_step=False, on_epoch=True, sync_dist=True, add_dataloader_idx=False,
                     batch_size=1)

    def _eval_epoch_end(self, stage: str) -> None:
        for key in sorted(k for k in self._sums if _loader_key_stage(k) == stage):
            self._log_loader(stage, key)  # loaders of unknown length (see _log_if_last)

    def _label_metrics(self, key: str) -> dict[str, float]:
        """AUC and accuracy over the epoch's known labels (of the stage and dataloader
        ``key``), gathered from every process."""
        parts = self._labels.pop(key, None)
        if not parts:
            return {}
        local = torch.cat(parts)  # (N, 1 + C): label, then class probabilities
        if self.trainer.world_size > 1:
            count = torch.tensor([local.shape[0]], device=self.device)
            counts = cast(torch.Tensor, self.all_gather(count)).reshape(-1)
            width = int(counts.max())
            padded = local.new_full((width, local.shape[1]), float("nan"))
            padded[: local.shape[0]] = local
            gathered = cast(torch.Tensor, self.all_gather(padded)).reshape(-1, local.shape[1])
            local = gathered[~torch.isnan(gathered[:, 0])]
        return label_metrics(local[:, 1:], local[:, 0])

    def _drop(self, stage: str) -> None:
        """Forget ``stage``'s sums and labels, of every dataloader."""
        for store in (self._sums, self._labels):
            for key in [k for k in store if _loader_key_stage(k) == stage]:
                del store[key]

    def on_validation_epoch_start(self) -> None:
        self._drop("val")

    def on_test_epoch_start(self) -> None:
        self._drop("test")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # ----------------------------------------------------------------------------- optim
    def _optimizer_params(self) -> Any:
        """The parameters as the optimiser takes them: all of them, or with ``param_groups``
        one group per named part (its options) and one for the rest."""
        if not self.param_groups:
            return self.parameters()
        named = list(self.model.named_parameters())
        prefixes = sorted(self.param_groups, key=len, reverse=True)  # the longest match wins
        groups: dict[str | None, list[torch.Tensor]] = {p: [] for p in prefixes}
        groups[None] = []
        for name, param in named:
            owner = next((p for p in prefixes if name == p or name.startswith(p + ".")), None)
            groups[owner].append(param)
        empty = [p for p in prefixes if not groups[p]]
        if empty:
            parts = sorted({name.split(".")[0] for name, _ in named})
            raise ValueError(f"module.param_groups names {empty}, which hold no parameter of "
                             f"{type(self.model).__name__}; its parts: {parts}.")
        out = [{"params": groups[p], **self.param_groups[p]} for p in prefixes]
        if groups[None]:
            out.append({"params": groups[None]})
        return out

    def grad_clip_norm(self) -> float | None:
        """The gradient norm ``grad_clip`` allows: ``grad_clip / obs_std**2`` (the smallest
        channel's std) for a model with a Gaussian likelihood, whose loss's gradients scale so;
        ``grad_clip`` itself for others."""
        clip = self.hparams.get("grad_clip")
        if clip is None:
            return None
        std = getattr(self.model, "obs_std", None)
        if std is None:
            return float(clip)
        return float(clip) / float(torch.as_tensor(std).min()) ** 2

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer,
                                    gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """``grad_clip``: the whole gradient's norm clipped at :meth:`grad_clip_norm` (on the
        device, no host synchronisation), then the trainer's own ``gradient_clip_val``.

        Why: Adamax's first step moves every weight by ``lr``; on the default recipe two seeds
        in 40 then met a gradient norm of 1.2-1.9e6 (200-600x the first step's), which Adamax
        keeps as its scale (the largest it has seen, decaying 0.1% per step), so every later
        step was ~1/300 of ``lr`` and the run stayed at the channel means (test MSE 0.79 and
        0.88 normalised). Normal steps there stay under ~3e4; clipped at 1e5 (``grad_clip=10``
        at ``obs_std=0.01``) the two learned (0.014, 0.018) (docs/results.md)."""
        norm = self.grad_clip_norm()
        if norm is not None:
            torch.nn.utils.clip_grad_norm_(
                [p for group in optimizer.param_groups for p in group["params"]], norm)
        if gradient_clip_val:  # the trainer's (Lightning's own hook needs a trainer attached)
            super().configure_gradient_clipping(optimizer, gradient_clip_val,
                                                gradient_clip_algorithm)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self._optimizer_params())
        scheduler = None if self.scheduler_factory is None else self.scheduler_factory(optimizer)
        self._optimization = {"optimizer": type(optimizer).__name__,
                              "scheduler": None if scheduler is None else type(scheduler).__name__}
        saved = self._saved_optimization
        resuming = self._trainer is not None and self._trainer.ckpt_path is not None
        if resuming and saved and saved != self._optimization:
            # Lightning would load one optimiser's or scheduler's state into another: a KeyError
            # from deep inside torch ('lr_lambdas'), or a silently wrong state
            raise ValueError(
                f"the checkpoint was trained with {saved['optimizer']} and scheduler "
                f"{saved['scheduler']}; this module builds {self._optimization['optimizer']} and "
                f"{self._optimization['scheduler']}. Resume with the same optimizer= and "
                "scheduler= (load_from_checkpoint does not restore them), or start a new run "
                "from the weights (fit without ckpt_path).")
        if scheduler is None:
            return optimizer
        if (isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
                and self.scheduler_interval == "step"
                and self.scheduler_monitor.startswith(("val/", "test/"))):
            raise ValueError(
                f"ReduceLROnPlateau monitors {self.scheduler_monitor!r}, which is known at the "
                "end of a validation epoch, not after every training step: pass "
                "scheduler_interval='epoch' (latentode-train: module.scheduler_interval=epoch), "
                "or monitor a per-step metric such as 'train/loss'.")
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval,
                             "frequency": 1, "monitor": self.scheduler_monitor},
        }


def _loader_key(stage: str, dataloader_idx: int) -> str:
    """Where a stage's sums of one dataloader are kept: ``"val"`` for the first, ``"val#1"``
    for the second..."""
    return stage if not dataloader_idx else f"{stage}#{int(dataloader_idx)}"


def _loader_key_stage(key: str) -> str:
    """The stage of a :func:`_loader_key`."""
    return key.split("#", 1)[0]


_READS_ERRORS: set[int] = set()  # ids of the model classes whose loss takes errors=


def check_reads_errors(model: nn.Module) -> None:
    """Refuse, before a batch's uncertainties are dropped, a model whose ``loss`` takes no
    ``errors=``: the data were read with uncertainty columns the model would not weigh (once
    per model class: not a signature inspection per training step)."""
    if id(type(model)) in _READS_ERRORS:
        return
    params = inspect.signature(cast(Callable[..., Any], model.loss)).parameters
    if "errors" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        _READS_ERRORS.add(id(type(model)))
        return
    raise ValueError(
        f"the data carry measurement uncertainties (uncertainty_cols / uncertainty_col), but "
        f"{type(model).__name__}.loss takes no errors=: give it an errors=None argument "
        "(the (B, T, D) uncertainties, latentode.models.inputs.point_noise adds them to the "
        "noise), or read the data without uncertainty_cols / uncertainty_col.")
