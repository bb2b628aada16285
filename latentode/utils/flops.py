"""FLOPs of the matrix products (and convolutions) a piece of code runs, on any device.

Used by the training benchmarks to tell compute-bound work (achieved FLOP/s near what the
device gives a matrix product) from overhead-bound work. torch's own ``FlopCounterMode`` also
tracks modules with backward hooks, which refuse ``autograd.grad`` inside a backward pass (our
checkpointed solver replays steps that way); this counter only sums torch's FLOP formulas.
"""

from __future__ import annotations

import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry


class CountFlops(TorchDispatchMode):
    """``with CountFlops() as c: ...`` then ``c.total``: FLOPs of the matrix products and
    convolutions that ran inside (backward passes included; elementwise work not counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def matmul_gflops(
    device: torch.device | str = "cpu", rows: int = 150, width: int = 300, repeats: int = 400
) -> float:
    """GFLOP/s of a float32 ``(rows, width) @ (width, width)`` product on ``device``: what the
    device gives the models' matrix products (the default is the hopper presets' dominant
    shape: 3 samples x batch 50 rows, 300 units)."""
    device = torch.device(device)
    a = torch.randn(rows, width, device=device)
    b = torch.randn(width, width, device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(20):
        a @ b
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync()
    return 2 * rows * width * width * repeats / (time.perf_counter() - start) / 1e9
