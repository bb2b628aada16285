"""Why the paper's code is slow on PhysioNet-shaped data: its masked loss, timed against ours.

The paper code's ``compute_masked_likelihood`` loops in Python over every (posterior sample,
series, channel), selecting the channel's observed times from the prediction tensor with
``masked_select`` on a slice. Each slice's backward allocates and fills a zero tensor the size
of the whole prediction to scatter its gradient into, so the backward costs samples x series x
channels full-size writes: quadratic in the batch. latentode's loss is one masked reduction.

    python scripts/bench_masked_loss.py                  # a PhysioNet-shaped batch (defaults)
    python scripts/bench_masked_loss.py --times 100 --channels 14   # a hopper-shaped one

Prints forward and backward seconds of each and the ratio, for one batch of shape
``(samples, batch, times, channels)`` with ``--observed`` of the entries observed (the defaults:
3 samples, 50 patients, a union of 2,200 minutes, 41 channels, 0.4% observed, as in
``scripts/make_icu_like.py``'s records). Both give the same value (checked).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_training import paper_mse_sum  # the script beside this one


def paper_loop(pred: torch.Tensor, data: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The paper code's ``compute_masked_likelihood(mu, data, mask, mse)``, then its mean.
    ``pred``: ``(samples, series, times, channels)``; ``data`` and ``mask``: without samples."""
    samples, series, _, channels = pred.shape
    res = []
    for i in range(samples):
        for k in range(series):
            for j in range(channels):
                seen = mask[k, :, j].bool()
                mu = torch.masked_select(pred[i, k, :, j], seen)
                obs = torch.masked_select(data[k, :, j], seen)
                res.append(torch.nn.functional.mse_loss(mu, obs) if len(mu) else
                           torch.zeros((), dtype=pred.dtype))
    return torch.stack(res).reshape(samples, series, channels).mean()


def vectorised(pred: torch.Tensor, data: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The same number as one masked reduction (``bench_training.paper_mse_sum``, which
    ``--protocol physionet_interp`` reports)."""
    sq = (pred - data).square() * mask
    return paper_mse_sum(sq, mask) / (pred.shape[1] * pred.shape[3])


def timed(loss_fn, pred, data, mask) -> tuple[float, float, float]:
    pred = pred.detach().requires_grad_(True)
    start = time.perf_counter()
    loss = loss_fn(pred, data, mask)
    middle = time.perf_counter()
    loss.backward()
    return middle - start, time.perf_counter() - middle, float(loss.detach())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--series", type=int, default=50)
    parser.add_argument("--times", type=int, default=2200)
    parser.add_argument("--channels", type=int, default=41)
    parser.add_argument("--observed", type=float, default=0.004)
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    shape = (args.samples, args.series, args.times, args.channels)
    pred, data = torch.randn(shape, generator=g), torch.randn(shape[1:], generator=g)
    mask = (torch.rand(shape[1:], generator=g) < args.observed).float()
    print(f"batch {shape}, {mask.mean():.2%} observed, one thread, "
          f"{pred.numel() * 4 / 1e6:.0f} MB per prediction tensor")
    rows = [("paper code's loop", *timed(paper_loop, pred, data, mask)),
            ("one masked reduction", *timed(vectorised, pred, data, mask))]
    print(f"{'loss':<22} {'forward s':>10} {'backward s':>11} {'value':>10}")
    for name, forward, backward, value in rows:
        print(f"{name:<22} {forward:>10.3f} {backward:>11.3f} {value:>10.5f}")
    assert abs(rows[0][3] - rows[1][3]) <= 1e-5 * abs(rows[1][3])
    ratio = (rows[0][1] + rows[0][2]) / (rows[1][1] + rows[1][2])
    print(f"forward + backward, paper loop / masked reduction: {ratio:.0f}x")


if __name__ == "__main__":
    main()
