"""CUDA-graph replay of a module's forward and backward, one graph per input shape.

At the paper's sizes a recognition encoder's training step is thousands of small kernels (an
Euler step and gate MLPs at each of ~100 time points, forward and backward) and on a GPU the
time goes to launching them from Python, not to running them. A CUDA graph records the kernels
of one forward and one backward once and replays them with a single launch each
(``torch.cuda.make_graphed_callables``). That needs a walk without host synchronisation and
with control flow fixed by the input shapes; :class:`GraphCache` keeps one graph per shape and
drops them all when the parameters move (``.to()``, a new device), since a graph reads its
tensors at the addresses it was recorded with.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


class _Call(nn.Module):
    """``fn`` with ``owner``'s parameters as the graphed module's parameters."""

    def __init__(self, owner: nn.Module, fn: Callable[..., tuple[torch.Tensor, ...]]):
        super().__init__()
        self.owner = owner
        self.fn = fn

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.fn(*args)


class GraphCache:
    """Graphed versions of ``fn`` (a sync-free function of tensors using ``owner``'s
    parameters), one per distinct input shapes/dtypes/device, at most ``capacity``; past that
    (inputs whose shapes keep changing, e.g. a union of times that differs per batch), calls run
    eagerly, with one warning.

    Only what can be replayed is: the caller uses it in training with autograd on, on CUDA
    tensors; parameters must be updated in place (optimisers do; ``param.data = ...`` is seen
    and drops the graphs). Outputs are cloned, so they stay valid after the next replay.
    """

    def __init__(self, owner: nn.Module, fn: Callable[..., tuple[torch.Tensor, ...]],
                 capacity: int = 8):
        self.owner, self.fn, self.capacity = owner, fn, capacity
        self._graphs: dict[tuple, Callable[..., tuple[torch.Tensor, ...]]] = {}
        self._params: tuple[int, ...] = ()
        self._warned = False

    def __len__(self) -> int:
        return len(self._graphs)

    def __call__(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if torch.is_autocast_enabled("cuda") and torch.is_autocast_cache_enabled():
            raise RuntimeError(
                "cuda_graph cannot record under mixed-precision autocast (e.g. "
                "trainer.precision=16-mixed or bf16-mixed), whose weight cast cache a graph "
                "would freeze: train in 32-bit precision or set model.encoder.cuda_graph=false.")
        params = tuple(p.data_ptr() for p in self.owner.parameters())
        if params != self._params:  # moved or replaced: the recorded addresses are stale
            self._graphs.clear()
            self._params = params
        key = tuple((a.shape, a.dtype, a.device, a.requires_grad) for a in args)
        graphed = self._graphs.get(key)
        if graphed is None:
            if len(self._graphs) >= self.capacity:
                if not self._warned:
                    warnings.warn(
                        f"cuda_graph: {self.capacity} input shapes recorded already; further "
                        f"shapes run without a graph. Graphs pay off when batches share their "
                        f"shapes (a fixed time grid and batch size).", stacklevel=3)
                    self._warned = True
                return self.fn(*args)
            # the samples become the graph's input buffers, overwritten at every replay: copies
            samples = tuple(a.detach().clone().requires_grad_(a.requires_grad) for a in args)
            graphed = torch.cuda.make_graphed_callables(
                _Call(self.owner, self.fn), samples, allow_unused_input=True)
            self._graphs[key] = graphed
        return tuple(out.clone() for out in graphed(*args))


class Graphable:
    """Mixin for a module whose training pass ``_graph_fn`` (sync-free, fixed control flow for
    fixed input shapes) may be replayed from CUDA graphs: ``self._graphs`` is its
    :class:`GraphCache`, made on first use and left out of copies and pickles."""

    def _graph_fn(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    @property
    def _graphs(self) -> GraphCache:
        cache = self.__dict__.get("_graph_cache")
        if cache is None:
            cache = self.__dict__["_graph_cache"] = GraphCache(self, self._graph_fn)  # type: ignore[arg-type]
        return cache

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_graph_cache", None)  # CUDA graphs neither copy nor pickle
        return state
