"""Solver benchmark: latentode against torchdiffeq 0.2.5 and torchode 1.0.1 on the same work.

Workload (issue #2): vector field MLP 16->64->64->16 (tanh), batch 128, z0 ~ N(0, 1), 50 sorted
irregular output times on [0, 1], float32, one thread, dopri5 at rtol 1e-3, atol 1e-4. "easy" uses
PyTorch's default init, "hard" multiplies every weight by 6 (stiffer, more steps). The loss is the
mean squared error of all outputs against a fixed random target (a typical training loss).

Configurations run alternately, one repeat each in turn, and the median of ``--repeats`` is
reported. "grad err" is the relative error of dL/dtheta against a float64 reference solved at
rtol = atol = 1e-9, so speed can be read beside accuracy. Peak memory is measured in a separate,
untimed call (CPU: tensor bytes allocated during forward + backward, from the profiler).

    python scripts/bench_solver.py            # both workloads, 21 repeats
    python scripts/bench_solver.py --repeats 5 --workloads easy
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn

from latentode.solvers import odeint
from latentode.utils.memory import peak_memory

RTOL, ATOL = 1e-3, 1e-4


class MLPField(nn.Module):
    """dz/dt = MLP(z), counting evaluations."""

    def __init__(self, scale: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 16)
        )
        with torch.no_grad():
            for p in self.net.parameters():
                p.mul_(scale)
        self.nfe = 0

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        return self.net(z)


def make_workload(scale: float, seed: int = 0, device: str = "cpu") -> tuple:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    field = MLPField(scale)
    z0 = torch.randn(128, 16, generator=gen)
    t = torch.sort(torch.rand(48, generator=gen)).values
    t = torch.cat([torch.zeros(1), t, torch.ones(1)])  # 50 irregular times on [0, 1]
    target = torch.randn(50, 128, 16, generator=gen)
    return field.to(device), z0.to(device), t.to(device), target.to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def runners(field: MLPField, z0: torch.Tensor, t: torch.Tensor) -> dict[str, Callable]:
    """Name -> function returning ys of shape (T, batch, d) with a graph to the parameters."""
    out: dict[str, Callable] = {}
    for mode in ("backprop", "adjoint", "checkpoint"):
        out[f"latentode {mode}"] = lambda mode=mode: odeint(
            field, z0, t, method="dopri5", rtol=RTOL, atol=ATOL, gradient=mode
        )
    try:
        import torchdiffeq

        out["torchdiffeq odeint"] = lambda: torchdiffeq.odeint(
            field, z0, t, rtol=RTOL, atol=ATOL, method="dopri5"
        )
        out["torchdiffeq odeint_adjoint"] = lambda: torchdiffeq.odeint_adjoint(
            field, z0, t, rtol=RTOL, atol=ATOL, method="dopri5"
        )
    except ImportError:
        print("torchdiffeq not installed: pip install -e '.[dev]' to compare against it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torchode

        term = torchode.ODETerm(field)
        solver = torchode.AutoDiffAdjoint(
            torchode.Dopri5(term=term),
            torchode.IntegralController(atol=ATOL, rtol=RTOL, term=term),
        )
        t_eval = t.expand(z0.shape[0], -1)

        def run_torchode() -> torch.Tensor:
            sol = solver.solve(torchode.InitialValueProblem(y0=z0, t_eval=t_eval))
            return sol.ys.transpose(0, 1)

        out["torchode AutoDiffAdjoint"] = run_torchode
    except ImportError:
        print("torchode not installed: pip install -e '.[dev]' to compare against it")
    return out


def reference_grad(field: MLPField, z0: torch.Tensor, t: torch.Tensor, target: torch.Tensor):
    f64 = MLPField(1.0).double().to(z0.device)
    f64.load_state_dict(field.state_dict())
    ys = odeint(f64, z0.double(), t.double(), rtol=1e-9, atol=1e-9)
    loss = (ys - target.double()).square().mean()
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(f64.parameters()))])


def measure(name: str, run: Callable, field: MLPField, target: torch.Tensor) -> dict:
    params = list(field.parameters())
    field.nfe = 0
    sync(target.device)
    t0 = time.perf_counter()
    ys = run()
    sync(target.device)
    t1 = time.perf_counter()
    nfe_fwd = field.nfe
    loss = (ys - target).square().mean()
    grads = torch.autograd.grad(loss, params)
    sync(target.device)
    t2 = time.perf_counter()
    return {
        "fwd": (t1 - t0) * 1e3,
        "total": (t2 - t0) * 1e3,
        "nfe_fwd": nfe_fwd,
        "nfe_bwd": field.nfe - nfe_fwd,
        "grad": torch.cat([g.reshape(-1) for g in grads]),
    }


def bench(workload: str, scale: float, repeats: int, device: str) -> dict:
    field, z0, t, target = make_workload(scale, device=device)
    ref = reference_grad(field, z0, t, target)
    runs = runners(field, z0, t)
    samples: dict[str, list] = {name: [] for name in runs}
    for name, run in runs.items():  # warm-up, untimed
        measure(name, run, field, target)
    for _ in range(repeats):
        for name, run in runs.items():
            samples[name].append(measure(name, run, field, target))
    rows = {}
    for name, run in runs.items():
        s = samples[name]
        _, peak = peak_memory(
            lambda name=name, run=run: measure(name, run, field, target), device=z0.device
        )
        rows[name] = {
            "fwd": statistics.median(r["fwd"] for r in s),
            "total": statistics.median(r["total"] for r in s),
            "nfe_fwd": s[-1]["nfe_fwd"],
            "nfe_bwd": s[-1]["nfe_bwd"],
            "peak": peak,
            "grad_err": ((s[-1]["grad"].double() - ref).norm() / ref.norm()).item(),
        }
    print(f"\n## {workload} workload (weights x{scale:g}), median of {repeats} repeats\n")
    print("| solver | fwd ms | fwd+bwd ms | NFE fwd | NFE bwd | peak MiB | grad err |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['fwd']:.2f} | {r['total']:.2f} | {r['nfe_fwd']} | {r['nfe_bwd']} "
            f"| {r['peak'] / 2**20:.2f} | {r['grad_err']:.1e} |"
        )
    return rows


def ratio(rows: dict, ours: str, theirs: str, key: str = "total") -> float | None:
    if ours not in rows or theirs not in rows or not rows[theirs][key]:
        return None
    return rows[ours][key] / rows[theirs][key]


TARGETS = [
    ("latentode backprop", "torchode AutoDiffAdjoint", "total", 0.8),
    ("latentode backprop", "torchdiffeq odeint", "total", 0.7),
    ("latentode adjoint", "torchdiffeq odeint_adjoint", "total", 0.2),
    ("latentode adjoint", "torchdiffeq odeint_adjoint", "nfe_bwd", 0.25),
    ("latentode checkpoint", "latentode backprop", "total", 1.5),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--workloads", nargs="+", default=["easy", "hard"])
    parser.add_argument("--device", default="cpu", help="cpu (one thread, as specified) or cuda")
    args = parser.parse_args()
    torch.set_num_threads(1)
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU, 1 thread"
    print(f"torch {torch.__version__}, {where}, dopri5 rtol={RTOL:g} atol={ATOL:g}")
    ok = True
    for workload in args.workloads:
        scale = {"easy": 1.0, "hard": 6.0}[workload]
        rows = bench(workload, scale, args.repeats, args.device)
        print(f"\nratios ({workload}): ours / baseline, target in brackets\n")
        for ours, theirs, key, target in TARGETS:
            r = ratio(rows, ours, theirs, key)
            if r is None:
                continue
            verdict = "ok" if r <= target else "MISSED"
            ok &= r <= target
            what = "fwd+bwd time" if key == "total" else "backward NFE"
            print(f"- {ours} vs {theirs}, {what}: {r:.3f}x  [<= {target}x] {verdict}")
    print("\nall targets met" if ok else "\nsome targets missed")


if __name__ == "__main__":
    main()
