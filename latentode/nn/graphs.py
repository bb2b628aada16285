"""CUDA-graph replay of a module's forward and backward, one graph per input shape.

At the paper's sizes a recognition encoder's training step is thousands of small kernels (an
Euler step and gate MLPs at each of ~100 time points, forward and backward) and on a GPU the
time goes to launching them from Python, not to running them. A CUDA graph records the kernels
of one forward and one backward once and replays them with a single launch each
(``torch.cuda.make_graphed_callables``). That needs a walk without host synchronisation and
with control flow fixed by the input shapes; :class:`GraphCache` keeps one graph per shape and
drops them all when the parameters move (``.to()``, a new device), since a graph reads its
tensors at the addresses it was recorded with.

Without autograd (evaluation, ``torch.no_grad`` / ``torch.inference_mode``) the forward alone
is recorded (:class:`ForwardGraph`): the per-epoch test pass of a training run replays too.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

from .layers import is_single_euler_step


class _Call(nn.Module):
    """``fn`` with ``owner``'s parameters as the graphed module's parameters."""

    def __init__(self, owner: nn.Module, fn: Callable[..., tuple[torch.Tensor, ...]]):
        super().__init__()
        self.owner = owner
        self.fn = fn

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.fn(*args)


class ForwardGraph:
    """``fn`` recorded without autograd as one CUDA graph, replayed on new inputs of the same
    shapes: the inputs are copied into the recorded input buffers and the outputs cloned."""

    def __init__(self, fn: Callable[..., tuple[torch.Tensor, ...]],
                 samples: tuple[torch.Tensor, ...]):
        self.inputs = tuple(a.detach().clone() for a in samples)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capture (cuBLAS workspaces, lazy init)
            fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = tuple(fn(*self.inputs))

    def __call__(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        for buffer, arg in zip(self.inputs, args, strict=True):
            buffer.copy_(arg)
        self.graph.replay()
        return tuple(out.clone() for out in self.outputs)


class GraphCache:
    """Graphed versions of ``fn`` (a sync-free function of tensors using ``owner``'s
    parameters), one per distinct input shapes/dtypes/device, at most ``capacity``; past that
    (inputs whose shapes keep changing, e.g. a union of times that differs per batch), calls run
    eagerly, with one warning.

    The caller uses it on CUDA tensors. With autograd on, forward and backward are recorded
    (``torch.cuda.make_graphed_callables``); without (``no_grad``, ``inference_mode``), the
    forward alone (:class:`ForwardGraph`), a graph per shape and mode. Parameters must be
    updated in place (optimisers and Lightning's weight averaging do; ``param.data = ...`` is
    seen and drops the graphs). Outputs are cloned, so they stay valid after the next replay.

    A graph holds the activations of its latest forward only. A call whose graph still owes an
    earlier call's backward (two forward passes before one backward, e.g. two encodings in one
    loss) would overwrite what that backward needs, so it runs eagerly instead (same numbers,
    one warning); once the earlier backward has run, or its autograd graph is freed, replays
    resume.
    """

    def __init__(self, owner: nn.Module, fn: Callable[..., tuple[torch.Tensor, ...]],
                 capacity: int = 8):
        self.owner, self.fn, self.capacity = owner, fn, capacity
        self._graphs: dict[tuple, Callable[..., tuple[torch.Tensor, ...]]] = {}
        self._params: tuple[int, ...] = ()
        self._pending: dict[tuple, weakref.ref] = {}  # graph -> its replay's backward node
        self._warned: set[str] = set()

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
            self._pending.clear()
            self._params = params
        grad = torch.is_grad_enabled()
        key = (grad, torch.is_inference_mode_enabled(),
               *((a.shape, a.dtype, a.device, a.requires_grad) for a in args))
        graphed: Callable[..., tuple[torch.Tensor, ...]] | None = self._graphs.get(key)
        if graphed is None:
            if len(self._graphs) >= self.capacity:
                self._warn_once("capacity", f"cuda_graph: {self.capacity} input shapes recorded "
                                f"already; further shapes run without a graph. Graphs pay off "
                                f"when batches share their shapes (a fixed time grid and batch "
                                f"size).")
                return self.fn(*args)
            if grad:
                # the samples become the graph's input buffers, overwritten at every replay
                samples = tuple(a.detach().clone().requires_grad_(a.requires_grad)
                                for a in args)
                graphed = cast(  # the graphed _Call: a Module, called like fn
                    Callable[..., tuple[torch.Tensor, ...]], torch.cuda.make_graphed_callables(
                        _Call(self.owner, self.fn), samples, allow_unused_input=True))
            else:
                graphed = ForwardGraph(self.fn, args)
            self._graphs[key] = graphed
        if not grad:
            return graphed(*args)
        pending = self._pending.get(key)
        if pending is not None and pending() is not None:
            self._warn_once("pending", "cuda_graph: called again before the backward of its "
                            "previous call; this call runs without the graph (its activations "
                            "are still needed). Graphs pay off with one forward per backward.")
            return self.fn(*args)
        outs = graphed(*args)
        node = outs[0].grad_fn
        if node is not None:  # cleared when its backward runs (or when its graph is freed)
            ref = weakref.ref(node)
            self._pending[key] = ref
            node.register_hook(lambda *_, key=key, ref=ref: self._done(key, ref))
        return tuple(out.clone() for out in outs)

    def _done(self, key: tuple, ref: weakref.ref) -> None:
        if self._pending.get(key) is ref:
            del self._pending[key]

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            warnings.warn(message, stacklevel=4)
            self._warned.add(kind)


class Graphable:
    """Mixin for a module whose training pass ``_graph_fn`` (sync-free, fixed control flow for
    fixed input shapes) may be replayed from CUDA graphs: ``self._graphs`` is its
    :class:`GraphCache`, made on first use and left out of copies and pickles."""

    def _graph_fn(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError  # subclasses take their own tensors

    @property
    def _graphs(self) -> GraphCache:
        cache = self.__dict__.get("_graph_cache")
        if cache is None:
            cache = self.__dict__["_graph_cache"] = GraphCache(self, self._graph_fn)  # type: ignore[arg-type]
        return cache

    def __getstate__(self) -> dict[str, Any]:
        # nn.Module's (drops compiled calls); typeshed has object.__getstate__ from Python 3.11
        state = super().__getstate__()  # type: ignore[misc, unused-ignore]
        state = dict(state if isinstance(state, dict) else self.__dict__)
        state.pop("_graph_cache", None)  # CUDA graphs neither copy nor pickle
        return state


def check_graph_solver(solver: dict) -> None:
    """Raise unless ``solver`` takes one Euler step per gap, the only walk a graph can record."""
    if not is_single_euler_step(solver):
        raise ValueError(
            f"cuda_graph records one Euler step per gap (the default solver); the solver "
            f"options {dict(solver)} take a number of steps that depends on the data. "
            f"Use solver={{'method': 'euler'}} or cuda_graph=false.")
