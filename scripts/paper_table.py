"""The paper's MuJoCo hopper table (Rubanova et al. 2019, test MSE x 10^-2): the commands that
train every cell, and the collector that turns their run directories into the table, ours beside
the paper's.

Rows are model presets (``conf/model/hopper_*.yaml``), columns the two hopper experiments
(``conf/experiment/hopper_interp.yaml``, ``hopper_extrap.yaml``) at 10/20/30/50% observed
(``observed_fraction``: the share of each 100-point window the encoder sees for interpolation,
the share of the first 66 of 200 points for extrapolation, as the paper's ``-s``). Test MSE is
``test/mse`` of each run's ``test_metrics.json``: scaled units, over all 100 points of each test
window (interpolation) or the 134 predicted points (extrapolation).

    python scripts/paper_table.py commands                      # full protocol, on a GPU
    python scripts/paper_table.py commands --protocol reduced   # reduced CPU protocol
    python scripts/paper_table.py commands --protocol reduced | bash   # run it all
    python scripts/paper_table.py collect outputs/paper_table/full \\
        --csv hopper_table.csv --markdown hopper_table.md

``collect --runs-csv runs.csv`` also writes one row per finished run; such a CSV can be given
again as a root beside directories, so runs made in different sessions (or on different machines)
add up (``results/hopper_reduced_paperunits_runs.csv`` keeps the reduced CPU runs measured so
far; ``results/hopper_reduced_runs.csv`` those of the earlier protocol in the data's own units).

``collect`` walks the given directories for run dirs (``test_metrics.json`` beside
``.hydra/config.yaml``), groups them by protocol (the overrides other than the grid's: model,
experiment, observed_fraction, seed and settings that do not change results such as paths or
the trainer's device), model preset, task and observed fraction, and prints one markdown table
per protocol: mean ± sample std over seeds and their number n, x 10^-2, the paper's number on
the row above; cells without runs print "—". A run trained in chunks (resumed in place with
``ckpt_path=DIR/checkpoints/last.ckpt trainer.max_epochs=E``) is filed by the epochs its tested
weights were trained for (``epochs`` in ``test_metrics.json``), so one stopped before the
recipe's 300 epochs appears under "full protocol STOPPED EARLY, E of 300 epochs".
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shlex
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

ROWS: dict[str, str] = {
    "hopper_latent_ode": "Latent ODE (ODE-RNN enc.)",
    "hopper_latent_ode_rnn": "Latent ODE (RNN enc.)",
    "hopper_odernn": "ODE-RNN",
    "hopper_rnn_vae": "RNN-VAE",
    "hopper_gru_dt": "RNN dt (GRU-dt)",
}
"""Model preset (``model=...``) -> the paper's row name, in the paper's order."""

TASKS: tuple[str, ...] = ("hopper_interp", "hopper_extrap")
FRACTIONS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5)
SEEDS: tuple[int, ...] = (1, 2, 3)

_PAPER_ROWS: dict[str, tuple[float, ...]] = {  # interp 10/20/30/50%, extrap 10/20/30/50%
    "hopper_latent_ode": (0.360, 0.295, 0.300, 0.285, 1.441, 1.400, 1.175, 1.258),
    "hopper_latent_ode_rnn": (2.477, 0.578, 2.768, 0.447, 1.663, 1.653, 1.485, 1.377),
    "hopper_odernn": (1.647, 1.209, 0.986, 0.665, 13.508, 31.950, 15.465, 26.463),
    "hopper_rnn_vae": (6.514, 6.408, 6.305, 6.100, 2.378, 2.135, 2.021, 1.782),
    "hopper_gru_dt": (2.454, 1.714, 1.250, 0.785, 7.259, 6.792, 6.594, 30.571),
}
PAPER: dict[tuple[str, str, float], float] = {
    (preset, task, frac): values[i * len(FRACTIONS) + j]
    for preset, values in _PAPER_ROWS.items()
    for i, task in enumerate(TASKS)
    for j, frac in enumerate(FRACTIONS)
}
"""(preset, task, observed fraction) -> the paper's test MSE x 10^-2 (issue 7's table)."""

PROTOCOLS: dict[str, list[str]] = {
    "full": [],
    "reduced": ["data.dataset.n_trajectories=1000", "data.dataset.scale_trajectories=10000",
                "trainer.max_epochs=40"],
}
"""Overrides on top of the experiment recipes. full: the paper's protocol (10,000 trajectories,
300 epochs). reduced: the CPU protocol, 1,000 trajectories (800 train, 200 test) and 40 epochs,
in the paper's units (channels scaled over the whole 10,000-trajectory file, as its code does at
any ``-n``), everything else as the paper's (model sizes, batch 50, optimiser, schedule, KL
warm-up): the README's REDUCED table. Runs of the earlier reduced protocol, without
``scale_trajectories`` (``results/hopper_reduced_runs.csv``, the data's own units), are
collected as a MODIFIED protocol."""

RECIPE_EPOCHS = 300
"""The hopper recipes' ``trainer.max_epochs`` (the paper's ``--niters 300``)."""

DEFAULT_TRAINER = {"full": "gpu", "reduced": "default"}

GRAPHED = {"hopper_latent_ode", "hopper_latent_ode_rnn"}
"""Presets whose encoder can replay its training pass from CUDA graphs: with ``trainer=gpu``
their commands add ``model.encoder.cuda_graph=true`` (same results, ~2.9x shorter epochs of the
latent ODE on an H200: docs/results.md, Full size on a GPU)."""

GRID_KEYS = {"experiment", "model", "observed_fraction", "data.task.fraction",
             "data.task.subsample", "seed"}
"""Overrides that pick a cell (or a seed) rather than a protocol."""

NEUTRAL_PREFIXES = ("hydra", "paths", "trainer.accelerator", "trainer.enable_progress_bar",
                    "data.num_workers", "data.dataset.cache_dir", "data.dataset.progress",
                    "callbacks.progress_bar", "callbacks.model_checkpoint",
                    "callbacks.last_checkpoint", "callbacks.lr_monitor", "logger", "plots",
                    "threads", "task_name", "model.encoder.cuda_graph", "model.cuda_graph",
                    "ckpt_path")
"""Overrides that do not change a run's result (where it runs, what it writes, how the GPU is
driven: ``cuda_graph`` replays the same kernels, tested equal to eager; ``ckpt_path``: a run
resumed from its checkpoint continues the same training). Not neutral: the other callbacks
(``~callbacks.ema`` changes the tested weights: 0.460 -> 0.401 after 3 periodic epochs) and the
number of processes (``data.batch_size`` is per process: 4 devices train on 4x the batch)."""
NEUTRAL_CHOICES = {"trainer": {"default", "gpu"}}  # one process, on the CPU or one GPU


def _fraction_label(fraction: float) -> str:
    return f"{round(fraction * 100, 6):g}%"


# ----------------------------------------------------------------------------- commands


def default_root() -> str:
    """Where the sweeps go: ``outputs/paper_table`` under ``$LATENTODE_ROOT`` when it is set (as
    every other run's outputs), else under the working directory."""
    base = os.environ.get("LATENTODE_ROOT")
    return str(Path(base) / "outputs/paper_table") if base else "outputs/paper_table"


def commands(protocol: str = "full", root: str | None = None,
             seeds: Sequence[int] = SEEDS, presets: Sequence[str] = tuple(ROWS),
             tasks: Sequence[str] = TASKS, fractions: Sequence[float] = FRACTIONS,
             trainer: str | None = None, extra: Sequence[str] = ()) -> list[str]:
    """One ``latentode-train -m`` per cell family (model preset x task: every fraction and seed),
    each into its own sweep dir under ``root/protocol``, then the ``collect`` command."""
    for what, given, known in (("task", tasks, TASKS), ("model preset", presets, tuple(ROWS))):
        unknown = [g for g in given if g not in known]
        if unknown:  # a command with experiment=interp would only fail when run
            raise ValueError(f"unknown {what} {', '.join(map(repr, unknown))}: the table's are "
                             f"{', '.join(known)}")
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise ValueError(f"observed fractions must lie in (0, 1], got {bad}")
    trainer = trainer or DEFAULT_TRAINER.get(protocol, "default")
    root = root or default_root()
    overrides = [*PROTOCOLS[protocol], *extra]
    base = Path(root) / protocol
    lines = []
    for task in tasks:
        for preset in presets:
            args = [
                "latentode-train", "-m", f"experiment={task}", f"model={preset}",
                "observed_fraction=" + ",".join(f"{f:g}" for f in fractions),
                "seed=" + ",".join(str(s) for s in seeds),
                *([f"trainer={trainer}"] if trainer != "default" else []),
                *(["model.encoder.cuda_graph=true"]
                  if trainer == "gpu" and preset in GRAPHED else []),
                *overrides,
                f"hydra.sweep.dir={base / task / preset}",
            ]
            lines.append(shlex.join(args))
    lines.append(shlex.join([
        "python", "scripts/paper_table.py", "collect", str(base),
        "--csv", str(base / "hopper_table.csv"), "--markdown", str(base / "hopper_table.md"),
        "--runs-csv", str(base / "runs.csv"),
    ]))
    return lines


# ----------------------------------------------------------------------------- collecting


@dataclass
class Run:
    """One finished (or unfinished) run dir, reduced to what the table needs."""

    path: Path
    preset: str
    task: str
    fraction: float
    seed: int | None
    protocol: tuple[str, ...]
    mse: float | None  # None: no test_metrics.json (failed or still running)
    settings: dict[str, Any] = field(default_factory=dict)


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def protocol_of(overrides: Iterable[str]) -> tuple[str, ...]:
    """The overrides that change results, other than the grid's (sorted)."""
    kept: dict[str, str] = {}  # the last of a key's overrides wins, as in Hydra
    for override in overrides:
        key = _override_key(override)
        value = override.split("=", 1)[1] if "=" in override else None
        if key in GRID_KEYS or value in NEUTRAL_CHOICES.get(key, ()):
            continue
        if any(key == p or key.startswith(p + ".") or key.startswith(p + "/")
               for p in NEUTRAL_PREFIXES):
            continue
        kept[key] = override
    return tuple(sorted(kept.values()))


def _preset_of(run_dir: Path, overrides: list[str], cfg: Any) -> str:
    """The model group's choice (hydra.yaml), else ``model=`` of the overrides, else a name
    from the model's class."""
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    if hydra_file.is_file():
        hydra_cfg = yaml.safe_load(hydra_file.read_text()) or {}
        choice = (((hydra_cfg.get("hydra") or {}).get("runtime") or {}).get("choices")
                  or {}).get("model")
        if choice:
            return str(choice)
    for override in overrides:
        if _override_key(override) == "model" and "=" in override:
            return override.split("=", 1)[1]
    return str(OmegaConf.select(cfg, "model._target_", default="?")).rsplit(".", 1)[-1]


def read_run(run_dir: Path) -> Run | None:
    """A :class:`Run` from ``run_dir`` (None when it is no hopper run)."""
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    name = OmegaConf.select(cfg, "data.dataset.name", default=None)
    kind = OmegaConf.select(cfg, "data.dataset.task", default=None)
    if name is None or kind is None:
        return None
    task = f"{name}_{kind}"
    target = str(OmegaConf.select(cfg, "data.task._target_", default=""))
    key = "data.task.subsample" if target.endswith("Extrapolation") else "data.task.fraction"
    fraction = OmegaConf.select(cfg, key, default=None)
    fraction = 1.0 if fraction is None else float(fraction)  # None: the encoder sees everything
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    overrides = [str(o) for o in (yaml.safe_load(overrides_file.read_text()) or [])
                 ] if overrides_file.is_file() else []
    metrics_file = run_dir / "test_metrics.json"
    mse, epochs = None, None
    if metrics_file.is_file():
        record = json.loads(metrics_file.read_text())
        metrics = record.get("metrics", {})
        mse = float(metrics["test/mse"]) if "test/mse" in metrics else math.nan
        epochs = record.get("epochs")  # of the tested weights (written since 2026-12-05)
    if epochs is not None:
        # the epochs the tested weights were trained for, not the config's: a run resumed in
        # chunks (or still running its next chunk) tested after `epochs` of the recipe's
        overrides = [o for o in overrides if _override_key(o) != "trainer.max_epochs"]
        if int(epochs) != RECIPE_EPOCHS:
            overrides.append(f"trainer.max_epochs={int(epochs)}")
    seed = OmegaConf.select(cfg, "seed", default=None)
    settings = {
        "n_trajectories": OmegaConf.select(cfg, "data.dataset.n_trajectories", default=None),
        "max_epochs": int(epochs) if epochs is not None
        else OmegaConf.select(cfg, "trainer.max_epochs", default=None),
    }
    return Run(run_dir, _preset_of(run_dir, overrides, cfg), task, fraction,
               None if seed is None else int(seed), protocol_of(overrides), mse, settings)


RUN_FIELDS = ["protocol", "preset", "task", "observed_fraction", "seed", "test_mse",
              "n_trajectories", "max_epochs", "run"]
"""Columns of the per-run CSV (``collect --runs-csv``), which ``collect`` also reads back: finished
runs kept in the repository so that seeds run in different sessions add up."""


def write_runs_csv(runs: Iterable[Run], path: Path) -> None:
    """One row per finished run (unfinished ones have nothing to keep)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RUN_FIELDS)
        writer.writeheader()
        for run in runs:
            if run.mse is None:
                continue
            writer.writerow({
                "protocol": json.dumps(list(run.protocol)), "preset": run.preset,
                "task": run.task, "observed_fraction": f"{run.fraction:g}",
                "seed": "" if run.seed is None else run.seed, "test_mse": repr(run.mse),
                "n_trajectories": run.settings.get("n_trajectories") or "",
                "max_epochs": run.settings.get("max_epochs") or "", "run": _shown(run.path),
            })


def _shown(path: Path) -> str:
    """``path`` relative to the working directory where it lies below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def read_runs_csv(path: Path) -> list[Run]:
    """The runs of a CSV written by :func:`write_runs_csv`."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = set(RUN_FIELDS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path} is not a per-run CSV of `collect --runs-csv`: no column "
                             f"{', '.join(sorted(missing))}.")
        return [
            Run(Path(row["run"]), row["preset"], row["task"], float(row["observed_fraction"]),
                int(row["seed"]) if row["seed"] else None, tuple(json.loads(row["protocol"])),
                float(row["test_mse"]),
                {"n_trajectories": int(row["n_trajectories"]) if row["n_trajectories"] else None,
                 "max_epochs": int(row["max_epochs"]) if row["max_epochs"] else None})
            for row in reader
        ]


def _identity(run: Run) -> tuple[Any, ...]:
    return (run.protocol, run.preset, run.task, round(run.fraction, 6), run.seed, run.mse)


def find_runs(roots: Iterable[Path]) -> list[Run]:
    """Every hopper run under ``roots``: run dirs (with ``.hydra/config.yaml``) found below a
    directory, and the rows of per-run CSV files; a finished run listed twice (its dir and a CSV
    row with the same cell, seed and MSE) counts once."""
    runs: list[Run] = []
    for root in roots:
        if root.is_file():
            runs.extend(read_runs_csv(root))
            continue
        for dirpath, dirnames, _ in os.walk(root):
            dirnames.sort()
            path = Path(dirpath)
            if (path / ".hydra" / "config.yaml").is_file():
                run = read_run(path)
                if run is not None:
                    runs.append(run)
    seen: set[tuple[Any, ...]] = set()
    unique = []
    for run in runs:
        if run.mse is not None and _identity(run) in seen:
            continue
        seen.add(_identity(run))
        unique.append(run)
    return sorted(unique, key=lambda r: str(r.path))


@dataclass
class Cell:
    """The runs of one (protocol, preset, task, fraction), aggregated (x 10^-2)."""

    values: list[float] = field(default_factory=list)  # finite test MSEs x 100
    seeds: list[int | None] = field(default_factory=list)
    unfinished: int = 0  # seeds with run dirs but no test_metrics.json in any of them
    nonfinite: int = 0

    @property
    def duplicates(self) -> list[int | None]:
        """Seeds with more than one finished run (all are averaged: rerun into a new dir)."""
        return sorted({s for s in self.seeds if self.seeds.count(s) > 1}, key=str)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation over seeds (None for fewer than two)."""
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    def text(self) -> str:
        if not self.values:
            extra = self._extras()
            return "—" + (f" ({extra})" if extra else "")
        value = f"{self.mean:.3f}"
        if self.std is not None:
            value += f" ± {self.std:.3f}"
        notes = ", ".join(x for x in (f"n={self.n}", self._extras()) if x)
        return f"{value} ({notes})"

    def _extras(self) -> str:
        parts = []
        if self.unfinished:
            parts.append(f"{self.unfinished} unfinished")
        if self.nonfinite:
            parts.append(f"{self.nonfinite} non-finite")
        if self.duplicates:
            parts.append("seed " + "/".join(map(str, self.duplicates)) + " repeated")
        return ", ".join(parts)


def aggregate(runs: Iterable[Run]) -> dict[tuple[str, ...], dict[tuple[str, str, float], Cell]]:
    """protocol -> (preset, task, fraction) -> :class:`Cell`."""
    table: dict[tuple[str, ...], dict[tuple[str, str, float], Cell]] = defaultdict(
        lambda: defaultdict(Cell))
    pending: dict[tuple[tuple[str, ...], tuple[str, str, float]], set[int | None]] = (
        defaultdict(set))
    for run in runs:
        key = (run.preset, run.task, round(run.fraction, 6))
        cell = table[run.protocol][key]
        if run.mse is None:
            pending[(run.protocol, key)].add(run.seed)
        elif not math.isfinite(run.mse):
            cell.nonfinite += 1
        else:
            cell.values.append(100.0 * run.mse)
            cell.seeds.append(run.seed)
    for (protocol, key), seeds in pending.items():  # a failed run retried with success is done
        cell = table[protocol][key]
        cell.unfinished = len(seeds - set(cell.seeds))
    return table


def protocol_title(protocol: tuple[str, ...], runs: Sequence[Run]) -> str:
    """A heading that says whether the runs followed the paper's protocol."""
    settings = sorted({(r.settings.get("n_trajectories"), r.settings.get("max_epochs"))
                       for r in runs}, key=str)
    sizes = "; ".join(f"{n} trajectories, {e} epochs" for n, e in settings)
    sizes = f" ({sizes})" if sizes else ""
    if not protocol:
        return f"full protocol, the recipes as they are{sizes}"
    reduced = list(protocol) == sorted(PROTOCOLS["reduced"])
    label = "REDUCED protocol" if reduced else "MODIFIED protocol"
    if len(protocol) == 1 and _override_key(protocol[0]) == "trainer.max_epochs":
        epochs = protocol[0].split("=", 1)[1]
        if epochs.isdigit() and int(epochs) < RECIPE_EPOCHS:
            label = f"full protocol STOPPED EARLY, {epochs} of {RECIPE_EPOCHS} epochs"
    return f"{label}: {' '.join(protocol)}{sizes}"


def columns(cells: dict[tuple[str, str, float], Cell]) -> list[tuple[str, float]]:
    """(task, fraction) columns: the paper's eight, then any other fraction found."""
    cols = [(task, frac) for task in TASKS for frac in FRACTIONS]
    extra = sorted({(t, f) for (_, t, f) in cells} - set(cols),
                   key=lambda c: (TASKS.index(c[0]) if c[0] in TASKS else len(TASKS), c))
    return cols + extra


def markdown(protocol: tuple[str, ...], cells: dict[tuple[str, str, float], Cell],
             runs: Sequence[Run]) -> str:
    """One protocol's table: per model a 'paper' row and an 'ours' row."""
    cols = columns(cells)
    presets = list(ROWS) + sorted({p for (p, _, _) in cells} - set(ROWS))
    head = ["model", "", *(f"{t.removeprefix('hopper_')} {_fraction_label(f)}" for t, f in cols)]
    lines = [
        f"### MuJoCo hopper, {protocol_title(protocol, runs)}",
        "",
        "Test MSE x 10^-2 (scaled units; interpolation: all 100 points of each test window, "
        "extrapolation: the 134 predicted points). Ours: mean ± sample std over seeds (n runs). "
        "Paper: Rubanova et al. 2019.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for preset in presets:
        label = ROWS.get(preset, preset)
        paper = [PAPER.get((preset, t, f)) for t, f in cols]
        lines.append("| " + " | ".join(
            [label, "paper", *("—" if v is None else f"{v:.3f}" for v in paper)]) + " |")
        ours = [cells[(preset, t, f)].text() if (preset, t, f) in cells else "—"
                for t, f in cols]
        lines.append("| " + " | ".join([f"`{preset}`", "ours", *ours]) + " |")
    return "\n".join(lines)


CSV_FIELDS = ["protocol", "preset", "model", "task", "observed_fraction", "n", "seeds",
              "unfinished", "nonfinite", "mse_mean_1e-2", "mse_std_1e-2", "paper_1e-2"]


def csv_rows(table: dict[tuple[str, ...], dict[tuple[str, str, float], Cell]]
             ) -> list[dict[str, Any]]:
    """One row per cell of every protocol's table (the paper's cells included, n = 0 if empty)."""
    rows = []
    for protocol, cells in table.items():
        presets = list(ROWS) + sorted({p for (p, _, _) in cells} - set(ROWS))
        for preset in presets:
            for task, frac in columns(cells):
                cell = cells.get((preset, task, frac), Cell())
                paper = PAPER.get((preset, task, frac))
                rows.append({
                    "protocol": " ".join(protocol) or "full",
                    "preset": preset, "model": ROWS.get(preset, preset), "task": task,
                    "observed_fraction": f"{frac:g}", "n": cell.n,
                    "seeds": " ".join(str(s) for s in cell.seeds),
                    "unfinished": cell.unfinished, "nonfinite": cell.nonfinite,
                    "mse_mean_1e-2": "" if cell.mean is None else f"{cell.mean:.6g}",
                    "mse_std_1e-2": "" if cell.std is None else f"{cell.std:.6g}",
                    "paper_1e-2": "" if paper is None else f"{paper:g}",
                })
    return rows


def collect(roots: Sequence[Path], csv_path: Path | None = None,
            markdown_path: Path | None = None, runs_csv_path: Path | None = None) -> str:
    """Find the runs under ``roots``, print-ready markdown of every protocol's table; writes
    the CSV (one row per cell), the markdown and the per-run CSV when paths are given."""
    runs = find_runs(roots)
    if runs_csv_path is not None:
        write_runs_csv(runs, runs_csv_path)
    table = aggregate(runs)
    if not table:
        text = (f"no hopper runs under {', '.join(map(str, roots))}\n\n"
                + markdown((), {}, []))
    else:
        text = "\n\n".join(
            markdown(protocol, cells, [r for r in runs if r.protocol == protocol])
            for protocol, cells in sorted(table.items())
        )
    if csv_path is not None:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        with csv_path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            writer.writeheader()
            writer.writerows(csv_rows(table))
    if markdown_path is not None:
        markdown_path.parent.mkdir(parents=True, exist_ok=True)
        markdown_path.write_text(text + "\n")
    return text


# ----------------------------------------------------------------------------- reference


def reference(n_trajectories: int = 10_000, cache_dir: str | None = None,
              scale_trajectories: int | None = None) -> dict[str, float]:
    """Test MSE (scaled units) of predictors that read no data: the training set's mean
    trajectory (per time step and channel) and its overall mean per channel, on each task's
    scored points. A model at these numbers has learned nothing from its inputs. ``cache_dir``:
    the source's (default ``data/cache``); ``scale_trajectories``: the source's option (10000:
    the paper code's units at any ``n_trajectories``)."""
    from latentode.data.sources import hopper

    cache_dir = hopper.DEFAULT_CACHE_DIR if cache_dir is None else cache_dir
    out = {}
    for task, length, scored in (("interp", hopper.WINDOW, slice(0, hopper.WINDOW)),
                                 ("extrap", hopper.N_STEPS,
                                  slice(hopper.ENCODER_STEPS_EXTRAP, hopper.N_STEPS))):
        frame = hopper.load(task=task, n_trajectories=n_trajectories, cache_dir=cache_dir,
                            progress=False, scale_trajectories=scale_trajectories)
        values = frame[hopper.CHANNELS].to_numpy().reshape(-1, length, len(hopper.CHANNELS))
        split = frame["split"].to_numpy().reshape(-1, length)[:, 0]
        train, test = values[split == "train", scored], values[split == "test", scored]
        out[f"hopper_{task} mean trajectory"] = float(((test - train.mean(0)) ** 2).mean())
        out[f"hopper_{task} channel means"] = float(((test - train.mean((0, 1))) ** 2).mean())
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``commands`` or ``collect`` (see the module's docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    cmd = sub.add_parser("commands", help="print the training commands of the table")
    cmd.add_argument("--protocol", choices=sorted(PROTOCOLS), default="full")
    cmd.add_argument("--root", default=None,
                     help="sweep dirs go to ROOT/PROTOCOL/TASK/PRESET (default: "
                     "outputs/paper_table under $LATENTODE_ROOT if set, else here)")
    cmd.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    cmd.add_argument("--models", default=",".join(ROWS), help="model presets, comma-separated")
    cmd.add_argument("--tasks", default=",".join(TASKS))
    cmd.add_argument("--fractions", default=",".join(f"{f:g}" for f in FRACTIONS),
                     help="observed fractions, comma-separated (the table's columns)")
    cmd.add_argument("--trainer", default=None,
                     help="trainer group (default: gpu for full, the CPU default for reduced)")
    cmd.add_argument("overrides", nargs="*", help="more overrides for every run")
    col = sub.add_parser("collect", help="collect run dirs into the table")
    col.add_argument("roots", nargs="+", type=Path,
                     help="directories holding run dirs, or per-run CSVs of --runs-csv")
    col.add_argument("--csv", type=Path, default=None, help="the table, one row per cell")
    col.add_argument("--markdown", type=Path, default=None)
    col.add_argument("--runs-csv", type=Path, default=None,
                     help="one row per finished run (readable again as a root)")
    ref = sub.add_parser("reference", help="test MSE of predictors that read no data")
    ref.add_argument("--n-trajectories", type=int, default=10_000)
    ref.add_argument("--cache-dir", default=None, help="default: the hopper source's")
    ref.add_argument("--scale-trajectories", type=int, default=None,
                     help="scale over this many trajectories (10000: the paper code's units)")
    args = parser.parse_args(argv)
    if args.action == "reference":
        for name, mse in reference(args.n_trajectories, args.cache_dir,
                                   args.scale_trajectories).items():
            print(f"{name:<32} test MSE x 10^-2: {100 * mse:.3f}")
        return 0
    if args.action == "commands":
        try:
            lines = commands(args.protocol, args.root,
                             seeds=[int(s) for s in args.seeds.split(",")],
                             presets=args.models.split(","), tasks=args.tasks.split(","),
                             fractions=[float(f) for f in args.fractions.split(",")],
                             trainer=args.trainer, extra=args.overrides)
        except ValueError as error:
            cmd.error(str(error))
        print("\n".join(lines))
    else:
        print(collect(args.roots, args.csv, args.markdown, args.runs_csv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
